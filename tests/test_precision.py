"""Half-precision variants: only floating-point compute is retyped, by the same rules for a
SavedModel source and a python source's `ctx.compute`.

The model here is the part of a transformer that retyping everything breaks: a causal mask
built from a float32 `Range` (no half-precision `Range` on XLA), a `-1e9` mask constant
(`-inf` in float16), softmax and layer-normalisation statistics. It comes as a TF2
SavedModel and as the same computation written as TF1 code in a python source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import check_golden
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tf_helpers import meta_graph, run_v1, serving_variants, write_manifest

import smpack
from smpack.checks.xla_check import run_tpu_graph_on_cpu
from smpack.package.info import PackageInfo
from smpack.sources import precision
from smpack.sources.precision import HalfTarget, Retyping, retyped

SEQUENCE, WIDTH, BATCH = 6, 8, 2
VARIANTS = serving_variants(BATCH)
X = np.random.default_rng(0).normal(size=(BATCH, SEQUENCE, WIDTH)).astype(np.float32)


class CausalAttention(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        init = tf.random.stateless_normal
        self.query = tf.Variable(init([WIDTH, WIDTH], seed=[1, 1]) / 3, name="query")
        self.key = tf.Variable(init([WIDTH, WIDTH], seed=[2, 2]) / 3, name="key")
        self.gamma = tf.Variable(tf.ones([WIDTH]), name="norm/gamma")

    @tf.function(input_signature=[tf.TensorSpec([None, SEQUENCE, WIDTH], tf.float32)])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        length = tf.cast(tf.shape(x)[1], tf.float32)
        positions = tf.range(0.0, length, 1.0)  # a float32 Range, as GPT-2's mask has
        visible = tf.cast(positions[:, None] >= positions[None, :], tf.float32)
        scores = tf.einsum("bqd,bkd->bqk", x @ self.query, x @ self.key)
        attention = tf.nn.softmax(scores + (1.0 - visible) * -1e9)
        mixed = attention @ x
        mean, variance = tf.nn.moments(mixed, axes=[-1], keepdims=True)
        return {"y": (mixed - mean) * tf.math.rsqrt(variance + 1e-6) * self.gamma}


# The same attention as TF1 code in a python source, with the SavedModel's weights.
PYTHON_ATTENTION = """
import numpy as np
import tensorflow as tf
from smpack import ModelContext, ModelSpec


def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size, 6, 8], name="x")

    def attention(x):
        def weight(name, shape, value):
            init = tf.compat.v1.constant_initializer(np.array(value, np.float32))
            # ctx.dtype, as model functions written for casting ctx.compute ask: stored
            # float32 all the same, and the retyping decides what computes in half.
            return tf.compat.v1.get_variable(name, shape, ctx.dtype, initializer=init)

        query = weight("query", [8, 8], ctx.params["query"])
        key = weight("key", [8, 8], ctx.params["key"])
        gamma = weight("norm/gamma", [8], 1.0)
        length = tf.cast(tf.shape(x)[1], tf.float32)
        positions = tf.range(0.0, length, 1.0)  # a float32 Range, as GPT-2's mask has
        visible = tf.cast(positions[:, None] >= positions[None, :], tf.float32)
        scores = tf.einsum("bqd,bkd->bqk", x @ query, x @ key)
        attention = tf.nn.softmax(scores + (1.0 - visible) * -1e9)
        mixed = attention @ x
        mean, variance = tf.nn.moments(mixed, axes=[-1], keepdims=True)
        return (mixed - mean) * tf.math.rsqrt(variance + 1e-6) * gamma

    y = tf.identity(ctx.compute(attention, x), name="y")
    return ModelSpec(inputs={"x": x}, outputs={"y": y})
