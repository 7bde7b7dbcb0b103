"""Text models with lookup tables, vocabulary assets and custom ops, through every variant.

Each source is a real model with random weights: a Keras classifier on raw strings with
TextVectorization, a Keras IntegerLookup model, a Keras StringLookup model exported over a
vocabulary file, a tf.Module
whose tf.lookup table reads a tf.saved_model.Asset, and a tensorflow_text tokenizer model
(its op registered through `source.imports`). Each is built with serve, train, serve,gpu
(float16 + XLA) and serve,tpu (bfloat16) and verified; its outputs must be the source's, its
tables must be filled by the package alone (moved, source deleted, through the TF1 loader,
tf.saved_model.load and the C API), and string ops must stay outside the TPU computation.
The sources are made by variants/corpus.py, which bench/real.py measures too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import json_result, run_c
from corpus import (
    VOCABULARY,
    keras_integer_lookup,
    keras_lookup_over_vocabulary_file,
    keras_text_classifier,
    module_with_table_over_asset,
    tensorflow_text_tokenizer,
)
from tf_helpers import run_v1, source_variants
from typer.testing import CliRunner

import smpack
from smpack.checks.feeds import spec_inputs
from smpack.checks.verify import verify_package
from smpack.checks.xla_check import run_tpu_graph_on_cpu
from smpack.cli.commands import app
from smpack.package.info import PackageInfo, read_package
from smpack.package.protos import read_saved_model
from smpack.package.vocabulary import PLAIN_TEXT, parsed_string_inputs, vocabulary_words

ROOT = Path(__file__).resolve().parent.parent
BATCH = 4
VARIANTS = source_variants({"name": "adam", "learning_rate": 0.05}, tpu_batch=BATCH)
runner = CliRunner()


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], dict[str, Any]]
    input_key: str
    inputs: list[Any]  # BATCH examples, some out of the vocabulary
    labels: np.ndarray
    asset: str | None = None  # the vocabulary file the package must carry
    custom_ops: tuple[str, ...] = ()
    words: frozenset[str] = frozenset()  # the words its string-keyed tables hold


CASES = {
    "text_vectorization": Case(
        keras_text_classifier,
        "text",
        ["the cat sat", "a dog ate my homework", "unknown words only", ""],
        np.array([0, 1, 2, 1], np.int64),
        words=frozenset("the cat sat on mat a dog ate my homework".split()),
    ),
    "integer_lookup": Case(
        keras_integer_lookup,
        "ids",
        [[12, 36, 7], [1138, 42, 42], [0, 0, 12], [36, 1138, 5]],
        np.array([[1.0], [-1.0], [0.5], [2.0]], np.float32),
    ),
    "string_lookup_file": Case(
        keras_lookup_over_vocabulary_file,
        "colors",
        [["red", "blue"], ["green", "purple"], ["blue", "blue"], ["", "red"]],
        np.array([[1.0], [-1.0], [0.5], [2.0]], np.float32),
        asset="colors.txt",
        words=frozenset(VOCABULARY),
    ),
    "table_over_asset": Case(
        module_with_table_over_asset,
        "words",
        ["red", "green", "blue", "yellow"],
        np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], np.float32),
        asset="words.txt",
        words=frozenset(VOCABULARY),
    ),
    "tensorflow_text": Case(
        tensorflow_text_tokenizer,
        "text",
        ["the cats sat", "dog on mat", "zebra", "the the the the the the the"],
        np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], np.float32),
        custom_ops=("FastWordpieceTokenizeWithOffsets",),
        # No table: the tokenizer's vocabulary is compiled into its op's model buffer.
    ),
}


@dataclass
class Built:
    case: Case
    source: Path  # the source folder or .keras file, as the manifest names it
    package: PackageInfo
    expected: dict[str, np.ndarray]  # the source's own outputs for case.inputs


def batch(case: Case) -> np.ndarray:
    """The case's inputs as the signature takes them: strings, or int64 ids."""
    values = np.array(case.inputs)
    return values.astype(object) if values.dtype.kind == "U" else values.astype(np.int64)


