"""Train graphs assembled as protos, their gradients from TensorFlow's C++ registry.

An imported source's train variant is the Python path's graph around a stand-in of the
computation, the computation spliced in and differentiated by `TF_AddGradientsWithPrefix`
(builder/assembled_training.py). It must train as the Python path's graph does (TF1's
`tf.gradients`): after one and after three steps of the train signature, the loss and every
variable (weights, optimizer slots, batch-norm statistics, the global step) equal within
float32 round-off (rtol 1e-5): the C++ and Python gradient functions of an op are separate
code, which may sum in another order. A gradient that is zero but for round-off (a bias
before a batch normalisation) is not comparable: Adam scales it up to full steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import file_digests, run_c
from tensorflow.core.framework import attr_value_pb2
from tf_helpers import make_looping_module, make_tf_module, meta_graph, write_manifest

from smpack.api import build
from smpack.builder import assembled_training, widening
from smpack.manifest import load_manifest
from smpack.sources.model_source import open_source

# Real Keras CNN, embedding and C-loader builds: tens of seconds, out of `make quick`.
pytestmark = pytest.mark.slow

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


def updates_wait_for_the_gradients_reading_their_variable(package: Path) -> int:
    """How many updates wait for gradient ops reading their variable (`dy @ W^T`), after
    checking that every update waits for all of those (`training._wait_for_readers`)."""
    nodes = {node.name: node for node in meta_graph(package, ["train"]).graph_def.node}
    readers: dict[str, set[str]] = {}
    for node in nodes.values():
        for name in node.input:
            source = nodes.get(name.partition(":")[0])
            if source is not None and source.op in ("VarHandleOp", "Identity", "ReadVariableOp"):
                readers.setdefault(source.name, set()).add(node.name)

    def read_by_gradients(variable: str) -> set[str]:
        found, pending = set(), [variable]
        while pending:
            for reader in readers.get(pending.pop(), ()):
                if nodes[reader].op in ("Identity", "ReadVariableOp"):
                    pending.append(reader)
                elif reader.startswith("gradients/"):
                    found.add(reader)
        return found

    waiting = 0
    for node in nodes.values():
        if not node.op.startswith("ResourceApply"):
            continue
        before, pending = set(), [node.name]
        while pending:
            for name in nodes[pending.pop()].input:
                parent = name.lstrip("^").partition(":")[0]
                if parent not in before:
                    before.add(parent)
                    pending.append(parent)
        gradient_readers = read_by_gradients(node.input[0])
        assert gradient_readers <= before, node.name
        waiting += bool(gradient_readers)
    return waiting


def three_layers(folder: Path) -> Path:
    """Three layers of one shape, their kernels alike (3x3) and their biases alike (3), so
    the scaffolding is built over one kernel and one bias and widened to the others
    (builder/widening.py); the first by name is not the first made (Adam colocates its beta
    powers with the first by name)."""

    class Layers(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            init = tf.random.stateless_normal
            self.kernels = [
                tf.Variable(init([3, 3], seed=[i, 1]), name=f"layer_{i}/kernel") for i in (2, 0, 1)
            ]
            self.biases = [
                tf.Variable(tf.fill([3], 0.1 * i), name=f"layer_{i}/bias") for i in (2, 0, 1)
            ]

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            for kernel, bias in zip(self.kernels, self.biases, strict=True):
                x = tf.tanh(tf.matmul(x, kernel) + bias)
            return {"y": x}

    module = Layers()
    tf.saved_model.save(
        module, str(folder / "layers"), signatures={"serving_default": module.predict}
    )
    return folder / "layers"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    dense, cnn = tmp_path_factory.mktemp("dense"), tmp_path_factory.mktemp("cnn")
    embedded = tmp_path_factory.mktemp("embedded")
    module_reading(embedded, "embedded", gathered)
    layers = tmp_path_factory.mktemp("layers")
    three_layers(layers)
    rng = np.random.default_rng(0)
    return {
        "layers": (
            layers,
            {"savedmodel": "layers", "loss": "mse"},
            {"x": rng.standard_normal((4, 3), np.float32), "labels": np.ones((4, 3), np.float32)},
        ),
        "embedded": (
            embedded,
            {"savedmodel": "embedded", "loss": "mse"},
            {"x": rng.standard_normal((4, 3), np.float32), "labels": np.ones((4, 2), np.float32)},
        ),
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


@pytest.fixture
def widenings(monkeypatch: pytest.MonkeyPatch) -> list[widening.Widening]:
    """Every widening the builds in a test make, as they make them."""
    made: list[widening.Widening] = []

    class Recorded(widening.Widening):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(assembled_training, "Widening", Recorded)
    return made


@pytest.mark.parametrize("kind", ["dense", "cnn", "embedded", "layers"])
def test_assembled_train_graphs_train_as_the_python_paths(
    kind: str,
    sources: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    widenings: list[widening.Widening],
) -> None:
    folder, source, feeds = sources[kind]
    for optimizer in OPTIMIZERS:
        out = tmp_path / optimizer
        ours, assembled = built(folder, source, out / "ours", optimizer, monkeypatch, True)
        theirs, _ = built(folder, source, out / "theirs", optimizer, monkeypatch, False)
        # A gathered read under momentum is left to Python (see below).
        assert assembled == ([] if (kind, optimizer) == ("embedded", "momentum") else ["train"])
        if kind in ("layers", "cnn"):  # the second kernel and bias (the CNN's BN beta/gamma)
            assert widenings[-1].member_of, "built without widening"
        if (kind, optimizer) == ("dense", "adam"):
            again, _ = built(folder, source, out / "again", optimizer, monkeypatch, True)
            assert file_digests(again) == file_digests(ours)  # reproducible
        # A gather's gradient reads only the variable's shape: nothing to wait for.
        waiting = updates_wait_for_the_gradients_reading_their_variable(ours)
        assert waiting or kind == "embedded"
        first, third, values = train_steps(ours, feeds)
        python_first, python_third, python_values = train_steps(theirs, feeds)
        np.testing.assert_allclose(first, python_first, rtol=RTOL)
        np.testing.assert_allclose(third, python_third, rtol=RTOL)
        assert third != first  # the steps trained
        assert values.keys() == python_values.keys()
        for variable, value in values.items():
            np.testing.assert_allclose(value, python_values[variable], rtol=RTOL, atol=1e-7)


def module_reading(folder: Path, name: str, body: Any) -> Path:
    """A TF2 model computing `body(x, w)` from its input and one variable."""

    class Reading(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.fill([3, 2], 0.5), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": body(x, self.w)}

    module = Reading()
    path = folder / name
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


def left_to_python(
    folder: Path, source: dict[str, Any], optimizer: str = "sgd", **train: Any
) -> bool:
    """Whether the train variant of `source` is left to the Python path."""
    variants = {"train": {"tags": ["train"], "optimizer": OPTIMIZERS[optimizer], **train}}
    loaded = load_manifest(write_manifest(folder, source, variants=variants))
    with open_source(loaded) as opened:
        return ASSEMBLE(loaded, opened, "train", loaded.spec.variants["train"]) is None


def test_a_source_like_the_dense_one_is_assembled(tmp_path: Path) -> None:
    """The fallback cases below differ from this one by their reason only."""
    module_reading(tmp_path, "plain", lambda x, w: tf.matmul(x, w))
    assert not left_to_python(tmp_path, {"savedmodel": "plain", "loss": "mse"})


def test_an_op_changed_after_the_stand_in_gradients_were_made_is_left_to_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The splice of the scaffolding made before the optimizer's ops (the variables, the
    loss) is made once, with the stand-in gradients, and extended by the optimizer's: an
    op of it changed later (here the variable's, given an attribute) is not in that
    splice, so the variant is left to Python."""
    module_reading(tmp_path, "plain", lambda x, w: tf.matmul(x, w))
    scaffolding = assembled_training.build_variant_graph

    def changing_a_variable(*args: Any, **kwargs: Any) -> Any:
        built = scaffolding(*args, **kwargs)
        handle = next(op for op in built.graph.get_operations() if op.type == "VarHandleOp")
        handle._set_attr("_changed", attr_value_pb2.AttrValue(b=True))  # noqa: SLF001
        return built

    monkeypatch.setattr(assembled_training, "build_variant_graph", changing_a_variable)
    assert left_to_python(tmp_path, {"savedmodel": "plain", "loss": "mse"})


