"""Real architectures (random weights, small inputs) through serve, train, serve,gpu and serve,tpu.

A train variant trains like its source: a Keras model's training-mode call (dropout on, batch
normalisation on batch statistics with its moving averages updated) and only the variables
the source marks trainable. The golden behaviour is `model.fit` itself: same optimizer
(SGD), same batch, 20 steps, and the package's loss after each step must follow fit's
curve. The tolerance is relative, per step: 1e-5 for the small models, whose curves match
to float32 rounding; 2e-2 for MobileNetV2 and EfficientNetB0, where 50 batch-norm layers
amplify the last-bit differences between TF1 gradients and Keras's gradient tape.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tf_helpers import run_v1
from typer.testing import CliRunner

from smpack.cli.commands import app

runner = CliRunner()
STEPS = 20
BATCH = 4
LEARNING_RATE = 0.01


def variants(batch: int, tpu: bool = True) -> dict[str, Any]:
    every = {
        "cpu": {"tags": ["serve"]},
        "train": {"tags": ["train"], "optimizer": {"name": "sgd", "learning_rate": LEARNING_RATE}},
        "gpu": {
            "tags": ["serve", "gpu"],
            "device": "/device:GPU:0",
            "precision": "float16",
            "xla": True,
        },
        "tpu": {"tags": ["serve", "tpu"], "precision": "bfloat16", "batch_size": batch},
    }
    if not tpu:
        del every["tpu"]
    return every


def write_manifest(
    folder: Path, source: dict[str, Any], batch: int = BATCH, tpu: bool = True
) -> Path:
    manifest = {
        "schema": 1,
        "name": "real",
        "version": 1,
        "source": source,
        "variants": variants(batch, tpu),
    }
    path = folder / "smpack.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def build(manifest: Path, out: Path) -> Path:
    """`smpack build` (which verifies every graph) through the CLI; the package's folder."""
    result = runner.invoke(app, ["build", str(manifest), "--out", str(out), "--json", "--quiet"])
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return out / "real" / "1"


def train_steps(package: Path, feeds: dict[str, np.ndarray], labels: np.ndarray) -> list[float]:
    """The train signature run STEPS times on one batch through the TF1 loader."""
    import tensorflow as tf

    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(package))
        signature = graph.signature_def["train"]
        feed_dict = {signature.inputs[k].name: v for k, v in feeds.items()}
        feed_dict[signature.inputs["labels"].name] = labels
        losses = [
            float(session.run(signature.outputs["loss"].name, feed_dict)) for _ in range(STEPS)
        ]
        variances = [
            session.run(v) for v in tf.compat.v1.global_variables() if "moving_variance" in v.name
        ]
        trainable = {v.op.name for v in tf.compat.v1.trainable_variables()}
    return losses, variances, trainable


# --- Keras models ----------------------------------------------------------------------------


def small_cnn() -> Any:
    import keras

    image = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv")(image)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3, seed=3, name="dropout")(x)
    return keras.Model(image, keras.layers.Dense(5, activation="softmax", name="classes")(x))


def recurrent() -> Any:
    import keras

    steps = keras.Input((6, 4), name="steps")
    x = keras.layers.LSTM(8, return_sequences=True, name="lstm")(steps)
    x = keras.layers.GRU(8, name="gru")(x)
    return keras.Model(steps, keras.layers.Dense(5, activation="softmax", name="classes")(x))


def mobilenet_v2() -> Any:
    import keras

    return keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=5
    )


def efficientnet_b0() -> Any:
    import keras

    return keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=5)


@dataclass(frozen=True)
class KerasCase:
    make: Callable[[], Any]
    input_shape: tuple[int, ...]
    tolerance: float  # relative, per step, against model.fit's loss
    has_batch_norm: bool
    # tpu.rewrite of a while loop is refused (XLA cannot compile the lowered loop).
    tpu: bool = True


