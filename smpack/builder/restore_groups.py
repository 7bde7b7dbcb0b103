"""The package's restore op split into groups that TensorFlow's executor runs at once.

A Saver restores with one `RestoreV2` op per shard, which reads its tensors one after
another on one core (only a tensor above 16 M elements gets a thread pool). The restore op
is the package's own, so a large checkpoint's is split into several `RestoreV2` ops, each
holding a part of the tensors balanced by bytes, under the same `restore_all`: every loader
(Python, C++, TF Serving, the C API) runs them in parallel on its inter-op pool, which has
as many threads as the machine has cores. The same tensors are restored, so memory does not
change; nor does what is restored where.

The split is a function of the checkpoint alone (never of the machine building it), so a
package stays byte-identical wherever it is built, and a checkpoint under two groups' worth
keeps today's single op and bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from smpack.package.dtypes import dtype_name, numpy_dtype

# Restoring 1 GiB (64 x 16 MiB float32, page cache warm) on this project's 2 cores, 3-7
# runs each: one op 1.0-1.3 s; 2, 4, 8 or 16 groups all 0.6-0.9 s (8 twice at 1.4-1.5 s,
# with other jobs running): on 2 cores any k >= 2 is the same. A serving machine's
# inter-op pool has a thread per core (16-64), so more groups keep more of them reading;
# each group's op opens the bundle and is scheduled once, negligible beside 128 MiB of
# reading (~0.15 s a core). So: groups of at least 128 MiB (a checkpoint under 256 MiB
# keeps its one op and its bytes), at most 8 (1 GiB in 8; 16 GiB in 8 of 2 GiB): the most
# measured here; more groups for many-core hosts would be a guess this machine cannot test.
MIN_GROUP_BYTES = 128 << 20
MAX_GROUPS = 8


def restore_groups(sizes: Sequence[int]) -> list[list[int]]:
    """The indices of `sizes` (each tensor's bytes, in the restore op's order) in groups.

    One group below two groups' worth of bytes; else up to `MAX_GROUPS` groups of at least
    `MIN_GROUP_BYTES` each, filled largest tensor first into the lightest group (ties to
    the first index: deterministic), each group in the restore op's order, ordered by
    its first index, so the first group holds the first tensor.
    """
    count = min(MAX_GROUPS, sum(sizes) // MIN_GROUP_BYTES, sum(1 for s in sizes if s > 0))
    if count < 2:
        return [list(range(len(sizes)))]
    loads = [0] * count
    groups: list[list[int]] = [[] for _ in range(count)]
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        lightest = min(range(count), key=lambda g: (loads[g], g))
        groups[lightest].append(index)
        loads[lightest] += sizes[index]
    return sorted(sorted(group) for group in groups if group)


def split_restores(meta_graph: Any, group_of: Mapping[str, int]) -> None:
    """Split `meta_graph`'s Saver's `RestoreV2` ops by `group_of` (`checkpoint_groups`).

    The group of the op's first tensor keeps the op's name and constants; the others are
    `<op>/part_<n>`, and every reader of a moved output reads it there.
    """
    restore_all = meta_graph.saver_def.restore_op_name
    if not restore_all or len(set(group_of.values())) < 2:
        return
    graph_def = meta_graph.graph_def
    # A Saver builds every op of its restore under its own name scope.
    scope = restore_all.rpartition("/")[0] + "/"
    in_scope = {node.name: node for node in graph_def.node if node.name.startswith(scope)}
    for restore in _restore_ops(in_scope, restore_all):
        names, specs = (in_scope.get(name) for name in restore.input[1:3])
        if names is None or specs is None or names.op != "Const" or specs.op != "Const":
            continue
        by_group: dict[int, list[int]] = {}
        for index, name in enumerate(names.attr["value"].tensor.string_val):
            by_group.setdefault(group_of.get(name.decode(), 0), []).append(index)
        if len(by_group) > 1:
            _split(graph_def, (restore, names, specs), sorted(by_group.values()))


def checkpoint_groups(entries: Mapping[str, Any]) -> dict[str, int]:
    """Each tensor of the checkpoint `entries` (name -> BundleEntryProto) -> its group.

    Every graph's restore op is split by these groups, whichever of the tensors it restores,
    and a partitioned variable's slices are restored in its group.
    """
    names = sorted(entries)
    groups = restore_groups([_tensor_bytes(entries[name]) for name in names])
    return {names[index]: number for number, group in enumerate(groups) for index in group}


def _restore_ops(in_scope: Mapping[str, Any], restore_all: str) -> list[Any]:
    """The `RestoreV2` ops `restore_all` runs, in graph order."""
    seen = {restore_all}
    waiting = [restore_all]
    while waiting:
        node = in_scope.get(waiting.pop())
        for name in node.input if node is not None else []:
            name = name.lstrip("^").partition(":")[0]
            if name not in seen:
                seen.add(name)
                waiting.append(name)
    return [n for name, n in in_scope.items() if name in seen and n.op == "RestoreV2"]


def _tensor_bytes(entry: Any) -> int:
    """The bytes of a checkpoint entry's tensor, stored whole or in slices."""
    if not entry.slices:
        return int(entry.size)
    # A sliced tensor's own entry holds no bytes; its slices together hold all of it.
    count = 1
    for dim in entry.shape.dim:
        count *= dim.size
    values = numpy_dtype(dtype_name(entry.dtype))
    return count * (values.itemsize if values is not None else 1)


