"""`inspect`: what a SavedModel holds, as records and as a stable JSON document (no TensorFlow).

The facts come from `read_package`; this module adds the choice of graphs to show.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from smpack.errors import PackageError
from smpack.package.info import PackageInfo, package_at


def inspect_package(location: str | Path, tags: frozenset[str] | None = None) -> PackageInfo:
    """Describe the SavedModel at `location` (a folder or URL), keeping only the graph tagged
    `tags` if given.

    Raises `PackageError` if no graph has exactly that tag set.
    """
    with package_at(location) as info:
        if tags is None:
            return info
        chosen = tuple(g for g in info.graphs if frozenset(g.tags) == tags)
        if not chosen:
            raise no_such_tag_set(info.location, tags, [g.tag_set for g in info.graphs])
        return dataclasses.replace(info, graphs=chosen)


def no_such_tag_set(
    package: str | Path, tags: frozenset[str], available: list[str]
) -> PackageError:
    """The error for a `--tags` that matches none of the package's tag sets."""
    listed = "; ".join(available) or "no graphs"
    msg = f"no MetaGraph has the tag set {','.join(sorted(tags))}; it has: {listed}"
    return PackageError(msg, file=package, field="--tags")
