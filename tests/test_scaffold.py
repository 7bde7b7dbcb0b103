"""The manifest explains itself: `smpack schema` for editors, `smpack init` for a first build."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml
from conftest import ROOT, VARIANTS
from tf_helpers import run_v1
from typer.testing import CliRunner

from smpack.cli.commands import app

runner = CliRunner()


def as_editor_sees_it(manifest: Path) -> Any:
    # yaml-language-server keeps `2025-01-15` a string; PyYAML makes it a date.
    return json.loads(json.dumps(yaml.safe_load(manifest.read_text()), default=str))


@pytest.fixture(scope="module")
def schema() -> Any:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", ["linear.yaml", "text_classifier.yaml"])
def test_bundled_examples_satisfy_the_published_schema(schema: Any, name: str) -> None:
    jsonschema.validate(as_editor_sees_it(VARIANTS / name), schema)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["variants", "gpu", "precision"], "float8"),
        (["variants", "cpu", "colour"], "blue"),
        (["signatures", "serving_default", "inputs"], []),
        (["card", "model_details", "descripton"], "typo"),
    ],
    ids=["unknown-precision", "unknown-field", "no-inputs", "card-typo"],
)
def test_schema_refuses_what_smpack_refuses(
    schema: Any, tmp_path: Path, path: list[str], value: Any
) -> None:
    data = as_editor_sees_it(VARIANTS / "linear.yaml")
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, schema)
    manifest = tmp_path / "linear.yaml"
    manifest.write_text(yaml.safe_dump(data))
    (tmp_path / "models").symlink_to(VARIANTS / "models")
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{'.'.join(path)}: " in result.stderr


def test_schema_command_does_not_import_tensorflow() -> None:
    script = (
        "import sys\nfrom typer.testing import CliRunner\nfrom smpack.cli.commands import app\n"
        "assert CliRunner().invoke(app, ['schema']).exit_code == 0\n"
        "print(any(m.split('.')[0] == 'tensorflow' for m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.slow
def test_init_writes_a_starter_that_builds_and_serves(schema: Any, tmp_path: Path) -> None:
    manifest = tmp_path / "variants" / "demo.yaml"
    result = runner.invoke(app, ["init", str(manifest)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "variants" / "models" / "demo.py").is_file()
    first_line = manifest.read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=manifest.schema.json"
    assert json.loads((manifest.parent / "manifest.schema.json").read_text()) == schema
    jsonschema.validate(as_editor_sees_it(manifest), schema)

    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "build")])
    assert result.exit_code == 0, result.output
    package = tmp_path / "build" / "demo" / "1"
    for tags in (["serve"], ["serve", "gpu"]):
        scores = run_v1(package, tags, {"features": np.ones((3, 4), np.float32)})["scores"]
        assert scores.shape == (3,)


def test_init_never_overwrites(tmp_path: Path) -> None:
    manifest = tmp_path / "demo.yaml"
    manifest.write_text("mine")
    result = runner.invoke(app, ["init", str(manifest)])
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == f"error: {manifest}: already exists; init never overwrites, choose another path"
    )
    assert manifest.read_text() == "mine"
    assert not (tmp_path / "models").exists()


def test_init_needs_a_name_python_can_import(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path / "my-model.yaml")])
    assert result.exit_code == 2
    assert "'my-model' cannot name a package and a Python module" in result.stderr


def test_bundled_schema_file_is_current(schema: Any) -> None:
    # The examples' `$schema` line points at this file; it must describe this smpack.
    published = json.loads((VARIANTS / "manifest.schema.json").read_text())
    assert published == schema, "run: smpack schema --out variants/manifest.schema.json"
    for name in ("linear.yaml", "text_classifier.yaml"):
        first_line = (VARIANTS / name).read_text().splitlines()[0]
        assert first_line == "# yaml-language-server: $schema=manifest.schema.json"


def _property_names(node: Any) -> set[str]:
    if isinstance(node, dict):
        names = (
            set(node.get("properties", {})) if isinstance(node.get("properties"), dict) else set()
        )
        return names | set().union(*(_property_names(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_property_names(v) for v in node))
    return set()


def test_docs_describe_every_manifest_field(schema: Any) -> None:
    docs = (ROOT / "docs" / "manifest.md").read_text()
    undocumented = sorted(name for name in _property_names(schema) if f"`{name}`" not in docs)
    assert not undocumented, f"docs/manifest.md does not mention {undocumented}"
    # The opening example is a whole manifest, and a valid one.
    example = docs.split("```yaml\n", 1)[1].split("```", 1)[0]
    jsonschema.validate(json.loads(json.dumps(yaml.safe_load(example), default=str)), schema)
