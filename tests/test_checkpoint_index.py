"""read_checkpoint_index against checkpoints TensorFlow writes, and against broken files."""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from smpack.builder.checkpoint_bundle import read_bundle, table
from smpack.errors import PackageError
from smpack.package import checkpoint_index
from smpack.package.checkpoint_index import (
    TABLE_MAGIC,
    CheckpointIndex,
    _entry,
    crc32c,
    masked_crc32c,
    read_checkpoint_index,
)
from smpack.package.wire import encode_varint

v1 = tf.compat.v1

# TF writes index tables in blocks of 256 KiB; a bigger index has several data blocks.
TABLE_BLOCK_SIZE = 256 * 1024


@pytest.fixture(scope="module")
def v1_prefix(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TF1 Saver checkpoint: resource variables of several dtypes and a partitioned one."""
    values = {
        "dense/kernel": (np.arange(12).reshape(3, 4), tf.float32),
        "half": ([1.5, -2.0, 0.25, 8.0, 3.0], tf.float16),
        "brain": ([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], tf.bfloat16),
        "global_step": (1234567890123, tf.int64),
        "vocab": (["hello", "", "wörld"], tf.string),
        "flags": ([True, False], tf.bool),
    }
    graph = tf.Graph()
    with graph.as_default():
        for name, (value, dtype) in values.items():
            v1.get_variable(name, initializer=tf.constant(value, dtype), use_resource=True)
        v1.get_variable(
            "embedding",
            shape=[10, 3],
            partitioner=v1.fixed_size_partitioner(3),
            use_resource=True,
        )
        saver = v1.train.Saver()
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            return str(saver.save(session, str(tmp_path_factory.mktemp("v1") / "model")))


@pytest.fixture(scope="module")
def v2_prefix(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tf.train.Checkpoint of 300 variables split over several shards, with long names."""
    # The names share a long prefix (compressed away in the table) and end in a long unshared
    # suffix, so the index outgrows one block and its blocks hold many restart points.
    variables = {
        f"encoder/block_with_a_long_shared_prefix_{i:03d}_{'weights' * 300}": tf.Variable(
            tf.random.uniform([i % 7 + 1, 3]) if i % 2 else tf.range(i % 5 + 1)
        )
        for i in range(300)
    }
    sharding = tf.train.experimental.MaxShardSizePolicy(max_shard_size=2000)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=sharding)
    path = tmp_path_factory.mktemp("v2") / "ckpt"
    return str(tf.train.Checkpoint(**variables).write(str(path), options=options))


def assert_matches_tensorflow(prefix: str, index: CheckpointIndex) -> None:
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    names = [entry.name for entry in index.entries]
    assert names == sorted(shapes)
    for entry in index.entries:
        assert list(entry.shape) == shapes[entry.name], entry.name
        assert entry.dtype == dtypes[entry.name].name, entry.name
        assert 0 <= entry.shard_id < index.num_shards

    # Each shard's tensors are disjoint byte ranges inside its data file.
    for shard in range(index.num_shards):
        data = Path(f"{prefix}.data-{shard:05d}-of-{index.num_shards:05d}").read_bytes()
        ranges = sorted((e.offset, e.size) for e in index.entries if e.shard_id == shard)
        assert sum(size for _, size in ranges) <= len(data)
        for (offset, size), (next_offset, _) in zip(ranges, ranges[1:], strict=False):
            assert offset + size <= next_offset
        assert all(offset + size <= len(data) for offset, size in ranges)
        # Numeric tensors are stored raw, so their bytes prove the offsets right.
        for entry in index.entries:
            if entry.shard_id == shard and entry.dtype != "string" and entry.size:
                expected = reader.get_tensor(entry.name).tobytes()
                assert data[entry.offset : entry.offset + entry.size] == expected, entry.name


def test_tf1_saver_checkpoint(v1_prefix: str) -> None:
    index = read_checkpoint_index(v1_prefix)

    assert index.num_shards == 1
    assert_matches_tensorflow(v1_prefix, index)
    by_name = {entry.name: entry for entry in index.entries}
    assert {name: (e.dtype, e.shape) for name, e in by_name.items()} == {
        "dense/kernel": ("float32", (3, 4)),
        "half": ("float16", (5,)),
        "brain": ("bfloat16", (2, 3)),
        "global_step": ("int64", ()),
        "vocab": ("string", (3,)),
        "flags": ("bool", (2,)),
        "embedding": ("float32", (10, 3)),
    }
    assert by_name["dense/kernel"].size == 48
    assert by_name["global_step"].size == 8
    # A partitioned variable's record only lists its slices; their data is stored under
    # encoded slice keys, which are not tensors of their own.
    assert by_name["embedding"].size == 0


