"""The tree keeps its promises: readers and the CLI never import TensorFlow."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import smpack.cli
import smpack.package


def _modules(package: object) -> list[str]:
    prefix = package.__name__ + "."  # type: ignore[attr-defined]
    return [m.name for m in pkgutil.iter_modules(package.__path__, prefix)]  # type: ignore[attr-defined]


def test_reading_a_package_and_the_cli_never_import_tensorflow() -> None:
    modules = ["smpack", *_modules(smpack.package), *_modules(smpack.cli)]
    assert "smpack.package.info" in modules and "smpack.cli.commands" in modules
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"


def test_the_public_api_is_what_the_cli_calls() -> None:
    import smpack

    for name in ("build", "inspect", "verify", "extract", "diff", "render_card"):
        assert callable(getattr(smpack, name)), name
