"""Keras models as users write them, beyond the layers Keras ships: a tabular model on dict
inputs of mixed dtypes through preprocessing layers, and a subclassed model with a custom
layer whose module sits beside the manifest. Each is built with serve, train, serve,gpu
(float16 + XLA) and serve,tpu (bfloat16) and verified; the sources are made by
variants/corpus.py.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from corpus import keras_custom_classes, keras_tabular
from tf_helpers import run_v1, source_variants
from typer.testing import CliRunner

import smpack
from smpack.checks.verify import TOLERANCES, VerifyReport, verify_package
from smpack.cli.commands import app

VARIANTS = source_variants({"name": "sgd", "learning_rate": 0.01}, tpu_batch=4)
TABULAR = {
    "age": np.array([[25.0], [40.0], [60.0], [33.0]], np.float32),
    "code": np.array([[3], [7], [11], [5]], np.int64),
    "city": np.array([[b"paris"], [b"rome"], [b"oslo"], [b""]], object),
    "income": np.array([[3000.0], [800.0], [25000.0], [7000.0]], np.float32),
}
# A subclassed model's export names its input by position.
GATED = {"args_0": np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)}


def _build(folder: Path, source: dict[str, Any]) -> Path:
    manifest = {"schema": 1, "name": "keras", "version": 1, "source": source}
    (folder / "smpack.yaml").write_text(yaml.safe_dump({**manifest, "variants": VARIANTS}))
    return smpack.build(folder / "smpack.yaml", folder / "out", measure=False).path


def _failures(report: VerifyReport) -> list[str]:
    return [f"{label}: {c.name}: {c.detail}" for label, c in report.rows() if not c.passed]


@pytest.fixture(scope="module")
def tabular(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tabular")
    source = keras_tabular(folder)
    return folder / source["keras"], _build(folder, source)


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("gated")
    source = keras_custom_classes(folder)
    return folder / source["keras"], _build(folder, source)


@pytest.mark.slow
def test_a_tabular_model_of_mixed_dtype_inputs_verifies(tabular: tuple[Path, Path]) -> None:
    import keras

    source, package = tabular
    report = verify_package(package)
    assert not _failures(report)
    assert [g.tag_set for g in report.graphs] == ["train", "serve", "serve,gpu", "serve,tpu"]
    # The float16 graph agrees with serve on made-up rows (the string column made up as plain
    # text); where made-up rows alone cannot tell, verify warns instead (tests/test_examples.py).
    (gpu_check,) = [c for label, c in report.rows() if label == "serve,gpu" and "agrees" in c.name]
    assert gpu_check.passed, gpu_check
    # On real rows, the float32 graph is the Keras model and float16 is within tolerance.
    expected = np.asarray(keras.saving.load_model(source)(TABULAR))
    serve = run_v1(package, ["serve"], TABULAR)["output_0"]
    np.testing.assert_allclose(serve, expected, rtol=1e-6, atol=1e-7)
    gpu = run_v1(package, ["serve", "gpu"], TABULAR)["output_0"]
    assert np.abs(gpu - expected).max() <= TOLERANCES["float16"] * np.abs(expected).max()


@pytest.mark.slow
def test_a_subclassed_model_with_custom_layers_builds_and_verifies(
    gated: tuple[Path, Path],
) -> None:
    import keras

    source, package = gated
    report = verify_package(package)
    assert not _failures(report)
    assert [g.tag_set for g in report.graphs] == ["train", "serve", "serve,gpu", "serve,tpu"]
    expected = np.asarray(keras.saving.load_model(source)(GATED["args_0"]))
    np.testing.assert_allclose(run_v1(package, ["serve"], GATED)["output_0"], expected, rtol=1e-6)


@pytest.mark.slow
def test_a_package_needs_no_module_that_only_its_source_needed(
    gated: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, package = gated
    moved = tmp_path / "moved"
    shutil.copytree(package, moved)
    shutil.rmtree(source.parent)
    # As in another process: the module beside the deleted manifest cannot be imported.
    monkeypatch.delitem(sys.modules, "custom_layers")
    report = verify_package(moved)
    assert not _failures(report)
    (check,) = [c for c in report.checks if c.name == "op libraries import"]
    assert "cannot import 'custom_layers'" in check.detail
    assert check.detail.endswith("no graph needs an op from it")


@pytest.mark.slow
def test_an_unregistered_custom_class_names_source_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    source = keras_custom_classes(tmp_path, module="unlisted_layers")
    del source["imports"]
    manifest = {"schema": 1, "name": "keras", "version": 1, "source": source}
    (tmp_path / "smpack.yaml").write_text(yaml.safe_dump({**manifest, "variants": VARIANTS}))
    # As in a process that never imported the module: Keras knows neither class.
    registered = keras.saving.get_custom_objects()
    monkeypatch.delitem(registered, "corpus>GatedNet")
    monkeypatch.delitem(registered, "corpus>Gated")
    result = CliRunner().invoke(app, ["build", str(tmp_path / "smpack.yaml"), "-o", str(tmp_path)])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'smpack.yaml'}: source.keras: cannot load")
    assert "Could not locate class 'GatedNet'" in line
    assert line.endswith("list the module defining it in source.imports")
    assert not (tmp_path / "keras").exists()
