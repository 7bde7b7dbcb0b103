"""The loss a train variant of a savedmodel or keras source minimises, named in the manifest.

The model's outputs are fixed by its source, so smpack adds the labels: one placeholder,
`labels`, shaped like the output the loss reads (class ids for the sparse cross-entropy).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from smpack.errors import ModelError

# Probabilities are clipped as Keras does, so a confident wrong answer costs a finite loss.
_EPSILON = 1e-7

LossFn = Callable[[Mapping[str, tf.Tensor]], tuple[dict[str, tf.Tensor], tf.Tensor]]


def builtin_loss(name: str, where: dict[str, Any]) -> LossFn:
    """The loss `name` (mse, sparse_categorical_crossentropy, categorical_crossentropy).

    The cross-entropies take the model's output as probabilities (a softmax output, as
    Keras classifiers have).
    """

    def loss(outputs: Mapping[str, tf.Tensor]) -> Any:
        output = _single_output(outputs, where)
        if name == "sparse_categorical_crossentropy":
            labels = tf.compat.v1.placeholder(tf.int64, output.shape[:-1], name="labels")
            probabilities = tf.gather(output, labels, batch_dims=output.shape.rank - 1)
            value = -tf.math.log(tf.clip_by_value(probabilities, _EPSILON, 1.0))
        else:
            labels = tf.compat.v1.placeholder(output.dtype, output.shape, name="labels")
            if name == "mse":
                value = tf.square(output - labels)
            else:
                clipped = tf.clip_by_value(output, _EPSILON, 1.0 - _EPSILON)
                value = -tf.reduce_sum(labels * tf.math.log(clipped), axis=-1)
        return {"labels": labels}, tf.reduce_mean(value, name="loss")

    return loss


def python_loss(function: Callable[..., Any], where: dict[str, Any]) -> LossFn:
    """A user loss `fn(output, labels) -> scalar`, labels shaped and typed like the output."""

    def loss(outputs: Mapping[str, tf.Tensor]) -> Any:
        output = _single_output(outputs, where)
        labels = tf.compat.v1.placeholder(output.dtype, output.shape, name="labels")
        return {"labels": labels}, function(output, labels)

    return loss


def _single_output(outputs: Mapping[str, tf.Tensor], where: dict[str, Any]) -> tf.Tensor:
    if len(outputs) != 1:
        msg = f"a built-in loss needs a model with one output, this one has {sorted(outputs)}"
        raise ModelError(msg, **where)
    return next(iter(outputs.values()))
