"""Hostile timing and tampering: racing builds, SIGTERM and SIGHUP mid-build, a source that
makes a package fail verification, and packages edited after the build.

Real `smpack` processes, stopped at known moments with the blocking model of
tests/test_faults.py.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import project, start_build, tree_state, wait_until
from typer.testing import CliRunner

from smpack.checks.verify import verify_package
from smpack.cli import app
from smpack.errors import PackageError
from smpack.io.staging import staged_directory
from smpack.package.info import PackageInfo, read_package

ROOT = Path(__file__).resolve().parent.parent
# Real builds in subprocesses: slow by nature.
pytestmark = pytest.mark.slow
runner = CliRunner()


def test_the_later_of_two_publications_without_force_is_refused(tmp_path: Path) -> None:
    destination = tmp_path / "out" / "m" / "1"
    with pytest.raises(PackageError, match=r"already exists \(another build published it"):
        with staged_directory(destination, force=False) as first:
            (first / "who").write_text("first")
            with staged_directory(destination, force=False) as second:
                (second / "who").write_text("second")
    assert (destination / "who").read_text() == "second"
    assert sorted(p.name for p in destination.parent.iterdir()) == ["1"]


def test_two_racing_builds_of_one_version_publish_exactly_once(tmp_path: Path) -> None:
    manifest = project(tmp_path / "src")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "smpack", "build", str(manifest), "--out", str(out)]
    builds = [
        subprocess.Popen(
            [*command, "--no-verify", "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(b.wait(timeout=300), b.communicate()[1]) for b in builds]

    assert sorted(code for code, _ in results) == [0, 2]
    [loser] = [stderr for code, stderr in results if code == 2]
    [line] = loser.splitlines()
    assert line.startswith(f"error: {out}/faulty/1 already exists")
    assert sorted(p.name for p in (out / "faulty").iterdir()) == ["1"]
    assert [g.tag_set for g in read_package(out / "faulty" / "1").graphs] == ["train", "serve"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_mid_build_clean_up_like_ctrl_c(signum: int, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    manifest = project(tmp_path / "src", f"{{block_in: cpu, marker: {marker}}}")
    out = tmp_path / "new" / "deeper"  # folders the build creates must go too

    build = start_build(manifest, out)
    wait_until(marker.exists, build)
    assert list((out / "faulty").glob(".1.smpack-tmp-*"))
    build.send_signal(signum)
    _, stderr = build.communicate(timeout=60)

    assert build.returncode == 128 + signum
    assert stderr.splitlines() == ["interrupted: the package was not written"]
    assert not (tmp_path / "new").exists()


def test_a_corrupted_source_checkpoint_never_replaces_a_good_package(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "variants", src)
    shutil.copytree(linear_package.path / "variables", src / "start")
    data = src / "start" / "variables.data-00000-of-00001"
    data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()))  # CRCs no longer match
    manifest = src / "linear.yaml"
    manifest.write_text(
        manifest.read_text().replace(
            "  python: models/linear.py:model_fn\n",
            "  python: models/linear.py:model_fn\n  checkpoint: start/variables\n",
        )
    )
    out = tmp_path / "out"
    shutil.copytree(linear_package.path, out / "linear" / "1")
    good = tree_state(out / "linear" / "1")

    result = runner.invoke(app, ["build", str(manifest), "--out", str(out), "--force", "-q"])

    assert result.exit_code == 1, result.output
    kept = out / "linear" / "1.failed-verify"
    assert result.stderr.splitlines() == [
        "verify failed: the package did not pass its checks and was not published; "
        f"it is kept in {kept}"
    ]
    assert tree_state(out / "linear" / "1") == good
    assert (kept / "saved_model.pb").is_file()


def _delete_record(package: Path) -> None:
    (package / "assets.extra" / "smpack.json").unlink()


def _edit_record_version(package: Path) -> None:
    path = package / "assets.extra" / "smpack.json"
    record = json.loads(path.read_text())
    record["smpack"] = "0.0.1"
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


def _edit_card(package: Path) -> None:
    card = package / "assets.extra" / "model_card.html"
    card.write_text(card.read_text().replace("linear", "trusted"))


@pytest.mark.parametrize(
    ("tamper", "detail"),
    [
        (_delete_record, "no assets.extra/smpack.json: the package's files cannot be checked"),
        (
            _edit_record_version,
            "assets.extra/smpack.json was edited (its record_sha256 does not match its entries)",
        ),
        (
            _edit_card,
            "assets.extra/model_card.html was modified "
            "(its sha256 differs from assets.extra/smpack_measured.json)",
        ),
    ],
    ids=["smpack.json deleted", "smpack.json entry edited", "card edited"],
)
def test_verify_catches_tampering_with_the_record_and_the_cards(
    tamper: object, detail: str, linear_package: PackageInfo, tmp_path: Path
) -> None:
    package = tmp_path / "linear" / "1"
    shutil.copytree(linear_package.path, package)
    tamper(package)  # type: ignore[operator]
    [check] = [c for c in verify_package(package).checks if c.name.startswith("files match")]
    assert not check.passed
    assert check.detail == detail


def test_verify_of_a_package_not_built_by_smpack_has_no_record_to_check(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    package = tmp_path / "plain"
    shutil.copytree(linear_package.path, package)
    shutil.rmtree(package / "assets.extra")
    assert not [c for c in verify_package(package).checks if c.name.startswith("files match")]
