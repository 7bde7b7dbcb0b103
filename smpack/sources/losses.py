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
# Ops an import puts between a function's result and the op computing it.
PASS_THROUGH = ("Identity", "IdentityN")

LossFn = Callable[[Mapping[str, tf.Tensor]], tuple[dict[str, tf.Tensor], tf.Tensor]]


def builtin_loss(name: str, where: dict[str, Any]) -> LossFn:
    """The loss `name` (mse, sparse_categorical_crossentropy, categorical_crossentropy),
    computed as Keras's `fit` computes it.

    The cross-entropies take the model's output as probabilities. When a softmax computed
    them (a Keras classifier's last layer), the loss is computed from the softmax's input,
    the logits, as Keras does: clipping the probabilities instead caps a sample's loss at
    -log(1e-7) = 16.1 and zeroes its gradient, which a randomly initialised network reaches
    within a few steps (EfficientNetB0's train graph differed from fit by 1.8% that way).
    """

    def loss(outputs: Mapping[str, tf.Tensor]) -> Any:
        output = _single_output(outputs, where)
        logits = _softmax_logits(output)
        if name == "sparse_categorical_crossentropy":
            labels = tf.compat.v1.placeholder(tf.int64, output.shape[:-1], name="labels")
            if logits is None:
                # Keras renormalises the clipped probabilities (a softmax of their logs).
                logits = tf.math.log(tf.clip_by_value(output, _EPSILON, 1.0 - _EPSILON))
            value = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        else:
            labels = tf.compat.v1.placeholder(output.dtype, output.shape, name="labels")
            if name == "mse":
                value = tf.square(output - labels)
            elif logits is not None:
                value = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            else:
                normalised = output / tf.reduce_sum(output, axis=-1, keepdims=True)
                clipped = tf.clip_by_value(normalised, _EPSILON, 1.0 - _EPSILON)
                value = -tf.reduce_sum(labels * tf.math.log(clipped), axis=-1)
        return {"labels": labels}, tf.reduce_mean(value, name="loss")

    return loss


def _softmax_logits(output: tf.Tensor) -> tf.Tensor | None:
    """The input of the `Softmax` op that computed `output`, if one did."""
    tensor = output
    while tensor.op.type in PASS_THROUGH:
        tensor = tensor.op.inputs[tensor.value_index if tensor.op.type == "IdentityN" else 0]
    return tensor.op.inputs[0] if tensor.op.type == "Softmax" else None


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