"""


@pytest.fixture(scope="module", params=["savedmodel", "python"])
def attention_package(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, PackageInfo]:
    folder = tmp_path_factory.mktemp(f"precision-{request.param}")
    module = CausalAttention()
    tf.saved_model.save(module, str(folder / "attention"), signatures=module.predict)
    if request.param == "savedmodel":
        manifest = write_manifest(folder, {"savedmodel": "attention"}, variants=VARIANTS)
    else:
        (folder / "attention.py").write_text(PYTHON_ATTENTION)
        weights = {"query": module.query.numpy().tolist(), "key": module.key.numpy().tolist()}
        source = {"python": "attention.py:model_fn", "params": weights}
        signatures = {"serving_default": {"method": "predict", "inputs": ["x"], "outputs": ["y"]}}
        manifest = write_manifest(folder, source, variants=VARIANTS, signatures=signatures)
    return folder, smpack.build(manifest, folder / "out")


def source_output(folder: Path) -> np.ndarray:
    loaded = tf.saved_model.load(str(folder / "attention"))
    return loaded.signatures["serving_default"](x=tf.constant(X))["y"].numpy()


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(value - reference).max() / np.abs(reference).max())


def test_masked_attention_runs_in_both_half_precisions(attention_package) -> None:
    folder, package = attention_package
    expected = source_output(folder)
    np.testing.assert_allclose(
        run_v1(package.path, ["serve"], {"x": X})["y"], expected, rtol=1e-6, atol=1e-6
    )
    half = run_v1(package.path, ["serve", "gpu"], {"x": X})["y"]
    assert relative_error(half, expected) < 1e-2
    tpu = run_tpu_graph_on_cpu(package.path, ["serve", "tpu"], "serving_default", {"x": X})
    assert relative_error(tpu["y"], expected) < 4e-2


def test_only_floating_point_compute_is_retyped(attention_package) -> None:
    _, package = attention_package
    nodes = meta_graph(package.path, ["serve", "gpu"]).graph_def.node
    dtypes: dict[str, set[str]] = {}
    for node in nodes:
        attr = "Tidx" if node.op == "Range" else "T"
        # model/: the imported SavedModel; compute/: the python source's traced function
        in_compute = node.name.startswith(("model/", "compute/"))
        if in_compute and node.attr[attr].WhichOneof("value") == "type":
            dtypes.setdefault(node.op, set()).add(tf.as_dtype(node.attr[attr].type).name)
    assert dtypes["Range"] == {"float32"}  # index arithmetic
    assert dtypes["Softmax"] == {"float32"}
    assert dtypes["Mean"] == {"float32"}  # normalisation statistics
    assert dtypes["Rsqrt"] == {"float32"}
    assert dtypes["Einsum"] == {"float16"}
    assert dtypes["BatchMatMulV2"] == {"float16"}


def test_every_variant_verifies(attention_package) -> None:
    # Verify compares each half-precision variant with float32 within its stated tolerance.
    _, package = attention_package
    report = smpack.verify(package.path)
    assert [(label, c.name) for label, c in report.rows() if not c.passed or c.warning] == []
    agreements = [c.name for _, c in report.rows() if " agrees with serve " in c.name]
    assert len(agreements) == 2


def test_float16_mask_constants_saturate_instead_of_becoming_infinite(attention_package) -> None:
    _, package = attention_package
    nodes = meta_graph(package.path, ["serve", "gpu"]).graph_def.node
    half_constants = [
        tf.make_ndarray(n.attr["value"].tensor)
        for n in nodes
        if n.op == "Const" and n.attr["dtype"].type == tf.float16.as_datatype_enum
    ]
    assert all(np.isfinite(c).all() for c in half_constants)
    # The float32 mask meets the half-precision scores through a saturating cast.
    assert any(n.op == "ClipByValue" for n in nodes)


class Determinant(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(tf.random.stateless_normal([2, 2], seed=[3, 3]), name="w")

    @tf.function(input_signature=[tf.TensorSpec([None, 2, 2], tf.float32)])
    def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        # MatrixDeterminant's op definition allows float16, but no CPU or GPU kernel has it.
        return {"y": tf.linalg.det(x @ self.w)}


def test_ops_without_a_half_precision_kernel_stay_float32(tmp_path: Path) -> None:
    module = Determinant()
    tf.saved_model.save(module, str(tmp_path / "det"), signatures=module.predict)
    variants = {
        "cpu": {"tags": ["serve"]},
        "half": {"tags": ["serve", "half"], "precision": "float16"},
    }
    package = smpack.build(
        write_manifest(tmp_path, {"savedmodel": "det"}, variants=variants), tmp_path
    )
    x = np.random.default_rng(1).normal(size=(3, 2, 2)).astype(np.float32)
    expected = run_v1(package.path, ["serve"], {"x": x})["y"]
    half = run_v1(package.path, ["serve", "half"], {"x": x})["y"]
    assert relative_error(half, expected) < 1e-2
    nodes = meta_graph(package.path, ["serve", "half"]).graph_def.node
    (det,) = (n for n in nodes if n.op == "MatrixDeterminant")
    (product,) = (n for n in nodes if n.op == "BatchMatMulV2")
    assert (det.attr["T"].type, product.attr["T"].type) == (tf.float32, tf.float16)


# What a half-precision trace of a python source cannot take: (the code, the line named).
UNTRACEABLE = {
    # A variable is lifted out of the trace, as tf.function lifts it: its initial value
    # cannot be computed there. Found while tracing: the line making the variable.
    "starts from a value computed while tracing it": (
        "return x @ tf.Variable(w)",
        7,
    ),
}


@pytest.mark.parametrize("problem", sorted(UNTRACEABLE))
def test_python_compute_that_cannot_be_traced_is_one_clear_error(
    tmp_path: Path, problem: str
) -> None:
    (tmp_path / "model.py").write_text(
        "import tensorflow as tf\n"
        "from smpack import ModelContext, ModelSpec\n"
        "def model_fn(ctx: ModelContext) -> ModelSpec:\n"
        "    x = tf.compat.v1.placeholder(tf.float32, [None, 3], name='x')\n"
        "    def fn(x):\n"
        "        w = tf.compat.v1.get_variable('w', [3, 3])\n"
        f"        {UNTRACEABLE[problem][0]}\n"
        "    y = tf.identity(ctx.compute(fn, x), name='y')\n"
        "    return ModelSpec(inputs={'x': x}, outputs={'y': y})\n"
    )
    signatures = {"serving_default": {"method": "predict", "inputs": ["x"], "outputs": ["y"]}}
    variants = {
        "cpu": {"tags": ["serve"]},
        "half": {"tags": ["serve", "half"], "precision": "float16"},
    }
    manifest = write_manifest(
        tmp_path, {"python": "model.py:model_fn"}, variants=variants, signatures=signatures
    )
    with pytest.raises(smpack.SmpackError) as raised:
        smpack.build(manifest, tmp_path / "out")
    assert raised.value.line == UNTRACEABLE[problem][1]
    assert problem in str(raised.value)
    assert "(building variant 'half')" in str(raised.value)
    assert not (tmp_path / "out").exists()


def graph_of_every_class() -> tf.compat.v1.GraphDef:
    """A graph with a node of each class: matrix products (half), softmax, a mean and the
    normalisation statistics (float32), a mask constant, integer index arithmetic (free),
    ops following a half input through an identity, and control inputs."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        ids = tf.compat.v1.placeholder(tf.int32, [None], name="ids")
        weights = tf.constant(np.arange(12, dtype=np.float32).reshape(4, 3), name="w")
        hidden = tf.nn.relu(tf.identity(tf.matmul(x, weights)) + tf.constant([0.5, 1.0, 2.0]))
        masked = hidden + tf.constant(-1e9, name="mask") * tf.cast(ids[:, None] > 1, tf.float32)
        mean, variance = tf.nn.moments(masked, axes=[1], keepdims=True)
        with tf.control_dependencies([mean]):
            normalised = (masked - mean) * tf.math.rsqrt(variance + 1e-3)
        scores = tf.nn.softmax(tf.matmul(normalised, weights, transpose_b=True))
        tf.identity(tf.reduce_mean(scores, axis=1), name="out")
    return graph.as_graph_def()


