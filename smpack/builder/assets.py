"""Copying the manifest's assets and assets.extra files into a package."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from smpack.manifest import LoadedManifest


def copy_assets(
    loaded: LoadedManifest, export_dir: Path, source_assets: Mapping[str, Path]
) -> None:
    """Copy `assets:` entries and the source's own assets into assets/, and `assets_extra:`
    into assets.extra/."""
    # Both folders exist even when empty, so every package has the same layout.
    for folder in ("assets", "assets.extra"):
        (export_dir / folder).mkdir(exist_ok=True)
    for source in loaded.assets:
        _copy(source, export_dir / "assets" / source.name)
    for name, source in source_assets.items():
        _copy(source, export_dir / "assets" / name)
    for target, source in loaded.assets_extra.items():
        _copy(source, export_dir / "assets.extra" / target)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Content only, no timestamps or modes: packages must not depend on when they were built.
    if source.is_dir():
        shutil.copytree(source, target, copy_function=shutil.copyfile)
    else:
        shutil.copyfile(source, target)
