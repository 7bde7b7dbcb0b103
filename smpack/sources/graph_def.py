"""Reading GraphDef nodes: names (a tensor `node:index` or a control input `^node` -> its
node), and what a node needs of its graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The ops calling a function by their `f` attribute.
FUNCTION_CALLS = ("StatefulPartitionedCall", "PartitionedCall")


def node_name(tensor: str) -> str:
    """The node that `tensor` (`node`, `node:1` or `^node`) comes from."""
    return tensor.lstrip("^").partition(":")[0]


def tensor_name(tensor: str) -> str:
    """A NodeDef's data input as a full tensor name: `node` -> `node:0`."""
    return tensor if ":" in tensor else f"{tensor}:0"


def through_identities(nodes: Mapping[str, Any], tensor: str) -> str | None:
    """The tensor `tensor` forwards, following Identity ops; None if it leaves `nodes`."""
    while True:
        node = nodes.get(node_name(tensor))
        if node is None:
            return None
        if node.op != "Identity":
            return tensor
        tensor = node.input[0]


def calls_function(node: Any) -> bool:
    """Whether `node` names a function of its graph's library in an attribute (a functional
    `While` or `If`, a `PartitionedCall`)."""
    return any(
        attr.WhichOneof("value") == "func"
        or (attr.WhichOneof("value") == "list" and len(attr.list.func) > 0)
        for attr in node.attr.values()
    )
