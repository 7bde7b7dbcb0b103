"""smpack: one manifest in, one SavedModel out, with every variant sharing one checkpoint.

The library API is `build`; model authors use `ModelContext` and `ModelSpec`. TensorFlow is
imported only when a build needs it.
"""

from typing import TYPE_CHECKING, Any

from smpack.errors import SmpackError
from smpack.model import ModelContext, ModelSpec

if TYPE_CHECKING:
    from smpack.builder.packager import build
    from smpack.manifest import load_manifest

__version__ = "0.1.0"

__all__ = ["ModelContext", "ModelSpec", "SmpackError", "__version__", "build", "load_manifest"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `smpack inspect` must not pay for pydantic and the manifest schema.
    if name == "build":
        from smpack.builder.packager import build

        return build
    if name == "load_manifest":
        from smpack.manifest import load_manifest

        return load_manifest
    msg = f"module 'smpack' has no attribute {name!r}"
    raise AttributeError(msg)
