"""The hostile corpus (tests/hostile/cases.py): every case exits 2 with exactly one line on
stderr, no traceback, nothing on stdout, and leaves the output folder (holding a good package
where a build would write) and its own inputs unchanged, byte for byte.

Cases about permissions mean nothing to root, so when the suite runs as root they run as
`nobody` through `setpriv`, in a subprocess; otherwise in-process, as the current user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import tree_state
from hostile.cases import CASES, Case
from typer.testing import CliRunner

from smpack.cli import app
from smpack.package.info import PackageInfo

TESTS = Path(__file__).resolve().parent
MODELS = TESTS / "bad_manifests" / "models"
AS_ROOT = os.geteuid() == 0
NOBODY = 65534

runner = CliRunner()


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    # A folder `nobody` can traverse: pytest's own temporary root is private to its user.
    folder = Path(tempfile.mkdtemp(prefix="smpack-hostile-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(folder)


def lay_out(case: Case, root: Path, good: Path) -> dict[str, Path]:
    folders = {name: root / name for name in ("src", "pkg", "out", "outside")}
    shutil.copytree(MODELS, folders["src"] / "models")
    shutil.copytree(good, folders["pkg"])
    shutil.copytree(good, folders["out"] / "tiny" / "1")
    outside = folders["outside"]
    shutil.copytree(good / "variables", outside / "variables")
    for part in (outside / "variables").iterdir():
        part.rename(outside / part.name.replace("variables.", "model."))
    (outside / "t.md.j2").write_text("secret\n")
    np.save(outside / "x.npy", np.zeros(1, np.float32))
    shutil.copy(MODELS / "tiny.py", outside / "tiny.py")
    for path in [root, *root.rglob("*")]:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    case.make(folders["src"], folders["pkg"])
    return folders


def readable_state(folder: Path) -> dict[str, str]:
    return tree_state(folder) if AS_ROOT else {}


def run(argv: list[str], unprivileged: bool, home: Path) -> tuple[int, str, str]:
    if not (unprivileged and AS_ROOT):
        result = runner.invoke(app, argv, env={"SMPACK_DEBUG": None})
        return result.exit_code, result.stdout, result.stderr
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    env = {k: v for k, v in os.environ.items() if k != "SMPACK_DEBUG"}
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    completed = subprocess.run(
        [*command, sys.executable, "-m", "smpack", *argv],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    return completed.returncode, completed.stdout, completed.stderr


def test_corpus_holds_at_least_60_cases_with_distinct_names() -> None:
    names = [case.name for case in CASES]
    assert len(names) >= 60
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_hostile_input_is_one_line_exit_2_and_changes_nothing(
    case: Case,
    linear_package: PackageInfo,
    scratch: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A user template's CPU budget, shortened so the endless template costs a second.
    monkeypatch.setattr("smpack.package.card._CARD_SECONDS", 1)
    folders = lay_out(case, scratch, linear_package.path)
    before = {name: readable_state(path) for name, path in folders.items()}
    before["out"] = tree_state(folders["out"])
    names = {name: str(path) for name, path in folders.items()}
    argv = [part.format(**names) for part in case.command]

    code, stdout, stderr = run(argv, case.unprivileged, scratch)

    print(f"CASE {case.name} {code} {stderr!r}")
    assert code == 2, stderr
    assert stdout == ""
    assert "Traceback" not in stderr
    assert stderr.splitlines() == ["error: " + case.line.format(**names)]
    after = {name: readable_state(path) for name, path in folders.items()}
    after["out"] = tree_state(folders["out"])
    assert after == before


def test_a_bug_in_smpack_is_reported_as_a_bug_in_one_line(
    linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        msg = "unsupported operand\nsecond line"
        raise TypeError(msg)

    monkeypatch.setattr("smpack.inspect", broken)
    result = runner.invoke(app, ["inspect", str(linear_package.path)], env={"SMPACK_DEBUG": None})
    assert result.exit_code == 70
    assert result.stderr.splitlines() == [
        "smpack bug: TypeError: unsupported operand; please report it "
        "(SMPACK_DEBUG=1 shows the traceback)"
    ]

    result = runner.invoke(app, ["inspect", str(linear_package.path)], env={"SMPACK_DEBUG": "1"})
    assert isinstance(result.exception, TypeError)
