"""Real architectures (random weights, small inputs) through serve, train, serve,gpu and serve,tpu
(MobileNetV2 through serve and train alone: EfficientNetB0 is the deep network verified in
float16 and bfloat16, and the small CNN's ReLU6 is the one MobileNetV2 would add there).

A train variant trains like its source: a Keras model's training-mode call (dropout on, batch
normalisation on batch statistics with its moving averages updated) and only the variables
the source marks trainable. The golden behaviour is Keras's own train step, same optimizer
(SGD), same batch, the dropouts seeded as smpack seeds them (Keras gives a Dropout without
`seed=` a new seed at every load), compared TEACHER-FORCED: before each of 20 steps (5 for
the big CNNs, whose every step is as costly as a hundred small ones), every
variable of the package's train graph (weights, batch-norm statistics, seed states) is
loaded with Keras's, and the one step each takes from there must agree: the loss within a
relative 1e-4, the step taken (new weights minus old, over all trainable variables, and
over the moving statistics) within a relative 1e-3 of its size, the seed states exactly.
That is float32 round-off, with room: the same ops, some in another order (TF1 graph vs
`tf.function`, grappler's and oneDNN's rewrites), accumulated over up to 80 normalised
convolutions. Measured worst over 20 steps each: EfficientNetB0 losses 2.1e-5, steps
4.0e-5 (statistics 6.1e-6), when the train graph differentiated swish through its ops (it
now calls the custom gradient the SavedModel saved); MobileNetV2 losses equal, steps 3e-7.
An error of the kind this catches costs far more: the clipped cross-entropy that differed
from fit's by 1.8%.
Free-running curves cannot be compared for the big CNNs: MobileNetV2 and EfficientNetB0 at
32x32 normalise 1x1 feature maps over a batch of 8, which makes training chaotic (Keras's
own `fit` run eagerly and as a graph differs by 14% at step 4). Over its free steps (20, the
big CNNs 5) every model must lower its loss without NaN, moving variances non-negative, and
the small models' curves (a CNN with batch norm and dropout, an LSTM+GRU) equal
`model.fit`'s within a relative 1e-5 over all 20 steps.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import file_digests
from corpus import sliced_checkpoint_module
from tf_helpers import run_v1
from typer.testing import CliRunner

from smpack.cli.commands import app

runner = CliRunner()
STEPS = 20
BATCH = 4
LEARNING_RATE = 0.01


def variants(batch: int, learning_rate: float) -> dict[str, Any]:
    return {
        "cpu": {"tags": ["serve"]},
        "train": {"tags": ["train"], "optimizer": {"name": "sgd", "learning_rate": learning_rate}},
        "gpu": {
            "tags": ["serve", "gpu"],
            "device": "/device:GPU:0",
            "precision": "float16",
            "xla": True,
        },
        "tpu": {"tags": ["serve", "tpu"], "precision": "bfloat16", "batch_size": batch},
    }


KERAS_SOURCE = {"keras": "model.keras", "loss": "sparse_categorical_crossentropy"}


def write_manifest(
    folder: Path,
    source: dict[str, Any],
    batch: int = BATCH,
    learning_rate: float = LEARNING_RATE,
    only: dict[str, Any] | None = None,
) -> Path:
    """The manifest of `source` with the four variants, or with the variants `only` names."""
    manifest = {
        "schema": 1,
        "name": "real",
        "version": 1,
        "source": source,
        "variants": variants(batch, learning_rate) if only is None else only,
    }
    path = folder / "smpack.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def build(manifest: Path, out: Path) -> Path:
    """`smpack build` (which verifies every graph) through the CLI; the package's folder.
    Not measured: no test here reads the card's timings, and measuring runs every variant."""
    command = ["build", str(manifest), "--out", str(out), "--json", "--quiet", "--no-measure"]
    result = runner.invoke(app, command)
    assert result.exit_code == 0, result.output + (result.stderr or "")
    return out / "real" / "1"


def train_steps(
    package: Path, feeds: dict[str, np.ndarray], labels: np.ndarray, steps: int = STEPS
) -> tuple[list[float], list[np.ndarray], set[str]]:
    """The train signature run `steps` times on one batch through the TF1 loader: the
    losses, the moving variances after, and the names of the trainable variables."""
    import tensorflow as tf

    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(package))
        return free_steps(session, graph.signature_def["train"], feeds, labels, steps)


def free_steps(
    session: Any, signature: Any, feeds: dict[str, np.ndarray], labels: np.ndarray, steps: int
) -> tuple[list[float], list[np.ndarray], set[str]]:
    """train_steps in a session that loaded the train graph, its graph the default one."""
    import tensorflow as tf

    feed_dict = {signature.inputs[k].name: v for k, v in feeds.items()}
    feed_dict[signature.inputs["labels"].name] = labels
    losses = [float(session.run(signature.outputs["loss"].name, feed_dict)) for _ in range(steps)]
    # One run for all of them: each new set of fetches makes a new executor of the train
    # graph (52 one-variable runs took 37 s for MobileNetV2 on a loaded machine).
    variances = session.run(
        [v for v in tf.compat.v1.global_variables() if "moving_variance" in v.name]
    )
    trainable = {v.op.name for v in tf.compat.v1.trainable_variables()}
    return losses, variances, trainable


