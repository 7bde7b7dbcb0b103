"""Measured cards: load time, warm latency and agreement per variant the host can run, the
evaluation metrics, "not measured here" for the others, in smpack.json, the cards' variants
tables and the hub's model-index; a float16 graph that rounds its answer away shows it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import VARIANTS, front_matter, hub_card_data, mct_problems
from typer.testing import CliRunner

import smpack
from smpack.checks.measure import Evaluation, measure_package
from smpack.cli.commands import app
from smpack.errors import ManifestError
from smpack.manifest import evaluation_data
from smpack.manifest.evaluation_data import EvaluationDataError, read_evaluation_data
from smpack.package.info import PackageInfo, read_package

runner = CliRunner()

# (x + 4096) - 4096 is x in float32 (to 2**-11), but float16 spaces numbers near 4096 four
# apart, so in float16 it rounds every |x| < 2 to 0 or a multiple of 4: the wrong answer.
ROUNDING_MODEL = """
import tensorflow as tf
from smpack import ModelContext, ModelSpec


def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [None], name="input")

    def shifted(x):
        offset = tf.compat.v1.get_variable(
            "offset", [], ctx.dtype, initializer=tf.compat.v1.constant_initializer(4096.0)
        )
        return (x + offset) - offset

    out = tf.identity(ctx.compute(shifted, x), name="output")
    return ModelSpec(inputs={"input": x}, outputs={"output": out})
"""

ROUNDING_MANIFEST = """
schema: 1
name: rounding
version: 1
source: {python: model.py:model_fn}
variants:
  cpu:  {tags: [serve]}
  half: {tags: [serve, half], precision: float16}
  gpu:  {tags: [serve, gpu], device: /device:GPU:0}
evaluate: {data: eval.npz, metrics: [mse, mae]}
"""


def _variants_table(card: str) -> list[list[str]]:
    section = card.partition("## Variants")[2].partition("## Signatures")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


# The packages measure_package read itself while the `rounding` fixture's build measured.
READ_WHILE_MEASURING: list[Path] = []


@pytest.fixture(scope="module")
def rounding(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A measured package whose float16 variant is wrong by construction."""
    folder = tmp_path_factory.mktemp("rounding")
    (folder / "model.py").write_text(ROUNDING_MODEL)
    (folder / "rounding.yaml").write_text(ROUNDING_MANIFEST)
    values = np.linspace(-1, 1, 16, dtype=np.float32)
    np.savez(folder / "eval.npz", input=values, labels=values)

    def reading(export_dir: Path) -> PackageInfo:
        READ_WHILE_MEASURING.append(export_dir)
        return read_package(export_dir)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("smpack.checks.measure.read_package", reading)
        built = smpack.build(folder / "rounding.yaml", folder / "out")
    yield built.path
    READ_WHILE_MEASURING.clear()


def test_a_measured_build_reads_its_package_once(rounding: Path) -> None:
    # The build's own read of the written graphs is what measuring uses (0.4 s a read for
    # the bench's eight variants of 1,000 variables).
    assert READ_WHILE_MEASURING == []


def _record(package: Path) -> dict[str, Any]:
    """What smpack_measured.json says was measured, by tag set."""
    return json.loads((package / "assets.extra" / "smpack_measured.json").read_text())["variants"]


def test_the_measured_record_holds_what_was_measured_and_what_was_not(rounding: Path) -> None:
    variants = _record(rounding)
    serve, half, gpu = (variants[t] for t in ("serve", "serve,half", "serve,gpu"))
    for measured in (serve, half):
        assert measured["reason"] == ""
        assert measured["load_seconds"] > 0
        assert 0 < measured["latency_p50_ms"] <= measured["latency_p99_ms"]
        assert measured["warm_runs"] == 30
        assert measured["batch_size"] == 8  # inputs made from the spec: free sizes become 8
        assert "CPUs" in measured["host"] and "TensorFlow" in measured["host"]
    # No GPU here: no number, not even a guess.
    assert gpu["reason"] == "not measured here: needs a GPU"
    assert [gpu[k] for k in ("load_seconds", "latency_p50_ms", "agreement")] == [None] * 3
    assert serve["agreement"] is None  # it is the float32 reference
    # The rounding float16 graph answers 0 for every |x| < 2: wrong by its whole scale.
    assert half["agreement"]["reference"] == "serve"
    assert half["agreement"]["max_relative_error"] > 0.5
    assert serve["metrics"]["mse"] < 1e-6
    assert half["metrics"]["mse"] > 0.1 and half["metrics"]["mae"] > 0.3
    assert half["evaluation_data"] == "eval.npz"


