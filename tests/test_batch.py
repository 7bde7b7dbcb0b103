"""Several manifests at once (--jobs), and --json / --quiet for scripts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import VARIANTS, json_result
from typer.testing import CliRunner

from smpack.builder.batch import build_many
from smpack.cli.commands import app
from smpack.package.info import PackageInfo

runner = CliRunner()


@pytest.mark.slow
def test_one_failure_does_not_stop_the_others(variants_copy: Path, tmp_path: Path) -> None:
    bad = variants_copy / "bad.yaml"
    bad.write_text(
        "schema: 1\nname: bad\nversion: 0\n"
        "source: {python: models/linear.py:model_fn}\nvariants: {cpu: {tags: [serve]}}\n"
    )
    manifests = [variants_copy / "linear.yaml", bad, variants_copy / "text_classifier.yaml"]
    out = tmp_path / "out"
    args = ["build", *map(str, manifests), "--out", str(out), "--jobs", "2", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2  # a manifest could not be built
    assert result.stderr.splitlines() == [
        f"error: {bad}:3: version: Input should be greater than 0"
    ]
    outcomes = json_result(result.stdout, "build")
    # In the order given, whatever order the processes finished in.
    assert [o["manifest"] for o in outcomes] == [str(m) for m in manifests]
    linear, failed, text = outcomes
    assert linear["verified"] and not linear["failed_checks"]
    assert linear["tag_sets"] == ["train", "serve", "serve,gpu", "serve,tpu"]
    assert (Path(linear["package"]) / "saved_model.pb").is_file()
    assert text["package"] == str(out / "text_classifier" / "1")
    assert failed["package"] is None and "version" in failed["error"]
    assert sorted(p.name for p in out.iterdir()) == ["linear", "text_classifier"]


def test_quiet_build_prints_nothing_and_the_exit_code_tells(tmp_path: Path) -> None:
    args = ["build", str(VARIANTS / "linear.yaml"), "--out", str(tmp_path), "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert result.stdout == "" and result.stderr == ""
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert again.stdout == ""
    assert "already exists" in again.stderr


def test_verify_json_and_quiet(linear_package: PackageInfo) -> None:
    result = runner.invoke(app, ["verify", str(linear_package.path), "--json"])
    assert result.exit_code == 0, result.output
    document = json_result(result.stdout, "verify")
    assert document["passed"] is True
    assert [g["tag_set"] for g in document["graphs"]] == [
        "train",
        "serve",
        "serve,gpu",
        "serve,tpu",
    ]
    quiet = runner.invoke(app, ["verify", str(linear_package.path), "--quiet"])
    assert (quiet.exit_code, quiet.stdout) == (0, "")


def test_every_command_takes_json_and_quiet() -> None:
    commands = [command.name or command.callback.__name__ for command in app.registered_commands]
    assert len(commands) == 9
    for command in commands:
        help_text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
        assert "--json" in help_text and "--quiet" in help_text, command


def test_inspect_quiet_answers_with_its_exit_code(linear_package: PackageInfo) -> None:
    package = str(linear_package.path)
    found = runner.invoke(app, ["inspect", package, "--tags", "serve,gpu", "--quiet"])
    assert (found.exit_code, found.stdout, found.stderr) == (0, "", "")
    missing = runner.invoke(app, ["inspect", package, "--tags", "serve,cpu", "--quiet"])
    assert (missing.exit_code, missing.stdout) == (2, "")
    assert "no MetaGraph has the tag set cpu,serve" in missing.stderr


def test_card_json_and_quiet(linear_package: PackageInfo, tmp_path: Path) -> None:
    package = str(linear_package.path)
    printed = runner.invoke(app, ["card", package]).stdout
    card_json = runner.invoke(app, ["card", package, "--json"]).stdout
    assert json_result(card_json, "card") == {"card": printed}
    out = tmp_path / "card.md"
    written = runner.invoke(app, ["card", package, "--out", str(out), "--json"])
    assert json_result(written.stdout, "card") == {"path": str(out)}
    assert out.read_text() == printed
    assert runner.invoke(app, ["card", package, "--quiet"]).stdout == ""


def test_schema_out_json_and_quiet(tmp_path: Path) -> None:
    printed = runner.invoke(app, ["schema"]).stdout
    assert json_result(runner.invoke(app, ["schema", "--json"]).stdout, "schema") == json.loads(
        printed
    )
    assert runner.invoke(app, ["schema", "--quiet"]).stdout == ""
    out = tmp_path / "manifest.schema.json"
    written = runner.invoke(app, ["schema", "--out", str(out), "--json"])
    assert json_result(written.stdout, "schema") == {"path": str(out)}
    # What the examples' `$schema` line points at is exactly this output.
    assert out.read_text() == printed == (VARIANTS / "manifest.schema.json").read_text()


def test_build_workers_import_nothing_from_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A spawned worker's start-up (`python -c ...`) imported multiprocessing from the working
    # folder before it took its parent's sys.path.
    for module in ("multiprocessing", "smpack"):
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text(f"raise SystemExit('{module} booby-trap')")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    [outcome] = build_many([tmp_path / "absent.yaml"], tmp_path / "out", verify=False)
    assert outcome.error is not None and "absent.yaml" in outcome.error, outcome.error
    assert "PYTHONSAFEPATH" not in os.environ
