"""A python source's device computation in half precision, by the rules imported graphs get.

`ctx.compute(fn, ...)` in a float16 or bfloat16 variant does not run `fn` on half-precision
tensors (its float32 masks, ranges and softmax would then be its author's problem, and
often XLA's: there is no half-precision `Range`). It traces `fn` in float32 in a graph of
its own, retypes that graph with `smpack.sources.precision.retyped`, the one
implementation of what computes in half precision, and imports the result into the
variant's graph, where `ctx.compute`'s device pin, XLA mark or `tpu.rewrite` apply to it.

The variables `fn` creates are made in the variant's graph, float32 (one checkpoint for
every variant), with the arguments `fn` gave; the traced graph reads them through their
handles, as an imported SavedModel's graph does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from smpack.sources.precision import HalfTarget, retyped

_VARIABLE_OPS = frozenset({"VarHandleOp", "VariableV2", "Variable"})
# What tf.compat.v1.get_variable takes besides its name (a custom getter also sees the
# variable scope's reuse, replayed through a scope of its own).
_VARIABLE_ARGUMENTS = (
    "shape",
    "initializer",
    "regularizer",
    "trainable",
    "collections",
    "caching_device",
    "partitioner",
    "validate_shape",
    "constraint",
    "synchronization",
    "aggregation",
)


@dataclass
class _Trace:
    """`fn` traced in float32: its graph, and what it reads from and gives to the variant."""

    graph: tf.Graph = field(default_factory=tf.Graph)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> arguments
    handles: dict[str, str] = field(default_factory=dict)  # handle tensor -> variable name


def half_precision_call(
    fn: Callable[..., Any], tensors: Sequence[tf.Tensor], target: HalfTarget
) -> tuple[Any, list[tf.Tensor]]:
    """`fn(*tensors)` computing in `target.dtype` where that is safe: (the structure `fn`
    returned, its flattened outputs in the variant's graph)."""
    trace = _Trace()
    scope = tf.compat.v1.get_variable_scope()
    # Random ops draw their seeds from the variant graph's seed: builds stay reproducible.
    trace.graph.seed = tf.compat.v1.get_default_graph().seed
    with trace.graph.as_default():
        inputs = [
            tf.compat.v1.placeholder(
                tf.float32 if t.dtype.is_floating else t.dtype, t.shape, name=f"input_{i}"
            )
            for i, t in enumerate(tensors)
        ]
        with tf.compat.v1.variable_scope(
            scope.name,
            reuse=scope.reuse or None,
            custom_getter=_recording_getter(trace),
            auxiliary_name_scope=False,
        ):
            try:
                result = fn(*inputs)
            except ValueError as e:
                if "must be from the same graph" not in str(e):
                    raise
                msg = (
                    "the function given to ctx.compute reads a tensor made outside it, which "
                    "a half-precision variant traces apart from the rest of the graph; pass "
                    "that tensor as an input: ctx.compute(fn, x, other)"
                )
                # Its traceback kept: the error points at the line of `fn` that read it.
                raise ValueError(msg).with_traceback(e.__traceback__) from e
        outputs = [tf.convert_to_tensor(t) for t in tf.nest.flatten(result)]
        updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)

    handles = {
        handle: _variable_in_variant_graph(name, trace.variables)
        for handle, name in trace.handles.items()
    }
    graph_def = _reachable(trace, [*outputs, *updates], supplied=[*handles, *inputs])
    read = {_tensor_name(i) for node in graph_def.node for i in node.input}
    input_map = {h: v.handle for h, v in handles.items() if h in read}
    for placeholder, tensor in zip(inputs, tensors, strict=True):
        if placeholder.name in read:  # floating inputs arrive in half precision, as retyped asks
            floating = tensor.dtype.is_floating
            input_map[placeholder.name] = tf.cast(tensor, target.dtype) if floating else tensor
    names = [t.name for t in outputs] + [op.name for op in updates]
    results = tf.graph_util.import_graph_def(
        retyped(graph_def, target), input_map=input_map, return_elements=names, name="compute"
    )
    for update in results[len(outputs) :]:
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, update)
    return result, list(results[: len(outputs)])


def _recording_getter(trace: _Trace) -> Callable[..., Any]:
    def record(getter: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
        requested = tf.as_dtype(kwargs.get("dtype") or tf.float32)
        # Stored float32 whatever `fn` asks (a model written for ctx.dtype asks half); the
        # trace computes in float32 and the retyping decides what becomes half.
        kwargs["dtype"] = tf.float32 if requested.is_floating else requested
        trace.variables.setdefault(name, {**kwargs, "args": args})
        # A variable `fn` reuses from an earlier ctx.compute is new to this trace.
        kwargs["reuse"] = tf.compat.v1.AUTO_REUSE
        kwargs["use_resource"] = True  # read through a handle the variant's graph maps
        variable = getter(name, *args, **kwargs)
        trace.handles[variable.handle.name] = name
        return variable

    return record


def _variable_in_variant_graph(name: str, arguments: dict[str, Any]) -> Any:
    """The variant graph's variable `name`, made (or reused) as `fn` asked for it."""
    given = arguments[name]
    kwargs = {k: given[k] for k in _VARIABLE_ARGUMENTS if k in given}
    root = tf.compat.v1.VariableScope(reuse=given.get("reuse"), name="")
    with tf.compat.v1.variable_scope(root, auxiliary_name_scope=False):
        return tf.compat.v1.get_variable(
            name, *given["args"], dtype=given["dtype"], use_resource=True, **kwargs
        )


def _reachable(trace: _Trace, fetches: list[Any], supplied: list[Any]) -> Any:
    """The traced graph's nodes `fetches` need, without the inputs and variable handles the
    variant's graph supplies (their tensors become the graph's external inputs)."""
    graph_def = trace.graph.as_graph_def()
    nodes = {node.name: node for node in graph_def.node}
    left_out = {(s if isinstance(s, str) else s.name).partition(":")[0] for s in supplied}
    needed: set[str] = set()
    pending = [f.name.partition(":")[0] for f in fetches]
    while pending:
        name = pending.pop()
        if name in needed or name in left_out:
            continue
        needed.add(name)
        pending.extend(i.lstrip("^").partition(":")[0] for i in nodes[name].input)
    kept = [node for node in graph_def.node if node.name in needed]  # in the trace's order
    for node in kept:
        if node.op in _VARIABLE_OPS:
            msg = (
                f"variable {node.name!r} was made inside ctx.compute without "
                "tf.compat.v1.get_variable, so half-precision variants cannot share it; "
                "create it with tf.compat.v1.get_variable"
            )
            raise ValueError(msg)
        # Colocation with the trace's own variables and inputs, which are not imported.
        if "_class" in node.attr:
            del node.attr["_class"]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    return graph_def


def _tensor_name(graph_def_input: str) -> str:
    name = graph_def_input.lstrip("^")
    return name if ":" in name else f"{name}:0"