def test_cards_show_the_measured_numbers(rounding: Path) -> None:
    card = (rounding / "assets.extra" / "model_card.md").read_text()
    measured = _record(rounding)["serve,half"]
    rows = {row[0].strip("`"): row for row in _variants_table(card)}
    assert rows["serve,half"][6:9] == [
        f"{measured['load_seconds']:.3g} s",
        f"{measured['latency_p50_ms']:.3g} ms",
        f"{measured['latency_p99_ms']:.3g} ms",
    ]
    assert rows["serve,half"][9].startswith("max rel. error ")
    assert float(rows["serve,half"][9].removeprefix("max rel. error ")) > 0.5
    assert rows["serve"][9] == "reference"
    assert rows["serve,gpu"][6] == "not measured here: needs a GPU"
    assert f"of {measured['warm_runs']} warm runs of one request of 8 rows" in " ".join(
        card.split()
    )
    html = (rounding / "assets.extra" / "model_card.html").read_text()
    assert "<th>p50</th>" in html and "not measured here: needs a GPU" in html


def test_model_index_labels_each_number_with_variant_and_host(rounding: Path) -> None:
    card = (rounding / "assets.extra" / "model_card.md").read_text()
    measured = _record(rounding)["serve,half"]
    [index] = front_matter(card)["model-index"]
    metrics = {
        (metric["config"], metric["type"]): (result["dataset"], metric)
        for result in index["results"]
        for metric in result["metrics"]
    }
    dataset, p50 = metrics[("serve,half", "latency_p50_ms")]
    assert p50["value"] == measured["latency_p50_ms"]
    assert p50["name"] == f"warm latency p50 (ms), serve,half on {measured['host']}"
    assert dataset["type"] == "smpack-measurement"
    dataset, mse = metrics[("serve,half", "mse")]
    assert (dataset["name"], mse["value"]) == ("eval.npz", measured["metrics"]["mse"])
    assert metrics[("serve,half", "max_relative_error")][1]["value"] > 0.5
    # Nothing for the variant that was not measured.
    assert not [key for key in metrics if key[0] == "serve,gpu"]


def test_card_measure_re_measures_any_package(text_package: PackageInfo) -> None:
    # The fixture was built with measure=False: its card has no numbers ...
    assert "| Load |" not in (text_package.path / "assets.extra" / "model_card.md").read_text()
    result = runner.invoke(app, ["card", str(text_package.path), "--measure"])
    assert result.exit_code == 0, result.output
    rows = {row[0].strip("`"): row for row in _variants_table(result.stdout)}
    # ... and now has them. The train graph computes what serve does, class for class.
    assert rows["train"][9] == "max rel. error 0, top-1 100%"
    assert re.fullmatch(r"[0-9.e+-]+ ms", rows["serve"][7])
    assert rows["serve,tpu"][6] == "not measured here: needs a TPU"


def test_no_measure_leaves_the_numbers_out(tmp_path: Path) -> None:
    args = ["build", str(VARIANTS / "linear.yaml"), "--out", str(tmp_path), "--no-measure"]
    result = runner.invoke(app, [*args, "--no-verify", "--quiet"])
    assert result.exit_code == 0, result.output
    package = tmp_path / "linear" / "1"
    assert all(v is None for v in _record(package).values())
    card = (package / "assets.extra" / "model_card.md").read_text()
    assert "| Load |" not in card and "Measured on" not in card


