"""Tensors a source checkpoint stores in slices, made whole for the package.

`tf.train.CheckpointOptions(experimental_sharding_callback=MaxShardSizePolicy(...))` (and the
same option of `tf.saved_model.SaveOptions`) splits a tensor larger than a shard into
slices spread over several shards. The index then holds the whole tensor's entry, with the
slices' extents but no bytes, and one entry per slice under an OrderedCode key that starts
with a zero byte. The package's index maps its own variable names to whole tensors, so
each sliced tensor is read back whole by TensorFlow's bundle reader and saved into an extra
shard; every other tensor keeps its bytes in the source's shards, which stay hard-linked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tensorflow as tf

from smpack.package.checkpoint_index import read_index_bytes, table_items

# Sliced tensors are restored and saved in batches of at most this many bytes (or one
# tensor, if a single one is larger): memory holds one batch, never the whole checkpoint.
_BATCH_BYTES = 256 << 20


def sliced_names(entries: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, str]:
    """The package names in `keys` (name -> checkpoint key) whose tensor is stored sliced."""
    return {name: key for name, key in keys.items() if entries[key].slices}


def slice_bytes_per_shard(source: Path, sliced_keys: set[str]) -> dict[int, int]:
    """Bytes each data shard of the bundle `source` holds for slices of `sliced_keys`.

    They count as used when deciding whether to link a shard: the package's values are in
    them, only in another layout.
    """
    from tensorflow.core.protobuf import tensor_bundle_pb2

    per_shard: dict[int, int] = {}
    if not sliced_keys:
        return per_shard
    for key, value in table_items(read_index_bytes(Path(f"{source}.index"))):
        if not key.startswith(b"\x00") or _sliced_tensor_name(key) not in sliced_keys:
            continue
        entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
        per_shard[entry.shard_id] = per_shard.get(entry.shard_id, 0) + entry.size
    return per_shard


def _sliced_tensor_name(key: bytes) -> str:
    """The tensor name in a slice's key: OrderedCode of (0, name, slice spec...).

    OrderedCode writes the number 0 as one zero byte and a string with its zero bytes
    escaped as 00 ff, ended by 00 01.
    """
    name = key[1:].split(b"\x00\x01", 1)[0]
    return name.replace(b"\x00\xff", b"\x00").decode()


def save_whole(
    source: Path,
    sliced: Mapping[str, str],
    entries: Mapping[str, Any],
    folder: Path,
    first_index: int,
) -> list[Path]:
    """Save each sliced tensor whole under its package name; return the new bundles' prefixes.

    TensorFlow's bundle reader assembles a tensor from its slices when asked for the whole
    (an empty slice spec), the way every TF loader restores it.
    """
    prefixes: list[Path] = []
    for batch in _batches(sliced, entries):
        prefix = folder / f"smpack_whole_{first_index + len(prefixes)}"
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            restored = tf.raw_ops.RestoreV2(
                prefix=str(source),
                tensor_names=[sliced[name] for name in batch],
                shape_and_slices=[""] * len(batch),
                dtypes=[tf.as_dtype(entries[sliced[name]].dtype) for name in batch],
            )
            saved = tf.raw_ops.SaveV2(
                prefix=str(prefix),
                tensor_names=batch,
                shape_and_slices=[""] * len(batch),
                tensors=restored,
            )
            session.run(saved)
        prefixes.append(prefix)
    return prefixes


def _batches(sliced: Mapping[str, str], entries: Mapping[str, Any]) -> list[list[str]]:
    batches: list[list[str]] = []
    size = 0
    for name in sorted(sliced):
        entry = entries[sliced[name]]
        count = 1
        for dim in entry.shape.dim:
            count *= dim.size
        nbytes = count * tf.as_dtype(entry.dtype).size
        if not batches or size + nbytes > _BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(name)
        size += nbytes
    return batches