def test_sharded_tf2_checkpoint_with_many_blocks(v2_prefix: str) -> None:
    assert Path(f"{v2_prefix}.index").stat().st_size > 2 * TABLE_BLOCK_SIZE

    index = read_checkpoint_index(v2_prefix)

    assert index.num_shards > 1
    assert len(index.entries) == 301  # the variables and the object graph
    assert {entry.dtype for entry in index.entries} == {"float32", "int32", "string"}
    assert_matches_tensorflow(v2_prefix, index)


def test_accepts_path_objects(v1_prefix: str) -> None:
    assert read_checkpoint_index(Path(v1_prefix)) == read_checkpoint_index(v1_prefix)


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="cannot read checkpoint index") as caught:
        read_checkpoint_index(tmp_path / "nothing")
    assert caught.value.file == tmp_path / "nothing.index"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: b"", "bad magic"),
        (lambda data: b"garbage " * 100, "bad magic"),
        (lambda data: data[:-1], "bad magic"),
        (lambda data: data[:40] + data[-48:], "runs past the end"),
        (lambda data: data[:10] + bytes([data[10] ^ 0xFF]) + data[11:], "checksum mismatch"),
    ],
    ids=["empty", "garbage", "truncated footer", "truncated blocks", "flipped byte"],
)
def test_corrupt_index(
    v1_prefix: str, tmp_path: Path, damage: Callable[[bytes], bytes], message: str
) -> None:
    (tmp_path / "bad.index").write_bytes(damage(Path(f"{v1_prefix}.index").read_bytes()))

    with pytest.raises(PackageError, match=f"corrupt checkpoint index: .*{message}") as caught:
        read_checkpoint_index(tmp_path / "bad")
    assert str(caught.value).startswith(str(tmp_path / "bad.index"))


def test_snappy_block_is_refused(v1_prefix: str, tmp_path: Path) -> None:
    data = bytearray(Path(f"{v1_prefix}.index").read_bytes())
    # The first data block starts the file; its trailer follows the first prefix whose
    # checksum matches the next four bytes.
    end = next(n for n in range(len(data)) if _masked(data[: n + 1]) == data[n + 1 : n + 5])
    data[end] = 1
    data[end + 1 : end + 5] = _masked(data[: end + 1])
    (tmp_path / "snappy.index").write_bytes(bytes(data))

    with pytest.raises(PackageError, match="snappy-compressed blocks are not supported"):
        read_checkpoint_index(tmp_path / "snappy")


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_import_and_read_without_tensorflow(v1_prefix: str) -> None:
    script = (
        "import sys\n"
        "from smpack.package.checkpoint_index import read_checkpoint_index\n"
        f"print(len(read_checkpoint_index({v1_prefix!r}).entries))\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "7"


def _masked(block: bytes | bytearray) -> bytes:
    crc = crc32c(bytes(block))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8 & 0xFFFFFFFF).to_bytes(4, "little")


