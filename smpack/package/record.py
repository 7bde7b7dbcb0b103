"""Reading `assets.extra/smpack.json`, the record a build leaves of what it was built from.

It also records, by tag set, each variant's manifest name, fingerprint and what was
measured on the build host; a package built elsewhere simply has no such records, and
readers fall back to what the graphs themselves say.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smpack.errors import PackageError
from smpack.package.layout import RECORD_PATH


def read_record(export_dir: str | Path) -> dict[str, Any] | None:
    """The package's smpack.json as a mapping; None for a package smpack did not build."""
    path = Path(export_dir) / RECORD_PATH
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        msg = f"{RECORD_PATH} is not readable JSON: {e}"
        raise PackageError(msg, file=export_dir) from e
    if not isinstance(record, dict):
        msg = f"{RECORD_PATH} is not a JSON object"
        raise PackageError(msg, file=export_dir)
    return record


def variant_records(export_dir: str | Path) -> dict[str, dict[str, Any]]:
    """smpack.json's record of each variant, by tag set ({} for a package without them)."""
    variants = (read_record(export_dir) or {}).get("variants")
    if not isinstance(variants, dict):
        return {}
    return {key: value for key, value in variants.items() if isinstance(value, dict)}