def test_evaluation_data_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(ROUNDING_MODEL)
    (tmp_path / "rounding.yaml").write_text(ROUNDING_MANIFEST)
    np.savez(tmp_path / "eval.npz", features=np.zeros(4, np.float32), labels=np.zeros(4))
    result = runner.invoke(app, ["build", str(tmp_path / "rounding.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    # Found when the manifest is read, before any graph is built: with the line.
    assert result.stderr.startswith(f"error: {tmp_path / 'rounding.yaml'}:10: evaluate.data: ")
    assert "eval.npz has no array 'input'; it must hold the inputs ['input']" in result.stderr
    assert not (tmp_path / "rounding").exists()


def test_what_a_graph_refuses_is_not_measured_and_says_why(rounding: Path, tmp_path: Path) -> None:
    """Inputs TF refuses before running (a ValueError, not an OpError) are the graph's
    failure: a stored request gets no number and the reason; evaluation data, one line."""
    requests = {
        "of another shape": {"input": np.zeros((2, 3), np.float32)},
        "for another signature": {"features": np.zeros(2, np.float32)},
    }
    reasons = {}
    for kind, request in requests.items():
        measured = measure_package(rounding, examples={"serving_default": request}, runs=1)
        reasons[kind] = next(m.reason for m in measured if m.tag_set == "serve")
    assert reasons["of another shape"].startswith(
        "could not run serving_default: Cannot feed value of shape (2, 3) for Tensor input:0"
    )
    assert reasons["for another signature"] == (
        "could not run serving_default: the signature has no input 'features'; its inputs: "
        "['input']"
    )
    np.savez(tmp_path / "eval.npz", input=np.zeros((4, 3), np.float32), labels=np.zeros(4))
    evaluation = Evaluation(
        tmp_path / "eval.npz", ("mse",), "serving_default", None, tmp_path / "m.yaml"
    )
    with pytest.raises(ManifestError) as raised:
        measure_package(rounding, evaluation=evaluation, runs=1)
    assert str(raised.value).startswith(
        f"{tmp_path / 'm.yaml'}: evaluate.data: eval.npz does not fit signature "
        "'serving_default': Cannot feed value of shape (4, 3)"
    )


def test_tfrecord_evaluation_data_gives_the_npz_metrics(rounding: Path) -> None:
    """The same rows as tf.Examples, written by TensorFlow's own writer, measure the same."""
    folder = rounding.parents[2]
    values = np.linspace(-1, 1, 16, dtype=np.float32)
    with tf.io.TFRecordWriter(str(folder / "eval.tfrecord")) as writer:
        for value in values:
            feature = {
                key: tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
                for key in ("input", "target")
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    manifest = folder / "tfrecord.yaml"
    manifest.write_text(
        ROUNDING_MANIFEST.replace(
            "evaluate: {data: eval.npz,", "evaluate: {data: eval.tfrecord, label: target,"
        )
    )
    measured = smpack.measure(rounding, manifest=manifest)
    for tag_set in ("serve", "serve,half"):
        assert measured[tag_set]["evaluation_data"] == "eval.tfrecord"
        assert measured[tag_set]["metrics"] == _record(rounding)[tag_set]["metrics"]
    assert measured["serve,half"]["metrics"]["mse"] > 0.1


def test_measured_cards_pass_the_hub_and_model_card_toolkit_rules(rounding: Path) -> None:
    extra = rounding / "assets.extra"
    data = hub_card_data((extra / "model_card.md").read_text())
    measured = _record(rounding)["serve,half"]
    p50 = next(
        r
        for r in data.eval_results
        if (r.metric_config, r.metric_type) == ("serve,half", "latency_p50_ms")
    )
    assert p50.metric_value == measured["latency_p50_ms"]
    assert measured["host"] in p50.dataset_name
    document = (extra / "model_card.json").read_text()
    assert mct_problems(document) == []
    metrics = json.loads(document)["quantitative_analysis"]["performance_metrics"]
    where = f"serve,half on {measured['host']}"
    assert {"type": "mse", "value": f"{measured['metrics']['mse']:.6g}"} | {
        "slice": f"{where}, eval.npz"
    } in metrics
    assert any(m["type"] == "latency_p99_ms" and m["slice"] == where for m in metrics)


def _feature(values: list[Any]) -> tf.train.Feature:
    if isinstance(values[0], bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if isinstance(values[0], float):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _write_examples(path: Path, rows: list[dict[str, list[Any]]]) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for row in rows:
            feature = {key: _feature(values) for key, values in row.items()}
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())


def test_tfrecord_columns_are_read_as_tensorflow_wrote_them(tmp_path: Path) -> None:
    path = tmp_path / "eval.tfrecord"
    _write_examples(
        path,
        [
            {"ids": [5, -1, 2**40], "text": [b"good"], "labels": [1.5]},
            {"ids": [0, 7, -(2**62)], "text": [b""], "labels": [-0.25]},
        ],
    )
    columns = read_evaluation_data(path)
    np.testing.assert_array_equal(columns["ids"], [[5, -1, 2**40], [0, 7, -(2**62)]])
    assert columns["ids"].dtype == np.int64
    assert columns["text"].tolist() == [b"good", b""]  # one value per record: [rows]
    np.testing.assert_array_equal(columns["labels"], np.array([1.5, -0.25], np.float32))


@pytest.mark.parametrize(
    ("rows", "problem"),
    [
        ([{"x": [1.0], "labels": [1]}, {"labels": [0]}], "feature 'x' is in record 1 but not"),
        (
            [{"x": [1.0, 2.0], "labels": [1]}, {"x": [1.0], "labels": [0]}],
            "feature 'x' is 2 float value(s) in record 1 but 1 float value(s) in record 2",
        ),
        ([], "holds no records"),
    ],
    ids=["missing feature", "ragged feature", "empty file"],
)
def test_tfrecords_that_are_not_a_table_are_refused(
    rows: list[dict[str, list[Any]]], problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "eval.tfrecord"
    _write_examples(path, rows)
    with pytest.raises(EvaluationDataError, match=re.escape(problem)):
        read_evaluation_data(path)


def test_a_packed_float_list_cut_mid_float_is_refused(tmp_path: Path) -> None:
    # Example{features{feature{key: "x" value{float_list{value: <5 packed bytes>}}}}}
    float_list = b"\x0a\x05" + b"\x00" * 5
    feature = b"\x12" + bytes([len(float_list)]) + float_list
    entry = b"\x0a\x01x\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    path = tmp_path / "eval.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(b"\x0a" + bytes([len(features)]) + features)

    problem = "record 1 is not a tf.Example: a packed FloatList of 5 bytes, not a multiple of 4"
    with pytest.raises(EvaluationDataError, match=re.escape(problem)):
        read_evaluation_data(path)


def test_a_bug_in_the_example_reader_is_not_blamed_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what the wire decoder raises for bad bytes makes a record 'not a tf.Example'."""
    path = tmp_path / "eval.tfrecord"
    _write_examples(path, [{"x": [1.0], "labels": [1]}])
    bug = ValueError("a bug")

    def broken(feature: bytes) -> None:
        raise bug

    monkeypatch.setattr(evaluation_data, "_feature", broken)
    with pytest.raises(ValueError) as caught:  # EvaluationDataError is a ValueError too
        read_evaluation_data(path)
    assert caught.value is bug


def test_tfrecord_evaluation_data_is_read_no_further_than_its_limit(tmp_path: Path) -> None:
    path = tmp_path / "eval.tfrecord"
    # 1,032 bytes of values in each record (256 float32s, an int64)
    _write_examples(path, [{"x": [0.5] * 256, "labels": [1]}] * 60)
    with path.open("ab") as stream:
        stream.write(b"\xff" * 20)  # a 61st record's framing, cut: never reached
    problem = "eval.tfrecord's first 51 records hold values more than evaluation holds in memory"
    with pytest.raises(EvaluationDataError, match=re.escape(problem)):
        read_evaluation_data(path, limit=50 * 1032)
    # Within the limit, the columns are packed numbers, not a Python object per value.
    path.write_bytes(path.read_bytes()[:-20])
    columns = read_evaluation_data(path, limit=60 * 1032)
    assert columns["x"].shape == (60, 256) and columns["x"].dtype == np.float32
    np.testing.assert_array_equal(columns["labels"], [1] * 60)


def test_a_tfrecord_row_too_large_to_decode_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "eval.tfrecord"
    _write_examples(path, [{"x": [b"\0" * 4000], "labels": [1]}])
    with pytest.raises(EvaluationDataError) as caught:
        read_evaluation_data(path, limit=48 * 4000)
    assert str(caught.value) == (
        "eval.tfrecord: record 1 is 4,035 bytes, more than 4,000: one row may take a 48th of "
        "the 192,000 bytes evaluation holds in memory"
    )


def test_npz_arrays_past_the_limit_are_refused_before_any_is_read(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    np.savez_compressed(path, x=np.zeros((1000, 100), np.float32), labels=np.zeros(1000))
    assert path.stat().st_size < 4000  # zeros deflate: the directory's sizes tell
    with pytest.raises(EvaluationDataError) as caught:
        read_evaluation_data(path, limit=400_000)
    assert str(caught.value).startswith(
        "eval.npz holds 408,256 bytes of arrays, more than evaluation holds in memory here"
    )
    assert read_evaluation_data(path, limit=408_256)["x"].shape == (1000, 100)


def test_evaluation_feeds_a_signature_of_any_batch_size_in_chunks() -> None:
    """Evaluation data fed whole would need the graph's activations for every row at once."""
    from tensorflow.core.protobuf import meta_graph_pb2

    from smpack.checks.measure import EVALUATION_BATCH, _batches

    signature = meta_graph_pb2.SignatureDef()
    for key, dims in (("any", [-1, 3]), ("fixed", [8])):
        info = signature.inputs[key]
        info.name = f"{key}:0"
        for size in dims:
            info.tensor_shape.dim.add(size=size)
    rows = EVALUATION_BATCH * 2 + 5
    arrays = {"any": np.arange(rows * 3).reshape(rows, 3)}
    chunks = [feeds["any:0"] for feeds in _batches(signature, arrays)]
    assert [len(c) for c in chunks] == [EVALUATION_BATCH, EVALUATION_BATCH, 5]
    np.testing.assert_array_equal(np.concatenate(chunks), arrays["any"])
    del signature.inputs["any"]
    fixed = [feeds["fixed:0"] for feeds in _batches(signature, {"fixed": np.arange(10)})]
    assert [c.tolist() for c in fixed] == [list(range(8)), [8, 9, 9, 9, 9, 9, 9, 9]]


def test_evaluation_holds_what_the_metric_compares_not_the_outputs(tmp_path: Path) -> None:
    """Class scores of 2,048 rows x 1,000 classes (8 MiB) are argmax'd chunk by chunk: the
    evaluation holds class ids, not every chunk's scores at once."""
    import tracemalloc

    rows, classes = 2048, 1000
    np.savez(tmp_path / "eval.npz", x=np.arange(rows, dtype=np.float32), labels=np.arange(rows) % 7)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        # The score of class c is -(x mod 7 - c)^2: row x's top class is x mod 7.
        scores = -tf.square(tf.math.floormod(x, 7.0)[:, None] - tf.range(classes, dtype=tf.float32))
        signature = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"scores": scores})
    meta_graph = tf.compat.v1.MetaGraphDef()
    meta_graph.signature_def["serving_default"].CopyFrom(signature)
    evaluation = Evaluation(
        tmp_path / "eval.npz", ("accuracy",), "serving_default", None, tmp_path / "m.yaml"
    )
    with tf.compat.v1.Session(graph=graph) as session:
        tracemalloc.start()
        try:
            metrics = evaluation.run(session, meta_graph)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert metrics == {"accuracy": 1.0}
    assert peak < rows * classes * 4 / 2, peak  # held all the scores at once before


def test_an_integer_evaluation_column_feeds_a_quantized_input(
    tmp_path: Path,
) -> None:
    """An integer column feeds a qint8 input (numpy has no qint8: it was refused as "holds
    integer values, but signature takes qint8"), and the model sees the same integers."""
    module = tf.Module()
    module.f = tf.function(
        lambda x: {"y": tf.quantization.dequantize(x, -127.0, 127.0, mode="SCALED")},
        input_signature=[tf.TensorSpec([None], tf.qint8)],
    )
    tf.saved_model.save(module, str(tmp_path / "model"), signatures=module.f)
    values = np.array([-100, -3, 0, 5, 127])
    np.savez(tmp_path / "eval.npz", x=values, labels=values.astype(np.float32))
    evaluation = Evaluation(
        tmp_path / "eval.npz", ("mae",), "serving_default", "y", tmp_path / "smpack.yaml"
    )

    [measured] = measure_package(tmp_path / "model", evaluation=evaluation, runs=1)

    assert measured.reason == ""
    assert measured.metrics == {"mae": 0.0}


@pytest.mark.parametrize(
    ("dtype", "values", "refused"),
    [
        (tf.int8, [5, 300, -300], "'x' holds 300, outside int8's range [-128, 127]"),
        (tf.uint8, [5, -1], "'x' holds -1, outside uint8's range [0, 255]"),
        (tf.qint8, [-200, 0], "'x' holds -200, outside qint8's range [-128, 127]"),
        (tf.int16, [40000], "'x' holds 40000, outside int16's range [-32768, 32767]"),
        (tf.float16, [1e5], "'x' holds 100000.0, outside float16's range [-65504.0, 65504.0]"),
    ],
    ids=["int8", "uint8", "qint8", "int16", "float16"],
)
def test_an_evaluation_value_its_input_dtype_cannot_hold_is_refused(
    dtype: tf.DType, values: list[float], refused: str, tmp_path: Path
) -> None:
    """Cast, 300 would feed an int8 input as 44 (and 1e5 a float16 one as inf): measured
    numbers of other data than the file's."""
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": tf.identity(x)}, [tf.TensorSpec([None], dtype)])
    tf.saved_model.save(module, str(tmp_path / "model"), signatures=module.f)
    np.savez(tmp_path / "eval.npz", x=np.array(values), labels=np.zeros(len(values)))
    evaluation = Evaluation(
        tmp_path / "eval.npz", ("mae",), "serving_default", "y", tmp_path / "smpack.yaml"
    )

    with pytest.raises(ManifestError) as caught:
        measure_package(tmp_path / "model", evaluation=evaluation, runs=1)

    assert str(caught.value) == (
        f"{tmp_path / 'smpack.yaml'}: evaluate.data: eval.npz: {refused} that signature "
        "'serving_default' takes"
    )