def source_outputs(source: Path, case: Case) -> dict[str, np.ndarray]:
    import tensorflow as tf

    if source.suffix == ".keras":
        import keras

        model = keras.saving.load_model(source)
        return {"output_0": np.asarray(model(tf.constant(batch(case))))}
    serving = tf.saved_model.load(str(source)).signatures["serving_default"]
    return {k: v.numpy() for k, v in serving(**{case.input_key: tf.constant(batch(case))}).items()}


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    case = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    source = case.make(folder)
    manifest = {"schema": 1, "name": request.param, "version": 1, "source": source}
    manifest["variants"] = VARIANTS
    (folder / "smpack.yaml").write_text(yaml.safe_dump(manifest))
    # Not measured: no test here reads the timings (test_packages.py measures a text model).
    package = smpack.build(folder / "smpack.yaml", folder / "out", measure=False)
    path = folder / (source.get("savedmodel") or source["keras"])
    return Built(case, path, package, source_outputs(path, case))


def is_text(case: Case) -> bool:
    return batch(case).dtype == object


def feeds(built: Built) -> dict[str, np.ndarray]:
    return {built.case.input_key: batch(built.case)}


def op_libraries(case: Case) -> list[Path]:
    """The kernel libraries a C program must load for the case's custom ops."""
    if not case.custom_ops:
        return []
    import tensorflow_text

    ops = Path(tensorflow_text.__file__).parent / "python" / "ops"
    return [ops / "_fast_wordpiece_tokenizer.so"]


@pytest.mark.slow
def test_every_variant_verifies(built: Built) -> None:
    report = verify_package(built.package.path)
    failed = [f"{label}: {c.name}: {c.detail}" for label, c in report.rows() if not c.passed]
    assert not failed
    assert [g.tag_set for g in report.graphs] == ["train", "serve", "serve,gpu", "serve,tpu"]
    # Without examples, the made-up strings are words of the vocabulary (plain text for the
    # tokenizer), and they pass outright: no "failed on inputs verify made up" warning.
    assert not [c.name for _, c in report.rows() if c.warning]
    runs = [c.name for _, c in report.rows() if " runs on synthetic inputs" in c.name]
    assert len(runs) == 4
    assert all(("(vocabulary words)" in name) == bool(built.case.words) for name in runs)
    plain = is_text(built.case) and not built.case.words
    assert all(("(plain text)" in name) == plain for name in runs)


@pytest.mark.slow
def test_synthetic_strings_are_words_the_tables_know_else_plain_text(built: Built) -> None:
    meta_graphs = read_saved_model(built.package.path).meta_graphs
    for meta_graph in meta_graphs:
        words = {w.decode() for w in vocabulary_words(meta_graph, built.package.path)}
        assert words == built.case.words or (words and words < built.case.words)
    if not is_text(built.case):
        return
    (serve,) = [m for m in meta_graphs if list(m.meta_info_def.tags) == ["serve"]]
    signature = serve.signature_def["serving_default"]
    assert parsed_string_inputs(serve)["serving_default"] == frozenset()
    synthetic = spec_inputs(signature, vocabulary_words(serve, built.package.path))
    (strings,) = synthetic.values()
    # A tokenizer whose vocabulary is compiled into its op gets lines of plain text.
    expected = {w.encode() for w in built.case.words} or set(PLAIN_TEXT)
    assert set(strings.flat) <= expected and all(strings.flat)
    # They reach real lookups and real tokens: the answer is not the one every unknown
    # (or empty) string gets.
    unknown = {key: np.full_like(value, b"") for key, value in synthetic.items()}
    (answer,) = run_v1(built.package.path, ["serve"], synthetic).values()
    (fallback,) = run_v1(built.package.path, ["serve"], unknown).values()
    assert not np.allclose(answer, fallback)


