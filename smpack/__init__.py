"""smpack: one manifest in, one SavedModel out, with every variant sharing one checkpoint.

The library API is `build`; model authors use `ModelContext` and `ModelSpec`. TensorFlow is
imported only when a build needs it.
"""

from smpack.errors import SmpackError
from smpack.manifest import load_manifest
from smpack.model import ModelContext, ModelSpec
from smpack.packager import build

__version__ = "0.1.0"

__all__ = ["ModelContext", "ModelSpec", "SmpackError", "__version__", "build", "load_manifest"]
