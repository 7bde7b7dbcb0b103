"""A python source's `ctx.compute` in half precision beyond serving: train variants in float16
and bfloat16 (gradients through the retyped trace, float32 master weights, a dynamic loss
scale for float16 as Keras's LossScaleOptimizer keeps) and batch normalisation's
`UPDATE_OPS` carried across the trace, run once per step as in the float32 train graph;
tables made inside `ctx.compute` kept on the host in every placed variant; and a Keras
source's float16 train variant scaling its loss as a python source's does.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import (
    FLOAT32_AND_FLOAT16_TRAINING,
    SGD,
    meta_graph,
    run_v1,
    run_v2,
    serving_variants,
    write_manifest,
    write_python_manifest,
)

import smpack
from smpack.checks.xla_check import run_tpu_graph_on_cpu
from smpack.package.info import PackageInfo

# TF1 batch normalisation written by hand (tf.compat.v1.layers needs Keras 2): batch
# statistics in training, moving averages updated through UPDATE_OPS, as TF1's layers do.
BATCH_NORM_MODEL = """
import tensorflow as tf
from smpack import ModelContext, ModelSpec


def weight(name, shape, seed):
    init = tf.compat.v1.random_normal_initializer(stddev=0.5, seed=seed)
    return tf.compat.v1.get_variable(name, shape, initializer=init)


def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [8, 4], name="x")

    def net(x):
        h = x @ weight("dense/kernel", [4, 3], seed=1)
        gamma = tf.compat.v1.get_variable("bn/gamma", [3], initializer=tf.ones_initializer())
        beta = tf.compat.v1.get_variable("bn/beta", [3], initializer=tf.zeros_initializer())
        statistics = [
            tf.compat.v1.get_variable(name, [3], trainable=False, initializer=initializer)
            for name, initializer in (
                ("bn/moving_mean", tf.zeros_initializer()),
                ("bn/moving_variance", tf.ones_initializer()),
            )
        ]
        if ctx.training:
            mean, variance = tf.nn.moments(h, axes=[0])
            for moving, batch in zip(statistics, (mean, variance)):
                update = tf.compat.v1.assign_sub(moving, (moving - batch) * 0.1)
                tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, update)
        else:
            mean, variance = statistics
        h = tf.nn.batch_normalization(h, mean, variance, beta, gamma, 1e-3)
        return tf.nn.relu(h) @ weight("out/kernel", [3, 1], seed=2)

    y = tf.identity(ctx.compute(net, x), name="y")
    if not ctx.training:
        return ModelSpec(inputs={"x": x}, outputs={"y": y})
    target = tf.compat.v1.placeholder(tf.float32, [8, 1], name="target")
    loss = tf.reduce_mean(tf.square(y - target))
    return ModelSpec(inputs={"x": x}, outputs={"y": y}, labels={"target": target}, loss=loss)
"""

TRAIN_VARIANTS = {
    **FLOAT32_AND_FLOAT16_TRAINING,
    "train_bf16": {"tags": ["train", "bf16"], "precision": "bfloat16", "optimizer": SGD},
}
FLOAT32, FLOAT16, BFLOAT16 = ("train",), ("train", "gpu"), ("train", "bf16")
X = (np.random.default_rng(0).normal(size=(8, 4)) * 3 + 1).astype(np.float32)
TARGET = np.random.default_rng(1).normal(size=(8, 1)).astype(np.float32)
STATISTICS = ("bn/moving_mean", "bn/moving_variance")


@pytest.fixture(scope="module")
def batch_norm_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    folder = tmp_path_factory.mktemp("python-half-training")
    manifest = write_python_manifest(folder, BATCH_NORM_MODEL, TRAIN_VARIANTS)
    # Built only if every graph verifies, the train graphs' one-step check included.
    return smpack.build(manifest, folder / "out")


def train(
    package: Path, tags: Sequence[str], steps: int, target: np.ndarray = TARGET
) -> tuple[list[float], list[dict[str, Any]]]:
    """`steps` train steps through the TF1 loader: each step's loss and the variables after it."""
    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        signature = tf.compat.v1.saved_model.loader.load(session, list(tags), str(package))
        train_signature = signature.signature_def["train"]
        feeds = {
            train_signature.inputs["x"].name: X,
            train_signature.inputs["target"].name: target,
        }
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        losses, states = [], []
        for _ in range(steps):
            losses.append(float(session.run(train_signature.outputs["loss"].name, feeds)))
            states.append(session.run(variables))
        return losses, states