# --- Keras models ----------------------------------------------------------------------------


def small_cnn() -> Any:
    import keras

    image = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv")(image)
    x = keras.layers.BatchNormalization(name="norm")(x)
    # ReLU6 (a Relu6 op), MobileNetV2's activation: verified here in float16 and bfloat16.
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3, seed=3, name="dropout")(x)
    return keras.Model(image, keras.layers.Dense(5, activation="softmax", name="classes")(x))


def grouped_cnn() -> Any:
    import keras

    # Keras compiles a grouped convolution (TF's CPU kernels reject grouped filters) in a
    # function marked must-compile: its gradient must be compiled as well (ConvNeXt's case).
    image = keras.Input((8, 8, 8), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", groups=4, name="grouped")(image)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
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
    has_batch_norm: bool
    batch: int = BATCH
    learning_rate: float = LEARNING_RATE
    # Whether a free-running curve is reproducible at all (see the module docstring).
    chaotic: bool = False
    has_loop: bool = False
    # Free-running and teacher-forced steps each: a big CNN's step costs as much as a
    # hundred small ones, and its first teacher-forced step already compares every layer.
    steps: int = STEPS
    # Whether the package also has serve,gpu (float16, XLA) and serve,tpu (bfloat16).
    compiled_variants: bool = True


CHAOTIC = {"batch": 8, "learning_rate": 1e-3, "chaotic": True, "steps": 5}
KERAS_CASES = {
    "small_cnn_bn_dropout": KerasCase(small_cnn, (16, 16, 3), True),
    "grouped_conv_bn": KerasCase(grouped_cnn, (8, 8, 8), True),
    "lstm_gru": KerasCase(recurrent, (6, 4), False, has_loop=True),
    # Serve and train alone (see the module docstring): its depthwise convolutions, zero
    # padding and chaotic training are EfficientNetB0's too, which verifies them in half
    # precision; its ReLU6 the small CNN's. Verifying them cost ~35 of the group's ~120 CPU-s.
    "mobilenet_v2": KerasCase(mobilenet_v2, (32, 32, 3), True, **CHAOTIC, compiled_variants=False),
    "efficientnet_b0": KerasCase(efficientnet_b0, (32, 32, 3), True, **CHAOTIC),
}
SLOW = {"mobilenet_v2", "efficientnet_b0"}
DROPOUT = {"small_cnn_bn_dropout", "efficientnet_b0"}
# Models with a Dropout built without `seed=` (EfficientNet's stochastic depth and top).
UNSEEDED = {"efficientnet_b0"}


@dataclass
class BuiltKeras:
    name: str
    case: KerasCase
    source: Path
    package: Path
    x: np.ndarray
    y: np.ndarray


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in KERAS_CASES
    ],
)
def keras_built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    import keras

    case = KERAS_CASES[request.param]
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp(request.param)
    case.make().save(folder / "model.keras")
    random = np.random.default_rng(0)
    x = random.normal(size=(case.batch, *case.input_shape)).astype(np.float32)
    y = random.integers(0, 5, size=case.batch).astype(np.int64)
    every = variants(case.batch, case.learning_rate)
    only = None if case.compiled_variants else {k: every[k] for k in ("cpu", "train")}
    manifest = write_manifest(folder, KERAS_SOURCE, case.batch, case.learning_rate, only)
    package = build(manifest, folder / "out")
    return BuiltKeras(request.param, case, folder, package, x, y)


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


def test_compiled_variants_keep_loops_functional(keras_built: BuiltKeras) -> None:
    """XLA (serve,gpu) and tpu.rewrite (serve,tpu) get a recurrent layer's loop as a `While`
    op, which XLA compiles (build's verify ran serve,tpu on XLA:CPU); only the CPU serve
    graph lowers it to TF1 frames (Enter/Exit)."""
    from tf_helpers import meta_graph

    def ops(tags: list[str]) -> set[str]:
        return {n.op for n in meta_graph(keras_built.package, tags).graph_def.node}

    loop = keras_built.case.has_loop
    compiled = (["serve", "gpu"], ["serve", "tpu"]) if keras_built.case.compiled_variants else ()
    for tags in compiled:
        assert "Enter" not in ops(tags)
        assert ("While" in ops(tags) or "StatelessWhile" in ops(tags)) == loop
    assert ("Enter" in ops(["serve"])) == loop


def seeded_source(built: BuiltKeras) -> Any:
    """The source model as smpack loads it: its unseeded dropouts seeded from the file, the
    names Keras makes up counted as in a fresh process."""
    from smpack.sources.keras import load_keras_model

    return load_keras_model(built.source / "model.keras")


