"""A bag-of-words sentiment classifier reading its vocabulary from a packaged asset.

String splitting and the vocabulary lookup have no GPU or TPU kernels, so they stay on the
host; only the dense layer is the device computation smpack places, casts and rewrites.
"""

import tensorflow as tf

from smpack import ModelContext, ModelSpec


def model_fn(ctx: ModelContext) -> ModelSpec:
    vocab_size = ctx.params["vocab_size"]
    buckets = vocab_size + 1  # the last bucket counts out-of-vocabulary words
    text = tf.compat.v1.placeholder(tf.string, [ctx.batch_size], name="input")
    table = tf.compat.v1.lookup.StaticHashTable(
        tf.compat.v1.lookup.TextFileInitializer(
            ctx.asset("vocab.txt"),
            tf.string,
            tf.compat.v1.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64,
            tf.compat.v1.lookup.TextFileIndex.LINE_NUMBER,
        ),
        default_value=vocab_size,
    )
    words = tf.strings.split(tf.strings.lower(text))
    ids = table.lookup(words)
    counts = tf.math.bincount(ids, minlength=buckets, maxlength=buckets, axis=-1, dtype=tf.float32)
    counts.set_shape([ctx.batch_size, buckets])

    def classify(counts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        weights = tf.compat.v1.get_variable(
            "dense/kernel",
            [buckets, 2],
            ctx.dtype,
            initializer=tf.compat.v1.glorot_uniform_initializer(),
        )
        bias = tf.compat.v1.get_variable(
            "dense/bias", [2], ctx.dtype, initializer=tf.compat.v1.zeros_initializer()
        )
        logits = tf.matmul(counts, weights) + bias
        return logits, tf.argmax(logits, axis=-1)

    logits, class_ids = ctx.compute(classify, counts)
    scores = tf.nn.softmax(logits, name="scores")
    outputs = {"scores": scores, "class_ids": tf.identity(class_ids, name="class_ids")}
    if not ctx.training:
        return ModelSpec(inputs={"input": text}, outputs=outputs)
    label = tf.compat.v1.placeholder(tf.int64, [ctx.batch_size], name="label")
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logits), name="loss"
    )
    return ModelSpec(inputs={"input": text}, outputs=outputs, labels={"label": label}, loss=loss)