def test_dtype_names_match_tensorflow() -> None:
    for number in range(1, 100):
        try:
            name = tf.dtypes.as_dtype(number).name
        except TypeError:
            name = f"dtype_{number}"
        entry = _entry("t", bytes([0x08, number]))  # field 1 (dtype), varint
        assert entry.dtype == name


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug"), struct.error("a bug")])
def test_a_bug_in_the_reader_is_not_blamed_on_the_index(
    v1_prefix: str, monkeypatch: pytest.MonkeyPatch, bug: Exception
) -> None:
    """Only WireFormatError, what the decoder raises for bad bytes, is a corrupt index."""

    def broken(name: str, value: bytes) -> None:
        raise bug

    monkeypatch.setattr(checkpoint_index, "_entry", broken)
    with pytest.raises(type(bug)) as caught:
        read_checkpoint_index(v1_prefix)
    assert caught.value is bug


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([(b"", b"\x08\x01"), (b"\xff", b"")], "a tensor name is not UTF-8"),
        ([(b"", b"\x08\x01"), (b"x", b"\x08")], "truncated varint"),
        ([(b"", b"\x0a\x00")], "protobuf field 1 is length-delimited where"),
        ([(b"x", b"")], "no bundle header"),
    ],
    ids=["name not utf-8", "entry cut short", "header of another wire type", "no header"],
)
def test_index_entries_that_are_not_bundle_protos(
    tmp_path: Path, items: list[tuple[bytes, bytes]], message: str
) -> None:
    (tmp_path / "bad.index").write_bytes(table(items))

    with pytest.raises(PackageError, match=f"corrupt checkpoint index: {message}"):
        read_checkpoint_index(tmp_path / "bad")


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([(b"", b"\x08\x01"), (b"\xff", b"")], "a tensor name is not UTF-8"),
        ([(b"", b"\x08\x01"), (b"x", b"\x0a\x05")], "Error parsing message"),
    ],
    ids=["name not utf-8", "entry not a BundleEntryProto"],
)
def test_a_source_bundle_whose_index_is_not_one_is_refused(
    tmp_path: Path, items: list[tuple[bytes, bytes]], message: str
) -> None:
    """What the packager reads a source checkpoint with names the index, in one line."""
    (tmp_path / "bad.index").write_bytes(table(items))

    with pytest.raises(PackageError, match=f"cannot read checkpoint index: .*{message}") as caught:
        read_bundle(tmp_path / "bad")
    assert caught.value.file == tmp_path / "bad.index"


def table_with_data_block(block: bytes) -> bytes:
    """A table whose one data block is `block`, as it is, behind a valid trailer, index
    block and footer: what the reader meets when only the block's own bytes are wrong."""
    out = bytearray()

    def append(block: bytes) -> bytes:
        handle = encode_varint(len(out)) + encode_varint(len(block))
        out.extend(block + b"\x00" + struct.pack("<I", masked_crc32c(block + b"\x00")))
        return handle

    data = append(block)
    meta = append(struct.pack("<II", 0, 1))  # no entries, one restart point
    # One entry (no shared prefix, key b"", the data block's handle), restart at 0.
    entry = encode_varint(0) + encode_varint(0) + encode_varint(len(data)) + data
    index = append(entry + struct.pack("<II", 0, 1))
    footer = meta + index
    return bytes(out + footer + b"\x00" * (40 - len(footer)) + struct.pack("<Q", TABLE_MAGIC))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x01\x00", "block too short to hold its restart count"),
        (struct.pack("<I", 2), "block restart array is larger than the block"),
    ],
    ids=["two bytes", "restarts past the start"],
)
def test_a_data_block_too_short_for_its_restarts_is_corrupt(
    tmp_path: Path, block: bytes, message: str
) -> None:
    (tmp_path / "bad.index").write_bytes(table_with_data_block(block))

    with pytest.raises(PackageError, match=f"corrupt checkpoint index: {message}$"):
        read_checkpoint_index(tmp_path / "bad")


def test_the_crafted_table_is_one_the_reader_takes_with_a_valid_block() -> None:
    """The crafted table is sound but for its block: with a valid one, it reads."""
    header = b"\x08\x01"  # BundleHeaderProto: num_shards 1
    block = encode_varint(0) + encode_varint(0) + encode_varint(2) + header
    crafted = table_with_data_block(block + struct.pack("<II", 0, 1))
    assert list(checkpoint_index.table_items(crafted)) == [(b"", header)]


@pytest.mark.parametrize("reader", [read_checkpoint_index, read_bundle], ids=["package", "source"])
def test_an_index_larger_than_smpack_holds_is_refused_unread(
    reader: Callable[[Path], object], tmp_path: Path
) -> None:
    """An index is read whole: a sparse one of gigabytes was, before parsing failed."""
    with (tmp_path / "big.index").open("wb") as stream:
        stream.truncate(checkpoint_index.MAX_INDEX_BYTES + 1)
    with pytest.raises(PackageError) as caught:
        reader(tmp_path / "big")
    assert caught.value.file == tmp_path / "big.index"
    assert caught.value.message.startswith(
        "a checkpoint index of 1,073,741,825 bytes, more than smpack holds in memory here ("
    )
