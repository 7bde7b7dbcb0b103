"""A tiny model for fault tests: it can block in one variant, so a test can interrupt a build
at a known moment, and can carry a large variable, so writing the checkpoint takes a while.

`params`: `block_in` (variant name) blocks that variant's graph building after creating
the file `marker`; `width` sets the number of floats in variable `w`.
"""

import time
from pathlib import Path

import tensorflow as tf

from smpack import ModelSpec


def model_fn(ctx):
    if ctx.variant == ctx.params.get("block_in"):
        Path(ctx.params["marker"]).touch()
        while True:
            time.sleep(1)
    x = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="input")

    def affine(x):
        w = tf.compat.v1.get_variable(
            "w", [ctx.params.get("width", 1)], ctx.dtype, tf.compat.v1.zeros_initializer()
        )
        b = tf.compat.v1.get_variable("b", [], ctx.dtype, tf.compat.v1.ones_initializer())
        return tf.reduce_sum(w) * x + b

    out = tf.identity(ctx.compute(affine, x), name="output")
    if not ctx.training:
        return ModelSpec(inputs={"input": x}, outputs={"output": out})
    target = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="target")
    loss = tf.reduce_mean(tf.square(out - target))
    return ModelSpec(
        inputs={"input": x}, outputs={"output": out}, labels={"target": target}, loss=loss
    )
