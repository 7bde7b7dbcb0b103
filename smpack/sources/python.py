"""Importing the user's model function from the file the manifest names.

This runs the user's code: a manifest is as trusted as the Python file it points to.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from smpack.errors import ModelError
from smpack.manifest import LoadedManifest


def load_model_function(loaded: LoadedManifest) -> Callable[..., Any]:
    """Import `source.python` and return the named function."""
    assert loaded.python_file is not None  # only called for python sources
    return import_function(loaded.python_file, loaded.function_name, loaded.path, "source.python")


def import_function(path: Path, name: str, manifest: Path, field: str) -> Callable[..., Any]:
    """Import the Python file `path` and return its function `name`."""
    module_name = f"smpack_user_model_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        msg = f"cannot import {path}"
        raise ModelError(msg, file=manifest, field=field)
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs, as `import` does: `@dataclass` under `from __future__ import
    # annotations` looks its module up in sys.modules.
    sys.modules[module_name] = module
    # The model file may import its own helpers from beside itself.
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code may raise anything; it is the user's to fix
        del sys.modules[module_name]
        msg = f"importing {path.name} raised {type(e).__name__}: {e}"
        raise ModelError(
            msg,
            file=manifest,
            field=field,
        ) from e
    finally:
        sys.path.remove(str(path.parent))
    function = getattr(module, name, None)
    if not callable(function):
        msg = f"{path.name} has no function {name!r}"
        raise ModelError(
            msg,
            file=manifest,
            field=field,
        )
    return function


@contextlib.contextmanager
def keras_names_from_zero() -> Iterator[None]:
    """Keras's layer-name counters start from zero while one variant is built, and are put
    back after: each variant's Keras layers get the same names (`dense`, not `dense_1` in
    the second variant), so all variants share one checkpoint and builds are reproducible."""
    if "keras" not in sys.modules:  # no model code has imported it: no layer to name
        yield
        return
    # Private, but it is what keras.backend.clear_session resets (which also drops the
    # rest of Keras's global state, the caller's models included).
    from keras.src.backend.common import global_state

    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)
