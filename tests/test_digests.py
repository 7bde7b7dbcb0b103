"""File hashes are computed once per file identity, and never trusted for tamper checks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from smpack.package.digests import file_sha256


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
