"""The train op smpack builds from the manifest's optimizer (the model only gives a loss)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf
from tensorflow.python.ops.resource_variable_ops import is_resource_variable

from smpack.manifest import Optimizer

# TF's own method name for training signatures (tf.saved_model's SUPERVISED_TRAIN).
TRAIN_METHOD = "tensorflow/supervised/training"
# tensorflow/python/saved_model/constants.py TRAIN_OP_KEY (not exported as public API).
SAVED_MODEL_TRAIN_OP_KEY = "saved_model_train_op"
_KERAS_ADAM_EPSILON = 1e-7


def build_train_op(
    loss: tf.Tensor,
    optimizer: Optimizer,
    loss_scaling: bool = False,
    gradients: Callable[[tf.Tensor], list[tuple[Any, Any]]] | None = None,
) -> tf.Operation:
    """Global step, optimizer slots and the train op, registered where TF tooling looks.

    `loss_scaling` (float16 compute) scales the loss dynamically, as Keras's
    LossScaleOptimizer does, so small float16 gradients do not flush to zero.
    `gradients`, if given, makes the (gradient, variable) pairs `compute_gradients` would.
    """
    global_step = tf.compat.v1.train.get_or_create_global_step()
    v1 = tf.compat.v1.train
    if optimizer.name == "sgd":
        opt = v1.GradientDescentOptimizer(optimizer.learning_rate)
    elif optimizer.name == "momentum":
        opt = v1.MomentumOptimizer(optimizer.learning_rate, optimizer.momentum)
    else:
        # Keras's epsilon (TF1's default is 1e-8): the step `fit` takes with Adam's defaults.
        opt = v1.AdamOptimizer(optimizer.learning_rate, epsilon=_KERAS_ADAM_EPSILON)
    if loss_scaling:
        # TF's own TF1 twin of Keras's LossScaleOptimizer, with the same dynamic scale:
        # 2**15 at first, halved (and the step skipped, the global step kept) when a
        # gradient is not finite, doubled after 2,000 finite steps.
        with tf.compat.v1.name_scope("loss_scale"):  # its two variables' names
            opt = tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(opt, "dynamic")
    # What the model asks to run with each step (batch normalisation's moving averages, a
    # dropout seed's state), as TF1's layers and Keras's fit do. They gate the step through
    # one group, not every op of `minimize`: inside `control_dependencies(updates)` each op
    # made without an input from the block (the gradients' constants and shapes, thousands
    # in a CNN) got an edge to every update, 1.2 million edges and 128 of the 135 MB of a
    # DenseNet121's train graph. `minimize` is these two calls and this check.
    graph = tf.compat.v1.get_default_graph()
    first_gradient_op = len(graph.get_operations())
    by_reference = any(not is_resource_variable(v) for v in tf.compat.v1.trainable_variables())
    if gradients is not None:
        grads_and_vars = gradients(loss)
    elif by_reference:
        grads_and_vars = opt.compute_gradients(loss)
    else:
        grads_and_vars = opt.compute_gradients(loss, gate_gradients=opt.GATE_NONE)
        _wait_for_readers(grads_and_vars, set(graph.get_operations()[first_gradient_op:]))
    if all(grad is None for grad, _ in grads_and_vars):
        msg = f"No gradients provided for any variable, between variables {grads_and_vars}"
        raise ValueError(msg)
    updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    gate = [tf.group(*updates, name="model_updates")] if updates else []
    with tf.control_dependencies(gate):
        train_op = opt.apply_gradients(grads_and_vars, global_step=global_step, name="train_op")
    # A loss-scaled step applies the gradients inside a cond, whose branch registers its
    # own op here: an op of the branch's function, which no loader could find.
    registered = tf.compat.v1.get_collection_ref(tf.compat.v1.GraphKeys.TRAIN_OP)
    registered[:] = [op for op in registered if op.graph is train_op.graph]
    tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.TRAIN_OP, train_op)
    # loader_impl.get_train_op reads this collection. The alternative, a
    # __saved_model_train_op signature, has no inputs, so tf.saved_model.load (which
    # prunes every signature) would reject the train graph for its unfed placeholders.
    tf.compat.v1.add_to_collection(SAVED_MODEL_TRAIN_OP_KEY, train_op)
    return train_op


def _wait_for_readers(grads_and_vars: list[tuple[Any, Any]], gradient_ops: set[Any]) -> None:
    """Make each resource variable's update wait for the gradient ops reading its value.

    TF1's default gating, GATE_OP, makes the gradients of each op wait for one another (a
    tuple of `Identity` ops with control inputs, three ops per op differentiated: 2.4 of
    the 6.7 s the gradients of 1,000 layers took to build) so that no update runs while
    another gradient of that op may still read the variable. A ref variable is read in
    place, so ref variables keep it. A resource variable's read is a tensor no update
    changes (an update copies a buffer a read still holds; a sparse one makes the variable
    copy on read: TF's `PrepareToUpdateVariable`, `EnsureSparseVariableAccess`), so the
    values are the same ungated. The order still matters for memory: an update racing
    ahead of a read copies the variable, and waiting for every gradient (GATE_GRAPH) holds
    them all at once, each about the weights' size more in a step. So each update waits
    for exactly the gradient ops reading its variable (`dy @ W^T` for `W`), as under
    GATE_OP, through control edges on the op computing its gradient, or through one
    `Identity` where that op feeds other gradients (an edge could then close a cycle).
    """
    for index, (grad, variable) in enumerate(grads_and_vars):
        if not isinstance(grad, tf.Tensor):  # None, or IndexedSlices of a gather
            continue
        reads = _through_identities(variable.handle)
        readers = {
            reader
            for read in reads
            if read.type == "ReadVariableOp"
            for reader in _through_identities(read.outputs[0])
            if reader in gradient_ops and reader is not grad.op
        }
        if not readers:
            continue
        ordered = sorted(readers, key=lambda op: op.name)
        computing = grad.op
        if any(output.consumers() for output in computing.outputs) or computing._control_outputs:
            with tf.control_dependencies(ordered):
                grads_and_vars[index] = (tf.identity(grad), variable)
        else:
            computing._add_control_inputs(ordered)


def _through_identities(tensor: tf.Tensor) -> list[Any]:
    """The ops consuming `tensor`, directly or through `Identity` ops (an imported
    function's inputs), which pass the same handle or buffer on."""
    consumers, pending = [], [tensor]
    while pending:
        for op in pending.pop().consumers():
            if op.type == "Identity":
                pending.append(op.outputs[0])
            else:
                consumers.append(op)
    return consumers


def loss_after_step(loss: tf.Tensor, train_op: tf.Operation) -> tf.Tensor:
    """The loss as a tensor whose evaluation also runs one training step.

    A signature can only fetch tensors, so the step rides on a control dependency; the
    value is the loss the step's gradients were computed from.
    """
    with tf.control_dependencies([train_op]):
        return tf.identity(loss, name="train_loss")