Run = tuple[list[float], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def twenty_steps(batch_norm_package) -> Callable[[tuple[str, ...]], Run]:
    """20 steps of a train graph from the package's checkpoint, run once per tag set (each
    float16 session compiles its XLA cluster)."""
    return functools.cache(lambda tags: train(batch_norm_package.path, tags, 20))


@pytest.mark.parametrize("tags", [FLOAT16, BFLOAT16], ids=["float16", "bfloat16"])
def test_half_precision_train_variants_train_like_float32(
    batch_norm_package, twenty_steps, tags
) -> None:
    reference, _ = twenty_steps(FLOAT32)
    losses, states = twenty_steps(tags)
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.8 * losses[0]
    # bfloat16 keeps 8 bits of mantissa: 2**-8 of the loss, over 20 steps.
    np.testing.assert_allclose(losses, reference, rtol=2e-2)
    # Master weights: every variable is float32 (the step counters int64).
    assert {v.dtype.name for v in states[-1].values()} <= {"float32", "int64"}
    # The gradients flowed through half-precision products.
    nodes = meta_graph(batch_norm_package.path, tags).graph_def.node
    half = {FLOAT16: tf.float16, BFLOAT16: tf.bfloat16}[tags].as_datatype_enum
    assert any(n.op == "MatMul" and n.attr["T"].type == half for n in nodes)


@pytest.mark.parametrize("tags", [FLOAT16, BFLOAT16], ids=["float16", "bfloat16"])
def test_moving_statistics_update_once_per_step_as_in_float32(
    batch_norm_package, twenty_steps, tags
) -> None:
    _, reference = twenty_steps(FLOAT32)
    _, states = twenty_steps(tags)
    for step in range(2):
        for name in STATISTICS:
            # Changed by the step (the initial statistics are 0 and 1), as in float32.
            assert not np.allclose(states[step][name], [0.0, 1.0][STATISTICS.index(name)])
            expected = reference[step][name]
            # Within 2% of the statistic's scale (a mean near 0 is no scale of its own).
            atol = 2e-2 * np.abs(expected).max()
            np.testing.assert_allclose(states[step][name], expected, rtol=2e-2, atol=atol)
        assert (states[step]["bn/moving_variance"] >= 0).all()
    # One assignment each, neither dropped nor duplicated by the retyped trace.
    nodes = meta_graph(batch_norm_package.path, tags).graph_def.node
    assert sum(n.op == "AssignSubVariableOp" for n in nodes) == len(STATISTICS)


def test_float16_train_graph_steps_through_tf_saved_model_load(
    batch_norm_package, twenty_steps
) -> None:
    # The loss-scaled step is a cond: TF2's loader prunes the train signature around it.
    expected = twenty_steps(FLOAT16)[0][:3]
    step = tf.saved_model.load(str(batch_norm_package.path), tags=list(FLOAT16))
    losses = [
        float(step.signatures["train"](x=tf.constant(X), target=tf.constant(TARGET))["loss"])
        for _ in range(3)
    ]
    np.testing.assert_allclose(losses, expected, rtol=1e-6)


def test_float16_training_scales_the_loss_dynamically(batch_norm_package) -> None:
    # Targets this far off make the scaled float16 gradients overflow: Keras's
    # LossScaleOptimizer skips such a step and halves the scale, until the step fits.
    far = np.full_like(TARGET, 3e3)
    losses, states = train(batch_norm_package.path, FLOAT16, 12, target=far)
    scales = [s["loss_scale/current_loss_scale"] for s in states]
    assert scales[0] == 2.0**14  # 2**15 at first, halved by the skipped step
    assert states[0]["global_step"] == 0
    applied = next(i for i, s in enumerate(states) if s["global_step"] == 1)
    assert scales[applied] == scales[applied - 1] < 2.0**14
    assert np.isfinite(losses).all()
    assert all(np.isfinite(v).all() for v in states[-1].values())
    # bfloat16 has float32's range: no loss scale, as Keras's mixed_bfloat16 has none.
    _, bfloat16_states = train(batch_norm_package.path, BFLOAT16, 1)
    assert "loss_scale/current_loss_scale" not in bfloat16_states[0]


# A text classifier whose vocabulary table is made inside ctx.compute, over an asset asked
# for there, and whose function reads a tensor made outside it (`scale`) without receiving it.
TABLE_MODEL = """
import tensorflow as tf
from smpack import ModelContext, ModelSpec


def model_fn(ctx: ModelContext) -> ModelSpec:
    words = tf.compat.v1.placeholder(tf.string, [ctx.batch_size, 3], name="words")
    scale = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size, 1], name="scale")

    def classify(words):
        initializer = tf.lookup.TextFileInitializer(
            ctx.asset("vocab.txt"), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        )
        ids = tf.lookup.StaticVocabularyTable(initializer, num_oov_buckets=1).lookup(words)
        init = tf.compat.v1.random_normal_initializer(seed=3)
        embedding = tf.compat.v1.get_variable("embedding", [5, 4], initializer=init)
        pooled = tf.reduce_mean(tf.nn.embedding_lookup(embedding, ids), axis=1) * scale
        dense = tf.compat.v1.get_variable("dense", [4, 2], initializer=init)
        return {"ids": ids, "logits": pooled @ dense}

    out = ctx.compute(classify, words)
    outputs = {k: tf.identity(v, name=k) for k, v in out.items()}
    return ModelSpec(inputs={"words": words, "scale": scale}, outputs=outputs)
"""
VOCABULARY = ["the", "cat", "sat", "mat"]
WORDS = np.array([["the", "cat", "sat"], ["a", "mat", "the"]], dtype=object)
SERVING_VARIANTS = {
    **serving_variants(2),
    # float32 variants placed as the half-precision ones are trace ctx.compute alike.
    "xla32": {"tags": ["serve", "xla32"], "xla": True},
    "tpu32": {"tags": ["serve", "tpu32"], "tpu": True, "batch_size": 2},
}
HOST_OPS = {"LookupTableFindV2", "HashTableV2", "InitializeTableFromTextFileV2"}


@pytest.fixture(scope="module")
def table_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    folder = tmp_path_factory.mktemp("python-half-table")
    (folder / "model.py").write_text(TABLE_MODEL)
    (folder / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n")
    signature = {"method": "predict", "inputs": ["words", "scale"], "outputs": ["ids", "logits"]}
    manifest = write_manifest(
        folder,
        {"python": "model.py:model_fn"},
        variants=SERVING_VARIANTS,
        signatures={"serving_default": signature},
        assets=["vocab.txt"],
    )
    # Built only if every graph verifies: serve,tpu's computation compiled with XLA.
    package = smpack.build(manifest, folder / "out")
    (folder / "vocab.txt").unlink()  # the package reads its own assets/ copy
    return package


def test_tables_in_compute_fill_from_the_asset_on_every_loader(table_package, tmp_path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(table_package.path, moved)
    feeds = {"words": WORDS, "scale": np.full((2, 1), 3.0, np.float32)}
    expected = run_v1(moved, ["serve"], feeds)
    np.testing.assert_array_equal(expected["ids"], [[0, 1, 2], [4, 3, 0]])  # "a": the OOV bucket
    for tags in (["serve"], ["serve", "gpu"]):
        for run in (run_v1, run_v2):
            served = run(moved, tags, feeds)
            np.testing.assert_array_equal(served["ids"], expected["ids"])
            assert served["ids"].dtype == np.int64
            scale = np.abs(expected["logits"]).max()
            np.testing.assert_allclose(served["logits"], expected["logits"], atol=1e-2 * scale)
    assert list(table_package.assets) == ["vocab.txt"]
    for tags in (["serve", "gpu"], ["serve", "tpu"]):
        assert [a.filename for a in meta_graph(moved, tags).asset_file_def] == ["vocab.txt"]


@pytest.mark.parametrize(
    ("tags", "dtype"),
    [(("serve", "gpu"), tf.float16), (("serve", "xla32"), tf.float32)],
    ids=["float16", "float32"],
)
def test_tables_and_lookups_stay_outside_xla_in_their_own_dtypes(
    table_package, tags, dtype
) -> None:
    graph = meta_graph(table_package.path, tags).graph_def
    on_host = [n for n in graph.node if n.op in HOST_OPS]
    assert {n.op for n in on_host} == HOST_OPS
    assert not any(n.device or "_XlaCompile" in n.attr for n in on_host)
    (find,) = (n for n in graph.node if n.op == "LookupTableFindV2")
    assert (find.attr["Tin"].type, find.attr["Tout"].type) == (tf.string, tf.int64)
    (product,) = (n for n in graph.node if n.op == "MatMul")
    assert product.attr["T"].type == dtype and product.attr["_XlaCompile"].b
    # The table is filled by the package's init op, through TF's table initializers.
    (initializer,) = (
        meta_graph(table_package.path, tags).collection_def["table_initializer"].node_list.value
    )
    assert initializer.startswith("compute_host/")


@pytest.mark.parametrize(
    "tags", [("serve", "tpu"), ("serve", "tpu32")], ids=["bfloat16", "float32"]
)
def test_tables_and_lookups_stay_outside_tpu_rewrite(table_package, tags) -> None:
    tpu = meta_graph(table_package.path, tags)
    inside = {n.op for n in tpu.graph_def.node if "_tpu_replicate" in n.attr}
    outside = {n.op for n in tpu.graph_def.node if "_tpu_replicate" not in n.attr}
    assert "MatMul" in inside and not inside & HOST_OPS and HOST_OPS <= outside
    (initializer,) = tpu.collection_def["table_initializer"].node_list.value
    assert initializer.startswith("compute_host/")


def test_a_tensor_read_from_outside_compute_is_fed_from_the_variant_graph(table_package) -> None:
    def feeds(scale: float) -> dict[str, np.ndarray]:
        return {"words": WORDS, "scale": np.full((2, 1), scale, np.float32)}

    doubled = run_v1(table_package.path, ["serve", "gpu"], feeds(2.0))
    tripled = run_v1(table_package.path, ["serve", "gpu"], feeds(3.0))
    np.testing.assert_allclose(tripled["logits"], doubled["logits"] * 1.5, rtol=2e-3)
    tpu = run_tpu_graph_on_cpu(table_package.path, ["serve", "tpu"], "serving_default", feeds(3.0))
    scale = np.abs(tripled["logits"]).max()
    np.testing.assert_allclose(tpu["logits"], tripled["logits"], atol=2e-2 * scale)


def test_a_keras_sources_float16_train_variant_scales_its_loss_too(tmp_path) -> None:
    # The train op is built in one place for every source kind: a Keras model's float16
    # train graph skips an overflowing step and halves the scale, as the python source's.
    import keras

    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, name="out")(inputs))
    model.save(tmp_path / "model.keras")
    variants = {
        "cpu": {"tags": ["serve"]},
        "train_gpu": {
            "tags": ["train", "gpu"],
            "device": "/device:GPU:0",
            "precision": "float16",
            "optimizer": SGD,
        },
    }
    manifest = write_manifest(tmp_path, {"keras": "model.keras", "loss": "mse"}, variants=variants)
    package = smpack.build(manifest, tmp_path / "out")
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    with tf.compat.v1.Session(graph=tf.Graph(), config=config) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, list(FLOAT16), str(package.path))
        signature = graph.signature_def["train"]
        (x_key,) = set(signature.inputs) - {"labels"}
        # Labels this far off overflow the scaled float16 gradients.
        feeds = {
            signature.inputs[x_key].name: X,
            signature.inputs["labels"].name: np.full((8, 1), 3e3, np.float32),
        }
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        session.run(signature.outputs["loss"].name, feeds)
        state = session.run(variables)
    assert state["loss_scale/current_loss_scale"] == 2.0**14
    assert state["global_step"] == 0
