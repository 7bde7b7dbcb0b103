"""The package's `variables/` made from the source checkpoint's own data shards.

A TensorBundle is an index (a LevelDB-format table: tensor name -> dtype, shape, shard,
offset, size, checksum) and data shards of raw tensor bytes. The model's weights are already
in the source's shards, so they are hard-linked (or, across file systems, copied once) and a
new index maps the package's variable names to them. Variables the source lacks (global
step, optimizer slots) go to extra shards under the same index. No weight is ever
decoded, so memory does not grow with the weights.

A shard mostly holding tensors the package does not need (a Keras export stores each
weight twice) is not linked: the needed byte ranges are copied into a new shard instead.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import tensor_bundle_pb2

from smpack.builder.checkpoint_slices import save_whole, slice_bytes_per_shard, sliced_names
from smpack.errors import PackageError
from smpack.io.staging import link_or_copy
from smpack.package.checkpoint_index import (
    TABLE_MAGIC,
    masked_crc32c,
    read_index_bytes,
    table_items,
    tensor_name,
)
from smpack.package.digests import keep_digest
from smpack.package.wire import WireFormatError, encode_varint
from smpack.sources.graph_def import calls_function

# Link a shard whole only if the package uses most of it; else copy what it uses.
_LINK_WHEN_USED = 0.9
_COPY_CHUNK = 64 << 20
_EXTRA_BATCH_BYTES = 256 << 20


def read_bundle(prefix: Path) -> tuple[tensor_bundle_pb2.BundleHeaderProto, dict[str, Any]]:
    """The header and entries (name -> BundleEntryProto) of the bundle at `prefix`."""
    path = Path(f"{prefix}.index")
    header = tensor_bundle_pb2.BundleHeaderProto()
    entries = {}
    try:
        for key, value in table_items(read_index_bytes(path)):
            if key == b"":
                header.ParseFromString(value)
            elif not key.startswith(b"\x00"):  # slices of partitioned variables
                entry = tensor_bundle_pb2.BundleEntryProto()
                entry.ParseFromString(value)
                entries[tensor_name(key)] = entry
    except (OSError, WireFormatError, DecodeError) as e:
        msg = f"cannot read checkpoint index: {e}"
        raise PackageError(msg, file=path) from e
    return header, entries


class StreamingSaver(tf.compat.v1.train.Saver):
    """The Saver `SavedModelBuilder` is given for the graph that writes the variables.

    Its restore side, stored in the MetaGraph, is TF's own for every variable; saving
    streams the source's shards instead of evaluating the model's variables. No variable is
    initialised: the others' initial values (zeros for slots and the global step) are
    computed and saved a batch at a time, so optimizer slots, as large as the weights they
    shadow, are never all in memory together.
    """

    def __init__(self, source: Path, keys: Mapping[str, str], saver_def: Any = None):
        # Given a SaverDef, its ops are made elsewhere (see builder.writer.SharedSavers).
        super().__init__(
            sharded=True, write_version=tf.compat.v1.train.SaverDef.V2, saver_def=saver_def
        )
        self._source = source
        self._keys = dict(keys)
        self._fresh = [v for v in tf.compat.v1.global_variables() if v.op.name not in keys]

    def save(self, sess: tf.compat.v1.Session, save_path: str, *args: Any, **kwargs: Any) -> str:
        prefix = Path(save_path)
        extras: list[Path] = []
        sizes = [v.shape.num_elements() * v.dtype.base_dtype.size for v in self._fresh]
        for batch in _batches(self._fresh, sizes, _EXTRA_BATCH_BYTES):
            extras.append(prefix.parent / f"smpack_extra_{len(extras)}")
            _save_values(extras[-1], initial_values(sess, batch))
        save_streamed(prefix, self._source, self._keys, extras)
        return save_path


def save_assembled(
    prefix: Path,
    source: Path,
    keys: Mapping[str, str],
    graph_def: Any,
    fresh: list[tuple[str, str, int]],
) -> None:
    """What `StreamingSaver.save` writes, for a graph assembled as protos (`graph_def`):
    `keys`' variables from `source`, and the `fresh` ones (name, initial value tensor, size
    in bytes) computed from `graph_def`'s nodes a batch at a time."""
    nodes = {node.name: node for node in graph_def.node}
    extras: list[Path] = []
    for batch in _batches(fresh, [size for _, _, size in fresh], _EXTRA_BATCH_BYTES):
        extras.append(prefix.parent / f"smpack_extra_{len(extras)}")
        fetches = {name: initial for name, initial, _ in batch}
        needed = _needed(fetches.values(), lambda name: nodes[name], _node_inputs)
        values = _computed_alone(needed, graph_def.versions, fetches)
        # An assembled graph has no function library: every op it runs is registered.
        assert values is not None, "an assembled graph's initial value calls a function"
        _save_values(extras[-1], values)
    save_streamed(prefix, source, keys, extras)


