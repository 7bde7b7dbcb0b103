"""What smpack writes, checked by loading it with TensorFlow's own loaders (no mocks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tf_helpers import meta_graph, run_v1, run_v2

import smpack
from smpack.package.info import PackageInfo, read_package

SERVE_TAG_SETS = [("serve",), ("serve", "gpu"), ("train",)]
ALL_TAG_SETS = {"serve", "train", "serve,gpu", "serve,tpu"}
SENTENCES = np.array(
    ["great fun", "awful boring film", "zzz qqq", "good good good", "", "hate it", "best", "sad"]
)


def test_linear_package_has_the_serving_layout(linear_package: PackageInfo) -> None:
    root = linear_package.path
    assert root.parts[-2:] == ("linear", "1")
    assert {p.name for p in root.iterdir()} == {
        "saved_model.pb",
        "fingerprint.pb",
        "variables",
        "assets",
        "assets.extra",
    }
    assert {g.tag_set for g in linear_package.graphs} == ALL_TAG_SETS


def test_variables_are_written_once_and_cover_every_graph(linear_package: PackageInfo) -> None:
    files = sorted(p.name for p in (linear_package.path / "variables").iterdir())
    assert files == ["variables.data-00000-of-00001", "variables.index"]
    assert [v.name for v in linear_package.variables] == ["global_step", "var_1", "var_2"]
    # The first MetaGraph is the one whose variables were saved: the train graph, although
    # the manifest lists it second.
    assert linear_package.graphs[0].tags == ("train",)


@pytest.mark.parametrize("package", ["linear_package", "text_package"])
def test_a_build_describes_the_package_as_reading_it_does(
    package: str, request: pytest.FixtureRequest
) -> None:
    # A build reads its graphs once, then only the files it adds: it must still describe
    # the finished package (cards, record, fingerprint, warmup and serving configs included).
    built = request.getfixturevalue(package)
    assert built == read_package(built.path)
    assert "model_card.md" in built.assets_extra


@pytest.mark.parametrize("tags", SERVE_TAG_SETS, ids=",".join)
@pytest.mark.parametrize("run", [run_v1, run_v2], ids=["v1-loader", "tf.saved_model.load"])
def test_linear_variants_compute_half_plus_two(linear_package, run, tags) -> None:
    result = run(linear_package.path, tags, {"input": np.array([1.0, 2.0, 4.0], np.float32)})
    np.testing.assert_allclose(result["output"], [2.5, 3.0, 4.0], rtol=1e-3)


def test_serve_graph_is_float32_with_devices_cleared(linear_package: PackageInfo) -> None:
    graph = meta_graph(linear_package.path, ["serve"])
    assert not [n.name for n in graph.graph_def.node if n.device]
    assert not [n.name for n in graph.graph_def.node if n.op == "Cast"]


def test_gpu_graph_pins_computes_in_half_and_marks_xla(linear_package: PackageInfo) -> None:
    nodes = meta_graph(linear_package.path, ["serve", "gpu"]).graph_def.node
    pinned = {n.op for n in nodes if n.device == "/device:GPU:0"}
    assert {"Mul", "AddV2", "ReadVariableOp"} <= pinned
    assert any(n.op == "Cast" and n.attr["DstT"].type == 19 for n in nodes)  # DT_HALF
    assert all(n.attr["_XlaCompile"].b for n in nodes if n.op == "Mul")
    # The checkpoint stays float32: the GPU graph's variables are float32 handles.
    assert {n.attr["dtype"].type for n in nodes if n.op == "VarHandleOp"} == {1}


def test_gpu_and_serve_agree_within_half_precision(text_package: PackageInfo) -> None:
    serve = run_v1(text_package.path, ["serve"], {"input": SENTENCES})
    gpu = run_v1(text_package.path, ["serve", "gpu"], {"input": SENTENCES})
    np.testing.assert_allclose(gpu["scores"], serve["scores"], rtol=1e-2, atol=1e-3)


def test_tpu_graph_is_a_tpu_rewrite_with_static_batch(linear_package: PackageInfo) -> None:
    graph = meta_graph(linear_package.path, ["serve", "tpu"])
    ops = {n.op for n in graph.graph_def.node}
    assert {"TPUReplicateMetadata", "TPUReplicatedInput", "TPUReplicatedOutput"} <= ops
    replicated = [n for n in graph.graph_def.node if "_tpu_replicate" in n.attr]
    assert {"Mul", "AddV2"} <= {n.op for n in replicated}
    assert any(n.op == "Cast" and n.attr["DstT"].type == 14 for n in replicated)  # bfloat16
    signature = graph.signature_def["serving_default"]
    assert [d.size for d in signature.inputs["input"].tensor_shape.dim] == [8]


def test_text_host_ops_stay_outside_the_device_computation(text_package: PackageInfo) -> None:
    gpu_nodes = meta_graph(text_package.path, ["serve", "gpu"]).graph_def.node
    string_ops = [n for n in gpu_nodes if n.op in ("StringSplitV2", "LookupTableFindV2")]
    assert string_ops and not [n.name for n in string_ops if n.device]
    assert "MatMul" in {n.op for n in gpu_nodes if n.device == "/device:GPU:0"}
    tpu_nodes = meta_graph(text_package.path, ["serve", "tpu"]).graph_def.node
    replicated_ops = {n.op for n in tpu_nodes if "_tpu_replicate" in n.attr}
    assert "MatMul" in replicated_ops
    assert not replicated_ops & {"StringSplitV2", "LookupTableFindV2", "StringLower"}


def test_train_graph_has_optimizer_state_and_train_op(text_package: PackageInfo) -> None:
    names = {v.name for v in text_package.variables}
    assert {"global_step", "dense/kernel/Adam", "dense/kernel/Adam_1", "beta1_power"} <= names
    graph = meta_graph(text_package.path, ["train"])
    assert "saved_model_train_op" in graph.collection_def
    assert graph.signature_def["train"].method_name == "tensorflow/supervised/training"
    assert set(graph.signature_def["train"].inputs) == {"input", "label"}


def test_train_signature_steps_and_lowers_the_loss(linear_package: PackageInfo) -> None:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(linear_package.path), tags=["train"])
    step = loaded.signatures["train"]
    x = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    losses = [float(step(input=x, target=3 * x - 1)["loss"]) for _ in range(20)]
    assert losses[-1] < losses[0] / 10
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False))


def test_text_classifier_learns_through_the_v1_loader(text_package: PackageInfo) -> None:
    import tensorflow as tf

    labels = np.array([1, 0, 0, 1, 0, 0, 1, 0], np.int64)
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(text_package.path))
        signature = graph.signature_def["train"]
        feeds = {signature.inputs["input"].name: SENTENCES, signature.inputs["label"].name: labels}
        losses = [session.run(signature.outputs["loss"].name, feeds) for _ in range(10)]
    assert losses[-1] < losses[0] / 2


def test_moved_package_reads_its_own_vocabulary(variants_copy: Path, tmp_path: Path) -> None:
    built = smpack.build(variants_copy / "text_classifier.yaml", tmp_path / "out")
    before = run_v1(built.path, ["serve"], {"input": SENTENCES})
    (variants_copy / "data" / "vocab.txt").unlink()
    moved = tmp_path / "elsewhere"
    shutil.move(str(built.path), moved)
    for run in (run_v1, run_v2):
        after = run(moved, ["serve"], {"input": SENTENCES})
        np.testing.assert_allclose(after["scores"], before["scores"], rtol=1e-6)
    # Known words move the scores away from the all-unknown sentence's.
    assert not np.allclose(before["scores"][0], before["scores"][2])


@pytest.mark.slow
def test_saved_model_cli_lists_and_runs_every_tag_set(linear_package: PackageInfo) -> None:
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    shown = subprocess.run(
        [*cli, "show", "--dir", str(linear_package.path), "--all"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    listed = {
        ",".join(sorted(line.split("'")[1].split(", ")))
        for line in shown.splitlines()
        if line.startswith("MetaGraphDef with tag-set:")
    }
    assert listed == {",".join(sorted(t.split(","))) for t in ALL_TAG_SETS}
    ran = subprocess.run(
        [
            *cli,
            "run",
            "--dir",
            str(linear_package.path),
            "--tag_set",
            "serve,gpu",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            "input=[1.0,2.0]",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "[2.5 3. ]" in ran


@pytest.mark.parametrize("package", ["linear_package", "text_package"])
def test_tpu_computation_compiles_with_xla_on_cpu_and_matches(package, request) -> None:
    from smpack.checks.xla_check import run_tpu_graph_on_cpu

    info = request.getfixturevalue(package)
    feeds = (
        {"input": np.linspace(-2, 2, 8).astype(np.float32)}
        if package == "linear_package"
        else {"input": SENTENCES}
    )
    expected = run_v1(info.path, ["serve"], feeds)
    on_xla = run_tpu_graph_on_cpu(info.path, ["serve", "tpu"], "serving_default", feeds)
    assert on_xla.keys() == expected.keys()
    floats = [key for key, value in expected.items() if value.dtype.kind == "f"]
    for key in floats:
        np.testing.assert_allclose(on_xla[key], expected[key], rtol=2e-2, atol=1e-2)
    # bfloat16 really was used: the answer is close to, but not bit-identical with, float32.
    assert not np.array_equal(on_xla[floats[0]], expected[floats[0]])


@pytest.mark.slow
def test_building_a_gpu_variant_on_a_cpu_host_logs_no_placement_noise(
    variants_copy: Path, tmp_path: Path
) -> None:
    # Everything TensorFlow logs (level 0), as a user who set nothing sees it once TF was
    # imported before smpack. Verify runs the serve,gpu graph on this CPU: its pins to
    # /device:GPU:0 are cleared there rather than moved by soft placement, which logged a
    # colocation group per variable (colocation_graph.cc) although nothing was wrong.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    manifest = variants_copy / "linear.yaml"
    command = ["build", str(manifest), "--out", str(tmp_path / "out"), "--no-measure"]
    result = subprocess.run(
        [sys.executable, "-m", "smpack", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "serve,gpu" in result.stdout
    noise = [line for line in result.stderr.splitlines() if "coloca" in line.lower()]
    assert not noise, "\n".join(noise[:5])