@pytest.mark.parametrize(
    ("reason", "body"),
    [
        # TF's C++ registry has no gradient for Cumprod (TF_AddGradients says so).
        ("no C++ gradient", lambda x, w: tf.math.cumprod(tf.matmul(x, w), axis=1)),
        # Each read's gradient would have to be summed, as tf.gradients does for the handle.
        ("a variable read twice", lambda x, w: tf.matmul(x, w) + tf.reduce_sum(w)),
        # A gather differentiates as IndexedSlices of the handle, not through a read.
        ("a gather", lambda x, w: tf.gather(w, tf.cast(x[:, :2] > 0, tf.int32))[:, :, 0]),
    ],
)
def test_what_the_cxx_registry_or_the_splice_cannot_make_is_left_to_python(
    reason: str, body: Any, tmp_path: Path
) -> None:
    module_reading(tmp_path, "model", body)
    assert left_to_python(tmp_path, {"savedmodel": "model", "loss": "mse"}), reason


def gathered(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """Rows 0 and 1 of the variable's read (an embedding's lookup), never row 2."""
    return tf.gather(tf.convert_to_tensor(w), tf.cast(x[:, :2] > 0, tf.int32))[:, :, 0]


def test_a_gathered_read_is_left_to_python_under_momentum_only(tmp_path: Path) -> None:
    """TF1's momentum applies an `IndexedSlices` gradient (a gathered read's, from
    `tf.gradients`) to the gathered rows alone; SGD and Adam apply it as a dense one (the
    embedded source above trains the same both ways)."""
    module_reading(tmp_path, "model", gathered)
    source = {"savedmodel": "model", "loss": "mse"}
    assert left_to_python(tmp_path, source, "momentum")
    assert not left_to_python(tmp_path, source, "sgd")
    assert not left_to_python(tmp_path, source, "adam")


def test_a_computation_calling_functions_is_left_to_python(tmp_path: Path) -> None:
    """The train graph keeps a while loop a `While` op calling its body function."""
    make_looping_module(tmp_path)
    assert left_to_python(tmp_path, {"savedmodel": "looping", "loss": "mse"})


def colocated(x: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """A product and an op pinned beside it (a `_class` attr, as `colocate_with` writes)."""
    product = tf.matmul(x, w)
    with tf.compat.v1.colocate_with(product.op):
        return tf.nn.relu(product)


def test_a_source_colocating_ops_is_assembled_its_colocations_dropped(tmp_path: Path) -> None:
    """The import drops every `_class` attr (sources/savedmodel.py `_inlined`), so the
    fallback for colocated computations never sees one and a colocating source is assembled."""
    module_reading(tmp_path, "model", colocated)
    function_nodes = [
        node
        for function in meta_graph(tmp_path / "model", ["serve"]).graph_def.library.function
        for node in function.node_def
    ]
    assert any("_class" in node.attr for node in function_nodes)
    source = {"savedmodel": "model", "loss": "mse"}
    loaded = load_manifest(write_manifest(tmp_path, source))
    with open_source(loaded) as opened:
        training = opened.training_import
        assert training is not None
        assert not any("_class" in node.attr for node in training.graph_def.node)
    assert not left_to_python(tmp_path, source)


def test_a_host_part_or_a_precision_is_left_to_python(tmp_path: Path) -> None:
    class Vocabulary(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            init = tf.lookup.KeyValueTensorInitializer(["a", "b"], [0, 1], tf.string, tf.int64)
            self.table = tf.lookup.StaticHashTable(init, 2)
            self.w = tf.Variable(tf.fill([3, 2], 0.5), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def predict(self, words: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(tf.one_hot(self.table.lookup(words), 3), self.w)}

    module = Vocabulary()
    signatures = {"serving_default": module.predict}
    tf.saved_model.save(module, str(tmp_path / "vocabulary"), signatures=signatures)
    assert left_to_python(tmp_path, {"savedmodel": "vocabulary", "loss": "mse"})
    module_reading(tmp_path, "plain", lambda x, w: tf.matmul(x, w))
    # float16 scales its loss: a cond around the update.
    source = {"savedmodel": "plain", "loss": "mse"}
    assert left_to_python(tmp_path, source, precision="float16")


def test_an_assembled_train_graph_loads_in_tensorflows_other_loaders(
    sources: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, c_loader: Path
) -> None:
    """The C API (TF Serving's loader) and `tf.saved_model.load`, beside the TF1 loader
    the test above trains through."""
    folder, source, feeds = sources["cnn"]
    package, assembled = built(folder, source, tmp_path, "adam", monkeypatch, True)
    assert assembled == ["train"]
    result = run_c(c_loader, package, "train")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["loaded"]
    loaded = tf.saved_model.load(str(package), tags=["train"])
    step = loaded.signatures["train"]
    first = step(**{k: tf.constant(v) for k, v in feeds.items()})["loss"].numpy()
    second = step(**{k: tf.constant(v) for k, v in feeds.items()})["loss"].numpy()
    assert np.isfinite(first)
    assert second != first  # a step was taken


def test_like_variables_one_of_them_not_differentiated_are_assembled_each_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, widenings: list[widening.Widening]
) -> None:
    """Two variables of one shape, the loss differentiable with respect to one: copies of
    the first one's (no) update would leave the other one untrained, so each variable is
    built as its own representative (builder/widening.py), and the step is SGD's."""

    class OneStopped(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stopped = tf.Variable(tf.fill([3, 3], 2.0), name="a_stopped")
            self.w = tf.Variable(tf.fill([3, 3], 0.5), name="b_trained")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(x, self.w) + tf.stop_gradient(self.stopped)[0]}

    module = OneStopped()
    tf.saved_model.save(
        module, str(tmp_path / "model"), signatures={"serving_default": module.predict}
    )
    source = {"savedmodel": "model", "loss": "mse"}
    ours, assembled = built(tmp_path, source, tmp_path / "ours", "sgd", monkeypatch, True)
    assert assembled == ["train"]
    assert [bool(w.member_of) for w in widenings] == [True, False]
    theirs, _ = built(tmp_path, source, tmp_path / "theirs", "sgd", monkeypatch, False)
    feeds = {"x": np.ones((4, 3), np.float32), "labels": np.zeros((4, 3), np.float32)}
    first, third, values = train_steps(ours, feeds)
    python_first, python_third, python_values = train_steps(theirs, feeds)
    np.testing.assert_allclose([first, third], [python_first, python_third], rtol=RTOL)
    assert values.keys() == python_values.keys()
    for variable, value in values.items():
        np.testing.assert_allclose(value, python_values[variable], rtol=RTOL)
