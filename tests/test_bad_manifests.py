"""The bad-manifest corpus: every way a manifest can be wrong is refused the same clean way.

Each `tests/bad_manifests/<case>.yaml` breaks exactly one rule; `<case>.expected` holds the
one line smpack must print for it (after `error: <corpus folder>/`; `{here}` stands for the
corpus folder). Models and data they refer to live in `models/` and `data/` beside them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from conftest import tree_state
from typer.testing import CliRunner

from smpack.cli.commands import app
from smpack.errors import ModelError
from smpack.package.info import PackageInfo

CORPUS = Path(__file__).resolve().parent / "bad_manifests"
CASES = sorted(p.stem for p in CORPUS.glob("*.expected"))

runner = CliRunner()


def expected_line(case: str) -> str:
    text = (CORPUS / f"{case}.expected").read_text(encoding="utf-8").strip()
    return f"error: {CORPUS}/" + text.replace("{here}", str(CORPUS))


@pytest.fixture(scope="module")
def previous_out(linear_package: PackageInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder already holding a complete package where every case would write."""
    out = tmp_path_factory.mktemp("previous")
    shutil.copytree(linear_package.path, out / "tiny" / "1")
    return out


def test_corpus_covers_at_least_30_cases_each_with_its_manifest() -> None:
    assert len(CASES) >= 30
    assert sorted(p.stem for p in CORPUS.glob("*.yaml")) == CASES


@pytest.mark.parametrize("case", CASES)
def test_bad_manifest_fails_with_one_line_and_touches_nothing(
    case: str, previous_out: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(previous_out, out)
    before = tree_state(out)

    # --force: even permission to replace the previous package must not let a bad
    # manifest damage it.
    result = runner.invoke(
        app, ["build", str(CORPUS / f"{case}.yaml"), "--out", str(out), "--force"]
    )

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.splitlines() == [expected_line(case)]
    assert "Traceback" not in result.stderr
    assert tree_state(out) == before


@pytest.mark.slow
def test_a_late_failure_is_one_line_in_a_real_terminal_session(tmp_path: Path) -> None:
    # CliRunner cannot see what TF's C++ code writes to file descriptor 2; a subprocess
    # can. This case fails after TensorFlow has run sessions and written the graphs.
    case = "template_undefined_variable"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "SMPACK_DEBUG")}
    manifest = str(CORPUS / f"{case}.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "smpack", "build", manifest, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [expected_line(case)]
    assert list(tmp_path.iterdir()) == []


def test_manifest_mistakes_are_found_before_tensorflow_is_imported() -> None:
    # Keeps the corpus fast and proves validation is TF-free: only the cases that need the
    # model (marked by what they are about) may get as far as importing TensorFlow.
    code = (
        "import sys, pathlib\n"
        "from smpack.manifest import load_manifest\n"
        "from smpack.errors import ManifestError\n"
        "refused = []\n"
        f"for case in {CASES!r}:\n"
        f"    try: load_manifest(pathlib.Path({str(CORPUS)!r}) / (case + '.yaml'))\n"
        "    except ManifestError: refused.append(case)\n"
        "print(' '.join(refused)); print('tensorflow' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    refused, tf_imported = result.stdout.splitlines()
    assert tf_imported == "False"
    assert len(refused.split()) >= 30


def test_model_traceback_is_shown_only_with_smpack_debug(tmp_path: Path) -> None:
    manifest = str(CORPUS / "model_function_raises.yaml")
    result = runner.invoke(
        app, ["build", manifest, "--out", str(tmp_path)], env={"SMPACK_DEBUG": "1"}
    )
    assert isinstance(result.exception, ModelError)
    frames = traceback.extract_tb(result.exception.__cause__.__traceback__)
    assert frames[-1].name == "raising_fn"
    assert frames[-1].filename == str(CORPUS / "models" / "tiny.py")
