"""Which checkpoint tensor each variable of a MetaGraph restores from, read from its graph.

A TF1 graph restores through its Saver's `RestoreV2` ops: each output, through `Identity`
ops, is assigned to one variable. Usually the key is the variable's op name, but not for the
parts of a partitioned variable (slices of one tensor, named after the whole), and a
package may restore through several `RestoreV2` ops (builder/restore_groups.py).
"""

from __future__ import annotations

from typing import Any

_ASSIGNS = frozenset({"AssignVariableOp", "Assign"})
# What lies between an assign and the tensor names it restores.
_READ = frozenset({"Identity", "RestoreV2", "Const"})
_VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable"})


def restored_variables(graph_def: Any) -> list[tuple[Any, str, str]]:
    """Each variable op of `graph_def` (its NodeDef) with the checkpoint key and slice spec
    ("" for the whole tensor) it restores from: as its restore ops assign, else its own name
    and ""."""
    # One pass finds the variables too: a train graph's 20,000 nodes cost ~15 ms a pass.
    nodes, assigns, variables = {}, [], []
    for node in graph_def.node:  # only the nodes looked up below are kept
        op = node.op
        if op in _READ:
            nodes[node.name] = node
        elif op in _ASSIGNS and len(node.input) >= 2:
            assigns.append(node)
        elif op in _VARIABLE_OPS:
            variables.append(node)
    keys = {}
    for node in assigns:
        value = node.input[1]
        producer = nodes.get(value.partition(":")[0])
        while producer is not None and producer.op == "Identity" and producer.input:
            value = producer.input[0]
            producer = nodes.get(value.partition(":")[0])
        if producer is None or producer.op != "RestoreV2" or len(producer.input) < 3:
            continue
        index = int(value.partition(":")[2] or 0)
        names, specs = (nodes.get(name) for name in producer.input[1:3])
        if names is None or specs is None:
            continue
        name_values = names.attr["value"].tensor.string_val
        spec_values = specs.attr["value"].tensor.string_val
        if index < min(len(name_values), len(spec_values)):
            variable = node.input[0].partition(":")[0]
            keys[variable] = (name_values[index].decode(), spec_values[index].decode())
    return [(node, *keys.get(node.name, (node.name, ""))) for node in variables]


def full_shape(spec: str) -> tuple[int, ...]:
    """The whole tensor's shape in a slice spec ("<dims...> <extents>")."""
    return tuple(int(dim) for dim in spec.split(" ")[:-1])
