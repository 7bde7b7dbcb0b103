"""Long steps report progress: numbered steps from the library, a bar only on a terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from conftest import VARIANTS
from rich.console import Console
from typer.testing import CliRunner

import smpack
from smpack.builder.batch import build_many
from smpack.checks.verify import verify_package
from smpack.cli import commands as cli
from smpack.package.info import PackageInfo
from smpack.progress import Step

runner = CliRunner()
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_a_build_reports_each_step_before_it_starts(tmp_path: Path) -> None:
    steps: list[Step] = []
    smpack.build(VARIANTS / "linear.yaml", tmp_path, on_step=steps.append)

    assert [step.description for step in steps] == [
        "importing TensorFlow",
        "building variant cpu (serve)",
        "building variant train (train)",
        "building variant gpu (serve,gpu)",
        "building variant tpu (serve,tpu)",
        "writing variables and graphs",
        "measuring train",
        "measuring serve",
        "measuring serve,gpu",
        "measuring serve,tpu",
        "hashing every file for smpack.json",
        "writing model cards",
    ]
    assert [step.done for step in steps] == list(range(12))
    assert {step.total for step in steps} == {12}


def test_a_remote_build_counts_its_upload(tmp_path: Path) -> None:
    steps: list[Step] = []
    smpack.build(VARIANTS / "linear.yaml", "ram://progress/out", on_step=steps.append)
    assert steps[-1] == Step("uploading to ram://progress/out/linear/1", 12, 13)


def test_verification_reports_each_graph(linear_package: PackageInfo) -> None:
    steps: list[Step] = []
    verify_package(linear_package.path, on_step=steps.append)
    assert [(step.description, step.done, step.total) for step in steps] == [
        ("checking the package's files", 0, 5),
        ("loading and running train", 1, 5),
        ("loading and running serve", 2, 5),
        ("loading and running serve,gpu", 3, 5),
        ("loading and running serve,tpu", 4, 5),
    ]


@pytest.mark.slow
def test_a_batch_reports_each_manifest_as_it_finishes(variants_copy: Path, tmp_path: Path) -> None:
    steps: list[Step] = []
    manifests = [variants_copy / "linear.yaml", variants_copy / "missing.yaml"]
    build_many(manifests, tmp_path, jobs=2, verify=False, on_step=steps.append)
    assert sorted(step.description for step in steps) == [
        "linear.yaml finished",
        "missing.yaml finished",
    ]
    assert [(step.done, step.total) for step in steps] == [(1, 2), (2, 2)]


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """What a terminal on stderr would receive."""
    screen = io.StringIO()
    monkeypatch.setattr(cli, "stderr", Console(file=screen, force_terminal=True, width=100))
    return screen


def test_a_terminal_sees_a_bar_that_ends_full(terminal: io.StringIO, tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["build", str(VARIANTS / "linear.yaml"), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    shown = ANSI.sub("", terminal.getvalue())
    assert "reading the manifest" in shown  # verify runs inside the build, in the same bar
    assert re.search(r"writing model cards .* 11/12", shown)
    assert re.search(r"loading and running serve,tpu .* 4/5", shown)


def test_every_step_is_drawn_however_short(terminal: io.StringIO) -> None:
    """A step shorter than the bar's tick (a tenth of a second), or one its refreshing
    thread was not scheduled during (the test above failed so under load), is still seen."""
    with cli._progress_bar(False, "first") as show:
        for done, description in enumerate(["second", "third"], start=1):
            show(Step(description, done, 3))
    shown = ANSI.sub("", terminal.getvalue())
    assert re.search(r"second .* 1/3", shown)
    assert re.search(r"third .* 2/3", shown)


def test_pipes_get_no_bar_and_no_colour(linear_package: PackageInfo, tmp_path: Path) -> None:
    # CliRunner's streams are not terminals, as a pipe or a CI log is not.
    built = runner.invoke(cli.app, ["build", str(VARIANTS / "linear.yaml"), "-o", str(tmp_path)])
    inspected = runner.invoke(cli.app, ["inspect", str(linear_package.path)])
    for result in (built, inspected):
        assert result.exit_code == 0, result.output
        assert result.stderr == ""
        assert "\x1b[" not in result.stdout
    assert "serve,gpu" in inspected.stdout