def _split(graph_def: Any, nodes: tuple[Any, Any, Any], groups: list[list[int]]) -> None:
    """Give the outputs of the restore op `nodes[0]` (its tensor names and slices the
    constants `nodes[1:]`) to one op per group, and rewire their readers."""
    restore = nodes[0]
    originals = [type(node)() for node in nodes]
    for original, node in zip(originals, nodes, strict=True):
        original.CopyFrom(node)
    # Output index -> the input naming it once moved; outputs of the first group keep
    # the op's name but may move to a lower index.
    moved: dict[int, str] = {}
    for number, group in enumerate(groups):
        name = f"{restore.name}/part_{number}" if number else restore.name
        if number:
            made = [graph_def.node.add() for _ in originals]
            for copy, original in zip(made, originals, strict=True):
                copy.CopyFrom(original)
            made[0].name = name
            made[1].name = f"{name}/tensor_names"
            made[2].name = f"{name}/shape_and_slices"
            made[0].input[1:3] = [made[1].name, made[2].name]
        else:
            made = list(nodes)
        for node in made:
            _keep(node, group)
        for position, index in enumerate(group):
            if (number, position) != (0, index):
                moved[index] = f"{name}:{position}" if position else name
    inputs = {f"{restore.name}:{index}": index for index in moved}
    if 0 in moved:
        inputs[restore.name] = 0
    for node in graph_def.node:
        for position, source in enumerate(node.input):
            if source in inputs:
                node.input[position] = moved[inputs[source]]


def _keep(node: Any, group: list[int]) -> None:
    """Keep the items of `group` in a restore op (its dtypes and output shapes) or in one of
    its constants (its values and shape)."""
    shapes = node.attr["_output_shapes"].list.shape if "_output_shapes" in node.attr else None
    if node.op == "RestoreV2":
        kept = [node.attr["dtypes"].list.type[i] for i in group]
        node.attr["dtypes"].list.type[:] = kept
        if shapes is not None:
            kept_shapes = [type(shapes[i])() for i in group]
            for copy, index in zip(kept_shapes, group, strict=True):
                copy.CopyFrom(shapes[index])
            del shapes[:]
            shapes.extend(kept_shapes)
        return
    tensor = node.attr["value"].tensor
    tensor.string_val[:] = [tensor.string_val[i] for i in group]
    tensor.tensor_shape.dim[0].size = len(group)
    if shapes is not None:
        shapes[0].dim[0].size = len(group)