def initial_values(session: tf.compat.v1.Session, variables: list[Any]) -> dict[str, Any]:
    """The `variables`' initial values by name, as a run in `session` computes them.

    Computed in a graph of just the ops they need, what `session` prunes its graph to: a
    first run in `session` converts and places all of its graph (a train graph's 20,000
    ops: half a second) for the few ops making a global step's and optimizer slots' zeros.
    Where an op they need calls a function, they are run in `session` itself.
    """
    with session.graph.as_default():  # a variable's graph properties are read in it
        fetches = {v.op.name: v.initial_value for v in variables}
    needed = _needed(
        [tensor.name for tensor in fetches.values()],
        session.graph.get_operation_by_name,
        lambda op: (
            [tensor.op.name for tensor in op.inputs]
            + [control.name for control in op.control_inputs]
        ),
    )
    values = _computed_alone(
        [op.node_def for op in needed],
        session.graph.graph_def_versions,
        {name: tensor.name for name, tensor in fetches.items()},
    )
    return session.run(fetches) if values is None else values


def _node_inputs(node: Any) -> list[str]:
    return [name.lstrip("^").partition(":")[0] for name in node.input]


def _needed(
    tensors: Iterable[str], find: Callable[[str], Any], inputs: Callable[[Any], list[str]]
) -> list[Any]:
    """The ops or nodes (`find` by name) computing `tensors`, and all they depend on."""
    needed: dict[str, Any] = {}
    waiting = [tensor.partition(":")[0] for tensor in tensors]
    while waiting:
        name = waiting.pop()
        if name not in needed:
            needed[name] = find(name)
            waiting += inputs(needed[name])
    return list(needed.values())


def _computed_alone(
    nodes: list[Any], versions: Any, fetches: dict[str, str]
) -> dict[str, Any] | None:
    """`fetches`' tensors (name -> tensor), computed in a graph of just `nodes`; None where
    one calls a function, which the graph alone would lack."""
    from tensorflow.python.framework import op_def_registry

    graph_def = graph_pb2.GraphDef()
    graph_def.versions.CopyFrom(versions)
    for node in nodes:
        if calls_function(node) or op_def_registry.get(node.op) is None:
            return None
        copy = graph_def.node.add()
        copy.CopyFrom(node)
        # Colocations name ops left out (the variables); placement changes no value, and
        # a device this host lacks falls back to the CPU, as in the writer's session.
        copy.attr.pop("_class", None)
    alone = tf.Graph()
    with alone.as_default():
        tensors = tf.graph_util.import_graph_def(
            graph_def, return_elements=list(fetches.values()), name=""
        )
    with tf.compat.v1.Session(graph=alone, config=soft_placement()) as computing:
        return dict(zip(fetches, computing.run(tensors), strict=True))


def soft_placement() -> tf.compat.v1.ConfigProto:
    """A session's configuration running a graph meant for devices this host may lack."""
    return tf.compat.v1.ConfigProto(allow_soft_placement=True)


def save_streamed(prefix: Path, source: Path, keys: Mapping[str, str], extras: list[Path]) -> None:
    """Write the bundle `prefix`: `keys`' variables from `source`'s shards, and `extras`."""
    _, entries = read_bundle(source)
    sliced = sliced_names(entries, keys)
    extras = extras + save_whole(source, sliced, entries, prefix.parent, len(extras))
    linked = {name: key for name, key in keys.items() if name not in sliced}
    write_variables(
        prefix,
        source,
        linked,
        extras,
        also_used=slice_bytes_per_shard(source, set(sliced.values())),
    )


def _batches(variables: list[Any], sizes: list[int], limit: int) -> list[list[Any]]:
    """`variables` in order, split into runs of at most `limit` bytes (or one variable)."""
    batches: list[list[Any]] = []
    size = 0
    for variable, nbytes in zip(variables, sizes, strict=True):
        if not batches or size + nbytes > limit:
            batches.append([])
            size = 0
        batches[-1].append(variable)
        size += nbytes
    return batches


def _save_values(prefix: Path, values: Mapping[str, Any]) -> None:
    """Save `values` as the bundle `prefix`, in a graph of its own (not the exported one)."""
    names = sorted(values)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        feeds = {
            tf.compat.v1.placeholder(values[n].dtype, values[n].shape): values[n] for n in names
        }
        save = tf.raw_ops.SaveV2(
            prefix=str(prefix),
            tensor_names=names,
            shape_and_slices=[""] * len(names),
            tensors=list(feeds),
        )
        session.run(save, feeds)


