"""TF Serving warmup requests: written as TF Serving reads them, checked before writing.

The file is read back with the PredictionLog message of tensorflow-serving-api itself, not
with smpack's encoder, and each request is replayed through TF's own loader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tf_helpers import run_v1
from typer.testing import CliRunner

import smpack.package.requests
from smpack.builder.warmup import read_requests
from smpack.checks.verify import verify_package
from smpack.cli.commands import app
from smpack.errors import PackageError
from smpack.package.layout import WARMUP_FILE
from smpack.package.record import measured_records
from smpack.package.requests import read_logged_requests

runner = CliRunner()
EIGHT = [float(x) for x in range(8)]  # the linear example's TPU variant takes batches of 8

CLASSIFIER = """\
import tensorflow as tf
from smpack import ModelContext, ModelSpec

def model_fn(ctx: ModelContext) -> ModelSpec:
    serialized = tf.compat.v1.placeholder(tf.string, [None], name="examples")
    x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})["x"]

    def score(x):
        w = tf.compat.v1.get_variable("w", [2, 3], ctx.dtype)
        return tf.nn.softmax(tf.matmul(x, w))

    scores = tf.identity(ctx.compute(score, x), name="scores")
    return ModelSpec(inputs={"examples": serialized}, outputs={"scores": scores})
