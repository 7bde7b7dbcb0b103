"""Sources from the real-model corpus that the tests and bench/real.py both build.

Each maker writes one source into `folder` (random weights, seeded) and returns the
manifest's `source:` block for it. The tests (tests/test_real_text.py,
tests/test_real_training.py, tests/test_real_keras.py) hold what smpack makes of them;
bench/real.py measures what that costs. TensorFlow, Keras and tensorflow_text are imported
inside each maker, so importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VOCABULARY = ["red", "green", "blue"]
WORDPIECES = ["[UNK]", "the", "cat", "sat", "##s", "on", "mat", "dog"]
SHARD_BYTES = 4000  # MaxShardSizePolicy's limit: the 10 KiB kernel is saved in slices


def keras_text_classifier(folder: Path) -> dict[str, Any]:
    """A Keras classifier on raw strings, with TextVectorization, saved as `.keras`."""
    import keras

    keras.utils.set_random_seed(0)
    vectorize = keras.layers.TextVectorization(
        max_tokens=20, output_mode="int", output_sequence_length=6
    )
    vectorize.adapt(["the cat sat on the mat", "a dog ate my homework", "the dog sat"])
    text = keras.Input(shape=(), dtype="string", name="text")
    hidden = keras.layers.Embedding(20, 4)(vectorize(text))
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    probabilities = keras.layers.Dense(3, activation="softmax", name="probs")(hidden)
    keras.Model(text, probabilities).save(folder / "classifier.keras")
    return {"keras": "classifier.keras", "loss": "sparse_categorical_crossentropy"}


def keras_lookup_over_vocabulary_file(folder: Path) -> dict[str, Any]:
    """A Keras StringLookup over a vocabulary file, exported as a TF2 SavedModel."""
    import keras

    keras.utils.set_random_seed(1)
    vocabulary = folder / "colors.txt"
    vocabulary.write_text("\n".join(VOCABULARY) + "\n")
    colors = keras.Input(shape=(2,), dtype="string", name="colors")
    ids = keras.layers.StringLookup(vocabulary=str(vocabulary))(colors)
    hidden = keras.layers.Flatten()(keras.layers.Embedding(5, 3)(ids))
    score = keras.layers.Dense(1, name="score")(hidden)
    keras.Model(colors, score).export(str(folder / "lookup"), verbose=False)
    vocabulary.unlink()  # the export holds its own copy, as an asset
    return {"savedmodel": "lookup", "loss": "mse"}


def keras_integer_lookup(folder: Path) -> dict[str, Any]:
    """A Keras IntegerLookup model on int64 ids, saved as `.keras`."""
    import keras

    keras.utils.set_random_seed(2)
    ids = keras.Input(shape=(3,), dtype="int64", name="ids")
    indices = keras.layers.IntegerLookup(vocabulary=[12, 36, 1138, 42])(ids)
    hidden = keras.layers.Flatten()(keras.layers.Embedding(6, 2)(indices))
    keras.Model(ids, keras.layers.Dense(1)(hidden)).save(folder / "ids.keras")
    return {"keras": "ids.keras", "loss": "mse"}


def module_with_table_over_asset(folder: Path) -> dict[str, Any]:
    """A tf.Module whose tf.lookup table reads a tf.saved_model.Asset."""
    import tensorflow as tf

    vocabulary = folder / "words.txt"
    vocabulary.write_text("\n".join(VOCABULARY) + "\n")

    class Words(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vocabulary = tf.saved_model.Asset(str(vocabulary))
            initializer = tf.lookup.TextFileInitializer(
                self.vocabulary,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            )
            self.table = tf.lookup.StaticHashTable(initializer, -1)
            self.embedding = tf.Variable(tf.random.stateless_normal([4, 2], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, words: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"logits": tf.gather(self.embedding, self.table.lookup(words) + 1)}

    module = Words()
    tf.saved_model.save(module, str(folder / "words"), signatures=module.__call__)
    vocabulary.unlink()
    return {"savedmodel": "words", "loss": "mse"}


def tensorflow_text_tokenizer(folder: Path) -> dict[str, Any]:
    """A tf.Module tokenizing with tensorflow_text's FastWordpieceTokenizer (a custom op)."""
    import tensorflow as tf
    import tensorflow_text

    class Tokenized(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokenizer = tensorflow_text.FastWordpieceTokenizer(
                WORDPIECES, token_out_type=tf.int64, no_pretokenization=False
            )
            self.embedding = tf.Variable(tf.random.stateless_normal([8, 3], seed=[3, 4]))
            self.kernel = tf.Variable(tf.random.stateless_normal([3, 2], seed=[5, 6]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            ids = self.tokenizer.tokenize(text).to_tensor(shape=[None, 6])
            pooled = tf.reduce_mean(tf.gather(self.embedding, ids), axis=1)
            return {"logits": tf.matmul(pooled, self.kernel)}

    module = Tokenized()
    tf.saved_model.save(module, str(folder / "tokenized"), signatures=module.__call__)
    return {"savedmodel": "tokenized", "loss": "mse", "imports": ["tensorflow_text"]}


def sliced_checkpoint_module(folder: Path, outputs: int = 40) -> dict[str, Any]:
    """A tf.Module with a non-trainable centre and a training-mode signature, saved with
    MaxShardSizePolicy shards (so TF writes its kernel in slices) as `folder/centred`."""
    import tensorflow as tf

    class Centred(tf.Module):
        def __init__(self) -> None:
            random = np.random.default_rng(1)
            kernel = random.normal(size=(64, outputs)).astype(np.float32) / 8
            self.kernel = tf.Variable(kernel, name="kernel")
            self.bias = tf.Variable(np.zeros(outputs, np.float32), name="bias")
            centre = random.normal(size=64).astype(np.float32)
            self.centre = tf.Variable(centre, trainable=False, name="centre")
            # Sliced too, but fills the shard holding bias and centre, so that one is linked.
            self.scale = tf.Variable(np.ones(960, np.float32), name="scale")

        def _scores(self, x: tf.Tensor, centre: tf.Tensor) -> tf.Tensor:
            logits = tf.matmul(x - centre, self.kernel) * tf.reduce_mean(self.scale)
            return tf.nn.softmax(logits + self.bias)

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": self._scores(x, self.centre)}

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="x")])
        def train_call(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            # Training mode: centre on the batch, and move the running centre towards it.
            batch_centre = tf.reduce_mean(x, axis=0)
            self.centre.assign(0.5 * self.centre + 0.5 * batch_centre)
            return {"y": self._scores(x, batch_centre)}

    module = Centred()
    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=SHARD_BYTES)
    tf.saved_model.save(
        module,
        str(folder / "centred"),
        signatures={"serving_default": module.predict, "train_call": module.train_call},
        options=tf.saved_model.SaveOptions(experimental_sharding_callback=policy),
    )
    return {"savedmodel": "centred", "loss": "mse"}


