"""Packages and sources at URLs, through tf.io.gfile, on TensorFlow's in-memory ram:// filesystem.

ram:// lives inside this test process, so every step runs in-process (the library, or the
CLI through CliRunner), and each test works under a fresh ram://<uuid> root.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import VARIANTS, file_digests, json_result
from tf_helpers import X, make_tf_module, run_v1, run_v2, source_outputs, write_manifest
from typer.testing import CliRunner

import smpack
from smpack.cli.commands import app
from smpack.errors import ManifestError, PackageError
from smpack.package.info import PackageInfo

runner = CliRunner()
LINEAR = str(VARIANTS / "linear.yaml")


@pytest.fixture
def remote() -> str:
    return f"ram://{uuid.uuid4().hex}"


def remote_digests(url: str) -> dict[str, str]:
    """sha256 of every file under `url`, by path relative to it."""
    digests = {}
    for root, _, names in tf.io.gfile.walk(url):
        for name in names:
            path = f"{root}/{name}"
            # ram:// also lists assets.extra/ as a file ".extra" in assets/ that is not there.
            if tf.io.gfile.exists(path):
                with tf.io.gfile.GFile(path, "rb") as stream:
                    relative = path[len(url) + 1 :]
                    digests[relative] = hashlib.sha256(stream.read()).hexdigest()
    return digests


def upload(local: Path, url: str) -> None:
    for root, _, names in os.walk(local):
        folder = f"{url}/{Path(root).relative_to(local).as_posix()}".removesuffix("/.")
        tf.io.gfile.makedirs(folder)
        for name in names:
            tf.io.gfile.copy(str(Path(root) / name), f"{folder}/{name}")


def test_a_package_built_at_a_url_is_the_local_build_byte_for_byte(
    linear_package: PackageInfo, remote: str
) -> None:
    info = smpack.build(LINEAR, remote, measure=False)  # as the fixture: timings differ

    assert info.location == f"{remote}/linear/1"
    assert remote_digests(info.location) == file_digests(linear_package.path)
    feeds = {"input": np.array([1.0, 2.0, 5.0], np.float32)}
    for run in (run_v1, run_v2):
        np.testing.assert_allclose(run(info.location, ["serve"], feeds)["output"], [2.5, 3, 4.5])
    # Uploaded into a hidden sibling, then moved in: nothing of that is left beside it.
    assert tf.io.gfile.listdir(f"{remote}/linear") == ["1"]


def test_build_verify_inspect_extract_and_diff_take_urls(
    linear_package: PackageInfo, remote: str
) -> None:
    built = runner.invoke(app, ["build", LINEAR, "--out", remote, "--json"])
    assert built.exit_code == 0, built.output
    (outcome,) = json_result(built.stdout, "build")
    package = f"{remote}/linear/1"
    assert (outcome["package"], outcome["verified"], outcome["failed_checks"]) == (
        package,
        True,
        [],
    )

    verified = runner.invoke(app, ["verify", package, "--json"])
    assert verified.exit_code == 0, verified.output
    assert json_result(verified.stdout, "verify")["path"] == package

    inspected = json_result(runner.invoke(app, ["inspect", package, "--json"]).stdout, "inspect")
    assert inspected["path"] == package
    serve = next(g for g in inspected["graphs"] if g["tag_set"] == "serve")
    assert f"--model_base_path={remote}/linear " in serve["load"]["tf_serving"]

    extracted = runner.invoke(
        app, ["extract", package, "--tags", "serve,gpu", "--out", f"{remote}/gpu/1"]
    )
    assert extracted.exit_code == 0, extracted.output
    feeds = {"input": np.array([2.0], np.float32)}
    np.testing.assert_allclose(run_v2(f"{remote}/gpu/1", ["serve"], feeds)["output"], [3.0])

    same = runner.invoke(app, ["diff", package, str(linear_package.path)])
    assert (same.exit_code, same.stdout.strip()) == (0, "no differences")


def test_an_existing_remote_package_is_kept_without_force_and_replaced_whole_with_it(
    linear_package: PackageInfo, remote: str
) -> None:
    package = f"{remote}/linear/1"
    smpack.build(LINEAR, remote, measure=False)
    with tf.io.gfile.GFile(f"{package}/assets.extra/stale.txt", "w") as stream:
        stream.write("from an older build")
    before = remote_digests(package)

    refused = runner.invoke(app, ["build", LINEAR, "--out", remote])
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: {package} already exists; pass --force to replace it, "
        "or raise the manifest's version"
    )
    assert remote_digests(package) == before

    # Unmeasured, as the fixture: it is compared byte for byte.
    args = ["build", LINEAR, "--out", remote, "--force", "--quiet", "--no-measure"]
    replaced = runner.invoke(app, args)
    assert replaced.exit_code == 0, replaced.output
    assert remote_digests(package) == file_digests(linear_package.path)
    assert tf.io.gfile.listdir(f"{remote}/linear") == ["1"]


def test_a_build_that_fails_leaves_the_remote_package_as_it_was(
    variants_copy: Path, remote: str
) -> None:
    package = f"{remote}/linear/1"
    smpack.build(variants_copy / "linear.yaml", remote)
    before = remote_digests(package)
    # Fails late: after every graph and the weights are written, while rendering the card.
    (variants_copy / "broken.md.j2").write_text("{{ no_such_variable.field }}\n")
    manifest = yaml.safe_load((variants_copy / "linear.yaml").read_text())
    manifest["card"]["template"] = "broken.md.j2"
    (variants_copy / "linear.yaml").write_text(yaml.safe_dump(manifest))

    result = runner.invoke(
        app, ["build", str(variants_copy / "linear.yaml"), "--out", remote, "--force"]
    )
    assert result.exit_code == 2
    assert "no_such_variable" in result.stderr
    assert remote_digests(package) == before
    assert tf.io.gfile.listdir(f"{remote}/linear") == ["1"]


def test_savedmodel_keras_and_checkpoint_sources_can_be_urls(tmp_path: Path, remote: str) -> None:
    import keras

    make_tf_module(tmp_path)
    upload(tmp_path / "two_layers", f"{remote}/two_layers")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="dense")])
    model.save(tmp_path / "dense.keras")
    tf.io.gfile.copy(str(tmp_path / "dense.keras"), f"{remote}/dense.keras")
    serve = {"cpu": {"tags": ["serve"]}}

    from_savedmodel = write_manifest(
        tmp_path, {"savedmodel": f"{remote}/two_layers"}, variants=serve
    )
    package = smpack.build(from_savedmodel, tmp_path / "out").path
    expected = source_outputs(tmp_path / "two_layers", "serving_default", x=X)["y"]
    np.testing.assert_array_equal(run_v1(package, ["serve"], {"x": X})["y"], expected)
    record = json.loads((package / "assets.extra" / "smpack.json").read_text())
    assert record["source"]["path"] == f"{remote}/two_layers/"

    (tmp_path / "k").mkdir()
    from_keras = write_manifest(tmp_path / "k", {"keras": f"{remote}/dense.keras"}, variants=serve)
    package = smpack.build(from_keras, tmp_path / "k" / "out").path
    (output,) = run_v1(package, ["serve"], {"x": X}).values()
    np.testing.assert_allclose(output, model.predict(X, verbose=0), rtol=1e-6)


def test_a_python_sources_checkpoint_can_be_a_url(variants_copy: Path, remote: str) -> None:
    from tf_helpers import CUSTOM, save_checkpoint

    save_checkpoint(variants_copy / "ckpt" / "model", 3.0, 1.0)
    upload(variants_copy / "ckpt", f"{remote}/ckpt")
    manifest = variants_copy / "custom.yaml"
    manifest.write_text(CUSTOM.format(checkpoint=f"checkpoint: {remote}/ckpt/model"))

    package = smpack.build(manifest, f"{remote}/out").location
    feeds = {"input": np.array([1.0, 2.0], np.float32)}
    np.testing.assert_allclose(run_v1(package, ["serve"], feeds)["output"], [4.0, 7.0])
    with tf.io.gfile.GFile(f"{package}/assets.extra/smpack.json") as stream:
        assert json.load(stream)["checkpoint"]["path"] == f"{remote}/ckpt/model"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"savedmodel": "ram://nowhere/model"},
            "source.savedmodel: no SavedModel at ram://nowhere/model",
        ),
        (
            {"keras": "ram://nowhere/m.keras"},
            "source.keras: no Keras file at ram://nowhere/m.keras",
        ),
        ({"python": "ram://nowhere/m.py:f"}, "source.python: model code must be a local file"),
    ],
)
def test_a_source_url_that_names_nothing_is_a_manifest_error(
    tmp_path: Path, source: dict[str, str], message: str
) -> None:
    manifest = write_manifest(tmp_path, source, variants={"cpu": {"tags": ["serve"]}})
    with pytest.raises(ManifestError) as caught:
        smpack.build(manifest, tmp_path / "out")
    assert message in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_an_unknown_url_scheme_is_one_line(remote: str) -> None:
    result = runner.invoke(app, ["build", LINEAR, "--out", "nosuchfs://bucket/models"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot read nosuchfs://bucket/models/linear/1: ")
    assert "nosuchfs" in result.stderr.splitlines()[0]
    assert len(result.stderr.splitlines()) == 1


@pytest.fixture
def failing_moves(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """{destination: n}: the next n moves of a folder into destination fail, as a dropped
    connection would make them; every other move is real."""
    from smpack.io import storage

    real_move = storage._move_tree
    failures: dict[str, int] = {}

    def move(gfile: Any, source: str, target: str, *, graph_first: bool) -> None:
        if failures.get(target, 0) > 0:
            failures[target] -= 1
            raise tf.errors.UnavailableError(None, None, "connection reset")
        real_move(gfile, source, target, graph_first=graph_first)

    monkeypatch.setattr(storage, "_move_tree", move)
    return failures


@pytest.fixture
def remote_package(remote: str) -> str:
    return smpack.build(LINEAR, remote).location


def test_a_failed_swap_puts_the_previous_package_back(
    failing_moves: dict[str, int], remote: str, remote_package: str
) -> None:
    package = remote_package
    before = remote_digests(package)
    failing_moves[package] = 1  # moving the new package in; putting the old back works

    with pytest.raises(PackageError) as caught:
        smpack.build(LINEAR, remote, force=True)
    assert (
        str(caught.value)
        == f"cannot write {package}: connection reset; the package was not written"
    )
    assert remote_digests(package) == before
    assert tf.io.gfile.listdir(f"{remote}/linear") == ["1"]


def test_when_the_old_package_cannot_go_back_the_error_says_where_it_is(
    failing_moves: dict[str, int], remote: str, remote_package: str
) -> None:
    package = remote_package
    before = remote_digests(package)
    failing_moves[package] = 2  # moving the new package in, and putting the old one back

    with pytest.raises(PackageError) as caught:
        smpack.build(LINEAR, remote, force=True)
    message = str(caught.value)
    assert message.startswith(
        f"cannot restore {package}: connection reset; the previous package is in "
    )
    kept = message.rpartition(" is in ")[2]
    assert kept.startswith(f"{remote}/linear/.1.smpack-old-")
    assert remote_digests(kept) == before
    # Nothing else is left: the uploaded copy of the new package is gone.
    assert sorted(tf.io.gfile.listdir(f"{remote}/linear")) == [kept.rpartition("/")[2]]
