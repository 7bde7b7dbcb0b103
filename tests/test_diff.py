"""`smpack diff`: what changed between two packages; exit 1 when anything did, like diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import VARIANTS
from rich_golden import check_golden, invoke

import smpack
from smpack.package.info import PackageInfo


def test_two_builds_of_one_manifest_are_the_same(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    again = smpack.build(VARIANTS / "linear.yaml", tmp_path)
    result = invoke(monkeypatch, ["diff", str(linear_package.path), str(again.path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "no differences\n"
    result = invoke(monkeypatch, ["diff", str(linear_package.path), str(again.path), "--json"])
    assert (result.exit_code, json.loads(result.stdout)) == (0, [])


def test_golden_linear_to_text_classifier(
    linear_package: PackageInfo, text_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke(monkeypatch, ["diff", str(linear_package.path), str(text_package.path)])
    assert result.exit_code == 1
    check_golden("diff_linear_text_classifier.txt", result.stdout)


def test_json_names_each_change(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extracted = tmp_path / "serve"
    args = ["extract", str(linear_package.path), "--tags", "serve", "--out", str(extracted)]
    assert invoke(monkeypatch, args).exit_code == 0
    result = invoke(monkeypatch, ["diff", str(linear_package.path), str(extracted), "--json"])
    assert result.exit_code == 1
    changes = json.loads(result.stdout)
    # Same weights (hard-linked), same serve graph: only the other tag sets are gone.
    assert changes == [
        {"kind": "removed", "subject": "tag set", "name": name, "detail": ""}
        for name in ("serve,gpu", "serve,tpu", "train")
    ]