def test_a_string_the_graph_parses_is_made_up_empty_and_text_as_text() -> None:
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    with tf.Graph().as_default() as graph:
        examples = tf.compat.v1.placeholder(tf.string, [None], name="examples")
        text = tf.compat.v1.placeholder(tf.string, [None], name="text")
        parsed = tf.io.parse_example(
            tf.identity(examples), {"x": tf.io.FixedLenFeature([1], tf.float32, [0.0])}
        )
        lengths = tf.strings.length(tf.strings.lower(text))
        signature = tf.compat.v1.saved_model.predict_signature_def(
            {"examples": examples, "text": text}, {"x": parsed["x"], "lengths": lengths}
        )
    meta_graph = meta_graph_pb2.MetaGraphDef(graph_def=graph.as_graph_def())
    meta_graph.signature_def["serving_default"].CopyFrom(signature)

    parsed_inputs = parsed_string_inputs(meta_graph)
    assert parsed_inputs == {"serving_default": frozenset({"examples"})}
    for second in (False, True):
        inputs = spec_inputs(signature, second=second, parsed=parsed_inputs["serving_default"])
        assert set(inputs["examples"].flat) == {b""}  # an empty tf.Example: valid
        assert set(inputs["text"].flat) <= set(PLAIN_TEXT) and all(inputs["text"].flat)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(
                [parsed["x"], lengths], {examples: inputs["examples"], text: inputs["text"]}
            )


def test_a_string_reaching_a_parser_only_through_a_control_edge_is_text() -> None:
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2

    with tf.Graph().as_default() as graph:
        examples = tf.compat.v1.placeholder(tf.string, [None], name="examples")
        text = tf.compat.v1.placeholder(tf.string, [None], name="text")
        lengths = tf.strings.length(text)
        # Decoded after `text` is read (control edges: "^text", "^Identity"), but never
        # reading its value.
        with tf.control_dependencies([text, tf.identity(text)]):
            decoded = tf.io.decode_base64(examples)
        signature = tf.compat.v1.saved_model.predict_signature_def(
            {"examples": examples, "text": text}, {"decoded": decoded, "lengths": lengths}
        )
    meta_graph = meta_graph_pb2.MetaGraphDef(graph_def=graph.as_graph_def())
    meta_graph.signature_def["serving_default"].CopyFrom(signature)
    [decoder] = [n for n in meta_graph.graph_def.node if n.op == "DecodeBase64"]
    assert sorted(decoder.input) == ["^Identity", "^text", "examples"]

    assert parsed_string_inputs(meta_graph) == {"serving_default": frozenset({"examples"})}


