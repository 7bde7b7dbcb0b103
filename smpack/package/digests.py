"""sha256 of package files, computed once per file however many records list it.

A build describes its files three times (smpack.json, and the Markdown and HTML cards), and
the weights are most of the bytes: hashing them once per record read a 1 GiB checkpoint
four times. A digest is kept for as long as the file's identity and stamp (device, inode,
size, modification time) stay the same, so a hard-linked source shard and the package's
copy of it are read once, and a file rewritten since gets hashed afresh.

Hashing the weights is most of a build's own I/O (0.75 s a GiB), so it need not wait its
turn: `hashing_ahead` reads the source's shards on another thread while the graphs are
built (a hard-linked shard is the same file), and a file smpack copies is hashed from the
bytes it writes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

_Key = tuple[int, int, int, int]
_DIGESTS: dict[_Key, str] = {}
_PENDING: dict[_Key, concurrent.futures.Future[str]] = {}
_LOCK = threading.Lock()
_CHUNK = 8 << 20


class _Stopped(Exception):
    """A background hash abandoned because the build that wanted it ended."""


def _key(stat: os.stat_result) -> _Key:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def file_sha256(path: Path, *, cached: bool = True) -> str:
    """The hex sha256 of the file at `path`'s contents.

    `cached=False` reads the file whatever is known: for checking a package against its
    record, where an edit within one timestamp tick must not go unseen.
    """
    key = _key(path.stat())
    if not cached:
        return _read_sha256(path)
    with _LOCK:
        known, pending = _DIGESTS.get(key), _PENDING.get(key)
    if known is not None:
        return known
    if pending is not None:
        return pending.result()
    digest = _read_sha256(path)
    with _LOCK:
        _DIGESTS[key] = digest
    return digest


@contextlib.contextmanager
def hashing_ahead(paths: Iterable[Path]) -> Iterator[None]:
    """Hash `paths` on a background thread (hashlib lets go of the GIL) while the block runs.

    `file_sha256` waits for, rather than repeats, a hash under way. Leaving the block
    abandons what is not done yet, within one chunk: a failed build does not wait for it.
    """
    stop = threading.Event()
    # One thread: the point is a core the build leaves idle, not a race for the disk.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="smpack-sha256") as pool:
        started = []
        for path in paths:
            try:
                key = _key(path.stat())
            except OSError:  # left to the `file_sha256` call that needs it, to report
                continue
            with _LOCK:
                if key in _DIGESTS or key in _PENDING:
                    continue
                _PENDING[key] = pool.submit(_hash_and_keep, path, key, stop)
            started.append(key)
        try:
            yield
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            with _LOCK:
                for key in started:
                    _PENDING.pop(key, None)


def _hash_and_keep(path: Path, key: _Key, stop: threading.Event) -> str:
    digest = _read_sha256(path, stop)
    with _LOCK:
        _DIGESTS[key] = digest
    return digest


def copy_hashing(source: Path, target: Path) -> None:
    """Copy `source` to `target`, keeping the digest of the bytes written: read only once."""
    digest = hashlib.sha256()
    with source.open("rb") as src, target.open("xb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            digest.update(chunk)
    keep_digest(target, digest.hexdigest())


def keep_digest(path: Path, sha256: str) -> None:
    """Remember `sha256`, the hex digest of the bytes just written to `path`, for `path`."""
    with _LOCK:
        _DIGESTS[_key(path.stat())] = sha256


def _read_sha256(path: Path, stop: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as stream:
        while size := stream.readinto(buffer):
            if stop is not None and stop.is_set():
                raise _Stopped(path)
            digest.update(view[:size])
    return digest.hexdigest()


def tree_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """Every file under `folder` as (POSIX path relative to it, path), by relative path."""
    files = ((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    yield from sorted(files)
