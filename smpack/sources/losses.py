"""The loss a train variant of a savedmodel or keras source minimises, named in the manifest.

The model's outputs are fixed by its source, so smpack adds the labels: a placeholder shaped
like the output the loss reads (class ids for the sparse cross-entropy), `labels` for a
model's one output; a model with several outputs names a loss per output and gets one
placeholder per loss, `<output>_labels`, its loss the sum of theirs, as Keras's `fit` sums
the losses of a multi-output model.
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
# The labels and the loss of one output, given the output and its key (None: the one output).
OutputLoss = Callable[[tf.Tensor, str | None], tuple[tf.Tensor, tf.Tensor]]


def model_loss(losses: OutputLoss | dict[str, OutputLoss], where: dict[str, Any]) -> LossFn:
    """The loss of the model's outputs: `losses` of its one output, or of each output keyed."""

    def loss(outputs: Mapping[str, tf.Tensor]) -> Any:
        if not isinstance(losses, dict):
            labels, value = losses(_single_output(outputs, where), None)
            return {"labels": labels}, value
        unknown = sorted(losses.keys() - outputs.keys())
        if unknown:
            msg = f"the model has no output {unknown[0]!r} (its outputs: {sorted(outputs)})"
            raise ModelError(msg, file=where["file"], field=f"{where['field']}.{unknown[0]}")
        labels, values = {}, []
        for key, output_loss in losses.items():
            labels[f"{key}_labels"], value = output_loss(outputs[key], key)
            values.append(value)
        return labels, tf.add_n(values, name="loss")

    return loss


def builtin_loss(name: str) -> OutputLoss:
    """The loss `name` (mse, sparse_categorical_crossentropy, categorical_crossentropy),
    computed as Keras's `fit` computes it.

    The cross-entropies take the model's output as probabilities. When a softmax computed
    them (a Keras classifier's last layer), the loss is computed from the softmax's input,
    the logits, as Keras does: clipping the probabilities instead caps a sample's loss at
    -log(1e-7) = 16.1 and zeroes its gradient, which a randomly initialised network reaches
    within a few steps (EfficientNetB0's train graph differed from fit by 1.8% that way).
    """

    def loss(output: tf.Tensor, key: str | None) -> Any:
        logits = _softmax_logits(output)
        labels_name, loss_name = _names(key)
        if name == "sparse_categorical_crossentropy":
            labels = tf.compat.v1.placeholder(tf.int64, output.shape[:-1], name=labels_name)
            if logits is None:
                # Keras renormalises the clipped probabilities (a softmax of their logs).
                logits = tf.math.log(tf.clip_by_value(output, _EPSILON, 1.0 - _EPSILON))
            value = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        else:
            labels = tf.compat.v1.placeholder(output.dtype, output.shape, name=labels_name)
            if name == "mse":
                value = tf.square(output - labels)
            elif logits is not None:
                value = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
            else:
                normalised = output / tf.reduce_sum(output, axis=-1, keepdims=True)
                clipped = tf.clip_by_value(normalised, _EPSILON, 1.0 - _EPSILON)
                value = -tf.reduce_sum(labels * tf.math.log(clipped), axis=-1)
        return labels, tf.reduce_mean(value, name=loss_name)

    return loss


def _names(key: str | None) -> tuple[str, str]:
    """The op names of an output's labels and loss: the model's own when it has one output."""
    return ("labels", "loss") if key is None else (f"{key}_labels", f"{key}_loss")


def _softmax_logits(output: tf.Tensor) -> tf.Tensor | None:
    """The input of the `Softmax` op that computed `output`, if one did."""
    tensor = output
    while tensor.op.type in PASS_THROUGH:
        tensor = tensor.op.inputs[tensor.value_index if tensor.op.type == "IdentityN" else 0]
    return tensor.op.inputs[0] if tensor.op.type == "Softmax" else None


def python_loss(function: Callable[..., Any]) -> OutputLoss:
    """A user loss `fn(output, labels) -> scalar`, labels shaped and typed like the output."""

    def loss(output: tf.Tensor, key: str | None) -> Any:
        labels = tf.compat.v1.placeholder(output.dtype, output.shape, name=_names(key)[0])
        return labels, function(output, labels)

    return loss


def _single_output(outputs: Mapping[str, tf.Tensor], where: dict[str, Any]) -> tf.Tensor:
    if len(outputs) != 1:
        example = ", ".join(f"{key}: mse" for key in sorted(outputs))
        msg = (
            f"the model has several outputs {sorted(outputs)}: name a loss for each output "
            f"it trains, e.g. loss: {{{example}}}"
        )
        raise ModelError(msg, **where)
    return next(iter(outputs.values()))
