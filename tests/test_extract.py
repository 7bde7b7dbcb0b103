"""`smpack extract`: one graph of a package as a standalone SavedModel other tools can take."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import invoke
from tf_helpers import run_v1

from smpack.checks.verify import verify_package
from smpack.package.info import PackageInfo, read_package


def test_serve_variant_round_trips_through_tflite(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "serve"
    result = invoke(
        monkeypatch, ["extract", str(linear_package.path), "--tags", "serve", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output

    converter = tf.lite.TFLiteConverter.from_saved_model(str(out))
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    [given] = interpreter.get_input_details()
    interpreter.resize_tensor_input(given["index"], [3])
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], np.array([1.0, 2.0, 4.0], np.float32))
    interpreter.invoke()
    [answer] = interpreter.get_output_details()
    # The linear example is "half plus two".
    assert interpreter.get_tensor(answer["index"]).tolist() == [2.5, 3.0, 4.0]


def test_gpu_variant_standalone_with_devices_cleared(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "gpu"
    args = ["extract", str(linear_package.path), "--tags", "gpu,serve", "--out", str(out)]
    result = invoke(monkeypatch, [*args, "--clear-devices"])
    assert result.exit_code == 0, result.output

    info = read_package(out)
    [graph] = info.graphs
    assert graph.tags == ("serve",)
    assert graph.devices == ()
    assert (graph.precision, graph.xla) == ("float16", True)  # only placement is dropped
    assert info.variables == linear_package.variables
    # The package's cards and smpack.json describe all four graphs, not this one.
    assert not {"model_card.md", "model_card.html", "smpack.json"} & set(info.assets_extra)
    assert verify_package(out).passed
    data = "variables/variables.data-00000-of-00001"
    assert os.stat(out / data).st_ino == os.stat(linear_package.path / data).st_ino
    assert run_v1(out, ["serve"], {"input": [2.0]})["output"].tolist() == [3.0]

    # An existing OUT is kept unless --force replaces it.
    result = invoke(monkeypatch, args)
    assert result.exit_code == 2
    assert "already exists" in result.stderr
    assert read_package(out).graphs[0].devices == ()
    result = invoke(monkeypatch, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert "/device:GPU:0" in read_package(out).graphs[0].devices


def test_unknown_tag_set(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "none"
    args = ["extract", str(linear_package.path), "--tags", "serve,cpu", "--out", str(out)]
    result = invoke(monkeypatch, args)
    assert result.exit_code == 2
    assert "no MetaGraph has the tag set cpu,serve" in result.stderr
    assert not out.exists()
