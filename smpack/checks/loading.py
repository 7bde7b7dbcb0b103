"""TF's SavedModel loader, waiting for the process's turn before it restores the variables.

Everything a graph's process does before the restore (reading the package, importing the
graph, making the session, adding a TPU graph's computations) needs no more memory than its
runtime; the restore takes the weights'. So verify starts the next graph's process while the
last one still runs, and that process waits for its turn only here
(`graph_server.wait_for_turn`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

from smpack.checks.graph_server import wait_for_turn


class LoadSeconds(NamedTuple):
    """What a load took, without its wait for the turn."""

    importing: float  # the graph's import (and `before_turn`)
    restoring: float  # the variables' restore and the init ops


def load_in_turn(
    loader: loader_impl.SavedModelLoader,
    session: tf.compat.v1.Session,
    tags: Sequence[str],
    before_turn: Callable[[], None] | None = None,
    **saver_kwargs: Any,
) -> LoadSeconds:
    """`loader.load(session, tags, **saver_kwargs)`, the loader's own three steps as it takes
    them, waiting for this process's turn between importing the graph and restoring it;
    `before_turn`, if given, runs first, on the graph without its weights."""
    with session.graph.as_default():
        start = time.perf_counter()
        saver, _ = loader.load_graph(session.graph, tags, **saver_kwargs)
        if before_turn is not None:
            before_turn()
        imported = time.perf_counter()
        wait_for_turn()
        turn = time.perf_counter()
        loader.restore_variables(session, saver)
        loader.run_init_ops(session, tags)
        return LoadSeconds(imported - start, time.perf_counter() - turn)
