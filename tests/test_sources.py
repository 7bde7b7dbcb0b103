"""TF2 SavedModels and Keras 3 models as sources: every variant kind computes what they do."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_c
from tf_helpers import (
    SERVING,
    SOURCE_VARIANTS,
    X,
    make_batch_norm_module,
    make_looping_module,
    make_tf_module,
    make_unknown_rank_module,
    meta_graph,
    run_v1,
    run_v2,
    source_outputs,
    write_manifest,
)
from typer.testing import CliRunner

import smpack
from smpack.cli.commands import app
from smpack.package.info import PackageInfo

FEATURES = np.linspace(-2, 2, 20, dtype=np.float32).reshape(4, 5)
runner = CliRunner()


@pytest.fixture(scope="module")
def tf_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tf_source")
    make_tf_module(folder)
    make_looping_module(folder)
    make_batch_norm_module(folder)
    return folder


@pytest.fixture(scope="module")
def tf_package(tf_source: Path) -> PackageInfo:
    manifest = write_manifest(tf_source, {"savedmodel": "two_layers", "loss": "mse"})
    return smpack.build(manifest, tf_source / "out")


@pytest.mark.parametrize("run", [run_v1, run_v2], ids=["v1-loader", "tf.saved_model.load"])
def test_float32_variants_match_the_source_exactly(tf_source, tf_package, run) -> None:
    expected = source_outputs(tf_source / "two_layers", "serving_default", x=X)
    for tags in (["serve"], ["train"]):
        np.testing.assert_array_equal(run(tf_package.path, tags, {"x": X})["y"], expected["y"])


def test_variables_keep_the_source_names(tf_package: PackageInfo) -> None:
    names = [v.name for v in tf_package.variables]
    assert {"hidden/kernel", "hidden/bias_2", "out/kernel", "global_step"} <= set(names)
    # The optimizer's slots live in the same single checkpoint.
    assert "out/kernel/Momentum" in names


def test_gpu_variant_computes_in_half_on_the_device(tf_source, tf_package) -> None:
    expected = source_outputs(tf_source / "two_layers", "serving_default", x=X)["y"]
    gpu = run_v1(tf_package.path, ["serve", "gpu"], {"x": X})["y"]
    np.testing.assert_allclose(gpu, expected, rtol=1e-2, atol=1e-2)
    assert not np.array_equal(gpu, expected)
    nodes = meta_graph(tf_package.path, ["serve", "gpu"]).graph_def.node
    matmuls = [n for n in nodes if n.op == "MatMul"]
    assert len(matmuls) == 2
    assert all(n.device == "/device:GPU:0" and n.attr["_XlaCompile"].b for n in matmuls)
    assert {n.attr["T"].type for n in matmuls} == {19}  # DT_HALF


def test_tpu_variant_is_a_tpu_rewrite_matching_the_source(tf_source, tf_package) -> None:
    from smpack.checks.xla_check import run_tpu_graph_on_cpu

    graph = meta_graph(tf_package.path, ["serve", "tpu"])
    replicated = [n for n in graph.graph_def.node if "_tpu_replicate" in n.attr]
    assert [n.attr["T"].type for n in replicated if n.op == "MatMul"] == [14, 14]  # bfloat16
    assert graph.signature_def["serving_default"].inputs["x"].tensor_shape.dim[0].size == 4
    expected = source_outputs(tf_source / "two_layers", "serving_default", x=X)["y"]
    on_xla = run_tpu_graph_on_cpu(tf_package.path, ["serve", "tpu"], "serving_default", {"x": X})
    np.testing.assert_allclose(on_xla["y"], expected, rtol=5e-2, atol=5e-2)


def test_train_signature_takes_labels_and_lowers_the_loss(tf_package: PackageInfo) -> None:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tf_package.path), tags=["train"])
    step = loaded.signatures["train"]
    target = np.stack([X.sum(axis=1), -X[:, 0]], axis=1)
    losses = [float(step(x=tf.constant(X), labels=tf.constant(target))["loss"]) for _ in range(30)]
    assert losses[-1] < losses[0] / 2


def test_variable_less_signature(tf_source: Path, tmp_path: Path) -> None:
    manifest = write_manifest(
        tf_source,
        {"savedmodel": "two_layers", "signature": "scaled"},
        variants=SERVING,
    )
    package = smpack.build(manifest, tmp_path)
    assert package.variables == ()
    expected = source_outputs(tf_source / "two_layers", "scaled", x=X)["doubled"]
    np.testing.assert_array_equal(run_v1(package.path, ["serve"], {"x": X})["doubled"], expected)
    half = run_v1(package.path, ["serve", "gpu"], {"x": X})["doubled"]
    np.testing.assert_allclose(half, expected, rtol=1e-3)


def test_inputs_of_unknown_rank_serve_any_shape(tmp_path: Path) -> None:
    """`TensorSpec(None)` inputs, numeric and text, as TF Serving loads them: any rank runs."""
    source = make_unknown_rank_module(tmp_path)
    variants = {k: v for k, v in SERVING.items() if k != "tpu"}
    manifest = write_manifest(tmp_path, {"savedmodel": source.name}, variants=variants)
    package = smpack.build(manifest, tmp_path / "out", measure=False)

    for graph in package.graphs:
        assert {t.key: t.shape_text for t in graph.signatures[0].inputs} == {
            "text": "unknown rank",
            "x": "unknown rank",
        }
    import tensorflow as tf

    served = tf.saved_model.load(str(package.path), tags=["serve"]).signatures["serving_default"]
    for x, text in ((np.float32(3), "abc"), (X, [["ab", ""], ["abcd", "a"]])):
        outputs = served(x=tf.constant(x), text=tf.constant(text))
        expected = source_outputs(source, "serving_default", x=x, text=np.array(text))
        for key in ("y", "lengths"):
            np.testing.assert_array_equal(outputs[key].numpy(), expected[key])
    half = run_v1(package.path, ["serve", "gpu"], {"x": X, "text": np.array(["ab"])})
    np.testing.assert_allclose(half["y"], 2 * X, rtol=1e-3)


def test_gathers_straight_from_a_variable(tf_source, tmp_path) -> None:
    source = {"savedmodel": "two_layers", "signature": "lookup"}
    package = smpack.build(write_manifest(tf_source, source, variants=SERVING), tmp_path)
    assert [v.name for v in package.variables] == ["embedding/table"]
    ids = np.array([[0, 9], [3, 3], [1, 2], [5, 0]], np.int32)
    expected = source_outputs(tf_source / "two_layers", "lookup", ids=ids)["vectors"]
    serve = run_v1(package.path, ["serve"], {"ids": ids})["vectors"]
    np.testing.assert_array_equal(serve, expected)
    # A lookup computes nothing, so half precision leaves it alone: the gathered rows stay
    # float32, like the checkpoint, and the float16 variant returns them exactly.
    half = run_v1(package.path, ["serve", "gpu"], {"ids": ids})["vectors"]
    np.testing.assert_array_equal(half, expected)
    nodes = meta_graph(package.path, ["serve", "gpu"]).graph_def.node
    (gather,) = (n for n in nodes if n.op == "ResourceGather")
    assert gather.device == "/device:GPU:0"
    assert not any(n.op == "Cast" and n.input[0] == gather.name for n in nodes)


def test_control_flow_serves_on_cpu_gpu_and_tpu(tf_source: Path, tmp_path: Path) -> None:
    """A `tf.cond` and a `tf.while_loop`: XLA (serve,gpu) and tpu.rewrite (serve,tpu) get
    the loop as a functional `While`, which XLA compiles; run on XLA:CPU here."""
    from smpack.checks.xla_check import run_tpu_graph_on_cpu

    variants = {k: SOURCE_VARIANTS[k] for k in ("cpu", "gpu", "tpu")}
    manifest = write_manifest(tf_source, {"savedmodel": "looping"}, variants=variants)
    package = smpack.build(manifest, tmp_path)
    for x in (X + 0.5, X - 0.5):  # both branches of the tf.cond
        expected = source_outputs(tf_source / "looping", "serving_default", x=x)["y"]
        np.testing.assert_array_equal(run_v1(package.path, ["serve"], {"x": x})["y"], expected)
        half = run_v1(package.path, ["serve", "gpu"], {"x": x})["y"]
        np.testing.assert_allclose(half, expected, rtol=1e-2, atol=1e-2)
        tpu = run_tpu_graph_on_cpu(package.path, ["serve", "tpu"], "serving_default", {"x": x})
        np.testing.assert_allclose(tpu["y"], expected, rtol=5e-2, atol=5e-2)
    tpu_ops = {n.op for n in meta_graph(package.path, ["serve", "tpu"]).graph_def.node}
    assert "Enter" not in tpu_ops and tpu_ops & {"While", "StatelessWhile"}


def test_loops_train(tf_source, tmp_path) -> None:
    import tensorflow as tf

    source = {"savedmodel": "looping", "loss": "mse"}
    variants = {k: SOURCE_VARIANTS[k] for k in ("cpu", "train")}
    manifest = write_manifest(tmp_path, source, variants=variants)
    shutil.copytree(tf_source / "looping", tmp_path / "looping")
    package = smpack.build(manifest, tmp_path / "out")
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(package.path))
        signature = graph.signature_def["train"]
        feeds = {signature.inputs["x"].name: X + 0.5, signature.inputs["labels"].name: X}
        losses = [session.run(signature.outputs["loss"].name, feeds) for _ in range(20)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_an_input_of_unknown_rank_trains(unknown_rank_package: PackageInfo) -> None:
    """The SGD step of `y = scale * x` on inputs of two ranks, labels shaped like them."""
    import tensorflow as tf

    assert unknown_rank_package.published  # verified, every graph
    scale = 2.0
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        path = str(unknown_rank_package.path)
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], path)
        signature = graph.signature_def["train"]
        for x in (X, X[0]):
            labels = 3 * x
            feeds = {signature.inputs["x"].name: x, signature.inputs["labels"].name: labels}
            loss = session.run(signature.outputs["loss"].name, feeds)
            np.testing.assert_allclose(loss, np.mean((scale * x - labels) ** 2), rtol=1e-6)
            scale -= 0.1 * np.mean(2 * (scale * x - labels) * x)
        (variable,) = tf.compat.v1.trainable_variables()
        np.testing.assert_allclose(session.run(variable), scale, rtol=1e-6)


def test_fused_batch_norm_keeps_float32_statistics(tf_source: Path, tmp_path: Path) -> None:
    from smpack.checks.xla_check import run_tpu_graph_on_cpu

    manifest = write_manifest(tf_source, {"savedmodel": "normalized"}, variants=SERVING)
    package = smpack.build(manifest, tmp_path)
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 2, 2, 3)
    x = np.concatenate([x, x])  # the TPU variant's static batch of 4
    expected = source_outputs(tf_source / "normalized", "serving_default", x=x)["y"]
    np.testing.assert_array_equal(run_v1(package.path, ["serve"], {"x": x})["y"], expected)
    half = run_v1(package.path, ["serve", "gpu"], {"x": x})["y"]
    np.testing.assert_allclose(half, expected, rtol=1e-2, atol=1e-2)
    on_xla = run_tpu_graph_on_cpu(package.path, ["serve", "tpu"], "serving_default", {"x": x})
    np.testing.assert_allclose(on_xla["y"], expected, rtol=5e-2, atol=5e-2)
    nodes = meta_graph(package.path, ["serve", "gpu"]).graph_def.node
    (norm,) = (n for n in nodes if n.op == "FusedBatchNormV3")
    assert (norm.attr["T"].type, norm.attr["U"].type) == (19, 1)  # half x, float32 statistics


@pytest.fixture(scope="module")
def keras_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("keras_source")
    model = keras.Sequential(
        [
            keras.Input((5,), name="features"),
            keras.layers.Dense(16, activation="relu", name="encoder"),
            keras.layers.Dense(8, activation="tanh", name="bottleneck"),
            keras.layers.Dense(3, activation="softmax", name="classes"),
        ]
    )
    model.save(folder / "classifier.keras")
    return folder


@pytest.fixture(scope="module")
def keras_package(keras_source: Path) -> PackageInfo:
    manifest = write_manifest(
        keras_source,
        {"keras": "classifier.keras", "loss": "sparse_categorical_crossentropy"},
    )
    return smpack.build(manifest, keras_source / "out")


def keras_predictions(folder: Path) -> np.ndarray:
    import keras

    model = keras.saving.load_model(folder / "classifier.keras")
    return np.asarray(model(FEATURES))


def test_keras_variants_match_the_keras_model(keras_source, keras_package) -> None:
    expected = keras_predictions(keras_source)
    (output,) = run_v1(keras_package.path, ["serve"], {"features": FEATURES}).values()
    np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-7)
    (half,) = run_v1(keras_package.path, ["serve", "gpu"], {"features": FEATURES}).values()
    np.testing.assert_allclose(half, expected, rtol=1e-2, atol=1e-2)


def test_keras_tpu_variant_compiles_with_xla_and_matches(keras_source, keras_package) -> None:
    from smpack.checks.xla_check import run_tpu_graph_on_cpu

    expected = keras_predictions(keras_source)
    feeds = {"features": FEATURES}
    (on_xla,) = run_tpu_graph_on_cpu(
        keras_package.path, ["serve", "tpu"], "serving_default", feeds
    ).values()
    np.testing.assert_allclose(on_xla, expected, rtol=5e-2, atol=2e-2)


def test_keras_convolution_batch_norm_dropout_embedding(tmp_path: Path) -> None:
    import keras

    from smpack.checks.xla_check import run_tpu_graph_on_cpu

    keras.utils.set_random_seed(1)
    image = keras.Input((8, 8, 3), name="image")
    words = keras.Input((6,), dtype="int32", name="words")
    seen = keras.layers.Conv2D(4, 3, activation="relu")(image)
    seen = keras.layers.BatchNormalization()(seen)
    seen = keras.layers.Dropout(0.5)(seen)
    seen = keras.layers.GlobalAveragePooling2D()(seen)
    read = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 4)(words))
    joined = keras.layers.Concatenate()([seen, read])
    scores = keras.layers.Dense(3, activation="softmax")(joined)
    model = keras.Model([image, words], scores)
    model.save(tmp_path / "captioned.keras")
    manifest = write_manifest(tmp_path, {"keras": "captioned.keras"}, variants=SERVING)
    package = smpack.build(manifest, tmp_path / "out")

    random = np.random.RandomState(0)
    feeds = {
        "image": random.rand(4, 8, 8, 3).astype(np.float32),
        "words": random.randint(0, 50, (4, 6)).astype(np.int32),
    }
    expected = np.asarray(model([feeds["image"], feeds["words"]]))
    (serve,) = run_v1(package.path, ["serve"], feeds).values()
    np.testing.assert_allclose(serve, expected, rtol=1e-6, atol=1e-7)
    (half,) = run_v1(package.path, ["serve", "gpu"], feeds).values()
    np.testing.assert_allclose(half, expected, rtol=1e-2, atol=1e-2)
    tpu = run_tpu_graph_on_cpu(package.path, ["serve", "tpu"], "serving_default", feeds)
    np.testing.assert_allclose(next(iter(tpu.values())), expected, rtol=5e-2, atol=2e-2)


def test_keras_variable_names_are_layer_paths(keras_package: PackageInfo) -> None:
    names = {v.name for v in keras_package.variables}
    for layer in ("encoder", "bottleneck", "classes"):
        assert {f"{layer}/kernel", f"{layer}/bias"} <= names


def test_keras_train_step_learns_class_ids(keras_package: PackageInfo) -> None:
    import tensorflow as tf

    labels = np.array([0, 1, 2, 1], np.int64)
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(keras_package.path))
        signature = graph.signature_def["train"]
        feeds = {
            signature.inputs["features"].name: FEATURES,
            signature.inputs["labels"].name: labels,
        }
        losses = [session.run(signature.outputs["loss"].name, feeds) for _ in range(40)]
    assert losses[-1] < losses[0] / 2


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"savedmodel": "empty"}, "'empty' is not a SavedModel folder (no saved_model.pb in it)"),
        (
            {"savedmodel": "two_layers", "signature": "predict"},
            "has no signature 'predict' (signatures: lookup, scaled, serving_default)",
        ),
        ({"keras": "broken.keras"}, "source.keras: cannot load broken.keras with Keras"),
        (
            {"savedmodel": "two_layers", "python": "model.py:fn"},
            "give exactly one of python, savedmodel or keras",
        ),
        ({"savedmodel": "two_layers"}, "source.loss: a train variant of a savedmodel"),
        (
            {"savedmodel": "two_layers", "loss": "missing.py:fn"},
            "source.loss: 'missing.py' does not exist in",
        ),
        (
            {"savedmodel": "two_layers", "loss": "../outside.py:mean_abs"},
            "source.loss: '../outside.py' points outside the manifest's folder",
        ),
        (
            {"savedmodel": "two_layers", "loss": {"z": "mse"}},
            "source.loss.z: the model has no output 'z' (its outputs: ['y'])",
        ),
    ],
)
def test_bad_sources_are_one_line_errors(tf_source, tmp_path, source, message) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "empty").mkdir()
    shutil.copytree(tf_source / "two_layers", folder / "two_layers")
    (folder / "broken.keras").write_bytes(b"not a zip file")
    (tmp_path / "outside.py").write_text("def mean_abs(output, labels):\n    return 0.0\n")
    variants = SOURCE_VARIANTS if "loss" in message else SERVING
    manifest = write_manifest(folder, source, variants=variants)
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "imported").exists()


def test_a_ragged_output_is_a_one_line_error(tmp_path) -> None:
    import tensorflow as tf

    class Ragged(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.int64)]
        )
        def split(self, x: tf.Tensor, lengths: tf.Tensor) -> dict[str, Any]:
            return {"rows": tf.RaggedTensor.from_row_lengths(x, lengths)}

    module = Ragged()
    tf.saved_model.save(module, str(tmp_path / "ragged"), signatures=module.split)
    manifest = write_manifest(tmp_path, {"savedmodel": "ragged"}, variants=SERVING)
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "output 'rows' of signature 'serving_default' is a composite tensor" in result.stderr
    assert "(RaggedTensorSpec)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_sparse_input_in_a_batched_variant_is_a_one_line_error(tmp_path) -> None:
    import tensorflow as tf

    class Sparse(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel = tf.Variable(tf.ones([10, 2]))

        @tf.function(input_signature=[tf.SparseTensorSpec([None, 10], tf.float32)])
        def scores(self, features: tf.SparseTensor) -> dict[str, tf.Tensor]:
            return {"scores": tf.sparse.sparse_dense_matmul(features, self.kernel)}

    module = Sparse()
    tf.saved_model.save(module, str(tmp_path / "sparse"), signatures=module.scores)
    manifest = write_manifest(tmp_path, {"savedmodel": "sparse"}, variants=SERVING)
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    # TF saves the sparse argument as three inputs; the first, `features`, holds the indices.
    assert (
        "variants.tpu.batch_size: input 'features' of the source's signature is a component "
        "of a SparseTensor argument"
    ) in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def save_wide_model(path: Path) -> Any:
    import tensorflow as tf

    class Wide(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([256, 256], seed=[5, 6]), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 256], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.matmul(x, self.w)}

    wide = Wide()
    tf.saved_model.save(wide, str(path), signatures={"serving_default": wide.predict})
    return wide


def test_weights_are_linked_from_the_source_not_rewritten(tmp_path: Path) -> None:
    wide = save_wide_model(tmp_path / "wide")
    variants = {
        "cpu": SOURCE_VARIANTS["cpu"],
        "train": {**SOURCE_VARIANTS["train"], "optimizer": {"name": "adam", "learning_rate": 0.01}},
    }
    manifest = write_manifest(tmp_path, {"savedmodel": "wide", "loss": "mse"}, variants=variants)
    package = smpack.build(manifest, tmp_path / "out")

    source_data = tmp_path / "wide" / "variables" / "variables.data-00000-of-00001"
    shards = sorted((package.path / "variables").glob("variables.data-*"))
    assert [s.name for s in shards] == [
        "variables.data-00000-of-00002",
        "variables.data-00001-of-00002",
    ]
    # The weights' shard is the source's own file; the second holds step and Adam slots.
    assert shards[0].stat().st_ino == source_data.stat().st_ino
    assert shards[1].stat().st_size == 2 * 256 * 256 * 4 + 8 + 2 * 4
    x = np.eye(4, 256, dtype=np.float32)
    np.testing.assert_array_equal(
        run_v1(package.path, ["serve"], {"x": x})["y"], wide.w.numpy()[:4]
    )


@pytest.mark.slow
@pytest.mark.parametrize("package", ["tf_package", "keras_package"])
def test_c_api_loads_every_cpu_graph(c_loader, package, request) -> None:
    info: PackageInfo = request.getfixturevalue(package)
    for tag_set in (g.tag_set for g in info.graphs if not g.tpu):
        result = run_c(c_loader, info.path, tag_set)
        assert result.returncode == 0, f"{tag_set}: {result.stderr}"
        assert result.stdout.split() == ["loaded"]


@pytest.mark.parametrize(
    "loss", ["mse", "sparse_categorical_crossentropy", "categorical_crossentropy", "python"]
)
def test_train_signature_computes_the_named_loss(keras_source, tmp_path, loss) -> None:
    import tensorflow as tf

    folder = tmp_path / "project"
    shutil.copytree(keras_source, folder, ignore=shutil.ignore_patterns("out"))
    (folder / "losses.py").write_text(
        "import tensorflow as tf\n\n"
        "def mean_abs(output, labels):\n"
        "    return tf.reduce_mean(tf.abs(output - labels))\n"
    )
    name = "losses.py:mean_abs" if loss == "python" else loss
    source = {"keras": "classifier.keras", "loss": name}
    manifest = write_manifest(folder, source, variants={"train": SOURCE_VARIANTS["train"]})
    package = smpack.build(manifest, tmp_path / "out")

    probabilities = keras_predictions(keras_source)
    classes = np.array([0, 1, 2, 1])
    one_hot = np.eye(3, dtype=np.float32)[classes]
    expected = {
        "mse": np.mean((probabilities - one_hot) ** 2),
        "sparse_categorical_crossentropy": np.mean(-np.log(probabilities[range(4), classes])),
        "categorical_crossentropy": np.mean(-np.log(probabilities[range(4), classes])),
        "python": np.mean(np.abs(probabilities - one_hot)),
    }[loss]
    labels = classes if loss == "sparse_categorical_crossentropy" else one_hot
    step = tf.saved_model.load(str(package.path), tags=["train"]).signatures["train"]
    # The loss a step returns is the one its gradients came from: the model before the step.
    first = step(features=tf.constant(FEATURES), labels=tf.constant(labels))["loss"]
    np.testing.assert_allclose(float(first), expected, rtol=1e-5)


def test_a_model_with_two_outputs_trains_on_a_loss_per_output(tmp_path) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    features = keras.Input((5,), name="features")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4)(tokens))
    hidden = keras.layers.Concatenate()([pooled, keras.layers.Dense(4)(features)])
    outputs = {
        "label": keras.layers.Dense(3, activation="softmax")(hidden),
        "score": keras.layers.Dense(1)(hidden),
    }
    model = keras.Model({"tokens": tokens, "features": features}, outputs)
    model.save(tmp_path / "two_heads.keras")
    loss = {"label": "sparse_categorical_crossentropy", "score": "mse"}
    source = {"keras": "two_heads.keras", "loss": loss}
    manifest = write_manifest(tmp_path, source, variants={"train": SOURCE_VARIANTS["train"]})
    package = smpack.build(manifest, tmp_path / "out")

    inputs = {"tokens": np.arange(24, dtype=np.int32).reshape(4, 6) % 10, "features": FEATURES}
    labels = {"label": np.array([0, 1, 2, 1]), "score": np.float32([[0.5], [-1], [2], [0]])}
    predicted = model(inputs)
    # What Keras's fit minimises for these losses: the sum of their means over the batch.
    expected = sum(
        np.mean(keras.losses.get(name)(labels[key], predicted[key])) for key, name in loss.items()
    )
    step = tf.saved_model.load(str(package.path), tags=["train"]).signatures["train"]
    assert set(step.structured_input_signature[1]) == {
        "tokens", "features", "label_labels", "score_labels"
    }  # fmt: skip
    feeds = {key: tf.constant(value) for key, value in inputs.items()}
    feeds.update({f"{key}_labels": tf.constant(value) for key, value in labels.items()})
    first = step(**feeds)["loss"]
    np.testing.assert_allclose(float(first), expected, rtol=1e-5)


@pytest.mark.parametrize("package", ["tf_package", "keras_package"])
def test_imported_packages_pass_smpack_verify(package, request) -> None:
    from smpack.checks.verify import verify_package

    report = verify_package(request.getfixturevalue(package).path)
    assert report.passed, report


@pytest.mark.slow
def test_saved_model_cli_runs_the_imported_gpu_graph(tf_package: PackageInfo) -> None:
    cli = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", "run"]
    ran = subprocess.run(
        [
            *cli,
            *("--dir", str(tf_package.path), "--tag_set", "serve,gpu"),
            *("--signature_def", "serving_default", "--input_exprs", "x=[[1.0,0.0,0.0]]"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "Result for output key y:" in ran


def test_slots_are_saved_a_batch_at_a_time_in_shards_of_their_own(tmp_path, monkeypatch):
    import tensorflow as tf

    import smpack.builder.checkpoint_bundle

    # One variable per batch: the slots (m, v), beta powers and global step, five shards.
    monkeypatch.setattr(smpack.builder.checkpoint_bundle, "_EXTRA_BATCH_BYTES", 1)
    save_wide_model(tmp_path / "wide")
    adam = {"name": "adam", "learning_rate": 0.01}
    train = {**SOURCE_VARIANTS["train"], "optimizer": adam}
    variants = {"cpu": SOURCE_VARIANTS["cpu"], "train": train}
    manifest = write_manifest(tmp_path, {"savedmodel": "wide", "loss": "mse"}, variants=variants)
    package = smpack.build(manifest, tmp_path / "out")
    shards = sorted((package.path / "variables").glob("variables.data-*"))
    assert len(shards) == 6
    step = tf.saved_model.load(str(package.path), tags=["train"]).signatures["train"]
    x = tf.constant(np.eye(4, 256, dtype=np.float32))
    losses = [float(step(x=x, labels=tf.zeros([4, 256]))["loss"]) for _ in range(5)]
    assert losses[-1] < losses[0]
