"""Two builds of the same manifest and inputs are byte-identical, wherever they are built."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import VARIANTS, file_digests

import smpack
from smpack.package.info import PackageInfo


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