def test_dropout_seeds_are_fixed_by_the_file(keras_built: BuiltKeras) -> None:
    """Keras draws a new seed for a Dropout without `seed=` at every load; the package holds
    the ones `seed_unseeded_generators` sets, the same for every build of the file."""
    import tensorflow as tf

    def states(model: Any) -> list[list[int]]:
        return sorted(
            np.asarray(g.state).tolist()
            for layer in model._flatten_layers()
            for g in layer._seed_generators
        )

    reader = tf.train.load_checkpoint(str(keras_built.package / "variables" / "variables"))
    stored = sorted(
        reader.get_tensor(name).tolist()
        for name in reader.get_variable_to_shape_map()
        if name.endswith("seed_generator_state")
    )
    # Only the generators a dropout in use reads are in the train graph (an LSTM without
    # dropout has two it never reads).
    assert bool(stored) == (keras_built.name in DROPOUT)
    seeded = states(seeded_source(keras_built))
    assert all(stored.count(state) <= seeded.count(state) for state in stored)
    if keras_built.name in UNSEEDED:
        # What made fit and the package drop different units: a plain load draws anew.
        assert states(load_source(keras_built)) != stored


def compiled_source(built: BuiltKeras) -> Any:
    """The source model compiled as the package trains: SGD, the manifest's loss."""
    import keras

    model = seeded_source(built)
    model.compile(
        optimizer=keras.optimizers.SGD(built.case.learning_rate),
        loss="sparse_categorical_crossentropy",
        jit_compile=False,  # what the package runs: TF's kernels, not XLA's
    )
    return model


@dataclass(frozen=True)
class ForcedStep:
    """One train step taken by the package and by Keras from the same state."""

    loss: float
    keras_loss: float
    # max |package - Keras| over every variable after the step
    weight_difference: float
    # |package's step - Keras's step| / |Keras's step| (L2 over the variables): the trainable
    # ones, and the moving statistics (batch normalisation's)
    step_difference: float
    statistics_step_difference: float
    same_seed_states: bool


def teacher_forced_steps(
    built: BuiltKeras, model: Any, session: Any, signature: Any
) -> list[ForcedStep]:
    """The case's steps, each from the state Keras's previous step left (see the module
    docstring), in `session`, which loaded the package's train graph; `model` is
    compiled_source's.

    Every variable of the package's train graph but its global step is one of the Keras
    model's, by name (`load_keras_model` makes up the same names a build does).
    """
    import tensorflow as tf

    in_keras = {v.path: v for v in model.variables}
    with session.graph.as_default():  # not while Keras runs: it needs eager execution
        shared = {
            v.op.name: v for v in tf.compat.v1.global_variables() if v.op.name != "global_step"
        }
        values = {name: tf.compat.v1.placeholder(v.dtype.base_dtype) for name, v in shared.items()}
        load = tf.group(*(v.assign(values[name]) for name, v in shared.items()))
    assert shared.keys() <= in_keras.keys()
    feed_dict = {
        signature.inputs[input_key(built.package)].name: built.x,
        signature.inputs["labels"].name: built.y,
    }
    trained = [name for name in shared if in_keras[name].trainable]
    seeds = [name for name in shared if name.endswith("seed_generator_state")]
    statistics = [name for name in shared if name not in trained and name not in seeds]

    def state() -> dict[str, np.ndarray]:
        return {name: in_keras[name].numpy() for name in shared}

    def relative(
        after: dict[str, Any], keras: dict[str, Any], before: dict[str, Any], names: list[str]
    ) -> float:
        if not names:
            return 0.0
        difference = sum(np.sum((after[n] - keras[n]) ** 2, dtype=np.float64) for n in names)
        step = sum(np.sum((keras[n] - before[n]) ** 2, dtype=np.float64) for n in names)
        return float(np.sqrt(difference / step))

    forced = []
    for _ in range(built.case.steps):
        before = state()
        session.run(load, {values[name]: before[name] for name in shared})
        loss = float(session.run(signature.outputs["loss"].name, feed_dict))
        package = session.run(shared)
        model.reset_metrics()  # the loss train_on_batch returns is then this step's
        keras_loss = float(model.train_on_batch(built.x, built.y))
        keras = state()
        difference = max(
            float(np.max(np.abs(package[n].astype(np.float64) - keras[n]))) for n in shared
        )
        forced.append(
            ForcedStep(
                loss=loss,
                keras_loss=keras_loss,
                weight_difference=difference,
                step_difference=relative(package, keras, before, trained),
                statistics_step_difference=relative(package, keras, before, statistics),
                same_seed_states=all(np.array_equal(package[n], keras[n]) for n in seeds),
            )
        )
    return forced


@dataclass
class Trained:
    """One load of the package's train graph, from a copy moved away from where it was built,
    its source file gone: the case's free-running steps from its checkpoint, then as many
    teacher-forced ones (each from Keras's state). Loading and optimising a big CNN's train
    graph costs more than forty of its steps, so the tests below share this one load."""

    served: np.ndarray  # serve's answer from the package where it was built
    served_moved: np.ndarray  # and from the moved copy, the source gone
    losses: list[float]  # the free-running steps'
    variances: list[np.ndarray]  # the moving variances after them
    trainable: set[str]  # the train graph's trainable variables
    keras_trainable: set[str]  # the Keras model's
    forced: list[ForcedStep]


