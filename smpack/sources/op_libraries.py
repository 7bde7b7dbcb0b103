"""Custom op libraries: the Python modules that register a source's non-core ops.

A graph using an op TensorFlow itself does not define (a tensorflow_text tokenizer, say)
can only be read once the module registering it is imported; the manifest names those in
`source.imports`, and TF Serving needs a build linking the same ops. The same field names
the modules defining a Keras model's custom layers and models, which Keras needs imported
(their classes registered) before it can load the `.keras` file; those may sit beside the
manifest.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from smpack.errors import ManifestError, ModelError, first_line

IMPORTS_FIELD = "source.imports"


def import_op_libraries(
    modules: Sequence[str], file: Path, field: str = IMPORTS_FIELD, beside: Path | None = None
) -> None:
    """Import each of `modules`, installed or in the folder `beside` (the manifest's: a
    source's own modules, as a `python:` source imports its helpers); one that cannot be
    imported is an error naming it, as item of `field` in `file` (the manifest, or a
    package's smpack.json)."""
    import tensorflow as tf

    if beside is not None:
        sys.path.insert(0, str(beside))
    try:
        for index, module in enumerate(modules):
            try:
                importlib.import_module(module)
            # A library built for another TensorFlow fails to load its ops with NotFoundError.
            except (ImportError, tf.errors.NotFoundError) as e:
                msg = f"cannot import {module!r}: {type(e).__name__}: {first_line(e)}"
                raise ManifestError(msg, file=file, field=f"{field}[{index}]") from e
    finally:
        if beside is not None:
            sys.path.remove(str(beside))


def unregistered_ops(op_types: Iterable[str]) -> list[str]:
    """The op types of `op_types` this process's TensorFlow has no definition for."""
    from tensorflow.python.framework import op_def_registry

    return sorted({op for op in op_types if op_def_registry.get(op) is None})


def graph_ops_unregistered(meta_graph: Any) -> list[str]:
    """The op types `meta_graph` (its nodes and functions' nodes) uses that this process's
    TensorFlow has no definition for."""
    functions = {f.signature.name for f in meta_graph.graph_def.library.function}
    ops = [n.op for n in meta_graph.graph_def.node]
    ops += [n.op for f in meta_graph.graph_def.library.function for n in f.node_def]
    return unregistered_ops(op for op in ops if op not in functions)


def check_ops_registered(meta_graph: Any, modules: Sequence[str], where: dict[str, Any]) -> None:
    """Refuse a MetaGraph using an op no imported module registered, naming op and field."""
    missing = graph_ops_unregistered(meta_graph)
    if not missing:
        return
    imported = f" (imported: {', '.join(modules)})" if modules else ""
    msg = (
        f"op {missing[0]!r} is not registered in this TensorFlow{imported}; add the Python "
        "module defining it (e.g. tensorflow_text) to source.imports"
    )
    raise ModelError(msg, **{**where, "field": IMPORTS_FIELD})
