"""How a variant's device computation is placed, cast and rewritten for its target.

This is the one place that knows what `device`, `precision`, `xla` and TPU mean in graph
terms; `ModelContext.compute` delegates here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

from smpack.builder.retyped_call import trace_in_float32
from smpack.manifest import Variant
from smpack.sources.precision import half_target
from smpack.sources.training_mode import register_state_updates


def compute_for(variant: Variant) -> Callable[..., Any]:
    """The `ctx.compute` implementation for `variant`."""
    dtype = tf.as_dtype(variant.precision)
    target = half_target(variant)
    # A device pin, an XLA mark or tpu.rewrite must not take the host's tables with it.
    is_placed = bool(variant.device or variant.xla or variant.on_tpu)

    def compute(fn: Callable[..., Any], *inputs: Any, retype: bool = True) -> Any:
        inputs_list = [tf.convert_to_tensor(t) for t in inputs]
        if retype and (target is not None or is_placed):
            # Traced in float32 here, on the host, where its string and table ops stay;
            # the rest is retyped by the rules imported graphs get and placed below.
            traced = trace_in_float32(fn, inputs_list, target)
            if not traced.device_outputs:
                return traced.result_from([])
            outputs = placed(lambda *t: traced.on_device(t, dtype), traced.device_inputs)
            return traced.result_from(outputs)
        structure: list[Any] = []
        first_new_op = len(tf.compat.v1.get_default_graph().get_operations())

        def body(*tensors: tf.Tensor) -> list[tf.Tensor]:
            cast_inputs = [_cast_float(t, dtype) for t in tensors]
            with tf.compat.v1.variable_scope(
                tf.compat.v1.get_variable_scope(),
                custom_getter=_float32_storage_getter,
                auxiliary_name_scope=False,
            ):
                result = fn(*cast_inputs)
            structure.append(result)
            return tf.nest.flatten(result)

        outputs = placed(body, inputs_list)
        if variant.is_training:
            _run_unfetched_assignments(
                tf.compat.v1.get_default_graph().get_operations()[first_new_op:]
            )
        return tf.nest.pack_sequence_as(structure[0], outputs)

    def placed(body: Callable[..., list[tf.Tensor]], tensors: list[tf.Tensor]) -> list[Any]:
        """`body(*tensors)` in the variant's device context; floating outputs in float32."""

        def float32_body(*args: tf.Tensor) -> list[tf.Tensor]:
            return [_cast_float(t, tf.float32) for t in body(*args)]

        if variant.on_tpu:
            outputs = tf.compat.v1.tpu.rewrite(float32_body, tensors)
            # The serving host reads results outside the TPU cluster; give them host names.
            return [tf.identity(t) for t in outputs]
        with placement(variant):
            return float32_body(*tensors)

    return compute


def _run_unfetched_assignments(new_ops: list[tf.Operation]) -> None:
    """Assignments `fn` made that nothing fetches (a Keras layer's moving averages) run with
    each train step, as a traced compute's do; variables' initializers and what is in
    `UPDATE_OPS` already are not added."""
    skipped = {v.initializer for v in tf.compat.v1.global_variables()} | {
        u.op if isinstance(u, tf.Tensor) else u
        for u in tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
    }
    register_state_updates(op for op in new_ops if op not in skipped)


def _cast_float(tensor: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    tensor = tf.convert_to_tensor(tensor)
    if tensor.dtype.is_floating and tensor.dtype != dtype:
        return tf.cast(tensor, dtype)
    return tensor


def _float32_storage_getter(
    getter: Callable[..., Any], name: str, *args: Any, **kwargs: Any
) -> Any:
    # Half-precision variants share the float32 checkpoint: store float32, compute in the
    # requested dtype (the classic TF1 mixed-precision custom getter).
    requested = tf.as_dtype(kwargs.get("dtype") or tf.float32)
    if not requested.is_floating or requested == tf.float32:
        return getter(name, *args, **kwargs)
    kwargs["dtype"] = tf.float32
    return tf.cast(getter(name, *args, **kwargs), requested)


@contextlib.contextmanager
def placement(variant: Variant) -> Iterator[None]:
    """Where a variant not on a TPU puts its device computation: its device, its XLA mark."""
    with _device(variant.device), _xla(variant.xla):
        yield


@contextlib.contextmanager
def _device(device: str | None) -> Iterator[None]:
    if device is None:
        yield
    else:
        with tf.device(device):
            yield


@contextlib.contextmanager
def _xla(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
    else:
        # Marks every op with _XlaCompile; on CPU and GPU the runtime then clusters and
        # compiles them, since such explicit marks are honoured without global auto-jit.
        with tf.xla.experimental.jit_scope(compile_ops=True, separate_compiled_gradients=False):
            yield
