"""The C API graph the train graph's assembly differentiates in (`smpack.builder.c_graph`)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import tensorflow as tf

from smpack.builder.assembled import c_graph_def_and_shapes, graph_def_and_shapes, import_into
from smpack.builder.c_graph import CGraph, _library


def _tanh_graph() -> Any:
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        tf.tanh(x, name="y")
    return graph.as_graph_def()


def test_a_closed_graph_is_freed_once_and_not_on_the_closing_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Freeing a large graph takes a tenth of a second that the build's Python need not
    # wait for: a ctypes call holds no GIL.
    library = _library()
    real_delete = library.TF_DeleteGraph
    freed_on: list[threading.Thread] = []
    freed = threading.Event()

    def delete_graph(graph: Any) -> None:
        freed_on.append(threading.current_thread())
        real_delete(graph)
        freed.set()

    monkeypatch.setattr(library, "TF_DeleteGraph", delete_graph)
    graph = CGraph(_tanh_graph())
    assert graph.shape("y:0").as_list() == [None, 3]
    graph.close()
    graph.close()
    assert freed.wait(timeout=30)
    assert len(freed_on) == 1
    assert freed_on[0] is not threading.current_thread()


def _shapes_graph() -> Any:
    """Outputs of known, partly known and unknown shape, ops of several outputs and none."""
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None, 6], name="x")
        anything = tf.compat.v1.placeholder(tf.float32, None, name="anything")
        halves = tf.split(tf.tanh(x), 2, axis=1, name="halves")
        variable = tf.compat.v1.get_variable("w", [3, 2], use_resource=True)
        product = tf.matmul(halves[0], variable, name="product")
        tf.identity(anything * 2.0, name="scaled")
        with tf.control_dependencies([product]):
            tf.no_op(name="done")
    return graph.as_graph_def()


@pytest.mark.parametrize("known", [None, {"x": "known"}])
def test_a_c_graphs_graph_def_and_shapes_are_the_python_graphs(known: Any) -> None:
    graph_def = _shapes_graph()
    python_graph = tf.Graph()
    import_into(python_graph, graph_def)
    graph = CGraph(graph_def)
    try:
        got = c_graph_def_and_shapes(graph, known)
    finally:
        graph.close()
    expected = graph_def_and_shapes(python_graph, known)
    assert got[0].SerializeToString(deterministic=True) == expected[0].SerializeToString(
        deterministic=True
    )
    assert got[1] == expected[1]
    assert got[1]["done"] is None  # no outputs
    assert len(got[1]["halves"].list.shape) == 2
    assert got[1]["anything"].list.shape[0].unknown_rank
