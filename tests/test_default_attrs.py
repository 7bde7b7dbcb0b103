"""The writer strips default-valued attributes exactly as TensorFlow's exporter does.

`smpack.builder.default_attrs` replaces TF's `strip_graph_default_valued_attrs` on every
exported graph; these hold it to TF's bytes on graphs of many op types, with function bodies,
attributes at and away from their defaults, ops TF does not know and calls of library
functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.framework import meta_graph

from smpack.builder.default_attrs import strip_default_valued_attrs


def _graph_of_many_ops() -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="images")
        kernel = tf.Variable(tf.ones([3, 3, 3, 4]), name="kernel")
        # data_format and dilations at their defaults, padding without one.
        conv = tf.nn.conv2d(images, kernel, strides=1, padding="SAME")
        pooled = tf.nn.max_pool2d(conv, 2, 2, "VALID")
        flat = tf.reshape(pooled, [-1, 64])
        weights = tf.Variable(tf.ones([4, 64]), name="weights")
        logits = tf.matmul(flat, weights, transpose_b=True)
        # shrink_axis_mask away from its default, the other masks at theirs.
        sliced = tf.strided_slice(logits, [0, 1], [2, 3], shrink_axis_mask=1)
        halved = tf.cast(tf.cast(sliced, tf.float16), tf.float32)

        @tf.function
        def scaled(x: tf.Tensor) -> tf.Tensor:
            # Function bodies are stripped too.
            return tf.reduce_sum(tf.matmul(x, x, transpose_a=True)) * 2.0

        tf.identity(scaled(logits) + tf.reduce_mean(halved), name="out")
    return graph


def _unstripped(graph: tf.Graph) -> Any:
    with graph.as_default():
        return tf.compat.v1.train.export_meta_graph(strip_default_attrs=False)


def _with_unusual_nodes(exported: Any) -> Any:
    """`exported` with nodes TF's stripper skips, each with Cast's `Truncate` at Cast's
    default: an op no registry knows, and a call of a library function named `Cast`; and
    two `ImageSummary` nodes whose `bad_color` tensor is written as bytes, not as the
    default's list of ints: one the default's colour, one not."""
    unusual = meta_graph_pb2.MetaGraphDef()
    unusual.CopyFrom(exported)
    graph_def = unusual.graph_def
    unknown = graph_def.node.add(name="unknown", op="SmpackNoSuchOp")
    unknown.attr["Truncate"].b = False
    graph_def.library.function.add().signature.name = "Cast"
    call = graph_def.node.add(name="call", op="Cast")
    call.attr["Truncate"].b = False
    for name, colour in [("default_colour", [255, 0, 0, 255]), ("green", [0, 255, 0, 255])]:
        summary = graph_def.node.add(name=name, op="ImageSummary")
        summary.attr["bad_color"].tensor.CopyFrom(tf.make_tensor_proto(np.array(colour, np.uint8)))
    return unusual


def _stripped_by_tf(meta_graph_def: Any) -> Any:
    stripped = meta_graph_pb2.MetaGraphDef()
    stripped.CopyFrom(meta_graph_def)
    meta_graph.strip_graph_default_valued_attrs(stripped)
    return stripped


def _attrs(meta_graph_def: Any) -> set[tuple[str, str]]:
    graph_def = meta_graph_def.graph_def
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    return {(node.name, attr) for node in nodes for attr in node.attr}


@pytest.mark.parametrize("unusual", [False, True], ids=["graph", "with-unusual-nodes"])
def test_strips_the_attributes_tensorflow_strips(unusual: bool) -> None:
    exported = _unstripped(_graph_of_many_ops())
    if unusual:
        exported = _with_unusual_nodes(exported)
    expected = _stripped_by_tf(exported)
    stripped = meta_graph_pb2.MetaGraphDef()
    stripped.CopyFrom(exported)

    strip_default_valued_attrs(stripped)

    assert stripped.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    removed = _attrs(exported) - _attrs(stripped)
    kept = _attrs(stripped)
    function_nodes = {n.name for f in exported.graph_def.library.function for n in f.node_def}
    # Something was stripped, at top level and in the function body; values away from the
    # default and attributes of nodes TF skips were kept.
    assert ("Conv2D", "data_format") in removed
    assert any(node in function_nodes for node, _ in removed)
    assert ("StridedSlice", "begin_mask") in removed
    assert ("StridedSlice", "shrink_axis_mask") in kept
    assert stripped.meta_info_def.stripped_default_attrs
    if unusual:
        assert {("unknown", "Truncate"), ("call", "Truncate"), ("green", "bad_color")} <= kept
        # Equal to the default written differently: TF's own comparison decides.
        assert ("default_colour", "bad_color") in removed


def test_an_exported_graph_is_the_one_tensorflow_exports() -> None:
    graph = _graph_of_many_ops()
    with graph.as_default():
        expected = tf.compat.v1.train.export_meta_graph(strip_default_attrs=True)
    exported = _unstripped(graph)

    strip_default_valued_attrs(exported)

    assert exported.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
