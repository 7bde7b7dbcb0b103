"""Running packages through TensorFlow's own loaders, the way serving systems do, and the
small TF2 / TF1 models and manifests that several test files build from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import yaml


def run_v1(
    export_dir: Path,
    tags: Sequence[str],
    feeds: Mapping[str, Any],
    signature: str = "serving_default",
) -> dict[str, np.ndarray]:
    """Load with the TF1 loader (the Python twin of TF Serving's) and run one signature."""
    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), str(export_dir))
        signature_def = meta_graph.signature_def[signature]
        fetches = {k: v.name for k, v in signature_def.outputs.items()}
        feed_dict = {signature_def.inputs[k].name: v for k, v in feeds.items()}
        return session.run(fetches, feed_dict)


def run_v2(
    export_dir: Path,
    tags: Sequence[str],
    feeds: Mapping[str, Any],
    signature: str = "serving_default",
) -> dict[str, np.ndarray]:
    """Load with tf.saved_model.load(tags=...) and call one signature."""
    loaded = tf.saved_model.load(str(export_dir), tags=list(tags))
    outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def meta_graph(export_dir: Path, tags: Sequence[str]) -> Any:
    from tensorflow.python.saved_model import loader_impl

    saved_model = loader_impl.parse_saved_model(str(export_dir))
    return next(m for m in saved_model.meta_graphs if set(m.meta_info_def.tags) == set(tags))


def serving_variants(tpu_batch: int) -> dict[str, Any]:
    """serve, serve,gpu (float16, XLA) and serve,tpu (bfloat16, batches of `tpu_batch`)."""
    return {
        "cpu": {"tags": ["serve"]},
        "gpu": {
            "tags": ["serve", "gpu"],
            "device": "/device:GPU:0",
            "precision": "float16",
            "xla": True,
        },
        "tpu": {"tags": ["serve", "tpu"], "precision": "bfloat16", "batch_size": tpu_batch},
    }


SOURCE_VARIANTS = {
    **serving_variants(4),
    "train": {"tags": ["train"], "optimizer": {"name": "momentum", "learning_rate": 0.05}},
}


SERVING = {k: v for k, v in SOURCE_VARIANTS.items() if k != "train"}

# A python source trained in float32 and in float16 (pinned, XLA), beside its serving graph.
SGD = {"name": "sgd", "learning_rate": 0.1}
FLOAT32_AND_FLOAT16_TRAINING = {
    "cpu": {"tags": ["serve"]},
    "train": {"tags": ["train"], "optimizer": SGD},
    "train_gpu": {
        "tags": ["train", "gpu"],
        "device": "/device:GPU:0",
        "precision": "float16",
        "xla": True,
        "optimizer": SGD,
    },
}


def source_variants(optimizer: dict[str, Any], tpu_batch: int) -> dict[str, Any]:
    """SOURCE_VARIANTS with another train optimizer and serve,tpu batch size."""
    return {
        **SOURCE_VARIANTS,
        "train": {**SOURCE_VARIANTS["train"], "optimizer": optimizer},
        "tpu": {**SOURCE_VARIANTS["tpu"], "batch_size": tpu_batch},
    }


X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)


def write_manifest(folder: Path, source: dict[str, Any], **extra: Any) -> Path:
    manifest = {"schema": 1, "name": "imported", "version": 1, "source": source, **extra}
    manifest.setdefault("variants", SOURCE_VARIANTS)
    path = folder / "smpack.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def write_python_manifest(folder: Path, model_code: str, variants: dict[str, Any]) -> Path:
    """The manifest of `model_code` (a python source's model.py, `model_fn`) whose serving
    signature predicts `y` from `x`."""
    (folder / "model.py").write_text(model_code)
    signatures = {"serving_default": {"method": "predict", "inputs": ["x"], "outputs": ["y"]}}
    source = {"python": "model.py:model_fn"}
    return write_manifest(folder, source, variants=variants, signatures=signatures)


def make_tf_module(folder: Path) -> Path:
    """A two-layer TF2 model with a second, variable-less signature."""
    import tensorflow as tf

    class TwoLayers(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            init = tf.random.stateless_normal
            self.hidden = tf.Variable(init([3, 8], seed=[1, 2]), name="hidden/kernel")
            # A name ending like TF's de-duplication suffix, which smpack must keep.
            self.bias = tf.Variable(tf.fill([8], 0.1), name="hidden/bias_2")
            self.out = tf.Variable(init([8, 2], seed=[3, 4]), name="out/kernel")
            self.table = tf.Variable(init([10, 4], seed=[7, 8]), name="embedding/table")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            hidden = tf.nn.relu(tf.matmul(x, self.hidden) + self.bias)
            return {"y": tf.matmul(hidden, self.out)}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def scaled(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"doubled": 2.0 * x + 1.0}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.int32)])
        def lookup(self, ids: tf.Tensor) -> dict[str, tf.Tensor]:
            # A gather straight from the variable: a ResourceGather op, not a read.
            return {"vectors": tf.nn.embedding_lookup(self.table, ids)}

    module = TwoLayers()
    path = folder / "two_layers"
    signatures = {
        "serving_default": module.predict,
        "scaled": module.scaled,
        "lookup": module.lookup,
    }
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


