"""A Keras 3 `.keras` file as a TF2 SavedModel, the form smpack imports.

Keras 3 layers cannot be called inside a TF1 graph, but `model.export` writes the model's
inference function as a TF2 SavedModel with a `serving_default` signature whose inputs are
the model's input specs; smpack then imports that like any other SavedModel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smpack.errors import ModelError, first_line


def export_keras(path: Path, folder: Path, manifest: Path) -> Path:
    """Export the Keras model at `path` to a SavedModel under `folder` and return its path."""
    import keras

    where: dict[str, Any] = {"file": manifest, "field": "source.keras"}
    try:
        # safe_mode (the default) refuses lambda layers and other arbitrary code in the file.
        model = keras.saving.load_model(path)
    except Exception as e:
        msg = f"cannot load {path.name} with Keras: {type(e).__name__}: {first_line(e)}"
        raise ModelError(msg, **where) from e
    exported = folder / "savedmodel"
    try:
        model.export(str(exported), format="tf_saved_model", verbose=False)
    except Exception as e:
        msg = f"cannot export {path.name} as a SavedModel: {type(e).__name__}: {first_line(e)}"
        raise ModelError(msg, **where) from e
    return exported
