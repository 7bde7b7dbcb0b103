"""A large checkpoint is restored by several `RestoreV2` ops that loaders run at once.

The grouping rule is held to its edges; packages whose restore is split (the group size
lowered to 1 KiB for these tests only: a package really over the threshold,
256 MiB, would take seconds to write and load) are loaded by TensorFlow's TF1 loader,
`tf.saved_model.load` and the C API, every variable equal to what the checkpoint holds, and
used as the `savedmodel:` source of another build.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_c
from tf_helpers import meta_graph, run_v1, run_v2, write_manifest, write_python_manifest

import smpack
from smpack.builder import restore_groups
from smpack.builder.restore_groups import MAX_GROUPS, MIN_GROUP_BYTES
from smpack.package.info import PackageInfo
from smpack.package.restore_keys import restored_variables

MIB = 1 << 20


def test_a_checkpoint_under_two_groups_worth_is_restored_by_one_op() -> None:
    assert restore_groups.restore_groups([]) == [[]]
    assert restore_groups.restore_groups([MIN_GROUP_BYTES, 5]) == [[0, 1]]
    assert restore_groups.restore_groups([2 * MIN_GROUP_BYTES - 1]) == [[0]]


def test_groups_balance_bytes_largest_first_each_in_the_ops_order() -> None:
    unit = MIN_GROUP_BYTES
    sizes = [2 * unit, unit // 2, unit // 2, unit // 4, unit // 4, unit // 2]  # 4 groups' worth
    assert restore_groups.restore_groups(sizes) == [[0], [1, 3], [2, 4], [5]]
    # Two groups of exactly equal bytes from tensors in any order.
    assert restore_groups.restore_groups([MIN_GROUP_BYTES] * 2) == [[0], [1]]
    halves = [MIN_GROUP_BYTES // 2] * 4
    assert restore_groups.restore_groups(halves) == [[0, 2], [1, 3]]


def test_groups_are_at_most_max_groups_and_never_empty() -> None:
    many = [MIN_GROUP_BYTES] * (3 * MAX_GROUPS)
    groups = restore_groups.restore_groups(many)
    assert len(groups) == MAX_GROUPS
    assert sorted(i for g in groups for i in g) == list(range(len(many)))
    assert {len(g) for g in groups} == {3}
    # No more groups than tensors with bytes: one tensor holding them all is one group.
    unit = MIN_GROUP_BYTES
    assert restore_groups.restore_groups([0, 10 * unit, 0, 0]) == [[0, 1, 2, 3]]
    assert restore_groups.restore_groups([0, 10 * unit, 0, unit]) == [[0, 2, 3], [1]]


def test_the_groups_are_a_function_of_the_sizes_alone() -> None:
    sizes = [(i * 7919) % 97 * MIB for i in range(200)]
    first = restore_groups.restore_groups(sizes)
    assert restore_groups.restore_groups(list(sizes)) == first
    loads = [sum(sizes[i] for i in group) for group in first]
    assert max(loads) - min(loads) <= max(sizes)


# Tensors of several sizes and two dtypes; the output weighs each variable differently, so
# a variable restored into another's place changes it.
MODEL = """
import tensorflow as tf

from smpack import ModelContext, ModelSpec

SIZES = [300, 7, 150, 100, 50, 220]


def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
    total = tf.zeros([])
    for i, size in enumerate(SIZES):
        dtype = tf.float64 if i % 2 else tf.float32
        init = tf.compat.v1.random_uniform_initializer(seed=i, dtype=dtype)
        w = tf.compat.v1.get_variable(f"w{i}", [size], dtype, initializer=init)
        total += (i + 1) * tf.cast(tf.reduce_sum(w), tf.float32)
    y = tf.identity(x * total, name="y")
    if not ctx.training:
        return ModelSpec(inputs={"x": x}, outputs={"y": y})
    target = tf.compat.v1.placeholder(tf.float32, [None], name="target")
    loss = tf.reduce_mean(tf.square(y - target))
    return ModelSpec(inputs={"x": x}, outputs={"y": y}, labels={"target": target}, loss=loss)
