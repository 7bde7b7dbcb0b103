"""smpack: one manifest in, one SavedModel out, with every variant sharing one checkpoint.

The library API is `build`, `build_many`, `inspect`, `verify`, `prepare_verify`,
`extract`, `diff`, `render_card`, `measure`, `serving_config`, `load_manifest`,
`manifest_schema` and `init` (smpack/api.py); model authors use `ModelContext` and
`ModelSpec`. TensorFlow is imported only when a call needs it.
"""

from smpack.api import (
    build,
    build_many,
    diff,
    extract,
    init,
    inspect,
    load_manifest,
    manifest_schema,
    measure,
    prepare_verify,
    render_card,
    serving_config,
    verify,
)
from smpack.errors import SmpackError
from smpack.model import ModelContext, ModelSpec

# The one place the version is written; pyproject.toml reads it from here.
__version__ = "0.2.0"

__all__ = [
    "ModelContext",
    "ModelSpec",
    "SmpackError",
    "__version__",
    "build",
    "build_many",
    "diff",
    "extract",
    "init",
    "inspect",
    "load_manifest",
    "manifest_schema",
    "measure",
    "prepare_verify",
    "render_card",
    "serving_config",
    "verify",
]
