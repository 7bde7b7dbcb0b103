"""Atomic publication of a package version directory.

A build writes into a hidden sibling (`.<version>.smpack-tmp-<pid>-…`, which TF Serving
ignores since it is not an integer) and renames it into place, so a reader sees either
the previous complete package or the new one, never a half-written directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from smpack.errors import PackageError
from smpack.package.digests import copy_hashing

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2  # linux/fs.h
# The folder a package that failed verification is kept in: `<version>.failed-verify`.
REJECTED_SUFFIX = "failed-verify"
_AT_FDCWD = -100


@contextlib.contextmanager
def staged_directory(destination: Path, force: bool) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `destination`."""
    if destination.exists() and not force:
        msg = f"{destination} already exists; pass --force to replace it"
        raise PackageError(msg)
    parent = destination.parent
    # Folders this build creates are removed again if it fails: a failed build leaves
    # the output directory exactly as it found it.
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        message = f"cannot create {parent}: {e.strerror}"
        raise PackageError(message) from e
    remove_stale_staging(parent, destination.name)
    try:
        staging = Path(
            tempfile.mkdtemp(prefix=f".{destination.name}.smpack-tmp-{os.getpid()}-", dir=parent)
        )
    except OSError as e:  # a read-only output folder
        msg = f"cannot write in {parent}: {e.strerror or e}; the package was not written"
        raise PackageError(msg) from e
    published = False
    try:
        yield staging
        # mkdtemp makes the folder private (0700), which would lock out a TF Serving that
        # runs as another user; the published package gets the mode mkdir would give it.
        staging.chmod(0o777 & ~_umask())
        _publish(staging, destination, force)
        published = True
    except OSError as e:
        # Disk full, a file-size limit, permissions: the user's to fix, and nothing was lost.
        msg = f"cannot write {destination}: {e.strerror or e}; the package was not written"
        raise PackageError(msg) from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not published:
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _umask() -> int:
    # The only portable way to read the umask is to set it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_staging(parent: Path, version: str) -> None:
    """Delete staging directories left by builds that were killed."""
    try:
        leftovers = list(parent.glob(f".{version}.smpack-tmp-*"))
    except OSError:
        return  # an unlistable output folder; mkdtemp will say what is wrong with it
    for leftover in leftovers:
        pid = leftover.name.removeprefix(f".{version}.smpack-tmp-").split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _publish(staging: Path, destination: Path, force: bool) -> None:
    """Move the finished package into place; of two builds racing for one version without
    `force`, exactly one gets it and the other is told it exists."""
    if _rename(staging, destination, _RENAME_NOREPLACE):
        return
    if not force:
        msg = f"{destination} already exists (another build published it first); nothing replaced"
        raise PackageError(msg)
    # Swap in one step where the kernel can (renameat2); the old package then sits at
    # the staging path and is removed with it.
    if _rename(staging, destination, _RENAME_EXCHANGE):
        return
    old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.smpack-old-", dir=destination.parent))
    os.rename(destination, old / "package")
    os.rename(staging, destination)
    shutil.rmtree(old, ignore_errors=True)


def keep_rejected(staging: Path, destination: Path) -> Path:
    """Move a package that failed verification beside `destination`, as `<version>.failed-verify`
    (TF Serving loads only integer version folders), replacing an earlier rejected one."""
    kept = destination.with_name(f"{destination.name}.{REJECTED_SUFFIX}")
    staging.chmod(0o777 & ~_umask())
    if kept.exists():
        shutil.rmtree(kept)
    os.rename(staging, kept)
    return kept


def _rename(source: Path, target: Path, flags: int) -> bool:
    """renameat2(source, target, flags); False if `target` exists (or, for an exchange, does
    not) or the kernel cannot. Without renameat2, a no-replace rename claims the target with
    an atomic mkdir first."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        result = renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags)
        if result == 0:
            return True
        error = ctypes.get_errno()
        if error in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOENT):
            return False
        if error not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(error, os.strerror(error), str(target))
    if flags != _RENAME_NOREPLACE:
        return False
    try:
        os.mkdir(target)
    except FileExistsError:
        return False
    os.rename(source, target)  # onto the empty folder this process just claimed
    return True


def link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Hard-link `source` as `target` (the weights then cost no space twice), else copy it
    where the filesystem cannot link: across devices, or where links are not allowed.

    A copy is hashed from the bytes it writes, so the package's record need not read it.
    """
    try:
        os.link(source, target)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        copy_hashing(Path(source), Path(target))


def write_atomically(target: Path, content: str | bytes) -> None:
    """Write `content` (text as UTF-8) to `target` through a temporary sibling, so `target`
    is never half-written."""
    target = target.absolute()
    # open(..., "x") rather than mkstemp: the file gets the user's umask, not mode 0600.
    temporary = target.with_name(f".{target.name}.smpack-tmp-{os.getpid()}")
    try:
        with temporary.open("xb") as stream:
            stream.write(content.encode() if isinstance(content, str) else content)
        os.replace(temporary, target)
    except OSError as e:
        with contextlib.suppress(OSError):
            temporary.unlink()
        message = f"cannot write {target}: {e.strerror or e}"
        raise PackageError(message, file=target) from e
