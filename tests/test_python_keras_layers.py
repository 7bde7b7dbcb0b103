"""Keras layers and `tf.Variable`s made inside a python source's `ctx.compute`, in every variant.

The variables are lifted out of the traced function as `tf.function` lifts them (float32:
one checkpoint for every variant), Keras's layer names restart for each variant (so every
graph names them alike, whatever Keras named before the build), and the assignments the
layers make without anyone fetching them (batch normalisation's moving averages) run with
each train step, as `model.fit` runs them.
"""

from __future__ import annotations

import functools
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import file_digests
from tensorflow.core.framework import variable_pb2
from tf_helpers import (
    FLOAT32_AND_FLOAT16_TRAINING,
    meta_graph,
    run_v1,
    write_python_manifest,
)

import smpack
from smpack.checks.xla_check import run_tpu_graph_on_cpu
from smpack.package.info import PackageInfo

KERAS_MODEL = """
import keras
import tensorflow as tf
from smpack import ModelContext, ModelSpec

from keras_model_layers import glorot, hidden

# Made at module level, here and in the module beside it, as a Keras user makes a model's
# layers: each variant's graph gets its own (both files are imported in it), named as in
# every other variant.
scale = tf.Variable(tf.ones([3]), name="scale")


def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [8, 4], name="x")

    def net(x):
        h = hidden(x) * scale
        h = keras.layers.BatchNormalization()(h, training=ctx.training)
        return keras.layers.Dense(1, kernel_initializer=glorot(seed=2))(tf.nn.relu(h))

    y = tf.identity(ctx.compute(net, x), name="y")
    if not ctx.training:
        return ModelSpec(inputs={"x": x}, outputs={"y": y})
    target = tf.compat.v1.placeholder(tf.float32, [8, 1], name="target")
    loss = tf.reduce_mean(tf.square(y - target))
    return ModelSpec(inputs={"x": x}, outputs={"y": y}, labels={"target": target}, loss=loss)
"""
LAYERS_MODULE = """
import keras

glorot = keras.initializers.GlorotNormal
hidden = keras.layers.Dense(3, kernel_initializer=glorot(seed=1))
"""
VARIANTS = {
    **FLOAT32_AND_FLOAT16_TRAINING,
    "xla": {"tags": ["serve", "xla"], "xla": True},
    "tpu": {"tags": ["serve", "tpu"], "batch_size": 8},
    "tpu_bf16": {
        "tags": ["serve", "tpu", "bf16"],
        "tpu": True,
        "precision": "bfloat16",
        "batch_size": 8,
    },
}
# The names Keras gives them (`variable.path`, as in a `.keras` file or an eager model):
# the second Dense is `dense_1`, though its TF1 name scope is `dense_1_1`.
MODEL_VARIABLES = {
    "scale",
    "dense/kernel",
    "dense/bias",
    "batch_normalization/gamma",
    "batch_normalization/beta",
    "batch_normalization/moving_mean",
    "batch_normalization/moving_variance",
    "dense_1/kernel",
    "dense_1/bias",
}
STATISTICS = {"batch_normalization/moving_mean", "batch_normalization/moving_variance"}
X = (np.random.default_rng(0).normal(size=(8, 4)) * 3 + 1).astype(np.float32)
TARGET = np.random.default_rng(1).normal(size=(8, 1)).astype(np.float32)
FLOAT32, FLOAT16 = ("train",), ("train", "gpu")


@pytest.fixture(scope="module")
def keras_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    import keras

    # Layers made in this process before the build: Keras would name the model's `dense_2`.
    keras.layers.Dense(1), keras.layers.Dense(1)
    folder = tmp_path_factory.mktemp("python-keras-layers")
    (folder / "keras_model_layers.py").write_text(LAYERS_MODULE)
    manifest = write_python_manifest(folder, KERAS_MODEL, VARIANTS)
    # Built only if every graph's variables are the one checkpoint's; the tests below run
    # the graphs (verify, which runs them all, would cost this file a third more).
    return smpack.build(manifest, folder / "out", measure=False)


def train(package: PackageInfo, tags: tuple[str, ...], steps: int):
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    with tf.compat.v1.Session(graph=tf.Graph(), config=config) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, list(tags), str(package.path))
        signature = graph.signature_def["train"]
        feeds = {signature.inputs["x"].name: X, signature.inputs["target"].name: TARGET}
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        losses, states = [], []
        for _ in range(steps):
            losses.append(float(session.run(signature.outputs["loss"].name, feeds)))
            states.append(session.run(variables))
    return losses, states


@pytest.fixture(scope="module")
def twenty_steps(keras_package):
    """20 steps of a train graph, run once per tag set."""
    return functools.cache(lambda tags: train(keras_package, tags, 20))


