"""Reading `assets.extra/smpack.json`, the record a build leaves of what it was built from,
and `assets.extra/smpack_measured.json`, what it measured.

smpack.json also records, by tag set, each variant's manifest name and fingerprint;
smpack_measured.json what was measured on the build host. A package built elsewhere simply
has no such records, and readers fall back to what the graphs themselves say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smpack.errors import PackageError
from smpack.package.layout import MEASURED_PATH, RECORD_PATH


def read_record(export_dir: str | Path, relative: str = RECORD_PATH) -> dict[str, Any] | None:
    """The package's smpack.json (or another of its JSON records, by `relative` path) as a
    mapping; None for a package smpack did not build."""
    path = Path(export_dir) / relative
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        msg = f"{relative} is not readable JSON: {e}"
        raise PackageError(msg, file=export_dir) from e
    if not isinstance(record, dict):
        msg = f"{relative} is not a JSON object"
        raise PackageError(msg, file=export_dir)
    return record


def measured_records(export_dir: str | Path) -> dict[str, dict[str, Any] | None]:
    """smpack_measured.json's record of what was measured on each variant, by tag set (None
    for a variant not measured; {} for a package without the file)."""
    variants = (read_record(export_dir, MEASURED_PATH) or {}).get("variants")
    if not isinstance(variants, dict):
        return {}
    return {key: value if isinstance(value, dict) else None for key, value in variants.items()}


def variant_records(export_dir: str | Path) -> dict[str, dict[str, Any]]:
    """smpack.json's record of each variant, by tag set ({} for a package without them)."""
    variants = (read_record(export_dir) or {}).get("variants")
    if not isinstance(variants, dict):
        return {}
    return {key: value for key, value in variants.items() if isinstance(value, dict)}
