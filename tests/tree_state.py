"""A fingerprint of a folder tree, to prove that a failed build changed nothing on disk."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path


def tree_state(folder: Path) -> dict[str, str]:
    """Every path under `folder` mapped to its kind, mode and content (or link) hash.

    Directory timestamps are left out: creating and removing a staging folder must
    change a parent's mtime, and readers never look at it.
    """
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            state[relative] = f"link {path.readlink()}"
        elif path.is_dir():
            state[relative] = f"dir {mode:o}"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[relative] = f"file {mode:o} {digest}"
    return state
