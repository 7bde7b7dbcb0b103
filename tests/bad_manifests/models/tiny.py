"""The one tiny model every build-time case of the corpus shares: y = w * x + b.

Each function below breaks one rule a model function must follow; `model_fn` follows
them all, so a case using it fails because of its manifest alone.
"""

import tensorflow as tf

from smpack import ModelSpec


def model_fn(ctx):
    x = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="input")

    def affine(x):
        # params.w_shape lets a case give one variant a differently shaped variable.
        w = tf.compat.v1.get_variable("w", ctx.params.get("w_shape", []), ctx.dtype)
        b = tf.compat.v1.get_variable("b", [], ctx.dtype)
        return w * x + b

    out = tf.identity(ctx.compute(affine, x), name="output")
    if not ctx.training:
        return ModelSpec(inputs={"input": x}, outputs={"output": out})
    target = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="target")
    loss = tf.reduce_mean(tf.square(out - target))
    return ModelSpec(
        inputs={"input": x}, outputs={"output": out}, labels={"target": target}, loss=loss
    )


def raising_fn(ctx):
    msg = "vocab_size must be positive, got -1"
    raise ValueError(msg)


def no_loss_fn(ctx):
    spec = model_fn(ctx)
    return ModelSpec(inputs=spec.inputs, outputs=spec.outputs, labels=spec.labels)


def vector_loss_fn(ctx):
    spec = model_fn(ctx)
    return ModelSpec(
        inputs=spec.inputs, outputs=spec.outputs, labels=spec.labels, loss=spec.outputs["output"]
    )


def labels_keyed_as_input_fn(ctx):
    spec = model_fn(ctx)
    labels = {"input": spec.labels["target"]}
    return ModelSpec(inputs=spec.inputs, outputs=spec.outputs, labels=labels, loss=spec.loss)


def dict_fn(ctx):
    return {"input": None, "output": None}


def unbatched_fn(ctx):
    x = tf.compat.v1.placeholder(tf.float32, [None], name="input")
    return ModelSpec(inputs={"input": x}, outputs={"output": ctx.compute(tf.identity, x)})


def no_compute_fn(ctx):
    x = tf.compat.v1.placeholder(tf.float32, [None], name="input")
    w = tf.compat.v1.get_variable("w", [], tf.float32)
    return ModelSpec(inputs={"input": x}, outputs={"output": w * x})


def unlisted_asset_fn(ctx):
    ctx.asset("labels.txt")
    return model_fn(ctx)
