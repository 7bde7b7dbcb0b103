"""Reading `assets.extra/smpack.json`, the record a build leaves of what it was built from,
and `assets.extra/smpack_measured.json`, what it measured.

smpack.json also records, by tag set, each variant's manifest name and fingerprint;
smpack_measured.json what was measured on the build host. A package built elsewhere simply
has no such records, and readers fall back to what the graphs themselves say.

smpack 0.1 kept the measured numbers (each variant's `measured`) and the model cards' sha256
(`cards`) in smpack.json itself, and wrote no smpack_measured.json. The smpack version that
smpack.json records (sealed with it) says which layout a package has: `record_layout`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smpack.errors import PackageError
from smpack.package.layout import MEASURED_PATH, RECORD_PATH

# A record holds a line per file of the package and per variant: kilobytes, a few megabytes
# for thousands of asset files. JSON is Python objects before it is anything else, up to
# ~34 times the file, so a larger one is refused before it is read.
MAX_RECORD_BYTES = 16 << 20


def read_record(export_dir: str | Path, relative: str = RECORD_PATH) -> dict[str, Any] | None:
    """The package's smpack.json (or another of its JSON records, by `relative` path) as a
    mapping; None for a package smpack did not build."""
    path = Path(export_dir) / relative
    if not path.is_file():
        return None
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:
            msg = f"{relative} is larger than {MAX_RECORD_BYTES >> 20} MiB, more than smpack writes"
            raise PackageError(msg, file=export_dir)
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        msg = f"{relative} is not readable JSON: {e}"
        raise PackageError(msg, file=export_dir) from e
    if not isinstance(record, dict):
        msg = f"{relative} is not a JSON object"
        raise PackageError(msg, file=export_dir)
    return record


# The first smpack release that wrote smpack_measured.json.
MEASURED_FILE_SINCE = (0, 2)


@dataclass(frozen=True)
class RecordLayout:
    """Where a package built by smpack `smpack_version` keeps what it measured."""

    smpack_version: str
    # The record holding each variant's measured numbers and the model cards' sha256.
    measured_path: str

    @property
    def legacy(self) -> bool:
        """Whether it is smpack 0.1's layout: all of it in smpack.json."""
        return self.measured_path == RECORD_PATH

    @property
    def records(self) -> str:
        """The records that list the package's files, as verify names them."""
        if self.legacy:
            return (
                f"{RECORD_PATH} (smpack {self.smpack_version}'s layout: the measurements "
                "and the cards' hashes are in it)"
            )
        return f"{RECORD_PATH} and {MEASURED_PATH}"


def record_layout(export_dir: str | Path) -> RecordLayout | None:
    """The layout of the package's records, from the smpack version smpack.json records;
    None for a package without smpack.json. A version that cannot be read is taken as the
    current layout: nothing says the package is older."""
    record = read_record(export_dir)
    if record is None:
        return None
    version = str(record.get("smpack", ""))
    release = re.match(r"(\d+)\.(\d+)", version)
    legacy = release is not None and (int(release[1]), int(release[2])) < MEASURED_FILE_SINCE
    return RecordLayout(version, RECORD_PATH if legacy else MEASURED_PATH)


def checked_records(export_dir: str | Path) -> str:
    """The records verify compares the package's files with, as its check names them."""
    layout = record_layout(export_dir)
    return layout.records if layout is not None else RECORD_PATH


def measured_records(export_dir: str | Path) -> dict[str, dict[str, Any] | None]:
    """What was measured on each variant, by tag set (None for a variant not measured; {}
    for a package without a record of it): smpack_measured.json's, or in smpack 0.1's
    layout, each variant's `measured` in smpack.json."""
    layout = record_layout(export_dir)
    variants: Any
    if layout is not None and layout.legacy:
        variants = {k: v.get("measured") for k, v in variant_records(export_dir).items()}
    else:
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
