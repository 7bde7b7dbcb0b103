"""Train graphs assembled as protos, their gradients from TensorFlow's C++ registry.

An imported source's train variant is the Python path's graph around a stand-in of the
computation, the computation spliced in and differentiated by `TF_AddGradientsWithPrefix`
(builder/assembled_training.py). It must train as the Python path's graph does (TF1's
`tf.gradients`): after one and after three steps of the train signature, the loss and every
variable (weights, optimizer slots, batch-norm statistics, the global step) equal within
float32 round-off. The two differentiate some ops by other formulas (the C++ Conv2D and
FusedBatchNorm gradients sum in another order); measured worst relative difference over
the cases here: 2e-7 dense, 1e-6 the CNN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import make_looping_module, make_table_module, make_tf_module, write_manifest

from smpack.api import build
from smpack.builder import assembled_training

OPTIMIZERS = {
    "sgd": {"name": "sgd", "learning_rate": 0.1},
    "momentum": {"name": "momentum", "learning_rate": 0.1, "momentum": 0.9},
    "adam": {"name": "adam", "learning_rate": 0.01},
}
RTOL = 1e-5
ASSEMBLE = assembled_training.assembled_train_graph


def small_cnn(path: Path) -> Path:
    """A Keras classifier: Conv2D, batch normalisation (moving averages updated by the step),
    ReLU, pooling and a softmax the loss reads the logits of. The convolution has no bias,
    as usual before a batch normalisation, which subtracts it again: its gradient would be
    zero but for round-off, which each way rounds differently and Adam scales up to steps
    of the learning rate's size."""
    import keras

    keras.utils.set_random_seed(1)
    image = keras.Input((6, 6, 2), name="image")
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(image)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, keras.layers.Dense(3, activation="softmax", name="classes")(x))
    model.save(path)
    return path


def built(
    folder: Path,
    source: dict[str, Any],
    out: Path,
    optimizer: str,
    monkeypatch: pytest.MonkeyPatch,
    assembled: bool,
) -> tuple[Path, list[str]]:
    """The package of `source` with a serve and a train variant (`optimizer`), and the
    variants assembled as trains; `assembled` false builds it the Python way."""
    made: list[str] = []

    def recorded(*args: Any) -> Any:
        graph = ASSEMBLE(*args) if assembled else None
        if graph is not None:
            made.append(graph.name)
        return graph

    monkeypatch.setattr(assembled_training, "assembled_train_graph", recorded)
    variants = {
        "cpu": {"tags": ["serve"]},
        "train": {"tags": ["train"], "optimizer": OPTIMIZERS[optimizer]},
    }
    manifest = write_manifest(folder, source, variants=variants)
    build(manifest, out, measure=False)
    return out / "imported" / "1", made


def train_steps(package: Path, feeds: dict[str, np.ndarray]) -> list[Any]:
    """The loss after one and after three steps, and every variable after three."""
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(package))
        signature = meta_graph.signature_def["train"]
        feed_dict = {signature.inputs[k].name: v for k, v in feeds.items()}
        losses = [session.run(signature.outputs["loss"].name, feed_dict) for _ in range(3)]
        variables = tf.compat.v1.global_variables()
        values = dict(zip([v.op.name for v in variables], session.run(variables), strict=True))
    return [losses[0], losses[2], values]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    dense, cnn = tmp_path_factory.mktemp("dense"), tmp_path_factory.mktemp("cnn")
    rng = np.random.default_rng(0)
    return {
        "dense": (
            dense,
            {"savedmodel": make_tf_module(dense).name, "loss": "mse"},
            {"x": rng.standard_normal((4, 3), np.float32), "labels": np.ones((4, 2), np.float32)},
        ),
        "cnn": (
            cnn,
            {"keras": small_cnn(cnn / "cnn.keras").name, "loss": "sparse_categorical_crossentropy"},
            {
                "image": rng.standard_normal((4, 6, 6, 2), np.float32),
                "labels": np.array([0, 2, 1, 2], np.int64),
            },
        ),
    }


@pytest.mark.parametrize("kind", ["dense", "cnn"])
def test_assembled_train_graphs_train_as_the_python_paths(
    kind: str, sources: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, source, feeds = sources[kind]
    for optimizer in OPTIMIZERS:
        out = tmp_path / optimizer
        ours, assembled = built(folder, source, out / "ours", optimizer, monkeypatch, True)
        theirs, _ = built(folder, source, out / "theirs", optimizer, monkeypatch, False)
        assert assembled == ["train"]
        first, third, values = train_steps(ours, feeds)
        python_first, python_third, python_values = train_steps(theirs, feeds)
        np.testing.assert_allclose(first, python_first, rtol=RTOL)
        np.testing.assert_allclose(third, python_third, rtol=RTOL)
        assert third != first  # the steps trained
        assert values.keys() == python_values.keys()
        for variable, value in values.items():
            np.testing.assert_allclose(value, python_values[variable], rtol=RTOL, atol=1e-7)