def keras_tabular(folder: Path) -> dict[str, Any]:
    """A Keras model on dict inputs of mixed dtypes (float32, int64, string) through
    Normalization (adapted), IntegerLookup, Hashing, Discretization and CategoryEncoding,
    saved as `.keras`."""
    import keras

    keras.utils.set_random_seed(0)  # the same weights in every run
    age = keras.Input(shape=(1,), dtype="float32", name="age")
    code = keras.Input(shape=(1,), dtype="int64", name="code")
    city = keras.Input(shape=(1,), dtype="string", name="city")
    income = keras.Input(shape=(1,), dtype="float32", name="income")
    normalize = keras.layers.Normalization()
    normalize.adapt(np.array([[20.0], [30.0], [50.0], [70.0]], np.float32))
    codes = keras.layers.IntegerLookup(vocabulary=[3, 7, 11], output_mode="one_hot")(code)
    cities = keras.layers.CategoryEncoding(8, output_mode="one_hot")(
        keras.layers.Hashing(num_bins=8)(city)
    )
    brackets = keras.layers.CategoryEncoding(4, output_mode="one_hot")(
        keras.layers.Discretization(bin_boundaries=[1000.0, 5000.0, 20000.0])(income)
    )
    features = keras.layers.Concatenate()([normalize(age), codes, cities, brackets])
    hidden = keras.layers.Dense(8, activation="relu")(features)
    score = keras.layers.Dense(1, name="score")(hidden)
    inputs = {"age": age, "code": code, "city": city, "income": income}
    keras.Model(inputs, score).save(folder / "tabular.keras")
    return {"keras": "tabular.keras", "loss": "mse"}


# A user's own Keras classes, in a module beside the manifest (see keras_custom_classes).
CUSTOM_LAYERS = """\
import keras
from keras import ops


@keras.saving.register_keras_serializable(package="corpus")
class Gated(keras.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, shape):
        self.kernel = self.add_weight(shape=(shape[-1], 2 * self.units))
        self.scale = self.add_weight(shape=(), initializer="ones", trainable=False)

    def call(self, x):
        value, gate = ops.split(ops.matmul(x, self.kernel), 2, axis=-1)
        return value * ops.sigmoid(gate) * self.scale

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="corpus")
class GatedNet(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.gated = Gated(8)
        self.head = keras.layers.Dense(2)

    def call(self, x, training=False):
        return self.head(self.gated(x))
"""


def keras_custom_classes(folder: Path, module: str = "custom_layers") -> dict[str, Any]:
    """A subclassed Keras model with a custom layer, both registered by the module `module`
    written beside it (and named in source.imports), saved as `.keras`."""
    import importlib
    import sys

    import keras

    (folder / f"{module}.py").write_text(CUSTOM_LAYERS)
    sys.path.insert(0, str(folder))
    try:
        layers = importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))
    keras.utils.set_random_seed(6)
    model = layers.GatedNet()
    model(np.zeros((1, 5), np.float32))
    model.save(folder / "gated.keras")
    return {"keras": "gated.keras", "loss": "mse", "imports": [module]}
