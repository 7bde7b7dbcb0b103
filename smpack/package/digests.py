"""sha256 of package files, computed once per file however many records list it.

A build describes its files three times (smpack.json, and the Markdown and HTML cards), and
the weights are most of the bytes: hashing them once per record read a 1 GiB checkpoint
four times. A digest is kept for as long as the file's identity and stamp (device, inode,
size, modification time) stay the same, so a hard-linked source shard and the package's
copy of it are read once, and a file rewritten since gets hashed afresh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

_DIGESTS: dict[tuple[int, int, int, int], str] = {}


def file_sha256(path: Path, *, cached: bool = True) -> str:
    """The hex sha256 of the file at `path`'s contents.

    `cached=False` reads the file whatever is known: for checking a package against its
    record, where an edit within one timestamp tick must not go unseen.
    """
    stat = path.stat()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if not cached or key not in _DIGESTS:
        with path.open("rb") as stream:
            _DIGESTS[key] = hashlib.file_digest(stream, "sha256").hexdigest()
    return _DIGESTS[key]


def tree_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """Every file under `folder` as (POSIX path relative to it, path), by relative path."""
    files = ((p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file())
    yield from sorted(files)
