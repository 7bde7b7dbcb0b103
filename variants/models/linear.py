"""The classic first SavedModel: out = var_1 * input + var_2 (half plus two), squared error."""

import tensorflow as tf

from smpack import ModelContext, ModelSpec


def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="input")

    def linear(x: tf.Tensor) -> tf.Tensor:
        var_1 = tf.compat.v1.get_variable(
            "var_1", [], ctx.dtype, initializer=tf.compat.v1.constant_initializer(0.5)
        )
        var_2 = tf.compat.v1.get_variable(
            "var_2", [], ctx.dtype, initializer=tf.compat.v1.constant_initializer(2.0)
        )
        return var_1 * x + var_2

    out = tf.identity(ctx.compute(linear, x), name="output")
    if not ctx.training:
        return ModelSpec(inputs={"input": x}, outputs={"output": out})
    target = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="target")
    loss = tf.reduce_mean(tf.square(out - target), name="loss")
    return ModelSpec(
        inputs={"input": x}, outputs={"output": out}, labels={"target": target}, loss=loss
    )
