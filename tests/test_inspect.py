"""`smpack inspect`: what any SavedModel holds, read without TensorFlow."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import pytest
import tensorflow as tf
from conftest import check_golden, invoke, json_result
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2

from smpack.package.checkpoint_index import read_checkpoint_index
from smpack.package.fingerprints import variant_fingerprints
from smpack.package.info import PackageInfo, read_package
from smpack.package.protos import read_saved_model, read_saved_model_sharing_copies
from smpack.package.record import read_record


def inspect_json(monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    result = invoke(monkeypatch, ["inspect", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json_result(result.stdout, "inspect")


@pytest.fixture(scope="module")
def tf2_saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TF2 `tf.saved_model.save` export: object-based checkpoint, functions, fingerprint."""

    class Doubler(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable([[2.0], [3.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(x, self.w)}

    path = tmp_path_factory.mktemp("tf2") / "doubler"
    module = Doubler()
    tf.saved_model.save(module, str(path), signatures=module.__call__)
    return path


@pytest.fixture(scope="module")
def keras_exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keras") / "dense"
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.export(str(path), verbose=False)
    return path


def _blanked(text: str) -> str:
    """Blank the lines other build features own: assets.extra (cards, provenance) and the
    fingerprints, whose hashes move with every byte of saved_model.pb. The JSON, warmup and
    TF2/Keras tests below check those facts."""
    text = re.sub(
        r"(?ms)^assets\.extra: .*?(?=^fingerprint: )", "assets.extra: ASSETS_EXTRA\n", text
    )
    text = re.sub(r"(?m)^fingerprint: .*$", "fingerprint: FINGERPRINT", text)
    return re.sub(
        r"(?ms)^variant fingerprints: .*?(?=^load commands:)",
        "variant fingerprints: VARIANT_FINGERPRINTS\n",
        text,
    )


def test_golden_linear(linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(linear_package.path.parent.parent)
    result = invoke(monkeypatch, ["inspect", "linear/1"])
    assert result.exit_code == 0, result.output
    check_golden("inspect_linear.txt", _blanked(result.stdout))


def test_golden_text_classifier_one_tag_set(
    text_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(text_package.path.parent.parent)
    result = invoke(monkeypatch, ["inspect", "text_classifier/1", "--tags", "gpu,serve"])
    assert result.exit_code == 0, result.output
    check_golden("inspect_text_classifier_gpu.txt", _blanked(result.stdout))


def test_json_holds_the_facts(linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    document = inspect_json(monkeypatch, str(linear_package.path))
    graphs = {g["tag_set"]: g for g in document["graphs"]}
    assert list(graphs) == ["train", "serve", "serve,gpu", "serve,tpu"]
    gpu = graphs["serve,gpu"]
    assert "/device:GPU:0" in gpu["devices"]
    assert (gpu["precision"], gpu["xla"], gpu["tpu"]) == ("float16", True, False)
    assert "float16" in gpu["compute_dtypes"]
    assert graphs["serve,tpu"]["tpu"] and graphs["train"]["has_train_op"]
    [signature] = gpu["signatures"]
    assert signature["inputs"] == [
        {"key": "input", "name": "input:0", "dtype": "float32", "shape": [None]}
    ]
    assert gpu["load"]["tf_serving"].endswith("--saved_model_tags=serve,gpu")
    assert graphs["train"]["load"]["tf_serving"] is None  # TF Serving never runs a train op
    assert gpu["load"]["python"] == (
        f'tf.saved_model.load("{linear_package.path}", tags=["serve", "gpu"])'
    )
    assert document["variables"] == [
        {"name": "global_step", "shape": [], "dtype": "int64", "size": 8},
        {"name": "var_1", "shape": [], "dtype": "float32", "size": 4},
        {"name": "var_2", "shape": [], "dtype": "float32", "size": 4},
    ]
    assert document["variables_total"]["tensor_bytes"] == 16
    has_fingerprint = (linear_package.path / "fingerprint.pb").is_file()
    assert (document["fingerprint"] is not None) == has_fingerprint
    assert document["warmup_requests"] is None


def test_does_not_import_tensorflow(linear_package: PackageInfo) -> None:
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from smpack.cli.commands import app\n"
        f"for extra in ([], ['--json']):\n"
        f"    result = CliRunner().invoke(app, ['inspect', {str(linear_package.path)!r}, *extra])\n"
        "    assert result.exit_code == 0, result.output\n"
        "    assert 'serve,tpu' in result.stdout\n"
        "assert 'tensorflow' not in sys.modules, 'inspect imported TensorFlow'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_tf2_saved_model(tf2_saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    document = inspect_json(monkeypatch, str(tf2_saved))
    [graph] = document["graphs"]
    assert graph["tags"] == ["serve"]
    [signature] = graph["signatures"]
    assert signature["key"] == "serving_default"
    assert [(t["key"], t["dtype"], t["shape"]) for t in signature["inputs"]] == [
        ("x", "float32", [None, 2])
    ]
    assert [(t["key"], t["shape"]) for t in signature["outputs"]] == [("y", [None, 1])]
    assert "float32" in graph["compute_dtypes"]  # from the function library
    weights = {v["name"]: v for v in document["variables"]}["w/.ATTRIBUTES/VARIABLE_VALUE"]
    assert (weights["shape"], weights["size"]) == ([2, 1], 8)
    assert document["fingerprint"]["saved_model_checksum"] > 0


def test_keras_export(keras_exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    document = inspect_json(monkeypatch, str(keras_exported))
    [graph] = document["graphs"]
    signatures = {s["key"]: s for s in graph["signatures"]}
    assert "serving_default" in signatures
    [output] = signatures["serving_default"]["outputs"]
    assert (output["dtype"], output["shape"]) == ("float32", [None, 2])
    # Keras tracks each weight under two object-graph paths; both are listed.
    shapes = {tuple(v["shape"]) for v in document["variables"] if v["dtype"] == "float32"}
    assert shapes == {(2,), (3, 2)}
    assert document["fingerprint"] is not None
    result = invoke(monkeypatch, ["inspect", str(keras_exported)])
    assert "fingerprint: saved_model_checksum" in result.stdout


def copied_with_its_saved_model(linear_package: PackageInfo, tmp_path: Path) -> tuple[Path, Any]:
    """A copy of the linear package to edit, and its SavedModel message."""
    package = tmp_path / "1"
    shutil.copytree(linear_package.path, package)
    message = saved_model_pb2.SavedModel.FromString((package / "saved_model.pb").read_bytes())
    return package, message


def test_tag_only_copies_are_read_once_and_described_like_their_graph(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    # Variants sharing one graph are MetaGraphs differing in their tags alone: parsing,
    # hashing and scanning each copy again cost as much as the graph did.
    package, message = copied_with_its_saved_model(linear_package, tmp_path)
    serve = next(i for i, g in enumerate(message.meta_graphs) if g.meta_info_def.tags == ["serve"])
    copy = message.meta_graphs.add()
    copy.CopyFrom(message.meta_graphs[serve])
    copy.meta_info_def.tags.append("extra")
    # Another signature: the same graph, but not a tag-only copy.
    signed = message.meta_graphs.add()
    signed.CopyFrom(copy)
    signed.meta_info_def.tags[-1] = "signed"
    signed.signature_def["another"].CopyFrom(signed.signature_def["serving_default"])
    (package / "saved_model.pb").write_bytes(message.SerializeToString(deterministic=True))

    shared, originals = read_saved_model_sharing_copies(package)
    info = read_package(package)

    copy_index, signed_index = len(message.meta_graphs) - 2, len(message.meta_graphs) - 1
    assert originals == (*range(copy_index), serve, signed_index)
    assert not shared.meta_graphs[copy_index].HasField("graph_def")
    assert list(shared.meta_graphs[copy_index].meta_info_def.tags) == ["serve", "extra"]
    assert shared.meta_graphs[signed_index].graph_def == shared.meta_graphs[serve].graph_def
    # Described as when every MetaGraph was parsed whole.
    assert info.graphs[copy_index] == dataclasses.replace(
        info.graphs[serve], tags=("serve", "extra")
    )
    index = read_checkpoint_index(package / "variables" / "variables")
    entries = {entry.name: entry for entry in index.entries}
    whole = variant_fingerprints(read_saved_model(package).meta_graphs, entries)
    assert [g.fingerprint for g in info.graphs] == whole
    assert info.graphs[signed_index].signatures != info.graphs[serve].signatures


def test_custom_ops_are_read_from_the_graph_and_its_functions_bodies(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    # The op types are gathered in the scan that reads the nodes' attributes: a function's
    # body counts, a call of a function (its name as the op type) does not.
    package, message = copied_with_its_saved_model(linear_package, tmp_path)
    serve = next(g for g in message.meta_graphs if g.meta_info_def.tags == ["serve"])
    serve.graph_def.node.add(name="custom", op="SmpackTopLevelOp")
    serve.graph_def.node.add(name="call", op="smpack_function")
    function = serve.graph_def.library.function.add()
    function.signature.name = "smpack_function"
    function.node_def.add(name="inside", op="SmpackFunctionOp")
    (package / "saved_model.pb").write_bytes(message.SerializeToString(deterministic=True))

    info = read_package(package)

    assert info.graph("serve").custom_ops == ("SmpackFunctionOp", "SmpackTopLevelOp")
    assert all(not g.custom_ops for g in info.graphs if g.tags != ("serve",))


def test_pbtxt_reads_like_pb(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "1"
    shutil.copytree(linear_package.path, copy)
    message = saved_model_pb2.SavedModel.FromString((copy / "saved_model.pb").read_bytes())
    (copy / "saved_model.pbtxt").write_text(text_format.MessageToString(message))
    (copy / "saved_model.pb").unlink()
    as_text = inspect_json(monkeypatch, str(copy))
    as_binary = inspect_json(monkeypatch, str(linear_package.path))
    assert as_text["saved_model_file"] == "saved_model.pbtxt"
    strip = ("path", "saved_model_file", "graphs")
    assert {k: v for k, v in as_text.items() if k not in strip} == {
        k: v for k, v in as_binary.items() if k not in strip
    }
    for text_graph, binary_graph in zip(as_text["graphs"], as_binary["graphs"], strict=True):
        # The text form keeps only the fields smpack declares, so its graphs hash apart.
        same = {"load": None, "fingerprint": None}
        assert {**text_graph, **same} == {**binary_graph, **same}
        assert text_graph["fingerprint"]["signatures"] == binary_graph["fingerprint"]["signatures"]


def test_counts_warmup_requests(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "1"
    shutil.copytree(linear_package.path, copy)
    warmup = copy / "assets.extra" / "tf_serving_warmup_requests"
    with tf.io.TFRecordWriter(str(warmup)) as writer:
        for record in (b"", b"one", b"x" * 300):
            writer.write(record)
    assert inspect_json(monkeypatch, str(copy))["warmup_requests"] == 3
    words = invoke(monkeypatch, ["inspect", str(copy)]).stdout.split()
    assert "tf_serving_warmup_requests (3 warmup requests)" in " ".join(words)

    warmup.write_bytes(warmup.read_bytes()[:-5])
    result = invoke(monkeypatch, ["inspect", str(copy)])
    assert result.exit_code == 2
    assert "tf_serving_warmup_requests" in result.stderr
    assert "ends inside record 3" in result.stderr


def test_unknown_tag_set_names_the_ones_there(
    linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke(monkeypatch, ["inspect", str(linear_package.path), "--tags", "serve,cpu"])
    assert result.exit_code == 2
    assert "no MetaGraph has the tag set cpu,serve" in result.stderr
    assert "train; serve; serve,gpu; serve,tpu" in result.stderr


def test_not_a_saved_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(monkeypatch, ["inspect", str(tmp_path)])
    assert result.exit_code == 2
    assert "no saved_model.pb or saved_model.pbtxt" in result.stderr


def test_json_fingerprints_each_variant_as_smpack_json_records(
    linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke(monkeypatch, ["inspect", str(linear_package.path), "--json"])
    graphs = {g["tag_set"]: g for g in json_result(result.stdout, "inspect")["graphs"]}
    record = read_record(linear_package.path)
    assert record is not None
    for tag_set, graph in graphs.items():
        assert graph["fingerprint"] == record["variants"][tag_set]["fingerprint"]
        assert set(graph["fingerprint"]) == {"digest", "graph", "signatures", "variables"}
    digests = [g["fingerprint"]["digest"] for g in graphs.values()]
    assert len(set(digests)) == 4  # one per MetaGraph, unlike TF's fingerprint.pb
    # serve and serve,gpu read the same weights and take the same signature.
    serve, gpu = graphs["serve"]["fingerprint"], graphs["serve,gpu"]["fingerprint"]
    assert (serve["variables"], serve["signatures"]) == (gpu["variables"], gpu["signatures"])
    assert serve["graph"] != gpu["graph"]
