"""File hashes are computed once per file identity, and never trusted for tamper checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from smpack.package.digests import copy_hashing, file_sha256, hashing_ahead


def test_digest_is_the_files_sha256_and_links_share_it(tmp_path: Path) -> None:
    shard = tmp_path / "variables.data-00000-of-00001"
    shard.write_bytes(b"\x00" * 4096)
    linked = tmp_path / "package.data"
    os.link(shard, linked)
    expected = hashlib.sha256(b"\x00" * 4096).hexdigest()
    assert file_sha256(shard) == file_sha256(linked) == expected


def test_a_rewritten_file_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "saved_model.pb"
    path.write_bytes(b"old")
    assert file_sha256(path) == hashlib.sha256(b"old").hexdigest()
    path.write_bytes(b"new")
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp + 1_000_000, stamp + 1_000_000))  # a later tick, as in real life
    assert file_sha256(path) == hashlib.sha256(b"new").hexdigest()


def test_uncached_reads_see_edits_that_kept_the_stamp(tmp_path: Path) -> None:
    path = tmp_path / "variables.index"
    path.write_bytes(b"abc")
    stamp = path.stat().st_mtime_ns
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"xyz")  # same size; put the old stamp back, as a careful forger would
    os.utime(path, ns=(stamp, stamp))
    assert file_sha256(path) == hashlib.sha256(b"abc").hexdigest()  # the cache's trade-off
    assert file_sha256(path, cached=False) == hashlib.sha256(b"xyz").hexdigest()


def _forge(path: Path, content: bytes) -> None:
    """Rewrite `path` keeping its size and stamp: only a fresh read can tell."""
    stamp = path.stat().st_mtime_ns
    path.write_bytes(content)
    os.utime(path, ns=(stamp, stamp))


def test_files_hashed_ahead_are_not_read_again(tmp_path: Path) -> None:
    shards = [tmp_path / f"variables.data-0000{i}-of-00003" for i in range(3)]
    for i, shard in enumerate(shards):
        shard.write_bytes(bytes([i]) * (3 << 20))
    expected = [hashlib.sha256(bytes([i]) * (3 << 20)).hexdigest() for i in range(3)]

    with hashing_ahead(shards):
        during = [file_sha256(shard) for shard in shards]  # waits for the hashes under way
    for shard in shards:
        _forge(shard, b"\xff" * (3 << 20))

    assert during == expected
    assert [file_sha256(shard) for shard in shards] == expected  # what was read ahead
    assert [file_sha256(shard, cached=False) for shard in shards] != expected


def test_leaving_early_abandons_the_rest_and_hashes_later(tmp_path: Path) -> None:
    shards = [tmp_path / f"shard_{i}" for i in range(8)]
    for shard in shards:
        shard.write_bytes(os.urandom(1 << 20))

    with hashing_ahead([*shards, tmp_path / "missing"]):
        pass  # a build failing at once

    for shard in shards:
        assert file_sha256(shard) == hashlib.sha256(shard.read_bytes()).hexdigest()


def test_a_copy_is_hashed_from_the_bytes_it_writes(tmp_path: Path) -> None:
    source = tmp_path / "source.data"
    source.write_bytes(os.urandom(5 << 20))
    target = tmp_path / "package.data"

    copy_hashing(source, target)
    _forge(target, b"\x00" * (5 << 20))

    assert file_sha256(target) == hashlib.sha256(source.read_bytes()).hexdigest()