"""


def records(package: Path) -> list[Any]:
    path = package / "assets.extra" / "tf_serving_warmup_requests"
    return [
        prediction_log_pb2.PredictionLog.FromString(raw.numpy())
        for raw in tf.data.TFRecordDataset(str(path))
    ]


def build(manifest: Path, out: Path, **changes: Any) -> Any:
    data = yaml.safe_load(manifest.read_text())
    data.update(changes)
    manifest.write_text(yaml.safe_dump(data))
    return runner.invoke(app, ["build", str(manifest), "--out", str(out)])


def test_predict_requests_are_prediction_logs_every_serve_variant_answers(
    variants_copy: Path, tmp_path: Path
) -> None:
    np.save(variants_copy / "batch.npy", np.arange(8, dtype=np.float32) / 2)
    warmup = [{"inputs": {"input": EIGHT}}, {"files": {"input": "batch.npy"}}]
    result = build(variants_copy / "linear.yaml", tmp_path, warmup=warmup)
    assert result.exit_code == 0, result.output
    package = tmp_path / "linear" / "1"

    logs = records(package)
    assert len(logs) == 2
    expected = [np.array(EIGHT, np.float32), np.arange(8, dtype=np.float32) / 2]
    for log, values in zip(logs, expected, strict=True):
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert (request.model_spec.name, request.model_spec.signature_name) == (
            "linear",
            "serving_default",
        )
        feed = {key: tf.make_ndarray(proto) for key, proto in request.inputs.items()}
        assert feed["input"].dtype == np.float32  # integers in YAML, float32 on the wire
        np.testing.assert_array_equal(feed["input"], values)
        for tags in (["serve"], ["serve", "gpu"]):
            answer = run_v1(package, tags, feed)["output"]
            np.testing.assert_allclose(answer, 0.5 * values + 2, rtol=1e-3)


def test_classify_requests_carry_examples(tmp_path: Path) -> None:
    manifest = classifier_manifest(tmp_path, [{"x": [1.0, 2.0]}, {"x": [0, 1]}])
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    [log] = records(tmp_path / "out" / "classifier" / "3")
    request = log.classify_log.request
    assert request.model_spec.signature_name == "classify"
    features = [
        e.features.feature["x"].float_list.value for e in request.input.example_list.examples
    ]
    assert [list(f) for f in features] == [[1.0, 2.0], [0.0, 1.0]]


def classifier_manifest(folder: Path, examples: list[Any]) -> Path:
    (folder / "model.py").write_text(CLASSIFIER)
    manifest = folder / "classifier.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "schema": 1,
                "name": "classifier",
                "version": 3,
                "source": {"python": "model.py:model_fn"},
                "variants": {"cpu": {"tags": ["serve"]}},
                "signatures": {
                    "classify": {
                        "method": "classify",
                        "inputs": {"inputs": "examples"},
                        "outputs": {"scores": "scores"},
                    }
                },
                "warmup": [{"signature": "classify", "examples": examples}],
            }
        )
    )
    return manifest


def test_verify_replays_the_warmup_requests_tf_serving_would_replay(tmp_path: Path) -> None:
    # Integers only: an int64 feature, which the model parses as float. TF Serving would fail
    # to load this package; the build's verification says so, naming the request.
    manifest = classifier_manifest(tmp_path, [{"x": [0, 1]}])
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    # Not published: kept beside where it would have gone.
    assert not (tmp_path / "out" / "classifier" / "3").exists()
    [graph] = verify_package(tmp_path / "out" / "classifier" / "3.failed-verify").graphs
    [failed] = [check for check in graph.checks if not check.passed]
    assert failed.name == "signature classify runs on its 1 warmup request"
    assert "Data type: int64 but expected type: float" in failed.detail
    # Measuring it failed the same way: a reason in smpack_measured.json, and no number.
    [measured] = measured_records(tmp_path / "out" / "classifier" / "3.failed-verify").values()
    assert measured is not None
    assert measured["reason"].startswith("could not run classify: ")
    assert measured["latency_p50_ms"] is None


@pytest.mark.parametrize(
    ("warmup", "message"),
    [
        (
            [{"inputs": {"input": [1.0, 2.0]}}],
            "warmup.0: input 'input' has shape [2], but variant 'tpu' takes (8,)",
        ),
        ([{"inputs": {"input": ["one"] * 8}}], "warmup.0: input 'input' is not float32"),
        ([{"inputs": {"text": EIGHT}}], "warmup.0: inputs must be ['input'] (missing ['input']"),
        ([{"signature": "nope", "inputs": {"input": EIGHT}}], "has no signature 'nope'"),
        ([{"files": {"input": "../outside.npy"}}], "warmup.0.files.input: '../outside.npy' points"),
        ([{"files": {"input": "batch.pickle"}}], "must be .npy or .json"),
        ([{"inputs": {"input": EIGHT}}] * 1001, "warmup: List should have at most 1000 items"),
        ([{"examples": [{"x": 1}]}], "examples are for classify and regress signatures"),
    ],
    ids=[
        "shape-misfits-tpu-batch",
        "wrong-dtype",
        "unknown-input",
        "unknown-signature",
        "file-outside-folder",
        "not-npy-or-json",
        "over-1000",
        "examples-on-predict",
    ],
)
def test_requests_that_would_break_serving_are_refused(
    variants_copy: Path, tmp_path: Path, warmup: list[Any], message: str
) -> None:
    out = tmp_path / "out"
    result = build(variants_copy / "linear.yaml", out, warmup=warmup)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert message in line
    assert "linear.yaml" in line
    assert not out.exists()


def predict_log(tensor: Any) -> bytes:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.name = "m"
    log.predict_log.request.inputs["x"].CopyFrom(tensor)
    return bytes(log.SerializeToString())


GOOD_RECORD = predict_log(tf.make_tensor_proto(np.zeros([2], np.float32)))


def write_warmup(package: Path, *records: bytes) -> Path:
    (package / "assets.extra").mkdir()
    path = package / "assets.extra" / WARMUP_FILE
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return path


def tensor(**fields: Any) -> Any:
    return tensor_pb2.TensorProto(**fields)


def dims(*sizes: int) -> Any:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in sizes]
    )


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        (b"\x32\x00", "the log's request (field 1) is missing"),
        (b"\x0a\x03abc", "protobuf field runs past its message"),
        (
            predict_log(tensor(dtype=1, tensor_shape=dims(*[1 << 62] * 6))),
            "input 'x': its shape claims over 67108864 elements",
        ),
        (
            predict_log(tensor(dtype=1, tensor_shape=dims(3), tensor_content=b"\0" * 4)),
            "input 'x': cannot reshape array of size 1 into shape (3,)",
        ),
        (predict_log(tensor(dtype=20)), "input 'x': a resource tensor has no values to send"),
        (predict_log(tensor(dtype=999)), "input 'x': Cannot convert the argument `type_value`"),
        (predict_log(tensor(dtype=101)), "input 'x': Unsupported tensor type: 101."),
    ],
    ids=[
        "no-request",
        "cut-short",
        "shape-overflows",
        "content-short",
        "resource-dtype",
        "unknown-dtype",
        "reference-dtype",
    ],
)
def test_a_record_that_is_not_a_request_is_named_in_one_line(
    tmp_path: Path, second: bytes, problem: str
) -> None:
    path = write_warmup(tmp_path, GOOD_RECORD, second)
    with pytest.raises(PackageError) as refused:
        read_requests(tmp_path)
    assert str(refused.value).startswith(
        f"{path}: not a warmup file TF Serving can replay: record 2: {problem}"
    )
    assert "\n" not in str(refused.value)


def test_a_record_whose_checksum_fails_is_named(tmp_path: Path) -> None:
    path = write_warmup(tmp_path, GOOD_RECORD, GOOD_RECORD)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # the second record's last data byte
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError) as refused:
        read_requests(tmp_path)
    assert str(refused.value) == (
        f"{path}: not a warmup file TF Serving can replay: record 2: corrupted record at 62"
    )


@pytest.mark.parametrize("bug", [KeyError, IndexError, TypeError, ValueError])
@pytest.mark.parametrize(
    "read",
    [read_requests, lambda package: read_logged_requests(package / "assets.extra" / WARMUP_FILE)],
    ids=["read_requests", "read_logged_requests"],
)
def test_a_bug_decoding_a_good_warmup_file_is_not_blamed_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: Any, bug: type[Exception]
) -> None:
    write_warmup(tmp_path, GOOD_RECORD)
    assert [*read(tmp_path)]  # the file is good

    mistake = "smpack's own mistake"

    def broken(message: bytes) -> None:
        raise bug(mistake)

    monkeypatch.setattr(smpack.package.requests, "_fields", broken)
    with pytest.raises(bug, match=mistake):
        read(tmp_path)
