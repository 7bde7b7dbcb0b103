"""`smpack diff`: what changed between two packages; exit 1 when anything did, like diff."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import VARIANTS, check_golden, invoke, json_result

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
    assert (result.exit_code, json_result(result.stdout, "diff")) == (0, [])


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
    changes = json_result(result.stdout, "diff")
    # Same weights (hard-linked), same serve graph: the other tag sets are gone, and with
    # them the graph file's bytes; extract writes no fingerprint.pb.
    assert [c for c in changes if c["subject"] != "file"] == [
        {"kind": "removed", "subject": "tag set", "name": name, "detail": ""}
        for name in ("serve,gpu", "serve,tpu", "train")
    ]
    assert {(c["kind"], c["name"]) for c in changes if c["subject"] == "file"} == {
        ("removed", "fingerprint.pb"),
        ("changed", "saved_model.pb"),
    }


def test_weights_that_differ_only_in_their_bytes_are_a_difference(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "linear" / "1"
    shutil.copytree(linear_package.path, copy)
    data = copy / "variables" / "variables.data-00000-of-00001"
    weights = bytearray(data.read_bytes())
    weights[-1] ^= 0xFF  # same shapes, same size, one weight changed
    data.write_bytes(bytes(weights))
    result = invoke(monkeypatch, ["diff", str(linear_package.path), str(copy), "--json"])
    assert result.exit_code == 1
    [change] = json_result(result.stdout, "diff")
    assert (change["kind"], change["subject"], change["name"]) == (
        "changed",
        "file",
        "variables/variables.data-00000-of-00001",
    )
