"""A Keras 3 `.keras` file as a TF2 SavedModel, the form smpack imports.

Keras 3 layers cannot be called inside a TF1 graph, but `model.export` writes the model's
inference function as a TF2 SavedModel with a `serving_default` signature whose inputs are
the model's input specs; smpack then imports that like any other SavedModel. The export also
holds the model's training-mode call, which train variants replay.
"""

from __future__ import annotations

import collections
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from smpack.errors import ModelError, first_line


def export_keras(path: Path, folder: Path, manifest: Path) -> Path:
    """Export the Keras model at `path` to a SavedModel under `folder` and return its path."""
    where: dict[str, Any] = {"file": manifest, "field": "source.keras"}
    with _names_from_the_file_alone():
        try:
            model = _load(path)
        except Exception as e:
            msg = f"cannot load {path.name} with Keras: {type(e).__name__}: {first_line(e)}"
            if "Could not locate" in str(e):  # a custom class nothing imported has registered
                msg += "; list the module defining it in source.imports"
            unset = _UNSET_VOCABULARY.search(str(e))
            if unset:
                # Keras rebuilds a functional model by calling its layers on symbolic inputs
                # before it loads their assets, so a keras_hub tokenizer inside one has no
                # vocabulary yet (keras-team/keras-hub#1522); the model's export has it.
                msg = (
                    f"cannot load {path.name} with Keras: it calls the {unset[1]} in it "
                    "before loading its vocabulary (Keras cannot reload a functional model "
                    "calling a keras_hub tokenizer); save the model with "
                    "model.export(folder) and name that folder in source.savedmodel"
                )
            raise ModelError(msg, **where) from e
        _prepare(model)
        exported = folder / "savedmodel"
        try:
            _export_with_training_call(model, exported)
        except Exception as e:
            msg = f"cannot export {path.name} as a SavedModel: {type(e).__name__}: {first_line(e)}"
            raise ModelError(msg, **where) from e
    return exported


def load_keras_model(path: Path) -> Any:
    """The Keras model at `path` as every build of it sees it, whatever the process did before.

    What a plain `keras.saving.load_model` takes from the process rather than the file is
    fixed: names Keras makes up (a Dropout's seed generator, `seed_generator_17`, whose
    state variable is in the checkpoint) are counted from zero, and generators without a
    seed get one from the file (`seed_unseeded_generators`). To train in Keras what the
    package trains (same variable names, same dropout masks), load the file with this.
    """
    with _names_from_the_file_alone():
        model = _load(path)
        _prepare(model)
    return model


# What a keras_hub tokenizer (WordPiece, BytePair, SentencePiece) says when it is called
# before its vocabulary is set.
_UNSET_VOCABULARY = re.compile(r"No vocabulary has been set for (\w+)")


def _load(path: Path) -> Any:
    import keras

    # safe_mode (the default) refuses lambda layers and other arbitrary code in the file.
    return keras.saving.load_model(path)


def _prepare(model: Any) -> None:
    """What a build does to a loaded model before exporting it."""
    call_once_if_never_called(model)
    seed_unseeded_generators(model)


@contextmanager
def _names_from_the_file_alone() -> Iterator[None]:
    """Keras's name counter, fresh inside, the caller's own again after.

    Keras names an object created without a name from one counter per prefix for the whole
    process, so the names in a loaded model depend on what was named before it (another
    model loaded, a test that ran first). No public API sets that counter aside: the one
    `keras.backend.clear_session` resets is swapped for a new one and put back.
    """
    from keras.src.backend.common import global_state

    counter = "object_name_uids"
    callers = global_state.get_global_attribute(counter)
    global_state.set_global_attribute(counter, collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute(counter, callers)


def call_once_if_never_called(model: Any) -> None:
    """Call a subclassed model Keras loaded (built from its saved input shape, never called)
    once on symbolic inputs of that shape, as export requires: what a user does by hand
    before `model.export`, and it computes nothing."""
    import keras
    from keras.src.export.export_utils import _infer_input_signature_from_model
    from keras.src.models import Functional

    # Functional and Sequential models export from their Input layers, called or not.
    if model._called or isinstance(model, (Functional, keras.Sequential)):
        return
    specs = _infer_input_signature_from_model(model)
    if specs:
        model(*[keras.KerasTensor(spec.shape, spec.dtype) for spec in specs])


def seed_unseeded_generators(model: Any) -> None:
    """Give each random layer built without a `seed` (a Dropout's `seed=None`) a fixed one.

    Keras draws such a layer's seed from Python's `random` each time the model is loaded
    (the seed is neither in the config nor in the weights), so two loads of one file drop
    different units and a train variant could not be rebuilt or compared with `fit`. The
    seed is the CRC-32 of the layer's name and the generator's position in the layer:
    the same file always gives the same train graph. To train the same in Keras, call this
    on the loaded model first.
    """
    import numpy as np

    for layer in model._flatten_layers():
        for position, generator in enumerate(layer._seed_generators):
            if generator._initial_seed is None:
                seed = zlib.crc32(f"{layer.name}/{position}".encode()) & 0x7FFFFFFF
                generator.state.assign(np.array([seed, 0], generator.state.dtype))


def _export_with_training_call(model: Any, exported: Path) -> None:
    """What `model.export` writes, plus the model's training-mode call as a second endpoint.

    Both endpoints capture the same variables, so the package's train variant trains the
    weights its serving variants read.
    """
    import keras
    import tensorflow as tf

    # What `model.export` itself uses (not public API): the model's input signature, and
    # the variables a traced function reads, trainable ones first.
    from keras.src.export.export_utils import get_input_signature
    from keras.src.export.saved_model_export_archive import _list_variables_used_by_fns
    from tensorflow.saved_model.experimental import TrackableResource

    from smpack.sources.training_mode import KERAS_TRAINING_ENDPOINT

    signature = get_input_signature(model)

    def training_call(*args: Any) -> Any:
        return model(*args, training=True)

    archive = keras.export.ExportArchive()
    archive.track_and_add_endpoint("serve", model, signature)
    archive.add_endpoint(KERAS_TRAINING_ENDPOINT, training_call, signature)
    # What `archive.write_out` saves, for two traces of the model instead of five: its
    # endpoints' traces are saved as signatures without the `tf.function`s, which
    # `tf.saved_model.save` would trace again (its save context is another tracing
    # context), and the lookup tables to save with them are found in the model's
    # checkpoint view, not its SavedModel view, which traces its default signature too.
    # smpack reads only the signatures.
    root = archive._tf_trackable
    endpoints = {}
    for name in ("serve", KERAS_TRAINING_ENDPOINT):
        endpoints[name] = getattr(root, name).get_concrete_function()
        delattr(root, name)
    trainable, frozen = _list_variables_used_by_fns(list(endpoints.values()))
    root._all_variables = trainable + frozen
    root._misc_assets = [
        resource
        for resource in tf.train.TrackableView(model).descendants()
        if isinstance(resource, TrackableResource)
    ]
    signatures = {**endpoints, "serving_default": endpoints["serve"]}
    tf.saved_model.save(root, str(exported), signatures=signatures)
