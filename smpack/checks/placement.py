"""Loading a graph whose device pins this host cannot honour.

A `serve,gpu` graph pins its variables and compute to `/device:GPU:0`. On a host without a
GPU, soft placement moves them to the CPU, and TensorFlow's placer logs, for every variable
it moves, a warning with a page of "colocation debug info" (colocation_graph.cc): noise
about a move that was the only possible outcome. Loading such a graph with its pins
cleared places the same ops on the same CPU without it. Where every pinned device type is
present, the pins are kept, so a placement problem on a host that can honour them shows.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def pins_this_host_lacks(meta_graph: Any) -> bool:
    """Whether a node of `meta_graph` (or of its functions) is pinned to a device type
    that this host does not have, so that only soft placement could run it here."""
    pinned = {
        tf.DeviceSpec.from_string(node.device).device_type
        for node in _nodes(meta_graph)
        if node.device
    }
    present = {device.device_type for device in tf.config.list_physical_devices()}
    return bool(pinned - present - {None})


def _nodes(meta_graph: Any) -> list[Any]:
    graph_def = meta_graph.graph_def
    functions = graph_def.library.function
    return [*graph_def.node, *(node for f in functions for node in f.node_def)]
