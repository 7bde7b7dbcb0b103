"""The train op: one step applies the gradients and runs the model's own updates.

The updates (batch normalisation's moving averages, in `UPDATE_OPS`) gate the step through
one group op. Made inside `control_dependencies(updates)`, every gradient op without an
input from that block got an edge to every update: a DenseNet121's train graph was 135 MB,
128 MB of it those edges.
"""

from __future__ import annotations

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