def make_looping_module(folder: Path) -> Path:
    """A TF2 model whose function has a tf.cond and a tf.while_loop reading a variable."""
    import tensorflow as tf

    class Looping(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([3, 3], seed=[9, 9]), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            y = tf.cond(tf.reduce_sum(x) > 0, lambda: tf.matmul(x, self.w), lambda: x - 1.0)
            _, y = tf.while_loop(
                lambda i, y: i < 3, lambda i, y: (i + 1, tf.tanh(tf.matmul(y, self.w))), [0, y]
            )
            return {"y": y}

    module = Looping()
    path = folder / "looping"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


def make_branching_module(folder: Path) -> Path:
    """A TF2 model whose function has a tf.cond (no loop) reading a variable."""
    import tensorflow as tf

    class Branching(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([3, 3], seed=[7, 7]), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            y = tf.cond(tf.reduce_sum(x) > 0, lambda: tf.matmul(x, self.w), lambda: x - 1.0)
            return {"y": tf.nn.softmax(y)}

    module = Branching()
    path = folder / "branching"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


def make_unknown_rank_module(folder: Path, *, text: bool = True) -> Path:
    """A TF2 model whose inputs have unknown rank (`TensorSpec(None)`): numbers and text;
    without `text`, numbers only, to one output (`y`), which a built-in loss can train."""
    import tensorflow as tf

    class AnyShape(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(2.0, name="scale")

        @tf.function(input_signature=[tf.TensorSpec(None), tf.TensorSpec(None, tf.string)])
        def predict(self, x: tf.Tensor, text: tf.Tensor) -> dict[str, tf.Tensor]:
            lengths = tf.cast(tf.strings.length(text), tf.float32)
            return {"y": x * self.scale, "lengths": lengths * self.scale}

        @tf.function(input_signature=[tf.TensorSpec(None)])
        def predict_numbers(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * self.scale}

    module = AnyShape()
    path = folder / ("any_shape" if text else "any_shape_numbers")
    signature = module.predict if text else module.predict_numbers
    tf.saved_model.save(module, str(path), signatures={"serving_default": signature})
    return path


def make_batch_norm_module(folder: Path) -> Path:
    """A TF2 model with a fused batch norm, an op whose statistics must stay float32."""
    import tensorflow as tf

    class Normalized(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gamma = tf.Variable([1.5, 0.5, 2.0], name="bn/gamma")
            self.beta = tf.Variable([0.1, 0.2, 0.3], name="bn/beta")
            self.mean = tf.Variable([0.5, -0.5, 0.0], name="bn/moving_mean")
            self.variance = tf.Variable([2.0, 0.5, 1.0], name="bn/moving_variance")

        @tf.function(input_signature=[tf.TensorSpec([None, 2, 2, 3], tf.float32)])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, self.mean, self.variance, is_training=False
            )
            return {"y": y}

    module = Normalized()
    path = folder / "normalized"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.predict})
    return path


def source_outputs(path: Path, signature: str, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in outputs.items()}


CUSTOM = """\
schema: 1
name: linear
version: 3
source:
  python: models/linear.py:model_fn
  {checkpoint}
variants:
  plain:    {{tags: [serve]}}
  cpu_xla:  {{tags: [serve, cpu, xla], xla: true, precision: bfloat16}}
  half:     {{tags: [serve, half], precision: float16}}
  momentum: {{tags: [train, momentum], optimizer: {{name: momentum, learning_rate: 0.1}}}}
"""


def save_checkpoint(prefix: Path, var_1: float, var_2: list[float] | float) -> None:
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        variables = [
            tf.compat.v1.get_variable("var_1", initializer=tf.constant(var_1)),
            tf.compat.v1.get_variable("var_2", initializer=tf.constant(var_2)),
        ]
        session.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver(variables).save(session, str(prefix))


# A python source whose computation calls a tf.function with a tensor-dependent `if`, which
# autograph converts, writing a module for it into the temporary folder. `convert` checks
# that it did, so that a process leaving no such file proves it removed the file.
CONVERTING_MODEL = """\
import pathlib
import tempfile

import tensorflow as tf
from smpack import ModelSpec


@tf.function
def flipped(x):
    if tf.reduce_sum(x) < 0:
        return -x
    return x


def convert(x):
    y = flipped(x)
    written = list(pathlib.Path(tempfile.gettempdir()).glob("__autograph_generated_file*"))
    assert written, "autograph wrote no file"
    return y


def model_fn(ctx):
    x = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="x")
    y = tf.identity(ctx.compute(convert, x), name="y")
    return ModelSpec(inputs={"x": x}, outputs={"y": y})
"""


def write_converting_source(folder: Path) -> Path:
    """CONVERTING_MODEL as `model.py` in `folder`, and the manifest of its serve variant."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_python_manifest(folder, CONVERTING_MODEL, {"cpu": {"tags": ["serve"]}})
