"""The manifest schema: valid examples load, each kind of mistake gets a located message."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import VARIANTS

from smpack.errors import ManifestError
from smpack.manifest import load_manifest

VALID = """\
schema: 1
name: linear
version: 1
source:
  python: models/linear.py:model_fn
variants:
  cpu: {tags: [serve]}
"""


def write(folder: Path, text: str) -> Path:
    (folder / "models").mkdir(exist_ok=True)
    (folder / "models" / "linear.py").write_text("def model_fn(ctx): ...\n")
    path = folder / "manifest.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["linear.yaml", "text_classifier.yaml"])
def test_bundled_examples_are_valid(name: str) -> None:
    loaded = load_manifest(VARIANTS / name)
    assert loaded.python_file.is_file()
    assert len(loaded.spec.variants) == 4


def test_paths_resolve_against_the_manifest_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    loaded = load_manifest(VARIANTS / "text_classifier.yaml")
    assert loaded.assets == [VARIANTS / "data" / "vocab.txt"]


def test_variant_defaults_follow_the_tags() -> None:
    variants = load_manifest(VARIANTS / "linear.yaml").spec.variants
    assert variants["train"].is_training and not variants["cpu"].is_training
    assert variants["tpu"].on_tpu and not variants["gpu"].on_tpu


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (
            VALID + "variantz: {}\n",
            "variantz",
            "unknown field 'variantz'; did you mean 'variants'?",
        ),
        (VALID.replace("version: 1", "version: one"), "version", "positive integer"),
        (VALID.replace("version: 1", "version: 0"), "version", "greater than 0"),
        (VALID.replace("schema: 1", "schema: 9"), "schema", "schema 9 is unknown"),
        (VALID.replace("name: linear", "name: ../x"), "name", "plain directory name"),
        (VALID.replace("name: linear\n", ""), "name", "required field is missing"),
        (
            VALID + "  gpu: {tags: [serve]}\n",
            "variants",
            "tag set {serve} appears twice (variants 'cpu' and 'gpu')",
        ),
        (VALID.replace("[serve]", "[]"), "variants.cpu.tags", "at least 1 item"),
        (
            VALID.replace("[serve]", "[serve], precision: float8"),
            "variants.cpu.precision",
            "'float32', 'float16' or 'bfloat16'",
        ),
        (VALID.replace("[serve]", "[train]"), "variants.cpu", "needs an optimizer"),
        (
            VALID.replace("[serve]", "[train], optimizer: {name: rmsprop, learning_rate: 1}"),
            "variants.cpu.optimizer.name",
            "'sgd', 'momentum' or 'adam'",
        ),
        (VALID.replace("[serve]", "[serve, tpu]"), "variants.cpu", "static batch_size"),
        (
            VALID.replace("[serve]", "[serve], device: GPU0"),
            "variants.cpu.device",
            "not a TensorFlow device name",
        ),
        (VALID.replace("[serve]", "['serve,gpu']"), "variants.cpu.tags", "comma-separated"),
        (
            VALID.replace("linear.py:model_fn", "linear.py"),
            "source.python",
            "'path/to/file.py:function_name'",
        ),
        (VALID.replace("models/linear.py", "models/missing.py"), "source.python", "does not exist"),
        (VALID + "assets: [../outside.txt]\n", "assets.0", "outside the manifest's folder"),
        (
            VALID + "signatures:\n  c: {method: classify, inputs: [x], outputs: [classes]}\n",
            "signatures.c",
            "exactly one input, keyed 'inputs'",
        ),
        (
            VALID + "signatures:\n  r: {method: regress, inputs: [inputs], outputs: [y]}\n",
            "signatures.r",
            "exactly one output, keyed 'outputs'",
        ),
    ],
)
def test_mistakes_name_file_field_and_problem(tmp_path, edit, field, message) -> None:
    path = write(tmp_path, edit)
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.file == path
    assert caught.value.field == field
    assert message in caught.value.message


def test_yaml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID + "  gpu: {tags: [serve\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert str(caught.value).startswith(f"{path}:")
    assert caught.value.line == 9
    assert "invalid YAML" in caught.value.message


def test_errors_point_at_the_offending_line(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("[serve]", "[serve], precision: float8"))
    with pytest.raises(ManifestError) as caught:
        load_manifest(path)
    assert caught.value.line == 7


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(ManifestError, match="top level must be a mapping"):
        load_manifest(path)


def test_asset_symlink_leaving_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "vocab.txt").symlink_to(outside)
    path = write(folder, VALID + "assets: [vocab.txt]\n")
    with pytest.raises(ManifestError, match="outside the manifest's folder"):
        load_manifest(path)


def test_two_assets_with_one_name_are_refused(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "vocab.txt").write_text("x\n")
    path = write(tmp_path, VALID + "assets: [a/vocab.txt, b/vocab.txt]\n")
    with pytest.raises(ManifestError, match="would both be assets/vocab.txt"):
        load_manifest(path)