"""

VARIANTS = {
    "cpu": {"tags": ["serve"]},
    "train": {"tags": ["train"], "optimizer": {"name": "sgd", "learning_rate": 0.1}},
}
# 4,616 bytes of weights: four groups of at least 1 KiB, fewer than the tensors.
TEST_GROUP_BYTES = 1024


def build_in_small_groups(manifest: Path, out: Path) -> PackageInfo:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(restore_groups, "MIN_GROUP_BYTES", TEST_GROUP_BYTES)
        return smpack.build(manifest, out, measure=False)


@pytest.fixture(scope="module")
def split_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    folder = tmp_path_factory.mktemp("split")
    manifest = write_python_manifest(folder, MODEL, VARIANTS)
    return build_in_small_groups(manifest, folder / "out")


@pytest.fixture(scope="module")
def from_split_package(
    tmp_path_factory: pytest.TempPathFactory, split_package: PackageInfo
) -> PackageInfo:
    """`split_package` as the `savedmodel:` source of another build."""
    folder = tmp_path_factory.mktemp("from_split")
    shutil.copytree(split_package.path, folder / "split")
    source = {"savedmodel": "split", "loss": "mse"}
    signatures = {"serving_default": {"method": "predict", "inputs": ["x"], "outputs": ["y"]}}
    manifest = write_manifest(folder, source, variants=VARIANTS, signatures=signatures)
    return build_in_small_groups(manifest, folder / "out")


def restore_ops(package: Path, tags: list[str]) -> list[str]:
    graph = meta_graph(package, tags)
    return sorted(n.name for n in graph.graph_def.node if n.op == "RestoreV2")


def checkpoint_values(package: Path) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(str(package / "variables" / "variables"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def loaded_values(package: Path, tags: list[str]) -> dict[str, np.ndarray]:
    """Every variable as TensorFlow's TF1 loader (TF Serving's Python twin) restored it."""
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.saved_model.loader.load(session, tags, str(package))
        variables = tf.compat.v1.global_variables()
        return dict(zip([v.op.name for v in variables], session.run(variables), strict=True))


def expected_y(values: dict[str, np.ndarray], x: list[float]) -> np.ndarray:
    total = sum((i + 1) * np.float32(values[f"w{i}"].sum()) for i in range(6))
    return np.float32(x) * np.float32(total)


@pytest.mark.parametrize("tags", [["serve"], ["train"]])
def test_the_tf1_loader_restores_every_variable_through_several_ops(
    split_package: PackageInfo, tags: list[str]
) -> None:
    restores = restore_ops(split_package.path, tags)
    assert len(restores) > 2
    assert restores[0] == "save/RestoreV2"
    assert all(name.startswith("save/RestoreV2/part_") for name in restores[1:])
    written = checkpoint_values(split_package.path)
    restored = loaded_values(split_package.path, tags)
    assert {f"w{i}" for i in range(6)} <= restored.keys() <= written.keys()
    for name, value in restored.items():
        np.testing.assert_array_equal(value, written[name], err_msg=name)


def test_every_graph_restores_in_the_groups_of_the_checkpoint(split_package: PackageInfo) -> None:
    def groups(tags: list[str]) -> set[frozenset[bytes]]:
        nodes = {n.name: n for n in meta_graph(split_package.path, tags).graph_def.node}
        return {
            frozenset(nodes[f"{name}/tensor_names"].attr["value"].tensor.string_val)
            for name in restore_ops(split_package.path, tags)
        }

    # The train graph restores the global step too, in a group of the model's variables.
    serving, training = groups(["serve"]), groups(["train"])
    assert {group - {b"global_step"} for group in training} == serving
    assert len(serving) == len(training) == 4


@pytest.mark.slow  # the C loader's first compile
def test_tf_saved_model_load_and_the_c_api_compute_with_the_written_values(
    split_package: PackageInfo, c_loader: Path
) -> None:
    expected = expected_y(checkpoint_values(split_package.path), [1.0, -2.0])
    outputs = run_v2(split_package.path, ["serve"], {"x": np.float32([1.0, -2.0])})
    np.testing.assert_allclose(outputs["y"], expected, rtol=1e-6)
    result = run_c(c_loader, split_package.path, "serve", "x:0", "y:0", "1", "-2")
    assert result.returncode == 0, result.stderr
    loaded, *values = result.stdout.split()
    assert loaded == "loaded"
    np.testing.assert_allclose(np.float32(values), expected, rtol=1e-6)


def test_a_split_package_is_the_savedmodel_source_of_another(
    split_package: PackageInfo, from_split_package: PackageInfo
) -> None:
    source = checkpoint_values(split_package.path)
    for tags in (["serve"], ["train"]):
        restored = loaded_values(from_split_package.path, tags)
        assert len(restore_ops(from_split_package.path, tags)) > 2
        for name in (f"w{i}" for i in range(6)):  # the global step starts afresh
            np.testing.assert_array_equal(restored[name], source[name], err_msg=name)


# A partitioned variable of three parts, saved as slices of one tensor `w`, beside `v`.
PARTITIONED_MODEL = """
import tensorflow as tf