def test_every_variant_names_the_keras_variables_alike(keras_package) -> None:
    for variant in VARIANTS.values():
        graph = meta_graph(keras_package.path, variant["tags"])
        names = {n.name for n in graph.graph_def.node if n.op == "VarHandleOp"}
        assert MODEL_VARIABLES <= names, variant["tags"]
        trainable = {
            v.split(":")[0]
            for v in graph.collection_def["trainable_variables"].bytes_list.value
            for v in [variable_pb2.VariableDef.FromString(v).variable_name]
        }
        assert trainable == MODEL_VARIABLES - STATISTICS, variant["tags"]
    checkpoint = tf.train.load_checkpoint(str(keras_package.path / "variables" / "variables"))
    stored = checkpoint.get_variable_to_dtype_map()
    assert MODEL_VARIABLES <= set(stored)
    assert {stored[name] for name in MODEL_VARIABLES} == {tf.float32}


def test_tpu_computations_compile_and_answer_as_the_serve_graph(keras_package) -> None:
    # The module-level `scale` is a variable of each variant's graph that the computation
    # reads without making it: read through its handle inside tpu.rewrite, as XLA needs.
    (expected,) = run_v1(keras_package.path, ["serve"], {"x": X}).values()
    for tags, tolerance in ((("serve", "tpu"), 1e-5), (("serve", "tpu", "bf16"), 5e-2)):
        outputs = run_tpu_graph_on_cpu(keras_package.path, tags, "serving_default", {"x": X})
        np.testing.assert_allclose(outputs["y"], expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("tags", [FLOAT32, FLOAT16], ids=["float32", "float16"])
def test_batch_normalization_updates_its_moving_statistics_each_step(
    keras_package, twenty_steps, tags
) -> None:
    losses, states = twenty_steps(tags)
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    # Keras's rule (momentum 0.99) on the first step's batch statistics of x @ kernel + bias.
    checkpoint = tf.train.load_checkpoint(str(keras_package.path / "variables" / "variables"))
    hidden = X @ checkpoint.get_tensor("dense/kernel") + checkpoint.get_tensor("dense/bias")
    first = states[0]
    np.testing.assert_allclose(
        first["batch_normalization/moving_mean"], 0.01 * hidden.mean(axis=0), rtol=2e-2, atol=1e-4
    )
    np.testing.assert_allclose(
        first["batch_normalization/moving_variance"], 0.99 + 0.01 * hidden.var(axis=0), rtol=1e-3
    )
    # Once per step: the variance moves on each of them.
    variances = np.array([s["batch_normalization/moving_variance"] for s in states])
    assert (np.diff(variances, axis=0) != 0).any(axis=1).all()


def test_float16_trains_like_float32(twenty_steps) -> None:
    reference, _ = twenty_steps(FLOAT32)
    losses, _ = twenty_steps(FLOAT16)
    np.testing.assert_allclose(losses, reference, rtol=2e-2)


UNSEEDED_MODEL = """
import keras
import numpy as np
import tensorflow as tf
from smpack import ModelContext, ModelSpec

# Unseeded: Keras draws the initializer's seed from Python's random.
hidden = keras.layers.Dense(4)
offset = tf.Variable(np.random.normal(size=[2]).astype(np.float32), name="offset")


def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")

    def net(x):
        return keras.layers.Dense(2)(hidden(x)) + offset

    y = tf.identity(ctx.compute(net, x), name="y")
    return ModelSpec(inputs={"x": x}, outputs={"y": y})
"""


@pytest.mark.slow
def test_unseeded_initial_weights_are_the_same_in_every_build(tmp_path: Path) -> None:
    half = {"tags": ["serve", "half"], "precision": "float16"}
    manifest = write_python_manifest(
        tmp_path, UNSEEDED_MODEL, {"cpu": {"tags": ["serve"]}, "half": half}
    )
    # A fresh process, its Python random seeded by the OS, and this one, whose state is
    # whatever the tests before left: the same bytes.
    command = [
        sys.executable,
        "-m",
        "smpack",
        "build",
        str(manifest),
        "--out",
        str(tmp_path / "fresh"),
    ]
    fresh = subprocess.Popen(
        [*command, "--no-verify", "--no-measure"], stderr=subprocess.PIPE, text=True
    )
    random.random(), np.random.random()
    state = random.getstate(), np.random.get_state()
    here = smpack.build(manifest, tmp_path / "here", measure=False).path
    assert fresh.wait(timeout=120) == 0, fresh.communicate()[1]
    assert file_digests(tmp_path / "fresh" / "imported" / "1") == file_digests(here)
    # The build put this process's random state back.
    assert random.getstate() == state[0]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state[1], strict=True))
    # Every weight drawn, none left at zero.
    checkpoint = tf.train.load_checkpoint(str(here / "variables" / "variables"))
    for name in ("dense/kernel", "dense_1/kernel", "offset"):
        assert np.abs(checkpoint.get_tensor(name)).min() > 0, name