@pytest.mark.parametrize(
    ("golden", "target"),
    [
        ("retyped_float16.pbtxt", HalfTarget(types_pb2.DT_HALF, ("CPU", "GPU"))),
        ("retyped_bfloat16.pbtxt", HalfTarget(types_pb2.DT_BFLOAT16, ("CPU",))),
    ],
)
def test_a_graph_of_every_class_is_retyped_as_it_always_was(golden, target) -> None:
    retyped_graph = retyped(graph_of_every_class(), target)

    check_golden(golden, text_format.MessageToString(retyped_graph))


def test_one_reading_of_a_graph_retypes_it_for_each_target_as_a_fresh_one() -> None:
    graph = graph_of_every_class()
    targets = [
        HalfTarget(types_pb2.DT_HALF, ("XLA_GPU_JIT",)),
        HalfTarget(types_pb2.DT_BFLOAT16, ("XLA_TPU_JIT", "XLA_CPU_JIT")),
        HalfTarget(types_pb2.DT_HALF, ("CPU", "GPU")),
    ]
    retyping = Retyping(graph)

    for target in targets + targets[::-1]:
        assert retyping.to(target) == retyped(graph, target)
    assert graph == graph_of_every_class()  # read, never changed


def test_each_nodes_output_dtypes_are_read_once_and_again_only_where_a_target_retypes_it(
    monkeypatch,
) -> None:
    graph = graph_of_every_class()
    reads: list[str] = []
    read_outputs = precision._Types._read_outputs  # noqa: SLF001

    def recorded(types: Any, node: Any) -> list[int]:
        reads.append(node.name)
        return read_outputs(types, node)

    monkeypatch.setattr(precision._Types, "_read_outputs", recorded)  # noqa: SLF001
    retyping = Retyping(graph)

    assert sorted(reads) == sorted(node.name for node in graph.node)
    for target in [
        HalfTarget(types_pb2.DT_HALF, ("CPU", "GPU")),
        HalfTarget(types_pb2.DT_BFLOAT16, ("XLA_TPU_JIT", "XLA_CPU_JIT")),
    ]:
        reads.clear()
        retyped_graph = retyping.to(target)
        before = {node.name: node for node in graph.node}
        changed = {
            node.name
            for node in retyped_graph.node
            if node.name in before and node.attr != before[node.name].attr
        }
        assert reads
        assert set(reads) <= changed
