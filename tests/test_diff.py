"""`smpack diff`: what changed between two packages; exit 1 when anything did, like diff."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import VARIANTS, check_golden, invoke, json_result
from typer.testing import Result

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
    # Which files differ is the golden fact; their hashes move with any change to a graph.
    blanked = re.sub(r"\b[0-9a-f]{12}…", "SHA256_START…", result.stdout)
    check_golden("diff_linear_text_classifier.txt", blanked)


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


def _graph_changes(result: Result) -> dict[str, str]:
    return {
        change["name"]: change["detail"]
        for change in json_result(result.stdout, "diff")
        if change["subject"] == "graph"
    }


def test_diff_names_the_variants_whose_graph_changed(
    linear_package: PackageInfo, variants_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = variants_copy / "linear.yaml"
    text = manifest.read_text()
    manifest.write_text(
        text.replace(
            "device: /device:GPU:0, precision: float16",
            "device: /device:GPU:0, precision: bfloat16",
        )
    )
    rebuilt = smpack.build(manifest, variants_copy / "out")
    result = invoke(monkeypatch, ["diff", str(linear_package.path), str(rebuilt.path), "--json"])
    assert result.exit_code == 1
    # Same tag sets, signatures and weights: only the GPU variant changed, in its graph.
    changed = _graph_changes(result)
    assert list(changed) == ["serve,gpu"]
    assert changed["serve,gpu"].startswith("precision float16 -> bfloat16")
    assert changed["serve,gpu"].endswith("fingerprint: graph changed")


def test_diff_names_the_variants_that_read_changed_weights(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    retrained = tmp_path / "linear" / "1"
    shutil.copytree(linear_package.path, retrained)
    prefix = retrained / "variables" / "variables"
    for path in prefix.parent.iterdir():
        path.unlink()  # hard links to the fixture's shards; write new files instead
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        tf.compat.v1.saved_model.loader.load(session, ["train"], str(linear_package.path))
        var_1 = next(v for v in tf.compat.v1.global_variables() if v.op.name == "var_1")
        session.run(var_1.assign(0.75))
        saver = tf.compat.v1.train.Saver()
        saver.save(session, str(prefix), write_meta_graph=False, write_state=False)
    result = invoke(monkeypatch, ["diff", str(linear_package.path), str(retrained), "--json"])
    # Same graphs; every variant reads var_1, and the checkpoint's crc32c of it tells.
    assert _graph_changes(result) == {
        name: "fingerprint: variables changed"
        for name in ("serve", "serve,gpu", "serve,tpu", "train")
    }