@pytest.fixture(scope="module")
def trained(keras_built: BuiltKeras, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    import tensorflow as tf

    built = keras_built
    model = compiled_source(built)  # read before the source file goes
    feeds = {input_key(built.package): built.x}
    (served,) = run_v1(built.package, ["serve"], feeds).values()
    moved = tmp_path_factory.mktemp(f"moved_{built.name}") / "1"
    shutil.copytree(built.package, moved)
    kept = moved.parent / "kept_source"
    shutil.move(built.source / "model.keras", kept)  # put back below: other tests read it
    try:
        (served_moved,) = run_v1(moved, ["serve"], feeds).values()
        # No `with session`: it would make the graph the default one, and Keras not eager.
        session = tf.compat.v1.Session(graph=tf.Graph())
        try:
            with session.graph.as_default():
                graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(moved))
                signature = graph.signature_def["train"]
                steps = built.case.steps
                losses, variances, trainable = free_steps(session, signature, feeds, built.y, steps)
            forced = teacher_forced_steps(built, model, session, signature)
        finally:
            session.close()
    finally:
        shutil.move(kept, built.source / "model.keras")
    keras_trainable = {v.path for v in model.trainable_variables}
    return Trained(served, served_moved, losses, variances, trainable, keras_trainable, forced)


def test_free_steps_lower_the_loss(keras_built: BuiltKeras, trained: Trained) -> None:
    losses = trained.losses
    case = keras_built.case
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    # Only what Keras trains is trained: BN statistics and the dropout seed never are.
    assert trained.trainable == trained.keras_trainable
    if case.has_batch_norm:
        assert trained.variances
        assert all(np.all(v >= 0) for v in trained.variances)
    if not case.chaotic:
        history = compiled_source(keras_built).fit(
            keras_built.x,
            keras_built.y,
            batch_size=case.batch,
            epochs=STEPS,
            shuffle=False,
            verbose=0,
        )
        np.testing.assert_allclose(losses, history.history["loss"], rtol=1e-5)


def test_each_step_equals_a_keras_train_step_from_the_same_state(trained: Trained) -> None:
    """Teacher-forced: the tolerances are float32 round-off (see the module docstring)."""
    forced = trained.forced
    losses = [step.loss for step in forced]
    np.testing.assert_allclose(losses, [step.keras_loss for step in forced], rtol=1e-4)
    assert max(step.step_difference for step in forced) < 1e-3
    assert max(step.statistics_step_difference for step in forced) < 1e-3
    assert all(step.same_seed_states for step in forced)


