"""Importing the user's model function from the file the manifest names.

This runs the user's code: a manifest is as trusted as the Python file it points to.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from smpack.errors import ModelError
from smpack.manifest import LoadedManifest

# What Python's and NumPy's random generators are seeded with while a model's code runs.
RANDOM_SEED = 0


def load_model_function(loaded: LoadedManifest) -> Callable[..., Any]:
    """`source.python`'s function, its file imported afresh at each call, with the modules
    it imports from its own folder.

    Each variant calls it in its own graph, so what the file makes at module level (a Keras
    layer, a `tf.Module`, a `tf.Variable`, a constant) is made in that variant's graph, as
    what the function makes is, and named alike in every variant: one set of weights,
    one checkpoint. Imported once and reused, it would hold the first variant's variables,
    which no other graph can read.
    """
    python_file = loaded.python_file
    assert python_file is not None  # only called for python sources
    folder = python_file.parent.resolve()
    helpers: set[str] = set()  # modules from `folder` the model's code imported

    def model_fn(ctx: Any) -> Any:
        for name in helpers:
            sys.modules.pop(name, None)
        before = set(sys.modules)
        try:
            function = import_function(
                python_file, loaded.function_name, loaded.path, "source.python"
            )
            return function(ctx)
        finally:
            helpers.update(
                name for name in set(sys.modules) - before if _is_in(sys.modules.get(name), folder)
            )

    return model_fn


def _is_in(module: Any, folder: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve().is_relative_to(folder)


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


def keras_named_variables(next_creator: Callable[..., Any], **kwargs: Any) -> Any:
    """A variable creator naming the variables a Keras layer makes by their Keras path
    (`dense_1/kernel`), as Keras names them everywhere (its own `variable.path`, a `.keras`
    file, an eager model), instead of by the graph's name scope.

    In a TF1 graph every name scope a layer opens is made unique: the first `Dense`
    opens `dense` twice (building, then calling), taking `dense_1`, so the second `Dense`,
    which Keras names `dense_1`, would make `dense_1_1/kernel`.
    """
    name = kwargs.get("name")
    # Keras refuses a `/` in a variable's name: one holding it is named already.
    if not isinstance(name, str) or "/" in name or "keras" not in sys.modules:
        return next_creator(**kwargs)
    from keras.src.backend.common.name_scope import current_path

    path = current_path()
    if not path:  # not made inside a Keras layer
        return next_creator(**kwargs)
    import tensorflow as tf

    with tf.compat.v1.get_default_graph().name_scope(None):
        return next_creator(**{**kwargs, "name": f"{path}/{name}"})


@contextlib.contextmanager
def same_start_per_variant() -> Iterator[None]:
    """The process-wide state a model's code draws on starts alike for every variant and
    every build, and is put back after, whatever the process did before.

    - Keras's layer-name counters start from zero: each variant's layers get the same names
      (`dense`, not `dense_1` in the second variant), so all variants share one checkpoint.
    - Python's `random` and NumPy's global generator are seeded with `RANDOM_SEED`, as
      `keras.utils.set_random_seed` seeds them (the graph's own seed is set with the
      graph): an initializer built without `seed=` draws its seed from Python's `random`,
      so two builds of one file hold the same initial weights, and so do all variants.
      Code that seeds them itself runs after, and its seeds win.
    - Keras's global seed generator (the one `keras.random` functions called without a
      seed use) is made anew, in the variant's graph.
    """
    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(RANDOM_SEED)
    np.random.seed(RANDOM_SEED)
    try:
        with _keras_globals_afresh():
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@contextlib.contextmanager
def _keras_globals_afresh() -> Iterator[None]:
    if "keras" not in sys.modules:  # nothing has been named or seeded by Keras yet
        yield
        return
    # Private, but it is what keras.backend.clear_session resets (which also drops the
    # rest of Keras's global state, the caller's models included).
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

    fresh: dict[str, Any] = {
        "object_name_uids": collections.defaultdict(int),
        GLOBAL_SEED_GENERATOR: None,
    }
    saved = {name: global_state.get_global_attribute(name) for name in fresh}
    for name, value in fresh.items():
        global_state.set_global_attribute(name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            global_state.set_global_attribute(name, value)