from smpack import ModelContext, ModelSpec


def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
    init = tf.compat.v1.random_uniform_initializer(seed=1)
    partitioner = tf.compat.v1.fixed_size_partitioner(3)
    w = tf.compat.v1.get_variable("w", [400, 3], initializer=init, partitioner=partitioner)
    v = tf.compat.v1.get_variable("v", [300], tf.float64, initializer=init)
    total = 2.0 * tf.reduce_sum(tf.concat(list(w), 0)) + tf.cast(tf.reduce_sum(v), tf.float32)
    return ModelSpec(inputs={"x": x}, outputs={"y": tf.identity(x * total, name="y")})
"""


@pytest.fixture(scope="module")
def partitioned_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    folder = tmp_path_factory.mktemp("partitioned")
    manifest = write_python_manifest(folder, PARTITIONED_MODEL, {"cpu": {"tags": ["serve"]}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(restore_groups, "MIN_GROUP_BYTES", TEST_GROUP_BYTES)
        verified = lambda path: smpack.verify(path).passed  # noqa: E731
        return smpack.build(manifest, folder / "out", measure=False, verify=verified)


def test_a_partitioned_variables_slices_restore_together_and_verify(
    partitioned_package: PackageInfo,
) -> None:
    # Verified: every part found in the checkpoint as a slice of `w`.
    assert partitioned_package.published
    graph = meta_graph(partitioned_package.path, ["serve"])
    assert {node.name: (key, spec) for node, key, spec in restored_variables(graph.graph_def)} == {
        "w/part_0": ("w", "400 3 0,134:0,3"),
        "w/part_1": ("w", "400 3 134,133:0,3"),
        "w/part_2": ("w", "400 3 267,133:0,3"),
        "v": ("v", ""),
    }
    nodes = {n.name: n for n in graph.graph_def.node}
    names = {
        name: list(nodes[f"{name}/tensor_names"].attr["value"].tensor.string_val)
        for name in restore_ops(partitioned_package.path, ["serve"])
    }
    assert names == {"save/RestoreV2": [b"v"], "save/RestoreV2/part_1": [b"w", b"w", b"w"]}
    written = checkpoint_values(partitioned_package.path)
    expected = 2 * np.float32(written["w"].sum()) + np.float32(written["v"].sum())
    outputs = run_v1(partitioned_package.path, ["serve"], {"x": np.float32([1.0, 3.0])})
    np.testing.assert_allclose(outputs["y"], np.float32([1.0, 3.0]) * expected, rtol=1e-6)