def write_variables(
    prefix: Path,
    source: Path,
    keys: Mapping[str, str],
    extras: list[Path],
    also_used: Mapping[int, int] | None = None,
) -> None:
    """Write the bundle `prefix`: `keys` (package name -> key in `source`) plus `extras`.

    `extras` are bundles holding the package's other variables; their shards are moved in.
    `also_used` counts, per source shard, bytes of the package's values stored there in
    another form (slices), for the decision to link the shard rather than copy from it.
    """
    header, source_entries = read_bundle(source)
    shards: list[tuple[Path, list[str] | None]] = []  # file, and names to copy (None: link)
    entries: dict[str, tensor_bundle_pb2.BundleEntryProto] = {}
    by_shard: dict[int, list[str]] = {}
    for name, key in keys.items():
        entry = tensor_bundle_pb2.BundleEntryProto()
        entry.CopyFrom(source_entries[key])
        entries[name] = entry
        by_shard.setdefault(entry.shard_id, []).append(name)
    for old_id, names in sorted(by_shard.items()):
        data = _shard_path(source, old_id, header.num_shards)
        used = sum(entries[n].size for n in names) + (also_used or {}).get(old_id, 0)
        whole = used >= _LINK_WHEN_USED * data.stat().st_size
        for name in names:
            entries[name].shard_id = len(shards)
        shards.append((data, None if whole else names))
    extra_shards: list[Path] = []
    for extra in extras:
        extra_header, extra_entries = read_bundle(extra)
        for name, entry in extra_entries.items():
            entry.shard_id += len(shards) + len(extra_shards)
            entries[name] = entry
        extra_shards += [
            _shard_path(extra, i, extra_header.num_shards) for i in range(extra_header.num_shards)
        ]
    total = len(shards) + len(extra_shards)
    for shard_id, (data, copied) in enumerate(shards):
        target = _shard_path(prefix, shard_id, total)
        if copied is None:
            link_or_copy(data, target)
        else:
            _copy_ranges(data, target, [entries[n] for n in sorted(copied)])
    for shard_id, data in enumerate(extra_shards, start=len(shards)):
        data.rename(_shard_path(prefix, shard_id, total))
    for extra in extras:
        Path(f"{extra}.index").unlink()
    header.num_shards = total
    items = [(b"", header.SerializeToString())]
    items += [(n.encode(), e.SerializeToString()) for n, e in sorted(entries.items())]
    Path(f"{prefix}.index").write_bytes(table(items))


def _shard_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


def _copy_ranges(
    source: Path, target: Path, entries: list[tensor_bundle_pb2.BundleEntryProto]
) -> None:
    """Copy each entry's bytes into `target`, one after another in the order given, and
    point it there.

    The order is the caller's, not the source's: a source written twice from one model can
    hold its tensors in different orders (a Keras export's `_all_variables`), and the
    package must be the same bytes. The bytes are hashed as they are written, so the
    package's record need not read them.
    """
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("wb") as dst:
        for entry in entries:
            src.seek(entry.offset)
            entry.offset = dst.tell()
            left = entry.size
            while left:
                chunk = src.read(min(left, _COPY_CHUNK))
                if not chunk:
                    msg = f"{source} ends before the tensor at offset {entry.offset}"
                    raise PackageError(msg)
                dst.write(chunk)
                digest.update(chunk)
                left -= len(chunk)
    keep_digest(target, digest.hexdigest())


def table(items: list[tuple[bytes, bytes]]) -> bytes:
    """A LevelDB-format table of sorted `items`, as TF's table builder writes it.

    One data block, every entry a restart point (no prefix sharing): readers accept any
    block layout, and checkpoint indexes are small.
    """
    data_block = _block(items)
    out = bytearray()
    data_handle = _append_block(out, data_block)
    meta_handle = _append_block(out, _block([]))
    last_key = items[-1][0] if items else b""
    index_handle = _append_block(out, _block([(last_key, data_handle)]))
    footer = meta_handle + index_handle
    out += footer + b"\x00" * (40 - len(footer)) + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out)


def _block(items: list[tuple[bytes, bytes]]) -> bytes:
    block = bytearray()
    restarts = []
    for key, value in items:
        restarts.append(len(block))
        block += (
            encode_varint(0) + encode_varint(len(key)) + encode_varint(len(value)) + key + value
        )
    restarts = restarts or [0]
    block += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(block)


def _append_block(out: bytearray, block: bytes) -> bytes:
    """Append `block` with its trailer; return its handle (varint offset, varint size)."""
    handle = encode_varint(len(out)) + encode_varint(len(block))
    out += block + b"\x00" + struct.pack("<I", masked_crc32c(block + b"\x00"))
    return handle
