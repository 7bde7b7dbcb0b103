"""A train scaffolding built over one variable per kind, widened to every variable as protos.

The Python path makes a handful of ops per variable (its nodes, its optimizer slots, its
update), milliseconds of Python each: most of what an assembled train graph
(builder/assembled_training.py) still cost at a thousand variables. Those ops differ between
two trainable variables of one shape and dtype by nothing but the names of the variable and
what they make for it (`<variable>/...`, `train_op/update_<variable>/...`) and the colocation
on it, so the scaffolding is built over one representative per kind (the first by name, so
that Adam's beta powers, colocated with the first variable, are the Python path's) and
each representative's nodes are copied under every other variable of its kind, as
builder/writer.py widens its Saver. Ops made for all variables at once (the optimizer's
`update` group, Adam's beta power updates) wait for the copies as for the representative.

Not widened (each variable its own representative): a variable not trained, one whose name
is a path prefix of another's, and names that differ only in case (the Python graph would
make them unique otherwise); and the whole scaffolding when anything else reads a
representative's nodes (`NotWidened`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import variable_pb2

from smpack.sources.savedmodel import SourceVariable

# `Optimizer.apply_gradients(..., name="train_op")` names each variable's update scope so.
_UPDATE = "train_op/update_"
_VARIABLE_COLLECTIONS = (
    tf.compat.v1.GraphKeys.GLOBAL_VARIABLES,
    tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES,
)


class NotWidened(Exception):  # noqa: N818 -- control flow: build every variable in Python
    pass


class Widening:
    """Each representative variable -> the other variables of its kind."""

    def __init__(self, variables: list[SourceVariable], pinned: set[str], widen: bool) -> None:
        """`pinned` variables are their own representatives (the stand-in reads them)."""
        names = [variable.name for variable in variables]
        lowered = {name.lower() for name in names}
        prefixes = {name.rsplit("/", i)[0] for name in names for i in range(1, name.count("/") + 1)}
        kinds: dict[Any, list[str]] = {}
        for variable in variables:
            alone = (
                not widen
                or not variable.trainable
                or variable.name in pinned
                or variable.name in prefixes
                or len(lowered) < len(names)
            )
            key = variable.name if alone else (variable.shape, variable.dtype)
            kinds.setdefault(key, []).append(variable.name)
        # The first by name of each kind (TF sorts `a/k:0` so), which Adam colocates with.
        self.members = {}
        for kind in kinds.values():
            first, *others = sorted(kind, key=lambda name: f"{name}:0")
            self.members[first] = others
        self.member_of = {
            member: representative
            for representative, members in self.members.items()
            for member in members
        }

    @property
    def widens(self) -> bool:
        return bool(self.member_of)

    def owner(self, name: str) -> str | None:
        """The representative a node named `name` is made for, if any."""
        name = name.lstrip("^")
        if name.startswith(_UPDATE):
            name = name[len(_UPDATE) :]
        name = name.partition(":")[0]
        while True:
            if name in self.members:
                return name
            if "/" not in name:
                return None
            name = name.rpartition("/")[0]

    def renamed(self, name: str, representative: str, member: str) -> str:
        """`name` (a node's, an input's, a tensor's) made for `member` instead."""
        return _made(_split(name, representative), member)

    def widened(self, graph_def: Any, stood_in: Iterable[str] = ()) -> tuple[Any, dict[str, str]]:
        """`graph_def` with each representative's nodes copied for its members; and each
        copy's name -> its original's. Nodes in `stood_in` (replaced later) may read a
        representative's nodes; any other reading one but as a control input is refused.

        `graph_def` may hold the nodes a graph made after others widened already (the
        nodes it reads need not be in it); `check_names` then checks the whole graph's."""
        if not self.widens:
            return graph_def, {}
        stood_in = set(stood_in)
        owners = {node.name: self.owner(node.name) for node in graph_def.node}

        def owner(name: str) -> str | None:
            node = name.lstrip("^").partition(":")[0]
            return owners[node] if node in owners else self.owner(node)

        result = type(graph_def)()
        result.versions.CopyFrom(graph_def.versions)
        result.library.CopyFrom(graph_def.library)
        copied: dict[str, str] = {}
        for node in graph_def.node:
            added = result.node.add()
            added.CopyFrom(node)
            representative = owners[node.name]
            if representative is None:
                inputs = []
                for name in node.input:
                    inputs.append(name)
                    read = owner(name)
                    if read is None or not self.members[read]:
                        continue
                    if not name.startswith("^") and node.name not in stood_in:
                        raise NotWidened  # read as data beside the representative's own
                    if name.startswith("^"):
                        inputs += [self.renamed(name, read, m) for m in self.members[read]]
                added.input[:] = inputs
                continue
            if not self.members[representative]:
                continue
            # What differs between the copies, split where the representative's name is.
            name = _split(node.name, representative)
            inputs = []
            for tensor in node.input:
                if owner(tensor) not in (None, representative):
                    raise NotWidened  # reads another variable's nodes
                inputs.append(_split(tensor, representative))
            locations = [
                _split(location.decode()[len("loc:@") :], representative)
                for location in (node.attr["_class"].list.s if "_class" in node.attr else [])
            ]
            handle_names = {
                key: _split(node.attr[key].s.decode(), representative)
                for key in ("shared_name", "debug_name")
                if node.op == "VarHandleOp" and key in node.attr
            }
            for member in self.members[representative]:
                copy = result.node.add()
                copy.CopyFrom(node)
                copy.name = _made(name, member)
                copy.input[:] = [_made(tensor, member) for tensor in inputs]
                if locations:
                    copy.attr["_class"].list.s[:] = [
                        b"loc:@" + _made(location, member).encode() for location in locations
                    ]
                for key, value in handle_names.items():
                    copy.attr[key].s = _made(value, member).encode()
                copied[copy.name] = node.name
        self.check_names((node.name for node in graph_def.node), copied)
        return result, copied

    def check_names(self, names: Iterable[str], copies: Iterable[str]) -> None:
        """Refuses copies named alike, or as a node of the graph (`names`), but for case:
        the Python graph would have made such names unique."""
        taken = {name.lower() for name in names}
        made = [name.lower() for name in copies]
        if len(set(made)) < len(made) or not taken.isdisjoint(made):
            raise NotWidened

    def collections(self, collections: dict[str, Any]) -> dict[str, Any]:
        """The exported collections, each representative's VariableDefs followed by its
        members'; refused where another collection names a representative's node."""
        if not self.widens:
            return collections
        widened = {}
        for key, collection in collections.items():
            if key not in _VARIABLE_COLLECTIONS:
                if any(self.owner(name) for name in collection.node_list.value):
                    raise NotWidened
                widened[key] = collection
                continue
            copy = type(collection)()
            for serialized in collection.bytes_list.value:
                copy.bytes_list.value.append(serialized)
                variable_def = variable_pb2.VariableDef.FromString(serialized)
                representative = self.owner(variable_def.variable_name)
                if representative is None:
                    continue
                for member in self.members[representative]:
                    made = variable_pb2.VariableDef()
                    made.CopyFrom(variable_def)
                    for field in (
                        "variable_name",
                        "initial_value_name",
                        "initializer_name",
                        "snapshot_name",
                    ):
                        value = getattr(variable_def, field)
                        setattr(made, field, self.renamed(value, representative, member))
                    copy.bytes_list.value.append(made.SerializeToString())
            widened[key] = copy
        return widened

    def names(self, names: Iterable[str]) -> list[str]:
        """`names` (of variables), each representative's followed by its members'."""
        result = []
        for name in names:
            result.append(name)
            representative = self.owner(name)
            if representative is not None:
                result += [
                    self.renamed(name, representative, m) for m in self.members[representative]
                ]
        return result


def _split(name: str, representative: str) -> tuple[str, ...]:
    """`name` split around `representative`'s name where it names that variable or its
    update (`name` alone where it does not), for `_made`."""
    control = "^" if name.startswith("^") else ""
    bare = name[len(control) :]
    for prefix in ("", _UPDATE):
        head = prefix + representative
        if bare == head or bare.startswith((head + "/", head + ":")):
            return control + prefix, bare[len(head) :]
    return (name,)


def _made(split: tuple[str, ...], member: str) -> str:
    """A name `_split` split, made for `member`."""
    return split[0] if len(split) == 1 else split[0] + member + split[1]