@pytest.mark.slow
def test_a_build_does_not_depend_on_the_models_the_process_made_before(tmp_path: Path) -> None:
    """Keras names a Dropout's seed generator (seeded or not), whose state is a variable in
    the checkpoint, from a process-wide counter: a build counts from zero, so a build in a
    process that made other models first is the same bytes as one in a fresh process."""
    import keras

    keras.utils.set_random_seed(0)
    small_cnn().save(tmp_path / "model.keras")
    some = {k: v for k, v in variants(BATCH, LEARNING_RATE).items() if k in ("cpu", "train")}
    path = write_manifest(tmp_path, KERAS_SOURCE, only=some)
    quick = ["--no-verify", "--no-measure", "--quiet"]
    recurrent(), small_cnn()  # what this process made before: their generators were counted
    result = runner.invoke(app, ["build", str(path), "--out", str(tmp_path / "here"), *quick])
    assert result.exit_code == 0, result.output
    fresh = subprocess.run(
        [
            sys.executable,
            "-m",
            "smpack",
            "build",
            str(path),
            "--out",
            str(tmp_path / "fresh"),
            *quick,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fresh.returncode == 0, fresh.stderr
    here = file_digests(tmp_path / "here" / "real" / "1")
    assert "variables/variables.index" in here
    assert here == file_digests(tmp_path / "fresh" / "real" / "1")


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
def test_a_softmax_classifier_is_trained_on_its_logits(tmp_path: Path, loss: str) -> None:
    """Keras computes a cross-entropy from the logits when a softmax made the output: a
    label given probability 4e-11 costs its -log, 24, not the 16.1 of a probability clipped
    at 1e-7 (the clip also zeroed that sample's gradient: EfficientNetB0's train graph
    differed from fit by 1.8% at step 2)."""
    import keras
    import tensorflow as tf

    features = keras.Input((4,), name="features")
    logits = keras.layers.Dense(3, name="logits")(features)
    model = keras.Model(features, keras.layers.Softmax(name="probabilities")(logits))
    kernel = np.array([[12, -12, 0], [0, 12, -12], [-12, 0, 12], [0, 0, 0]], np.float32)
    model.get_layer("logits").set_weights([kernel, np.zeros(3, np.float32)])
    model.save(tmp_path / "model.keras")
    train = {"train": variants(BATCH, LEARNING_RATE)["train"]}
    path = write_manifest(tmp_path, {**KERAS_SOURCE, "loss": loss}, only=train)
    result = runner.invoke(app, ["build", str(path), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    x = np.eye(4, dtype=np.float32)
    classes = np.array([1, 2, 0, 1])  # the first three 24 below their row's best logit
    labels = classes if loss.startswith("sparse") else np.eye(3, dtype=np.float32)[classes]
    z = (x @ kernel).astype(np.float64)
    expected = np.mean(np.log(np.exp(z).sum(axis=1)) - z[range(4), classes])
    assert expected > 16.2  # more than any clipped probability could cost
    step = tf.saved_model.load(str(tmp_path / "real" / "1"), tags=["train"]).signatures["train"]
    first = step(features=tf.constant(x), labels=tf.constant(labels))["loss"]
    np.testing.assert_allclose(float(first), expected, rtol=1e-6)


def test_an_exported_grouped_convolution_trains(tmp_path: Path) -> None:
    """`model.export`'s SavedModel (no training-mode twin: no batch norm, no dropout) keeps
    Keras's must-compile grouped convolution (ConvNeXt's depthwise one) a call; the train
    graph imports it inlined, as for a `.keras` file: differentiated as a call, its gradient
    ran on CPU kernels, which reject the grouped filter, and the step failed verify."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    image = keras.Input((6, 6, 4), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", groups=4, name="grouped")(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(image, keras.layers.Dense(3, activation="softmax", name="classes")(x))
    model.export(str(tmp_path / "export"), verbose=False)
    train = {"train": variants(BATCH, LEARNING_RATE)["train"]}
    source = {"savedmodel": "export", "loss": "sparse_categorical_crossentropy"}
    path = write_manifest(tmp_path, source, only=train)
    result = runner.invoke(app, ["build", str(path), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(0).normal(size=(BATCH, 6, 6, 4)).astype(np.float32)
    classes = np.arange(BATCH) % 3
    expected = keras.losses.SparseCategoricalCrossentropy()(classes, model(x))
    step = tf.saved_model.load(str(tmp_path / "real" / "1"), tags=["train"]).signatures["train"]
    first = step(image=tf.constant(x), labels=tf.constant(classes))["loss"]
    np.testing.assert_allclose(float(first), float(expected), rtol=1e-5)


def test_adam_takes_the_steps_fit_takes(tmp_path: Path) -> None:
    """TF1's Adam defaults to epsilon 1e-8, Keras's to 1e-7: the package's curve drifted
    from fit's by 1.1e-4 in 20 steps of the small CNN (now 3.5e-6, float32 round-off).
    (SGD is compared step by step above; momentum measured 1.1e-7 over 20 steps.)"""
    import keras

    from smpack.sources.keras import load_keras_model

    keras.utils.set_random_seed(0)
    small_cnn().save(tmp_path / "model.keras")
    adam = {"tags": ["train"], "optimizer": {"name": "adam", "learning_rate": 0.01}}
    path = write_manifest(tmp_path, KERAS_SOURCE, only={"train": adam})
    result = runner.invoke(app, ["build", str(path), "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    random = np.random.default_rng(0)
    x = random.normal(size=(BATCH, 16, 16, 3)).astype(np.float32)
    y = random.integers(0, 5, size=BATCH).astype(np.int64)
    losses, _, _ = train_steps(tmp_path / "real" / "1", {"image": x}, y)
    model = load_keras_model(tmp_path / "model.keras")
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss="sparse_categorical_crossentropy",
        jit_compile=False,
    )
    history = model.fit(x, y, batch_size=BATCH, epochs=STEPS, shuffle=False, verbose=0)
    np.testing.assert_allclose(losses, history.history["loss"], rtol=2e-5)


def test_package_answers_after_moving_it_and_deleting_the_source(trained: Trained) -> None:
    """The train graph the steps above ran was loaded from the moved copy (see Trained)."""
    np.testing.assert_array_equal(trained.served_moved, trained.served)
    assert np.all(np.isfinite(trained.losses))


def test_inspect_and_smpack_json_say_what_the_train_graph_runs(keras_built: BuiltKeras) -> None:
    import json

    result = runner.invoke(app, ["inspect", str(keras_built.package), "--tags", "train"])
    assert result.exit_code == 0, result.output
    assert "trains  the Keras model's training-mode call (training=True)" in result.output
    record = json.loads((keras_built.package / "assets.extra" / "smpack.json").read_text())
    assert record["variants"]["train"]["train_function"].startswith(
        "the Keras model's training-mode call (training=True)"
    )


# --- TF2 SavedModels: frozen variables, a training-mode signature, sliced checkpoints --------
# The sliced-checkpoint source is variants/corpus.py's, which bench/real.py measures too.


@pytest.fixture(scope="module")
def module_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("module_source")
    sliced_checkpoint_module(folder)
    return folder


def module_inputs() -> tuple[np.ndarray, np.ndarray]:
    random = np.random.default_rng(2)
    return random.normal(size=(BATCH, 64)).astype(np.float32), np.arange(BATCH, dtype=np.int64)


def checkpoint_entries(prefix: Path) -> dict[str, Any]:
    from smpack.builder.checkpoint_bundle import read_bundle

    return read_bundle(prefix)[1]


def test_the_source_checkpoint_really_is_sliced(module_source: Path) -> None:
    entries = checkpoint_entries(module_source / "centred" / "variables" / "variables")
    assert entries["kernel/.ATTRIBUTES/VARIABLE_VALUE"].slices
    assert entries["scale/.ATTRIBUTES/VARIABLE_VALUE"].slices
    assert not entries["bias/.ATTRIBUTES/VARIABLE_VALUE"].slices


@pytest.fixture(scope="module")
def module_package(module_source: Path) -> Path:
    manifest = write_manifest(module_source, {"savedmodel": "centred", "loss": "mse"})
    # mse needs labels shaped like the output.
    return build(manifest, module_source / "out")


def test_sliced_tensors_are_whole_in_the_package_and_the_rest_stays_linked(
    module_source: Path, module_package: Path
) -> None:
    source = module_source / "centred" / "variables" / "variables"
    package = module_package / "variables" / "variables"
    entries = checkpoint_entries(package)
    for name, size in (("kernel", 64 * 40 * 4), ("scale", 960 * 4)):
        assert not entries[name].slices
        assert entries[name].size == size
    source_entries = checkpoint_entries(source)
    for name in ("bias", "centre"):
        shard = source_entries[f"{name}/.ATTRIBUTES/VARIABLE_VALUE"].shard_id
        shards = sorted(source.parent.glob("variables.data-*"))
        linked = sorted(package.parent.glob("variables.data-*"))[entries[name].shard_id]
        assert linked.stat().st_ino == shards[shard].stat().st_ino


def test_module_serve_equals_the_source(module_source: Path, module_package: Path) -> None:
    import tensorflow as tf

    x, _ = module_inputs()
    loaded = tf.saved_model.load(str(module_source / "centred"))
    expected = loaded.signatures["serving_default"](x=tf.constant(x))["y"].numpy()
    np.testing.assert_array_equal(run_v1(module_package, ["serve"], {"x": x})["y"], expected)


def test_inference_signature_trains_with_frozen_variables(module_package: Path) -> None:
    import json

    x, labels = module_inputs()
    one_hot = np.eye(40, dtype=np.float32)[labels]
    losses, _, trainable = train_steps(module_package, {"x": x}, one_hot)
    assert trainable == {"kernel", "bias", "scale"}
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    record = json.loads((module_package / "assets.extra" / "smpack.json").read_text())
    assert record["variants"]["train"]["train_function"] == (
        "the source's inference signature 'serving_default'; 1 non-trainable variables frozen"
    )


def test_training_mode_signature_runs_its_updates(module_source: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    source = {"savedmodel": "centred", "train_signature": "train_call", "loss": "mse"}
    manifest = write_manifest(module_source, source)
    package = build(manifest, tmp_path)
    x, labels = module_inputs()
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(package))
        signature = graph.signature_def["train"]
        (centre,) = (v for v in tf.compat.v1.global_variables() if v.op.name == "centre")
        before = session.run(centre)
        feeds = {
            signature.inputs["x"].name: x,
            signature.inputs["labels"].name: np.eye(40, dtype=np.float32)[labels],
        }
        session.run(signature.outputs["loss"].name, feeds)
        after = session.run(centre)
    np.testing.assert_allclose(after, 0.5 * before + 0.5 * x.mean(axis=0), rtol=1e-5)
    result = runner.invoke(app, ["inspect", str(package), "--tags", "train"])
    assert "trains  the source's training-mode signature 'train_call'" in result.output


def test_module_package_answers_after_moving_it_and_deleting_the_source(
    module_package: Path, tmp_path: Path
) -> None:
    x, _ = module_inputs()
    before = run_v1(module_package, ["serve"], {"x": x})["y"]
    moved = tmp_path / "moved"
    shutil.copytree(module_package, moved)
    source = module_package.parent.parent.parent / "centred"
    kept = tmp_path / "kept_source"
    shutil.move(source, kept)
    try:
        np.testing.assert_array_equal(run_v1(moved, ["serve"], {"x": x})["y"], before)
    finally:
        shutil.move(kept, source)


def test_a_checkpoint_error_names_the_savedmodel_field(tmp_path: Path) -> None:
    sliced_checkpoint_module(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    sliced_checkpoint_module(other, outputs=41)
    shutil.rmtree(tmp_path / "centred" / "variables")
    shutil.copytree(other / "centred" / "variables", tmp_path / "centred" / "variables")
    manifest = write_manifest(tmp_path, {"savedmodel": "centred", "loss": "mse"})
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "source.savedmodel: checkpoint variable" in line
    assert not (tmp_path / "out" / "real").exists()


def save_two_mode_module(folder: Path) -> Path:
    """A tf.Module whose `__call__(x, training)` is traced both ways; the signature is the
    training=False trace, and the training=True one centres on the batch and moves the
    running mean towards it (what a normalisation layer does)."""
    import tensorflow as tf

    class TwoModes(tf.Module):
        def __init__(self) -> None:
            kernel = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
            self.kernel = tf.Variable(kernel, name="kernel")
            self.mean = tf.Variable(np.zeros(8, np.float32), trainable=False, name="mean")

        @tf.function
        def __call__(self, x: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
            if training:
                batch_mean = tf.reduce_mean(x, axis=0)
                self.mean.assign(0.5 * self.mean + 0.5 * batch_mean)
                return {"y": tf.matmul(x - batch_mean, self.kernel)}
            return {"y": tf.matmul(x - self.mean, self.kernel)}

    module = TwoModes()
    spec = tf.TensorSpec([None, 8], tf.float32, name="x")
    module.__call__.get_concrete_function(spec, training=True)
    path = folder / "two_modes"
    serving = module.__call__.get_concrete_function(spec, training=False)
    tf.saved_model.save(module, str(path), signatures={"serving_default": serving})
    return path


def test_a_training_mode_trace_is_found_and_trained(tmp_path: Path) -> None:
    """Without `source.train_signature`, the train graph runs the source's training=True
    trace of the serving function: its update of the running mean runs with each step,
    and inspect and smpack.json say which function it is."""
    import json

    import tensorflow as tf

    save_two_mode_module(tmp_path)
    manifest = {
        "schema": 1,
        "name": "real",
        "version": 1,
        "source": {"savedmodel": "two_modes", "loss": "mse"},
        "variants": {k: v for k, v in variants(BATCH, LEARNING_RATE).items() if k != "gpu"},
    }
    (tmp_path / "smpack.yaml").write_text(yaml.safe_dump(manifest))
    package = build(tmp_path / "smpack.yaml", tmp_path / "out")
    x = np.random.default_rng(4).normal(size=(BATCH, 8)).astype(np.float32) + 1
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(package))
        signature = graph.signature_def["train"]
        (mean,) = (v for v in tf.compat.v1.global_variables() if v.op.name == "mean")
        trainable = {v.op.name for v in tf.compat.v1.trainable_variables()}
        feeds = {
            signature.inputs["x"].name: x,
            signature.inputs["labels"].name: np.zeros((BATCH, 3), np.float32),
        }
        session.run(signature.outputs["loss"].name, feeds)
        np.testing.assert_allclose(session.run(mean), 0.5 * x.mean(axis=0), rtol=1e-6)
    assert trainable == {"kernel"}
    expected = (
        "the source's training-mode function '__call__' (traced with training=True; "
        "signature 'serving_default' is its training=False trace); "
        "1 non-trainable variables frozen"
    )
    record = json.loads((package / "assets.extra" / "smpack.json").read_text())
    assert record["variants"]["train"]["train_function"] == expected
    result = runner.invoke(app, ["inspect", str(package), "--tags", "train"])
    assert "trains  the source's training-mode function '__call__'" in result.output
    # Serving still runs the training=False trace: centred on the running mean (zeros).
    kernel = tf.train.load_checkpoint(str(package / "variables" / "variables"))
    (key,) = (k for k in kernel.get_variable_to_shape_map() if k.startswith("kernel"))
    served = run_v1(package, ["serve"], {"x": x})["y"]
    np.testing.assert_allclose(served, x @ kernel.get_tensor(key), rtol=1e-5)


# --- TF2 SavedModels branching on their input: tf.cond and tf.switch_case ----------------------


def make_branching_on_input(folder: Path) -> Path:
    """A tf.Module whose tf.cond and tf.switch_case, on its input, read variables in every
    branch: Grappler lowers them to switches of the variables' handles (`Switch`, `_SwitchN`)."""
    import tensorflow as tf

    class BranchingOnInput(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = tf.Variable(tf.random.stateless_normal([4, 3], seed=[3, 1]), name="up")
            self.down = tf.Variable(tf.random.stateless_normal([4, 3], seed=[3, 2]), name="down")
            self.mix = tf.Variable(tf.random.stateless_normal([3, 3], seed=[3, 3]), name="mix")

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            y = tf.cond(
                tf.reduce_sum(x) > 0, lambda: x @ self.up, lambda: tf.nn.relu(x @ self.down)
            )
            branch = tf.cast(tf.reduce_sum(tf.abs(x)), tf.int32) % 3
            y = tf.switch_case(
                branch, [lambda: y @ self.mix, lambda: tf.tanh(y @ self.mix), lambda: y]
            )
            return {"y": y}

    module = BranchingOnInput()
    path = folder / "branching"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


@pytest.fixture(scope="module")
def branching_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("branching_on_input")
    source = make_branching_on_input(folder)
    manifest = write_manifest(folder, {"savedmodel": source.name, "loss": "mse"})
    return source, build(manifest, folder / "out")  # verified: every graph ran


def test_branches_on_the_input_build_into_every_variant_and_serve_the_source(
    branching_package: tuple[Path, Path],
) -> None:
    import tensorflow as tf

    source, package = branching_package
    loaded = tf.saved_model.load(str(source))
    for x in (np.full((BATCH, 4), 0.4, np.float32), np.full((BATCH, 4), -0.1, np.float32)):
        expected = loaded.signatures["serving_default"](tf.constant(x))["y"].numpy()
        np.testing.assert_array_equal(run_v1(package, ["serve"], {"x": x})["y"], expected)


def test_branches_on_the_input_train_as_tensorflow_differentiates_them(
    branching_package: tuple[Path, Path],
) -> None:
    import tensorflow as tf

    source, package = branching_package
    x = np.full((BATCH, 4), 0.4, np.float32)  # cond's first branch, switch_case's second
    labels = np.ones((BATCH, 3), np.float32)
    loaded = tf.saved_model.load(str(source))
    with tf.GradientTape() as tape:
        y = loaded.predict(tf.constant(x))["y"]
        loss = tf.reduce_mean(tf.square(y - labels))
    variables = {name: getattr(loaded, name) for name in ("up", "down", "mix")}
    gradients = tape.gradient(loss, list(variables.values()))
    expected = {
        name: v.numpy() - LEARNING_RATE * (0 if g is None else g.numpy())
        for (name, v), g in zip(variables.items(), gradients, strict=True)
    }
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(package))
        signature = graph.signature_def["train"]
        feeds = {signature.inputs["x"].name: x, signature.inputs["labels"].name: labels}
        session.run(signature.outputs["loss"].name, feeds)
        after = {v.op.name: session.run(v) for v in tf.compat.v1.global_variables()}
    for name, value in expected.items():
        np.testing.assert_allclose(after[name], value, rtol=1e-5, atol=1e-7)


# --- A TF2 SavedModel with a tf.custom_gradient that is not its ops' derivative ---------------


def make_clipped_gradient_module(folder: Path) -> Path:
    """A tf.Module whose custom gradient clips the incoming gradient and scales it by a
    forward tensor it captures: differentiated through its ops, it takes another step."""
    import tensorflow as tf

    @tf.custom_gradient
    def clipped(h: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        def gradient(upstream: tf.Tensor) -> tf.Tensor:
            return tf.clip_by_value(upstream, -0.01, 0.01) * tf.sigmoid(h)

        return tf.identity(h), gradient

    class ClippedGradient(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([4, 2], seed=[5, 1]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": clipped(x @ self.kernel)}

    module = ClippedGradient()
    path = folder / "clipped"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


def make_clipped_variable_gradient_module(folder: Path) -> Path:
    """A tf.Module whose custom gradient reads its variable (as tf.recompute_grad's
    recomputation does) and clips the variable's gradient."""
    import tensorflow as tf

    class ClippedVariableGradient(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([4, 2], seed=[5, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            @tf.custom_gradient
            def product(x: tf.Tensor) -> tuple[tf.Tensor, Callable[..., Any]]:
                def gradient(upstream: tf.Tensor, variables: Any = None) -> Any:
                    clipped = tf.clip_by_value(tf.transpose(x) @ upstream, -0.1, 0.1)
                    return upstream @ tf.transpose(self.kernel), [clipped]

                return x @ self.kernel, gradient

            return {"y": product(x)}

    module = ClippedVariableGradient()
    path = folder / "clipped_variable"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


@pytest.mark.parametrize(
    "make_source", [make_clipped_gradient_module, make_clipped_variable_gradient_module]
)
def test_a_custom_gradient_trains_as_the_source_saved_it(
    tmp_path: Path, make_source: Callable[[Path], Path]
) -> None:
    """Whether it captures a forward tensor or reads the variable it differentiates."""
    import tensorflow as tf

    source = make_source(tmp_path)
    only = {"train": variants(BATCH, LEARNING_RATE)["train"]}
    manifest = write_manifest(tmp_path, {"savedmodel": source.name, "loss": "mse"}, only=only)
    package = build(manifest, tmp_path / "out")
    x = np.linspace(-2, 3, BATCH * 4, dtype=np.float32).reshape(BATCH, 4)
    labels = np.zeros((BATCH, 2), np.float32)
    loaded = tf.saved_model.load(str(source))  # TF's loader calls the saved gradient
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(loaded.predict(tf.constant(x))["y"] - labels))
    expected = loaded.kernel.numpy() - LEARNING_RATE * tape.gradient(loss, loaded.kernel).numpy()
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(package))
        signature = graph.signature_def["train"]
        feeds = {signature.inputs["x"].name: x, signature.inputs["labels"].name: labels}
        session.run(signature.outputs["loss"].name, feeds)
        (kernel,) = session.run(tf.compat.v1.trainable_variables())
    np.testing.assert_allclose(kernel, expected, rtol=1e-6, atol=1e-8)
