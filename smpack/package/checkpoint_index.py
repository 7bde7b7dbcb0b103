"""Read a TensorFlow checkpoint's `<prefix>.index` without importing TensorFlow.

`smpack inspect` lists a package's variables; importing TensorFlow for that costs seconds,
while the index is a small LevelDB-format table that a few dozen lines can read. The table
(TF's `core/lib/io/table*`) is a footer pointing at an index block whose values point at
data blocks; each block is a run of prefix-compressed key/value entries. Key "" holds a
BundleHeaderProto, every other key a tensor name whose value is a BundleEntryProto; both are
decoded from the protobuf wire format directly so that no generated `_pb2` is needed.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smpack.errors import PackageError
from smpack.io.memory import within_memory
from smpack.package.dtypes import dtype_name
from smpack.package.wire import WireFormatError, decode_varint, message_fields, utf8

TABLE_MAGIC = 0xDB4775248B80FB57  # the last 8 bytes of every LevelDB-format table
_FOOTER_SIZE = 48  # two varint block handles padded to 40 bytes, then the 8-byte magic
_TRAILER_SIZE = 5  # compression type byte + masked crc32c
_NO_COMPRESSION, _SNAPPY = 0, 1


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


@dataclass(frozen=True)
class CheckpointEntry:
    """Where one saved tensor lives: `size` bytes at `offset` of data shard `shard_id`.

    A partitioned variable has size 0: its bytes are in per-slice records, not listed here.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int = 0  # masked crc32c of the tensor's bytes, as TF wrote it (0 if absent)


@dataclass(frozen=True)
class CheckpointIndex:
    num_shards: int
    entries: tuple[CheckpointEntry, ...]  # sorted by name, as the table stores them


def read_checkpoint_index(prefix: str | os.PathLike[str]) -> CheckpointIndex:
    """Read `<prefix>.index`; raise PackageError if it is missing or corrupt."""
    path = Path(f"{os.fspath(prefix)}.index")
    try:
        data = read_index_bytes(path)
    except OSError as error:
        msg = f"cannot read checkpoint index: {error.strerror or error}"
        raise PackageError(msg, file=path) from error
    try:
        return _parse_index(data)
    except WireFormatError as error:
        msg = f"corrupt checkpoint index: {error}"
        raise PackageError(msg, file=path) from error


# An index holds a few dozen bytes per tensor (kilobytes, megabytes for millions of
# variables) and is read whole, then parsed into an entry per tensor: one larger than this,
# or a quarter of the memory available if less, is refused before it is read.
MAX_INDEX_BYTES = 1 << 30


def read_index_bytes(path: Path) -> bytes:
    """The bytes of the checkpoint index at `path`. Raises PackageError for one too large to
    hold, OSError for one that cannot be read."""
    size, limit = path.stat().st_size, within_memory(MAX_INDEX_BYTES)
    if size > limit:
        msg = (
            f"a checkpoint index of {size:,} bytes, more than smpack holds in memory here "
            f"({limit:,}: 1 GiB, or a quarter of the memory available)"
        )
        raise PackageError(msg, file=path)
    return path.read_bytes()


def table_items(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB-format table such as a checkpoint index, in key order.

    Raises WireFormatError if the table is corrupt.
    """
    if len(data) < _FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        msg = "not a TensorFlow table (file too short or bad magic number)"
        raise WireFormatError(msg)
    footer = len(data) - _FOOTER_SIZE
    _, pos = _handle(data, footer)  # the metaindex block: TF writes no filters, so it is empty
    index_block, _ = _handle(data, pos)
    for _, handle in _block_entries(_read_block(data, index_block)):
        yield from _block_entries(_read_block(data, _handle(handle, 0)[0]))


def _parse_index(data: bytes) -> CheckpointIndex:
    num_shards: int | None = None
    entries = []
    for key, value in table_items(data):
        if key == b"":
            num_shards = _int(dict(message_fields(value)), 1)
        elif not key.startswith(b"\x00"):
            # Slices of partitioned variables have OrderedCode keys (0, name, slice spec),
            # so they start with a 0 byte; the whole variable has its own plain-name entry.
            entries.append(_entry(tensor_name(key), value))
    if num_shards is None:
        msg = "no bundle header (empty key) in the table"
        raise WireFormatError(msg)
    return CheckpointIndex(num_shards=num_shards, entries=tuple(entries))


def tensor_name(key: bytes) -> str:
    """A (non-slice) table key as the tensor name it is; WireFormatError if not UTF-8."""
    return utf8(key, "a tensor name")


def _entry(name: str, value: bytes) -> CheckpointEntry:
    fields = dict(message_fields(value))
    dims = (dict(message_fields(dim)) for n, dim in message_fields(fields.get(2, b"")) if n == 2)
    dtype = _int(fields, 1)
    return CheckpointEntry(
        name=name,
        dtype=dtype_name(dtype),
        shape=tuple(_int(dim, 1) for dim in dims),
        shard_id=_int(fields, 3),
        offset=_int(fields, 4),
        size=_int(fields, 5),
        crc32c=_int(fields, 6),
    )


def _int(fields: dict[int, int | bytes], number: int) -> int:
    """An int64 field (0 when absent, as in proto3); negative values are ten-byte varints."""
    value = fields.get(number, 0)
    if isinstance(value, bytes):
        msg = f"protobuf field {number} is length-delimited where a number was expected"
        raise WireFormatError(msg)
    return value - (1 << 64) if value >= 1 << 63 else value


def _read_block(data: bytes, handle: tuple[int, int]) -> bytes:
    offset, size = handle
    end = offset + size
    if end + _TRAILER_SIZE > len(data) - _FOOTER_SIZE:
        msg = f"block at offset {offset} runs past the end of the file"
        raise WireFormatError(msg)
    kind, masked_crc = struct.unpack_from("<BI", data, end)
    # TF always verifies these; a damaged block would otherwise decode into plausible garbage.
    if masked_crc32c(data[offset : end + 1]) != masked_crc:
        msg = f"checksum mismatch in block at offset {offset}"
        raise WireFormatError(msg)
    if kind == _SNAPPY:
        msg = "snappy-compressed blocks are not supported (TF's bundle writer never makes them)"
        raise WireFormatError(msg)
    if kind != _NO_COMPRESSION:
        msg = f"unknown block compression type {kind}"
        raise WireFormatError(msg)
    return data[offset:end]


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield a block's (key, value) pairs; each key shares a prefix with the one before it."""
    if len(block) < 4:
        msg = "block too short to hold its restart count"
        raise WireFormatError(msg)
    # The restart array only serves binary search; a full scan just has to stop before it.
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (num_restarts + 1)
    if limit < 0:
        msg = "block restart array is larger than the block"
        raise WireFormatError(msg)
    key, pos = b"", 0
    while pos < limit:
        shared, pos = decode_varint(block, pos)
        unshared, pos = decode_varint(block, pos)
        value_size, pos = decode_varint(block, pos)
        if shared > len(key) or pos + unshared + value_size > limit:
            msg = "block entry runs past its block"
            raise WireFormatError(msg)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_size]
        pos += value_size


def _handle(data: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = decode_varint(data, pos)
    size, pos = decode_varint(data, pos)
    return (offset, size), pos


def masked_crc32c(data: bytes) -> int:
    """The CRC-32C of `data` as LevelDB tables store it: rotated and offset, so that the
    CRC of data holding CRCs is not itself trivially related to them."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    """The CRC-32C (Castagnoli) of `data`, the checksum LevelDB tables and TF bundles use."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
