"""Running packages through TensorFlow's own loaders, the way serving systems do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf


def run_v1(
    export_dir: Path,
    tags: Sequence[str],
    feeds: Mapping[str, Any],
    signature: str = "serving_default",
) -> dict[str, np.ndarray]:
    """Load with the TF1 loader (the Python twin of TF Serving's) and run one signature."""
    graph = tf.Graph()
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), str(export_dir))
        signature_def = meta_graph.signature_def[signature]
        fetches = {k: v.name for k, v in signature_def.outputs.items()}
        feed_dict = {signature_def.inputs[k].name: v for k, v in feeds.items()}
        return session.run(fetches, feed_dict)


def run_v2(
    export_dir: Path,
    tags: Sequence[str],
    feeds: Mapping[str, Any],
    signature: str = "serving_default",
) -> dict[str, np.ndarray]:
    """Load with tf.saved_model.load(tags=...) and call one signature."""
    loaded = tf.saved_model.load(str(export_dir), tags=list(tags))
    outputs = loaded.signatures[signature](**{k: tf.constant(v) for k, v in feeds.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def meta_graph(export_dir: Path, tags: Sequence[str]) -> Any:
    from tensorflow.python.saved_model import loader_impl

    saved_model = loader_impl.parse_saved_model(str(export_dir))
    return next(m for m in saved_model.meta_graphs if set(m.meta_info_def.tags) == set(tags))
