"""The train op: one step applies the gradients and runs the model's own updates.

The updates (batch normalisation's moving averages, in `UPDATE_OPS`) gate the step through
one group op. Made inside `control_dependencies(updates)`, every gradient op without an
input from that block got an edge to every update: a DenseNet121's train graph was 135 MB,
128 MB of it those edges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from smpack.builder.training import build_train_op
from smpack.manifest.schema import Optimizer

UPDATES = 30


@pytest.mark.parametrize("loss_scaling", [False, True])
def test_one_step_runs_every_update_and_holds_each_as_one_control_edge(
    loss_scaling: bool,
) -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.constant([[1.0, 2.0]])
        kernel = tf.compat.v1.get_variable("kernel", initializer=[[0.5], [-0.5]])
        means = [
            tf.compat.v1.get_variable(f"mean_{i}", initializer=0.0, trainable=False)
            for i in range(UPDATES)
        ]
        hidden = tf.matmul(x, kernel)
        updates = set()
        for mean in means:
            update = mean.assign(0.5 * mean + 0.5 * tf.reduce_mean(hidden))
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, update)
            updates.add(f"^{update.op.name}")
        loss = tf.reduce_sum(tf.square(tf.tanh(hidden) - 1.0))
        first_new = len(graph.get_operations())
        train_op = build_train_op(
            loss, Optimizer(name="sgd", learning_rate=0.1), loss_scaling=loss_scaling
        )
        made = graph.get_operations()[first_new:]
        edges = sum(i in updates for op in made for i in op.node_def.input)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            before = session.run(kernel)
            session.run(train_op)
            after, moved = session.run([kernel, means])
    # One edge per update (into the gate), not one per update and gradient op.
    assert edges == UPDATES
    assert not np.array_equal(before, after)
    np.testing.assert_allclose(moved, np.full(UPDATES, -0.25), rtol=1e-6)


def trained(
    model: Callable[[], tuple[tf.Tensor, list[Any]]],
    make_train_op: Any,
    use_resource: bool = True,
    steps: int = 3,
) -> tuple[list[Any], list[Any]]:
    """`model()`'s loss trained `steps` SGD steps by `make_train_op(loss)`: the ops that call
    made, and every variable's value after the steps."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.variable_scope("", use_resource=use_resource):
        loss, variables = model()
        first_new = len(graph.get_operations())
        train_op = make_train_op(loss)
        made = graph.get_operations()[first_new:]
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            for _ in range(steps):
                session.run(train_op)
            values = session.run(variables)
    return made, values


def smpack_sgd(loss: tf.Tensor) -> tf.Operation:
    return build_train_op(loss, Optimizer(name="sgd", learning_rate=0.5))


def tf1_sgd(loss: tf.Tensor) -> tf.Operation:
    return tf.compat.v1.train.GradientDescentOptimizer(0.5).minimize(loss)  # GATE_OP


def three_tanh_layers() -> tuple[tf.Tensor, list[Any]]:
    hidden = tf.constant(np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(4, 3))
    kernels = []
    for i in range(3):
        start = np.linspace(-0.5, 0.5, 9, dtype=np.float32).reshape(3, 3) * (i + 1)
        kernels.append(tf.compat.v1.get_variable(f"kernel_{i}", initializer=start))
        hidden = tf.tanh(tf.matmul(hidden, kernels[-1]))
    return tf.reduce_mean(tf.square(hidden - 0.25)), kernels


def gating_identities(made: list[Any]) -> list[Any]:
    """GATE_OP's tuples: an `Identity` per gradient, with control inputs on its siblings."""
    return [op for op in made if op.type == "Identity" and op.control_inputs]


def runs_after(op: Any) -> set[Any]:
    """Every op `op` waits for, through data and control inputs."""
    seen: set[Any] = set()
    pending = [op]
    while pending:
        waiting = pending.pop()
        for parent in [t.op for t in waiting.inputs] + list(waiting.control_inputs):
            if parent not in seen:
                seen.add(parent)
                pending.append(parent)
    return seen


def update_and_gradient_readers(made: list[Any], kernel: Any) -> tuple[Any, list[Any]]:
    """`kernel`'s update, and the gradient ops reading its value (`dy @ kernel^T`)."""
    (update,) = [
        op
        for op in made
        if op.type.startswith("ResourceApply") and kernel.handle in list(op.inputs)
    ]
    reads = [op for op in kernel.handle.consumers() if op.type == "ReadVariableOp"]
    readers = [op for read in reads for op in read.outputs[0].consumers() if op in made]
    return update, readers


@pytest.mark.parametrize("use_resource", [True, False])
def test_steps_are_tf1s_and_only_ref_variables_get_the_gating_ops(use_resource: bool) -> None:
    """A resource variable's read is a tensor no update changes: GATE_OP's three ops per
    differentiated op are left out. A ref variable, read in place, keeps them."""
    ours, our_values = trained(three_tanh_layers, smpack_sgd, use_resource)
    theirs, their_values = trained(three_tanh_layers, tf1_sgd, use_resource)
    for mine, tf1 in zip(our_values, their_values, strict=True):
        np.testing.assert_array_equal(mine, tf1)
    assert gating_identities(theirs)
    if use_resource:
        assert not gating_identities(ours)
    else:
        assert len(gating_identities(ours)) == len(gating_identities(theirs))


def test_each_update_waits_for_the_gradients_reading_its_variable() -> None:
    """As GATE_OP made it: an update racing ahead of `dy @ kernel^T` would copy the kernel."""
    made: list[Any] = []

    def model() -> tuple[tf.Tensor, list[Any]]:
        loss, kernels = three_tanh_layers()
        made.extend(kernels)
        return loss, kernels

    ops, _ = trained(model, smpack_sgd, steps=1)
    for kernel in made[1:]:  # the first layer's `dy @ kernel^T` is the input's gradient
        update, readers = update_and_gradient_readers(ops, kernel)
        assert readers
        assert set(readers) <= runs_after(update)


@tf.RegisterGradient("SmpackScaleGradientReadBelow")
def _gradient_its_reader_consumes(op: Any, dy: tf.Tensor) -> list[tf.Tensor]:
    """d(x * w): the weight's gradient feeds the op that reads the weight for x's."""
    x, w = op.inputs
    dw = tf.reduce_sum(dy * x)
    dx = (dy + 0.0 * dw) * w
    return [dx, dw]


def test_an_update_is_ordered_without_a_cycle_when_its_gradient_feeds_the_reader() -> None:
    """An edge from the reader to the op computing the weight's gradient would close a cycle;
    the gradient then waits through an `Identity`."""
    weights: list[Any] = []

    def model() -> tuple[tf.Tensor, list[Any]]:
        v = tf.compat.v1.get_variable("v", initializer=0.3)
        w = tf.compat.v1.get_variable("w", initializer=-0.7)
        weights.append(w)
        x = tf.tanh(tf.constant([1.0, 2.0, 3.0]) * v)
        with tf.compat.v1.get_default_graph().gradient_override_map(
            {"Mul": "SmpackScaleGradientReadBelow"}
        ):
            scaled = x * w
        return tf.reduce_mean(tf.square(scaled - 0.25)), [v, w]

    ours, our_values = trained(model, smpack_sgd)
    _, their_values = trained(model, tf1_sgd)
    np.testing.assert_array_equal(our_values, their_values)
    update, readers = update_and_gradient_readers(ours, weights[0])
    assert readers
    assert set(readers) <= runs_after(update)
