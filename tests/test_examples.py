"""The manifest's `examples:`: valid inputs (and labels) that verify runs every graph on.

The model here numbers its tokens from 1, so the zeros verify makes up when it has nothing
better are out of its range: only examples show that the package works.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from tensorflow_serving.apis import prediction_log_pb2
from typer.testing import CliRunner

from smpack.builder.warmup import read_requests
from smpack.checks.verify import Check, verify_package
from smpack.cli.commands import app
from smpack.package.layout import EXAMPLES_FILE

runner = CliRunner()

MODEL = """\
import tensorflow as tf
from smpack import ModelContext, ModelSpec

def model_fn(ctx: ModelContext) -> ModelSpec:
    ids = tf.compat.v1.placeholder(tf.int32, [2], name="ids")

    def embed(ids):
        table = tf.compat.v1.get_variable("table", [3, 2], ctx.dtype)
        return tf.gather(table, ids - 1)  # token ids are 1, 2, 3

    vectors = tf.identity(ctx.compute(embed, ids), name="vectors")
    if not ctx.training:
        return ModelSpec(inputs={"ids": ids}, outputs={"vectors": vectors})
    target = tf.compat.v1.placeholder(tf.float32, [2, 2], name="target")
    loss = tf.reduce_mean(tf.square(vectors - target))
    return ModelSpec(
        inputs={"ids": ids}, outputs={"vectors": vectors}, labels={"target": target}, loss=loss
    )
"""
EXAMPLE = {"inputs": {"ids": [1, 3]}, "labels": {"target": [[0.5, 0.5], [1.0, -1.0]]}}


def write_manifest(folder: Path, examples: list[dict] | None) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "model.py").write_text(MODEL)
    manifest = {
        "schema": 1,
        "name": "ids",
        "version": 1,
        "source": {"python": "model.py:model_fn"},
        "variants": {
            "cpu": {"tags": ["serve"]},
            "train": {"tags": ["train"], "optimizer": {"name": "sgd", "learning_rate": 0.1}},
        },
        "signatures": {"serving_default": {"inputs": ["ids"], "outputs": ["vectors"]}},
    }
    if examples is not None:
        manifest["examples"] = examples
    (folder / "smpack.yaml").write_text(yaml.safe_dump(manifest))
    return folder / "smpack.yaml"


def checks(package: Path) -> dict[tuple[str, str], Check]:
    report = verify_package(package)
    return {(g.tag_set, c.name): c for g in report.graphs for c in g.checks}


def test_examples_are_what_verify_runs_every_graph_on(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "src", [EXAMPLE])
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    package = tmp_path / "out" / "ids" / "1"
    found = checks(package)
    for tag_set in ("serve", "train"):
        run = found[(tag_set, "signature serving_default runs on its 1 example")]
        assert (run.passed, run.warning) == (True, False)
    step = found[("train", "signature train takes a step on its 1 example")]
    assert (step.passed, step.warning) == (True, False)


def test_examples_travel_with_the_package(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "src", [EXAMPLE])
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "out" / "ids" / "1", moved)
    shutil.rmtree(tmp_path / "src")
    # Stored as TF Serving's own PredictionLogs: one request per signature the example feeds.
    raw = [r.numpy() for r in tf.data.TFRecordDataset(str(moved / "assets.extra" / EXAMPLES_FILE))]
    logs = [prediction_log_pb2.PredictionLog.FromString(r) for r in raw]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        "train",
        "serving_default",
    ]
    requests = read_requests(moved, EXAMPLES_FILE)
    np.testing.assert_array_equal(requests["serving_default"][0]["ids"], [1, 3])
    np.testing.assert_array_equal(requests["train"][0]["target"], EXAMPLE["labels"]["target"])
    assert checks(moved)[("serve", "signature serving_default runs on its 1 example")].passed
    card = (moved / "assets.extra" / "model_card.md").read_text()
    assert "- Examples: 2 requests in `assets.extra/smpack_examples`" in card


def test_examples_read_from_npy_and_json_files(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    np.save(folder / "ids.npy", np.array([2, 2], dtype=np.int32))
    (folder / "target.json").write_text(json.dumps([[0.0, 1.0], [0.0, 1.0]]))
    example = {"files": {"ids": "ids.npy"}, "label_files": {"target": "target.json"}}
    manifest = write_manifest(folder, [example])
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    requests = read_requests(tmp_path / "out" / "ids" / "1", EXAMPLES_FILE)
    np.testing.assert_array_equal(requests["train"][0]["target"], [[0.0, 1.0], [0.0, 1.0]])


def test_without_examples_out_of_range_synthetic_inputs_only_warn(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "src", None)
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    found = checks(tmp_path / "out" / "ids" / "1")
    step = found[("train", "signature train takes a step on synthetic inputs")]
    assert (step.passed, step.warning) == (True, True)
    assert "give the manifest examples:" in step.detail


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        (
            [{"inputs": {"ids": [1, 2, 3]}}],
            "input 'ids' has shape [3], but variant 'cpu' takes (2,)",
        ),
        (
            [{"inputs": {"ids": [1, 2]}, "labels": {"target": [1.0, 2.0]}}],
            "input 'target' has shape [2], but variant 'train' takes (2, 2)",
        ),
    ],
)
def test_examples_that_do_not_fit_are_one_line_errors(tmp_path, examples, message) -> None:
    manifest = write_manifest(tmp_path / "src", examples)
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {manifest}: examples.0: {message} (unknown sizes are free)"
    ]
    assert not (tmp_path / "out").exists()
