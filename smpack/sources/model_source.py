"""Turning the manifest's `source:` into a model function, whichever kind of source it is.

A `python:` source is the user's function. A `savedmodel:` or `keras:` source becomes a
model function replaying the source's own graph (smpack/sources/savedmodel.py); its weights
come from the source's checkpoint, under the keys the source stored them with.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smpack.errors import ManifestError
from smpack.manifest import LoadedManifest, Variant

if TYPE_CHECKING:
    from smpack.sources.savedmodel import ImportedModel


@dataclass
class ModelSource:
    """The model function every variant is built from, and where its weights are."""

    model_fn: Callable[..., Any]
    # Package variable name -> key in `checkpoint`; empty for a python source, whose
    # optional checkpoint uses the package's own names.
    checkpoint_keys: dict[str, str] = field(default_factory=dict)
    checkpoint: Path | None = None
    # assets/ name -> file: the vocabularies an imported source's tables read.
    assets: dict[str, Path] = field(default_factory=dict)
    # The manifest field naming the weights, for errors about them.
    weights_field: str = "source.checkpoint"
    # What a train variant's graph runs, as inspect, the card and smpack.json say it.
    train_function: str = "the model function, called with ctx.training true"
    # An imported source's computation, as the serving variant given replays it.
    serving_import: Callable[[Variant], ImportedModel] | None = None
    # What an imported source's train variants replay, and a model function replaying
    # another computation in its place (builder/assembled_training.py's stand-in).
    training_import: ImportedModel | None = None
    replaying: Callable[[ImportedModel], Callable[..., Any]] | None = None


@contextmanager
def open_source(loaded: LoadedManifest) -> Iterator[ModelSource]:
    """The manifest's source as a `ModelSource`, valid inside the `with` block.

    A Keras model is exported to a temporary TF2 SavedModel, removed on leaving.
    """
    from smpack.sources.op_libraries import import_op_libraries
    from smpack.sources.python import load_model_function

    source = loaded.spec.source
    import_op_libraries(source.imports, loaded.path, beside=loaded.path.parent)
    if source.python is not None:
        yield ModelSource(load_model_function(loaded), checkpoint=loaded.checkpoint)
        return
    assert loaded.model_path is not None  # resolved for savedmodel and keras sources
    if source.savedmodel is not None:
        yield _imported(
            loaded, loaded.model_path, source.signature or "serving_default", source.train_signature
        )
        return
    from smpack.sources.keras import export_keras
    from smpack.sources.training_mode import KERAS_TRAINING_ENDPOINT

    with tempfile.TemporaryDirectory(prefix="smpack-keras-") as folder:
        exported = export_keras(loaded.model_path, Path(folder), loaded.path)
        yield _imported(loaded, exported, "serving_default", KERAS_TRAINING_ENDPOINT)


def _imported(
    loaded: LoadedManifest, path: Path, signature: str, train_signature: str | None
) -> ModelSource:
    from smpack.sources.savedmodel import (
        check_fixed_batch,
        load_saved_model,
        model_function,
        replayed_by,
        restore_map,
    )
    from smpack.sources.training_mode import named_like, training_import

    kind = "savedmodel" if loaded.spec.source.savedmodel is not None else "keras"
    where: dict[str, Any] = {"file": loaded.path, "field": f"source.{kind}"}
    serving = load_saved_model(path, signature, where, loaded.spec.source.imports)
    clash = sorted({a.name for a in loaded.assets} & serving.assets.keys())
    if clash:
        msg = f"{clash[0]!r} is also an asset of the source, whose tables read it; rename yours"
        raise ManifestError(msg, file=loaded.path, field="assets")
    compiled = None
    compiles = any(v.xla or v.on_tpu for v in loaded.spec.variants.values())
    if serving.has_lowered_control_flow and compiles:
        compiled = named_like(
            load_saved_model(path, signature, where, loaded.spec.source.imports, keep_loops=True),
            serving,
        )
    training, description = None, ""
    if any(v.is_training for v in loaded.spec.variants.values()):
        written = "source.train_signature" if kind == "savedmodel" and train_signature else None
        training, description = training_import(
            path,
            serving,
            signature,
            train_signature,
            {**where, "field": written or where["field"]},
            keras=kind == "keras",
            imports=loaded.spec.source.imports,
        )
    for name, variant in loaded.spec.variants.items():
        batch_where = {"file": loaded.path, "field": f"variants.{name}.batch_size"}
        replayed = training if variant.is_training and training is not None else serving
        check_fixed_batch(replayed, variant.batch_size, batch_where)
    loss = _loss(loaded)
    return ModelSource(
        model_function(serving, loss, loaded, training, compiled),
        checkpoint_keys={**restore_map(serving), **(restore_map(training) if training else {})},
        checkpoint=serving.checkpoint,
        assets=serving.assets,
        weights_field=where["field"],
        train_function=description,
        serving_import=lambda variant: replayed_by(variant, serving, compiled),
        training_import=training,
        replaying=lambda imported: model_function(serving, loss, loaded, imported, compiled),
    )


def _loss(loaded: LoadedManifest) -> Any:
    from smpack.manifest import LOSSES
    from smpack.sources.losses import OutputLoss, builtin_loss, model_loss, python_loss
    from smpack.sources.python import import_function

    def output_loss(name: str, field: str) -> OutputLoss:
        if name in LOSSES:
            return builtin_loss(name)
        # Resolved with the manifest, for each file.py:function loss.
        file = loaded.loss_files[name]
        return python_loss(import_function(file, name.rpartition(":")[2], loaded.path, field))

    loss = loaded.spec.source.loss
    where: dict[str, Any] = {"file": loaded.path, "field": "source.loss"}
    if loss is None:
        return None
    if isinstance(loss, str):
        return model_loss(output_loss(loss, "source.loss"), where)
    by_output = {key: output_loss(name, f"source.loss.{key}") for key, name in loss.items()}
    return model_loss(by_output, where)
