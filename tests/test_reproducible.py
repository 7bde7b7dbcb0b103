"""Two builds of the same manifest and inputs are byte-identical, wherever they are built;
measured builds differ only in the files that carry the measurements."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import VARIANTS, file_digests

import smpack
from smpack.package.info import PackageInfo, read_package
from smpack.package.layout import ASSETS_EXTRA, MEASURED_FILES


@pytest.mark.parametrize("example", ["linear", "text_classifier"])
def test_rebuilding_elsewhere_gives_the_same_bytes(
    example: str, linear_package: PackageInfo, text_package: PackageInfo, tmp_path: Path
) -> None:
    first = (linear_package if example == "linear" else text_package).path
    # Another checkout, another output folder, another process state: same package.
    checkout = tmp_path / "elsewhere" / "variants"
    shutil.copytree(VARIANTS, checkout)
    # Timings differ run to run; everything else is the same bytes.
    second = smpack.build(checkout / f"{example}.yaml", tmp_path / "out", measure=False).path

    digests = file_digests(first)
    assert file_digests(second) == digests
    assert {
        "saved_model.pb",
        "variables/variables.index",
        "fingerprint.pb",
        "assets.extra/smpack.json",
        "assets.extra/model_card.md",
    } <= digests.keys()
    for path in second.rglob("*"):
        if path.is_file():
            assert str(checkout).encode() not in path.read_bytes(), path


def test_measured_builds_differ_only_in_the_measurements_and_the_cards(tmp_path: Path) -> None:
    first, second = (
        smpack.build(VARIANTS / "linear.yaml", tmp_path / out).path for out in ("a", "b")
    )
    digests, again = file_digests(first), file_digests(second)
    differing = {
        path for path in digests.keys() | again.keys() if digests.get(path) != again.get(path)
    }
    # Timings differ run to run (the cards round them, so they may happen to agree).
    assert f"{ASSETS_EXTRA}/smpack_measured.json" in differing
    assert differing <= {f"{ASSETS_EXTRA}/{name}" for name in MEASURED_FILES}
    # smpack.json, the graphs, the weights and the serving configs hold no timed number.
    record = json.loads((first / ASSETS_EXTRA / "smpack.json").read_text())
    assert all("measured" not in variant for variant in record["variants"].values())
    measured = json.loads((first / ASSETS_EXTRA / "smpack_measured.json").read_text())
    assert measured["variants"]["serve"]["latency_p50_ms"] > 0
    # The same model: diff finds nothing, and every variant's fingerprint is the same.
    assert smpack.diff(first, second) == []
    assert [g.fingerprint for g in read_package(first).graphs] == [
        g.fingerprint for g in read_package(second).graphs
    ]
