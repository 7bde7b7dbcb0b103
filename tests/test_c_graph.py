"""The C API graph the train graph's assembly differentiates in (`smpack.builder.c_graph`)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import tensorflow as tf

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
