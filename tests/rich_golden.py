"""Run the CLI the way golden files see it: 100 columns, no colour, stdout and stderr apart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner, Result

from smpack.cli import commands as cli

GOLDEN = Path(__file__).resolve().parent / "golden"
# SMPACK_UPDATE_GOLDEN=1 rewrites the golden files instead of comparing; read the diff after.
UPDATE_GOLDEN = os.environ.get("SMPACK_UPDATE_GOLDEN") == "1"


def invoke(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> Result:
    """Invoke `smpack ARGS` with a fixed-width, colourless console on stdout."""
    monkeypatch.setattr(cli, "stdout", Console(width=100, color_system=None))
    return CliRunner().invoke(cli.app, args)


def check_golden(name: str, text: str) -> None:
    golden = GOLDEN / name
    if UPDATE_GOLDEN:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
