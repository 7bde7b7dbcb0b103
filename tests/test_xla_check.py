"""run_tpu_graph_on_cpu on SavedModels written the way smpack writes TPU variants.

Each package holds a float32 [serve] graph and a bfloat16 [serve, tpu] graph built with
`tf.compat.v1.tpu.rewrite`, saved with TensorFlow's own v1 Builder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import meta_graph, run_v1

from smpack.checks.xla_check import run_tpu_graph_on_cpu, tpu_graph_on_cpu
from smpack.errors import SmpackError

v1 = tf.compat.v1
TPU = ("serve", "tpu")
SIGNATURE = "serving_default"

# compute(fn, *tensors) runs fn(dtype, *tensors), the device computation, plainly in float32
# or under tpu.rewrite in bfloat16; a model builds a graph around it and returns the
# signature's inputs and outputs.
Compute = Callable[..., list[Any]]
Tensors = dict[str, Any]
Model = Callable[[Compute], tuple[Tensors, Tensors]]


def _float32_storage_getter(
    getter: Callable[..., Any], name: str, *args: Any, **kwargs: Any
) -> Any:
    if kwargs.get("dtype") != tf.bfloat16:
        return getter(name, *args, **kwargs)
    kwargs["dtype"] = tf.float32
    return tf.cast(getter(name, *args, **kwargs), tf.bfloat16)


def _float32_compute(fn: Callable[..., list[Any]], *tensors: Any) -> list[Any]:
    return fn(tf.float32, *tensors)


def _tpu_compute(fn: Callable[..., list[Any]], *tensors: Any) -> list[Any]:
    def body(*tensors: Any) -> list[Any]:
        cast = [tf.cast(t, tf.bfloat16) if t.dtype.is_floating else t for t in tensors]
        with v1.variable_scope(
            v1.get_variable_scope(),
            custom_getter=_float32_storage_getter,
            auxiliary_name_scope=False,
        ):
            return [tf.cast(t, tf.float32) for t in fn(tf.bfloat16, *cast)]

    return [tf.identity(t) for t in v1.tpu.rewrite(body, list(tensors))]


def _export(export_dir: Path, model: Model) -> Path:
    builder = v1.saved_model.Builder(str(export_dir))
    for compute in (_float32_compute, _tpu_compute):
        with tf.Graph().as_default():
            inputs, outputs = model(compute)
            signatures = {SIGNATURE: v1.saved_model.predict_signature_def(inputs, outputs)}
            assets = v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS)
            init = v1.tables_initializer()
            if compute is _float32_compute:
                with v1.Session() as session:
                    session.run([v1.global_variables_initializer(), init])
                    builder.add_meta_graph_and_variables(
                        session, ["serve"], signatures, assets_collection=assets, main_op=init
                    )
            else:
                builder.add_meta_graph(
                    list(TPU), signatures, assets_collection=assets, main_op=init
                )
    builder.save()
    return export_dir


def _linear(compute: Compute) -> tuple[Tensors, Tensors]:
    def fn(dtype: tf.DType, x: tf.Tensor) -> list[tf.Tensor]:
        var_1 = v1.get_variable("var_1", [], dtype, v1.constant_initializer(2.0))
        var_2 = v1.get_variable("var_2", [], dtype, v1.constant_initializer(3.0))
        return [var_1 * x + var_2]

    x = v1.placeholder(tf.float32, [8], name="input")
    (output,) = compute(fn, x)
    return {"input": x}, {"output": output}


def _text_classifier(vocab: Path) -> Model:
    words = vocab.read_text().split()

    def model(compute: Compute) -> tuple[Tensors, Tensors]:
        def fn(dtype: tf.DType, ids: tf.Tensor) -> list[tf.Tensor]:
            init = v1.random_normal_initializer(seed=1)
            embedding = v1.get_variable("embedding", [len(words) + 1, 4], dtype, init)
            kernel = v1.get_variable("dense/kernel", [4, 3], dtype, init)
            bias = v1.get_variable("dense/bias", [3], dtype, v1.constant_initializer(0.1))
            pooled = tf.reduce_mean(tf.gather(embedding, ids), axis=1)
            return [tf.nn.softmax(tf.matmul(pooled, kernel) + bias)]

        # Host side: tokenize, pad to 5 words and look them up; unknown words and padding
        # share the embedding's last row.
        text = v1.placeholder(tf.string, [8], name="text")
        vocab_path = tf.constant(str(vocab), name="vocab_path")
        v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, vocab_path)
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_path,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            default_value=len(words),
        )
        tokens = tf.strings.split(text).to_tensor(shape=[8, 5])
        (scores,) = compute(fn, table.lookup(tokens))
        return {"text": text}, {"scores": scores}

    return model


def _segment_pooling(compute: Compute) -> tuple[Tensors, Tensors]:
    # Sorted-segment pooling is classic TF1 code and tpu.rewrite accepts it, but SegmentSum
    # has no XLA kernel (XLA only lowers the unsorted variant).
    def fn(dtype: tf.DType, x: tf.Tensor) -> list[tf.Tensor]:
        scale = v1.get_variable("scale", [], dtype, v1.constant_initializer(2.0))
        return [tf.math.segment_sum(scale * x, [0, 0, 1, 1, 2, 2, 3, 3])]

    x = v1.placeholder(tf.float32, [8], name="input")
    (output,) = compute(fn, x)
    return {"input": x}, {"output": output}


def test_linear_runs_on_xla_cpu_within_bfloat16_tolerance(tmp_path: Path) -> None:
    export_dir = _export(tmp_path / "linear", _linear)
    nodes = meta_graph(export_dir, TPU).graph_def.node
    assert any(node.op == "TPUReplicateMetadata" for node in nodes)
    assert any("_tpu_replicate" in node.attr and node.op == "Mul" for node in nodes)

    x = np.linspace(-3.3, 4.7, 8, dtype=np.float32)
    result = run_tpu_graph_on_cpu(export_dir, list(TPU), SIGNATURE, {"input": x})

    assert set(result) == {"output"} and result["output"].dtype == np.float32
    np.testing.assert_allclose(result["output"], 2.0 * x + 3.0, rtol=1e-2)
    # Not bit-identical: the stored bfloat16 computation ran, not some float32 stand-in.
    assert not np.array_equal(result["output"], 2.0 * x + 3.0)


def test_text_classifier_matches_float32_serve_graph(tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("the\ncat\nsat\non\nmat\ndog\nran\n")
    export_dir = _export(tmp_path / "text", _text_classifier(vocab))
    vocab.unlink()  # the table must be initialised from <export_dir>/assets/vocab.txt
    text = np.array(
        [
            b"the cat sat",
            b"the dog ran",
            b"on the mat",
            b"cat",
            b"dog dog dog",
            b"a zebra sat on it",
            b"",
            b"ran on",
        ],
        dtype=object,
    )

    expected = run_v1(export_dir, ["serve"], {"text": text})["scores"]
    result = run_tpu_graph_on_cpu(export_dir, TPU, SIGNATURE, {"text": text})

    assert result["scores"].shape == (8, 3)
    np.testing.assert_allclose(result["scores"], expected, rtol=1e-2, atol=5e-3)


def test_op_without_xla_kernel_is_a_compile_error(tmp_path: Path) -> None:
    export_dir = _export(tmp_path / "pooling", _segment_pooling)
    x = np.arange(8, dtype=np.float32)
    # The float32 serve graph, same ops without the rewrite, runs on plain TensorFlow: what
    # fails below is XLA refusing to compile, with no fallback to TensorFlow kernels.
    np.testing.assert_array_equal(
        run_v1(export_dir, ["serve"], {"input": x})["output"], [2.0, 10.0, 18.0, 26.0]
    )

    with pytest.raises(SmpackError, match="XLA cannot compile.*SegmentSum"):
        run_tpu_graph_on_cpu(export_dir, TPU, SIGNATURE, {"input": x})


def test_one_load_runs_every_request_on_the_restored_variables(tmp_path: Path) -> None:
    export_dir = _export(tmp_path / "linear", _linear)
    requests = [np.full(8, value, dtype=np.float32) for value in (0.0, 1.0, -2.0)]

    with tpu_graph_on_cpu(export_dir, TPU) as graph:
        results = [graph.run(SIGNATURE, {"input": x})["output"] for x in requests]
        # The computation is part of the loader's session and reads its variables in
        # place, not a copy taken at load time: a new value is seen at once.
        with graph.session.graph.as_default():
            var_1 = graph.session.graph.get_tensor_by_name("var_1:0")
            graph.session.run(tf.raw_ops.AssignVariableOp(resource=var_1, value=10.0))
        after_assign = graph.run(SIGNATURE, {"input": requests[1]})["output"]

    for x, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result, 2.0 * x + 3.0, rtol=1e-2)
    np.testing.assert_allclose(after_assign, 10.0 * requests[1] + 3.0, rtol=1e-2)


def test_the_computations_are_added_as_the_graph_loads_before_any_run(tmp_path: Path) -> None:
    # Added before the restore, they are work a graph's process does ahead of its turn, while
    # the graph before it still runs (smpack/checks/loading.py).
    export_dir = _export(tmp_path / "linear", _linear)
    with tpu_graph_on_cpu(export_dir, TPU) as graph:
        library = graph.session.graph.as_graph_def().library
        assert [f for f in library.function if f.attr["_XlaMustCompile"].b]
        x = np.full(8, 2.0, dtype=np.float32)
        np.testing.assert_allclose(graph.run(SIGNATURE, {"input": x})["output"], 7.0, rtol=1e-2)
