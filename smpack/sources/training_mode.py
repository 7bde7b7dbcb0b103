"""What a train variant of an imported source runs: the source's own training-mode function.

A Keras model is exported with a second endpoint calling it with `training=True` (dropout
on, batch normalisation on batch statistics and updating its moving averages), so the
train graph computes what `model.fit` computes. A TF2 SavedModel may name such a function
(`source.train_signature`); without one its inference function is trained. Either way a
variable the source marks non-trainable (BN statistics, frozen layers, seed state) is
never given to the optimizer: the flag is read from the SavedModel's object graph. The
source function's own assignments (moving averages, a dropout seed's state) are collected
in `UPDATE_OPS`, which the train op runs, as TF1's batch normalisation asks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import meta_graph_pb2, trackable_object_graph_pb2

from smpack.errors import ModelError

if TYPE_CHECKING:
    from smpack.sources.savedmodel import ImportedModel

# The endpoint smpack adds to a Keras model's export: its call with training=True.
KERAS_TRAINING_ENDPOINT = "smpack_training_call"
# The checkpoint tensor holding the TrackableObjectGraph of an object-based checkpoint.
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_STATE_UPDATES = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp")
_CUSTOM_GRADIENT = "_gradient_op_type"


def trainable_keys(meta_graph: meta_graph_pb2.MetaGraphDef, checkpoint: Path) -> set[str]:
    """Checkpoint keys of the variables the source marks trainable.

    A SavedModel's object graph (`SavedObjectGraph`) has each variable's `trainable` flag,
    and its checkpoint's `TrackableObjectGraph` has each one's checkpoint key; TF writes
    both from one object graph, so node ids agree.
    """
    reader = tf.train.load_checkpoint(str(checkpoint))
    if not reader.has_tensor(_OBJECT_GRAPH_KEY):
        # Not object-based: nothing says which are frozen, so every variable trains.
        return set(reader.get_variable_to_shape_map())
    stored = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor(_OBJECT_GRAPH_KEY)
    )
    saved = meta_graph.object_graph_def.nodes
    trainable: set[str] = set()
    for saved_node, stored_node in zip(saved, stored.nodes, strict=False):
        if saved_node.WhichOneof("kind") != "variable" or not saved_node.variable.trainable:
            continue
        trainable.update(a.checkpoint_key for a in stored_node.attributes)
    return trainable


def register_state_updates(operations: Iterable[tf.Operation]) -> None:
    """Put the imported function's variable assignments in `UPDATE_OPS` for the train op."""
    for operation in operations:
        if operation.type in _STATE_UPDATES:
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, operation)


def training_import(
    path: Path,
    serving: ImportedModel,
    signature: str,
    train_signature: str | None,
    where: dict[str, Any],
    *,
    keras: bool,
    imports: Sequence[str] = (),
) -> tuple[ImportedModel, str]:
    """The function train variants replay, and a sentence saying which one it is.

    Its variables take the names the serving function gives them (same checkpoint key, same
    variable), so every variant shares them.
    """
    from smpack.sources.savedmodel import load_saved_model

    if train_signature is None and not serving.has_lowered_loop:
        training = serving
    else:
        name = train_signature or signature
        training = load_saved_model(path, name, where, imports, keep_loops=True)
    _check_same_interface(serving, training, train_signature or signature, where)
    training = named_like(_without_custom_gradients(training), serving)
    frozen = sum(not v.trainable for v in training.variables)
    if keras:
        description = (
            "the Keras model's training-mode call (training=True): dropout on, batch "
            "normalisation on batch statistics with its moving averages updated"
        )
    elif train_signature is not None:
        description = f"the source's training-mode signature {train_signature!r}"
    else:
        description = f"the source's inference signature {signature!r}"
    return training, f"{description}; {frozen} non-trainable variables frozen"


def _check_same_interface(
    serving: ImportedModel, training: ImportedModel, name: str, where: dict[str, Any]
) -> None:
    def interface(imported: ImportedModel) -> tuple[Any, ...]:
        return (
            [(t.key, t.dtype) for t in imported.inputs],
            [(t.key, t.dtype) for t in imported.outputs],
        )

    if interface(serving) != interface(training):
        msg = (
            f"signature {name!r} must take and return what the serving signature does "
            f"(it has {interface(training)}, the serving one {interface(serving)})"
        )
        raise ModelError(msg, **where)


def _without_custom_gradients(imported: ImportedModel) -> ImportedModel:
    """`imported` differentiated through its own ops, not `tf.custom_gradient` overrides.

    A custom gradient (Keras's swish, for one) is a Python function registered, under the
    name in an `IdentityN`'s `_gradient_op_type`, by the process that traced the source: in
    another process the name is unknown, in the tracing one it closes over tensors of the
    trace's FuncGraph. Without the attr, `IdentityN` passes gradients to the ops that
    computed its inputs, which autodiff differentiates: the same derivative.
    """
    if not any(_CUSTOM_GRADIENT in node.attr for node in imported.graph_def.node):
        return imported
    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(imported.graph_def)
    for node in graph_def.node:
        if _CUSTOM_GRADIENT in node.attr:
            del node.attr[_CUSTOM_GRADIENT]
    return dataclasses.replace(imported, graph_def=graph_def, _retyped={})


def named_like(other: ImportedModel, serving: ImportedModel) -> ImportedModel:
    """`other` (another import of the source) with each variable named as `serving` names
    the same checkpoint key, so every variant shares one variable per key."""
    by_key = {v.checkpoint_key: v.name for v in serving.variables}
    renamed = {v.name: by_key.get(v.checkpoint_key, v.name) for v in other.variables}
    if len(set(renamed.values())) != len(renamed):
        msg = f"variable names of another import collide with the serving ones: {renamed}"
        raise AssertionError(msg)  # smpack's own bug: names come from distinct keys
    return dataclasses.replace(
        other,
        variables=[dataclasses.replace(v, name=renamed[v.name]) for v in other.variables],
        handles={h: renamed[name] for h, name in other.handles.items()},
    )