KERAS_CASES = {
    "small_cnn_bn_dropout": KerasCase(small_cnn, (16, 16, 3), 1e-5, True),
    "lstm_gru": KerasCase(recurrent, (6, 4), 1e-5, False, tpu=False),
    "mobilenet_v2": KerasCase(mobilenet_v2, (32, 32, 3), 2e-2, True),
    "efficientnet_b0": KerasCase(efficientnet_b0, (32, 32, 3), 2e-2, True),
}
SLOW = {"mobilenet_v2", "efficientnet_b0"}


@dataclass
class BuiltKeras:
    case: KerasCase
    source: Path
    package: Path
    x: np.ndarray
    y: np.ndarray


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else [])
        for name in KERAS_CASES
    ],
)
def keras_built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    import keras

    case = KERAS_CASES[request.param]
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    case.make().save(folder / "model.keras")
    random = np.random.default_rng(0)
    x = random.normal(size=(BATCH, *case.input_shape)).astype(np.float32)
    y = random.integers(0, 5, size=BATCH).astype(np.int64)
    source = {"keras": "model.keras", "loss": "sparse_categorical_crossentropy"}
    manifest = write_manifest(folder, source, tpu=case.tpu)
    package = build(manifest, folder / "out")
    return BuiltKeras(case, folder, package, x, y)


def load_source(built: BuiltKeras) -> Any:
    import keras

    return keras.saving.load_model(built.source / "model.keras")


def input_key(package: Path) -> str:
    from tf_helpers import meta_graph

    (key,) = meta_graph(package, ["serve"]).signature_def["serving_default"].inputs
    return key


def test_serve_equals_the_keras_model(keras_built: BuiltKeras) -> None:
    expected = np.asarray(load_source(keras_built)(keras_built.x, training=False))
    feeds = {input_key(keras_built.package): keras_built.x}
    (served,) = run_v1(keras_built.package, ["serve"], feeds).values()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def test_twenty_steps_follow_model_fit(keras_built: BuiltKeras) -> None:
    import keras

    feeds = {input_key(keras_built.package): keras_built.x}
    losses, variances, trainable = train_steps(keras_built.package, feeds, keras_built.y)
    model = load_source(keras_built)
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE), loss="sparse_categorical_crossentropy"
    )
    history = model.fit(
        keras_built.x, keras_built.y, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0
    )
    expected = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(losses, expected, rtol=keras_built.case.tolerance)
    # Only what Keras trains is trained: BN statistics and the dropout seed never are.
    assert trainable == {v.path for v in model.trainable_variables}
    if keras_built.case.has_batch_norm:
        assert variances
        assert all(np.all(v >= 0) for v in variances)


def test_package_answers_after_moving_it_and_deleting_the_source(
    keras_built: BuiltKeras, tmp_path: Path
) -> None:
    feeds = {input_key(keras_built.package): keras_built.x}
    (before,) = run_v1(keras_built.package, ["serve"], feeds).values()
    moved = tmp_path / "moved"
    shutil.copytree(keras_built.package, moved)
    kept = tmp_path / "kept_source"
    shutil.move(keras_built.source / "model.keras", kept)
    try:
        (after,) = run_v1(moved, ["serve"], feeds).values()
        losses, _, _ = train_steps(moved, feeds, keras_built.y)
    finally:
        shutil.move(kept, keras_built.source / "model.keras")
    np.testing.assert_array_equal(after, before)
    assert np.all(np.isfinite(losses))


def test_inspect_and_smpack_json_say_what_the_train_graph_runs(keras_built: BuiltKeras) -> None:
    import json

    result = runner.invoke(app, ["inspect", str(keras_built.package), "--tags", "train"])
    assert result.exit_code == 0, result.output
    assert "trains  the Keras model's training-mode call (training=True)" in result.output
    record = json.loads((keras_built.package / "assets.extra" / "smpack.json").read_text())
    assert record["variants"]["train"]["train_function"].startswith(
        "the Keras model's training-mode call (training=True)"
    )
