"""Packages and sources on any filesystem TensorFlow knows: gs://, s3:// (tensorflow-io), ram://.

smpack itself works on local folders (it hard-links shards, renames atomically, hashes with
plain reads), so a remote source or package is first fetched into a temporary folder, and a
package bound for a remote location is built locally, then uploaded. Local paths
never touch `tf.io.gfile`, so they pay no TensorFlow import.

Object stores cannot rename a folder in one step (TensorFlow's `ram://` cannot rename one at
all: it moves the entry and loses the files under it), so a remote package is uploaded into a
hidden sibling and then moved file by file, `saved_model.pb` last: a loader sees the old
package, no package, or the whole new one, never a graph without its variables.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from smpack.errors import PackageError
from smpack.io.staging import staged_directory

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# Moved last into place, first out of it: without it no loader sees a package at all.
_GRAPH_FILES = ("saved_model.pb", "saved_model.pbtxt")


def is_url(location: str | Path) -> bool:
    """True for `scheme://...` locations; `Path` objects are always local."""
    return isinstance(location, str) and bool(_URL.match(location))


def join(location: str | Path, *parts: str) -> str | Path:
    """`location/part/...`: a URL stays a string, a local path becomes an absolute `Path`."""
    if is_url(location):
        assert isinstance(location, str)
        return "/".join([location.rstrip("/"), *parts])
    return Path(location).absolute().joinpath(*parts)


def exists(location: str | Path) -> bool:
    """Whether a file or folder is at `location`; remote errors become `PackageError`."""
    if not is_url(location):
        return Path(location).exists()
    with _remote_errors(str(location), "read"):
        return bool(_gfile().exists(str(location)))


@contextlib.contextmanager
def fetched(location: str | Path) -> Iterator[Path]:
    """A local path to the file or folder at `location`: itself, or a temporary copy."""
    if not is_url(location):
        yield Path(location)
        return
    url = str(location).rstrip("/")
    gfile = _gfile()
    with tempfile.TemporaryDirectory(prefix="smpack-fetch-") as folder:
        target = Path(folder) / url.rsplit("/", 1)[-1]
        with _remote_errors(url, "read"):
            if gfile.isdir(url):
                _download_tree(gfile, url, target)
            elif gfile.exists(url):
                gfile.copy(url, str(target))
            else:
                msg = f"{url} does not exist"
                raise PackageError(msg)
        yield target


@contextlib.contextmanager
def fetched_checkpoint(url: str) -> Iterator[Path]:
    """A local copy of the TF checkpoint whose prefix is `url` (its .index and data shards)."""
    gfile = _gfile()
    with tempfile.TemporaryDirectory(prefix="smpack-fetch-") as folder:
        local = Path(folder) / url.rsplit("/", 1)[-1]
        with _remote_errors(url, "read"):
            for part in gfile.glob(f"{url}.*"):
                gfile.copy(part, str(local.parent / part.rsplit("/", 1)[-1]))
        yield local


@contextlib.contextmanager
def published_directory(destination: str | Path, force: bool) -> Iterator[Path]:
    """Yield an empty local folder; once the block succeeds it becomes `destination`.

    Local destinations are published by an atomic rename (`staging.staged_directory`); remote
    ones are uploaded. Either way a failure leaves `destination` as it was.
    """
    if not is_url(destination):
        with staged_directory(Path(destination).absolute(), force) as staging:
            yield staging
        return
    url = str(destination).rstrip("/")
    if exists(url) and not force:
        msg = f"{url} already exists; pass --force to replace it"
        raise PackageError(msg)
    with tempfile.TemporaryDirectory(prefix="smpack-upload-") as folder:
        yield Path(folder)
        _upload(Path(folder), url)


def _upload(local: Path, url: str) -> None:
    gfile = _gfile()
    parent, name = url.rsplit("/", 1)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging, old = f"{parent}/.{name}.smpack-tmp-{tag}", f"{parent}/.{name}.smpack-old-{tag}"
    replacing = gfile.exists(url)
    moved_aside = moving_in = keep_old = False
    try:
        with _remote_errors(url, "write", "; the package was not written"):
            _upload_tree(gfile, local, staging)
            if replacing:
                moved_aside = True
                _move_tree(gfile, url, old, graph_first=True)
            moving_in = True
            _move_tree(gfile, staging, url, graph_first=False)
    except PackageError:
        # Put the destination back as it was. What failed once may fail again: then the
        # previous package stays where the error says it is.
        try:
            with _remote_errors(url, "restore", f"; the previous package is in {old}"):
                if moving_in and gfile.exists(url):
                    _remove_tree(gfile, url)
                if moved_aside:
                    _move_tree(gfile, old, url, graph_first=False)
        except PackageError:
            keep_old = True
            raise
        raise
    finally:
        for leftover in (staging,) if keep_old else (staging, old):
            with contextlib.suppress(Exception):
                if gfile.exists(leftover):
                    _remove_tree(gfile, leftover)


def _tree(gfile: Any, url: str) -> tuple[list[str], list[str]]:
    """The folders and files under `url`, relative to it ("" is `url` itself)."""
    folders, files = [], []
    for root, _, names in gfile.walk(url):
        relative = root[len(url) :].strip("/")
        folders.append(relative)
        for name in names:
            path = f"{root.rstrip('/')}/{name}"
            # ram:// lists assets.extra/ as a file ".extra" inside assets/; it does not exist.
            if gfile.exists(path):
                files.append(f"{relative}/{name}" if relative else name)
    return folders, files


def _download_tree(gfile: Any, url: str, target: Path) -> None:
    folders, files = _tree(gfile, url)
    for relative in folders:
        (target / relative).mkdir(parents=True, exist_ok=True)
    for relative in files:
        gfile.copy(f"{url}/{relative}", str(target / relative))


def _upload_tree(gfile: Any, local: Path, url: str) -> None:
    for root, _, files in os.walk(local):
        relative = Path(root).relative_to(local).as_posix()
        folder = url if relative == "." else f"{url}/{relative}"
        # Explicitly, even on object stores: ram:// does not list files in implied folders.
        gfile.makedirs(folder)
        for name in files:
            source = Path(root) / name
            gfile.copy(str(source), f"{folder}/{name}")
            uploaded, size = gfile.stat(f"{folder}/{name}").length, source.stat().st_size
            if uploaded != size:
                msg = f"{folder}/{name} holds {uploaded} bytes after upload, not {size}"
                raise PackageError(msg)


def _move_tree(gfile: Any, source: str, target: str, *, graph_first: bool) -> None:
    folders, files = _tree(gfile, source)
    for relative in folders:
        gfile.makedirs(f"{target}/{relative}" if relative else target)
    files.sort(key=lambda f: (f in _GRAPH_FILES) != graph_first)
    for relative in files:
        gfile.rename(f"{source}/{relative}", f"{target}/{relative}")
    _remove_tree(gfile, source)


def _remove_tree(gfile: Any, url: str) -> None:
    # Not gfile.rmtree: on ram:// it trips over the phantom entries `_tree` skips. Folders
    # go in reverse order, so assets.extra/ goes before the assets/ it haunts.
    folders, files = _tree(gfile, url)
    for relative in files:
        gfile.remove(f"{url}/{relative}")
    for relative in sorted(folders, reverse=True):
        gfile.rmtree(f"{url}/{relative}" if relative else url)


@contextlib.contextmanager
def _remote_errors(url: str, action: str, consequence: str = "") -> Iterator[None]:
    """TensorFlow's filesystem errors (no bucket, no permission) as one-line `PackageError`s."""
    _gfile()
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as e:
        # Some filesystems (gcs) break their messages over lines; the CLI prints one.
        reason = " ".join((e.message or type(e).__name__).split())
        msg = f"cannot {action} {url}: {reason}{consequence}"
        raise PackageError(msg) from e


def _gfile() -> Any:
    from smpack.io.tf_quietly import import_tensorflow_quietly

    import_tensorflow_quietly()
    import tensorflow as tf

    return tf.io.gfile