@pytest.mark.slow
def test_float32_variants_answer_exactly_as_the_source(built: Built) -> None:
    for tags in (["serve"], ["train"]):
        answer = run_v1(built.package.path, tags, feeds(built))
        assert answer.keys() == built.expected.keys()
        for key, value in built.expected.items():
            np.testing.assert_allclose(answer[key], value, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_half_precision_variants_agree_with_the_source(built: Built) -> None:
    (gpu,) = run_v1(built.package.path, ["serve", "gpu"], feeds(built)).values()
    tpu = run_tpu_graph_on_cpu(
        built.package.path, ["serve", "tpu"], "serving_default", feeds(built)
    )
    (expected,) = built.expected.values()
    np.testing.assert_allclose(gpu, expected, rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(next(iter(tpu.values())), expected, rtol=5e-2, atol=5e-2)


@pytest.mark.slow
def test_tpu_computation_holds_no_string_or_table_op(built: Built) -> None:
    # xla_check compiles exactly the ops inside tpu.rewrite; here, what they are.
    (meta_graph,) = [
        m
        for m in read_saved_model(built.package.path).meta_graphs
        if set(m.meta_info_def.tags) == {"serve", "tpu"}
    ]
    inside = [n for n in meta_graph.graph_def.node if "_tpu_replicate" in n.attr]
    outside = [n for n in meta_graph.graph_def.node if "_tpu_replicate" not in n.attr]
    host_ops = {"LookupTableFindV2", "HashTableV2", "StringSplitV2", *built.case.custom_ops}
    assert inside and not {n.op for n in inside} & host_ops
    assert {n.op for n in outside} & host_ops
    # A string never crosses into the computation.
    assert all(n.attr["T"].type != 7 for n in outside if n.op == "TPUReplicatedInput")
    # Nor is a host op pinned to the GPU or marked for XLA in the serve,gpu graph.
    (gpu,) = [
        m
        for m in read_saved_model(built.package.path).meta_graphs
        if set(m.meta_info_def.tags) == {"serve", "gpu"}
    ]
    on_host = [n for n in gpu.graph_def.node if n.op in host_ops]
    assert on_host and not any(n.device or "_XlaCompile" in n.attr for n in on_host)
    assert any(n.attr["_XlaCompile"].b for n in gpu.graph_def.node if "_XlaCompile" in n.attr)


@pytest.mark.slow
def test_train_steps_lower_the_loss(built: Built) -> None:
    import tensorflow as tf

    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(built.package.path))
        signature = graph.signature_def["train"]
        step = {
            signature.inputs[built.case.input_key].name: feeds(built)[built.case.input_key],
            signature.inputs["labels"].name: built.case.labels,
        }
        losses = [session.run(signature.outputs["loss"].name, step) for _ in range(20)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_moved_package_fills_its_tables_without_the_source(
    built: Built, tmp_path: Path, c_loader: Path
) -> None:
    import tensorflow as tf

    moved = tmp_path / "elsewhere" / "1"
    shutil.copytree(built.package.path, moved)
    hidden = tmp_path / "source-gone"
    shutil.move(built.source, hidden)  # put back below: other tests read the source
    try:
        answer = run_v1(moved, ["serve"], feeds(built))
        for key, value in built.expected.items():
            np.testing.assert_allclose(answer[key], value, rtol=1e-6, atol=1e-7)
        loaded = tf.saved_model.load(str(moved), tags=["serve", "gpu"])
        served = loaded.signatures["serving_default"](
            **{built.case.input_key: tf.constant(batch(built.case))}
        )
        (value,) = built.expected.values()
        np.testing.assert_allclose(next(iter(served.values())), value, rtol=1e-2, atol=1e-2)
        for tag_set in ("serve", "train", "serve,gpu"):
            result = run_c(c_loader, moved, tag_set, op_libraries=op_libraries(built.case))
            assert result.returncode == 0, f"{tag_set}: {result.stderr}"
        for op in built.case.custom_ops:  # what a server without the library sees
            result = run_c(c_loader, moved, "serve")
            assert result.returncode == 1
            assert f"Op type not registered '{op}'" in result.stderr
    finally:
        shutil.move(hidden, built.source)


@pytest.mark.slow
def test_vocabulary_files_are_package_assets(built: Built) -> None:
    expected = [built.case.asset] if built.case.asset else []
    for meta_graph in read_saved_model(built.package.path).meta_graphs:
        assert [a.filename for a in meta_graph.asset_file_def] == expected
    assert list(built.package.assets) == expected


@pytest.mark.slow
def test_inspect_names_the_custom_ops_and_their_library(built: Built) -> None:
    info = read_package(built.package.path)
    assert all(g.custom_ops == built.case.custom_ops for g in info.graphs)
    assert info.op_libraries == (("tensorflow_text",) if built.case.custom_ops else ())
    result = runner.invoke(app, ["inspect", str(built.package.path), "--tags", "serve,tpu"])
    assert result.exit_code == 0
    for op in built.case.custom_ops:
        assert f"custom ops (not in TensorFlow): {op}" in result.stdout
    card = (built.package.path / "assets.extra" / "model_card.md").read_text()
    assert ("The build imported `tensorflow_text`" in card) == bool(built.case.custom_ops)


@pytest.fixture(scope="module")
def tokenizer_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    tensorflow_text_tokenizer(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    ("imports", "message"),
    [
        (
            None,
            "source.imports: op 'FastWordpieceTokenizeWithOffsets' is not registered in this "
            "TensorFlow; add the Python module defining it (e.g. tensorflow_text) to "
            "source.imports",
        ),
        (
            ["tensorflow_text", "smpack_no_such_op_library"],
            "source.imports[1]: cannot import 'smpack_no_such_op_library': "
            "ModuleNotFoundError: No module named 'smpack_no_such_op_library'",
        ),
    ],
)
def test_custom_op_mistakes_are_one_line(
    tokenizer_source: Path, tmp_path: Path, imports: list[str] | None, message: str
) -> None:
    # In a fresh process: this one has tensorflow_text's ops registered already.
    folder = tmp_path / "project"
    shutil.copytree(tokenizer_source, folder)
    source: dict[str, Any] = {"savedmodel": "tokenized"}
    if imports is not None:
        source["imports"] = imports
    manifest = {"schema": 1, "name": "tok", "version": 1, "source": source}
    manifest["variants"] = {"cpu": {"tags": ["serve"]}}
    (folder / "smpack.yaml").write_text(yaml.safe_dump(manifest))
    # --no-verify: the source is refused before any graph exists; verify's graph server
    # would only add a TensorFlow import.
    command = ["build", str(folder / "smpack.yaml"), "--out", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "smpack", *command, "--no-verify"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: {folder / 'smpack.yaml'}: {message}"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_verify_fails_where_the_library_of_a_graphs_ops_cannot_be_imported(
    tokenizer_source: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "project"
    shutil.copytree(tokenizer_source, folder)
    source = {"savedmodel": "tokenized", "imports": ["tensorflow_text"]}
    manifest = {"schema": 1, "name": "tok", "version": 1, "source": source}
    manifest["variants"] = {"cpu": {"tags": ["serve"]}}
    (folder / "smpack.yaml").write_text(yaml.safe_dump(manifest))
    package = smpack.build(folder / "smpack.yaml", tmp_path / "out", measure=False).path
    # A fresh process where tensorflow_text cannot be imported (None in sys.modules makes
    # `import` raise ImportError), as on a host without it.
    script = "import sys; sys.modules['tensorflow_text'] = None; import smpack.__main__"
    result = subprocess.run(
        [sys.executable, "-c", script, "verify", str(package), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    checks = json_result(result.stdout, "verify")["checks"]
    (check,) = [c for c in checks if c["name"] == "op libraries import"]
    assert check["passed"] is False
    assert "imports[0]: cannot import 'tensorflow_text'" in check["detail"]
    assert check["detail"].endswith("(graphs use FastWordpieceTokenizeWithOffsets)")


@pytest.mark.slow
def test_core_op_list_is_current() -> None:
    # A fresh process: the list is what TensorFlow alone registers.
    result = subprocess.run(
        [sys.executable, "-m", "smpack.checks.core_op_list", "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_vocabulary_words_skip_a_line_too_long_to_be_a_word(tmp_path: Path) -> None:
    """A vocabulary asset of one endless line is not read whole (a package is user input)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import meta_graph_pb2

    meta_graph = meta_graph_pb2.MetaGraphDef()
    table = meta_graph.graph_def.node.add(name="table", op="HashTableV2")
    table.attr["key_dtype"].type = types_pb2.DT_STRING
    meta_graph.graph_def.node.add(name="filename", op="Const")
    init = meta_graph.graph_def.node.add(name="init", op="InitializeTableFromTextFileV2")
    init.input.extend(["table", "filename"])
    init.attr["key_index"].i = -2  # the whole line
    asset = meta_graph.asset_file_def.add(filename="vocab.txt")
    asset.tensor_info.name = "filename:0"
    (tmp_path / "assets").mkdir()
    with (tmp_path / "assets" / "vocab.txt").open("wb") as stream:
        stream.write(b"first\n")
        stream.truncate(6 + (64 << 20))  # 64 MiB of zero bytes, no newline: sparse
        stream.seek(0, 2)
        stream.write(b"\nhello\nworld\n")
    assert vocabulary_words(meta_graph, tmp_path) == [b"first", b"hello", b"world"]


@pytest.mark.slow
def test_a_sentencepiece_model_held_by_its_op_needs_no_initialiser(tmp_path: Path) -> None:
    """tensorflow_text's SentencepieceTokenizer (keras_hub's Albert, T5, Gemma and Llama
    tokenizers) keeps its model in the attribute of the op making its resource: no init op
    fills it and no checkpoint restores it, which smpack refused as a table it cannot fill."""
    import io

    import sentencepiece
    import tensorflow as tf
    import tensorflow_text

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["the cat sat on the mat", "a dog ate my homework"] * 10),
        model_writer=proto,
        vocab_size=12,
        model_type="word",
    )

    class Tokenized(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokenizer = tensorflow_text.SentencepieceTokenizer(proto.getvalue())
            self.embedding = tf.Variable(tf.random.stateless_normal([12, 3], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            ids = self.tokenizer.tokenize(text).to_tensor(shape=[None, 4])
            return {"pooled": tf.reduce_mean(tf.gather(self.embedding, ids), axis=1)}

    module = Tokenized()
    tf.saved_model.save(module, str(tmp_path / "tokenized"), signatures=module.__call__)
    source = {"savedmodel": "tokenized", "imports": ["tensorflow_text"]}
    variants = {k: VARIANTS[k] for k in ("cpu", "tpu")}
    manifest = {"schema": 1, "name": "sentencepiece", "version": 1, "source": source}
    (tmp_path / "smpack.yaml").write_text(yaml.safe_dump({**manifest, "variants": variants}))
    package = smpack.build(tmp_path / "smpack.yaml", tmp_path / "out", measure=False)
    text = np.array(["the cat sat", "a dog", "zebra", ""], object)
    expected = module(tf.constant(text))["pooled"].numpy()
    moved = tmp_path / "elsewhere"
    shutil.copytree(package.path, moved)
    shutil.rmtree(tmp_path / "tokenized")
    np.testing.assert_array_equal(run_v1(moved, ["serve"], {"text": text})["pooled"], expected)
    tpu = run_tpu_graph_on_cpu(moved, ["serve", "tpu"], "serving_default", {"text": text})
    np.testing.assert_allclose(tpu["pooled"], expected, rtol=1e-2, atol=1e-2)


def _cached_tokens(folder: Path) -> Path:
    """The manifest of a source whose MutableHashTable its checkpoint fills (keras_hub's
    BytePairTokenizer caches its special tokens in one, so that they are never split)."""
    import tensorflow as tf

    class Cached(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cache = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, -1)
            self.cache.insert(tf.constant(["<|endoftext|>", "cat"]), tf.constant([7, 3], tf.int64))
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"ids": tf.cast(self.cache.lookup(text), tf.float32) * self.scale}

    module = Cached()
    tf.saved_model.save(module, str(folder / "cached"), signatures=module.__call__)
    variants = {k: VARIANTS[k] for k in ("cpu", "tpu")}
    manifest = {"schema": 1, "name": "cached", "version": 1, "source": {"savedmodel": "cached"}}
    (folder / "smpack.yaml").write_text(yaml.safe_dump({**manifest, "variants": variants}))
    return folder / "smpack.yaml"


@pytest.mark.slow
def test_a_table_the_checkpoint_restores_is_filled_with_its_contents(tmp_path: Path) -> None:
    """A MutableHashTable filled before saving (keras_hub's BytePairTokenizer caches its
    special tokens in one, so that they are never split) is restored from the checkpoint,
    not by the init op: the package's init op fills it with what the checkpoint holds."""
    package = smpack.build(_cached_tokens(tmp_path), tmp_path / "out", measure=False)
    moved = tmp_path / "elsewhere"
    shutil.copytree(package.path, moved)
    shutil.rmtree(tmp_path / "cached")
    text = np.array(["<|endoftext|>", "cat", "dog", ""], object)
    expected = np.array([14.0, 6.0, -2.0, -2.0], np.float32)
    np.testing.assert_array_equal(run_v1(moved, ["serve"], {"text": text})["ids"], expected)
    tpu = run_tpu_graph_on_cpu(moved, ["serve", "tpu"], "serving_default", {"text": text})
    np.testing.assert_array_equal(tpu["ids"], expected)


def test_a_table_too_large_to_store_in_the_graphs_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its contents would be copied into every graph of saved_model.pb, which cannot pass
    2 GiB: here the limit is lowered below the 17 bytes the test table holds."""
    monkeypatch.setattr("smpack.sources.host_split.MAX_RESTORED_TABLE_BYTES", 16)
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", str(_cached_tokens(tmp_path)), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert "source.savedmodel" in line and "MutableHashTable" in line, line
    assert "more than the 16 smpack stores in every graph" in line, line
    assert not out.exists()
