"""A python source's device computation traced apart: retyped to half precision by the rules
imported graphs get, and split from what must stay on the host.

`ctx.compute(fn, ...)` in a float16 or bfloat16 variant does not run `fn` on half-precision
tensors (its float32 masks, ranges and softmax would then be its author's problem, and
often XLA's: there is no half-precision `Range`). It traces `fn` in float32 in a graph of
its own, splits off what must stay on the host (string ops, lookup tables and everything
upstream of them, by `smpack.sources.host_split`, as for an imported SavedModel), imports
that part into the variant's graph as it is, retypes the rest with
`smpack.sources.precision.retyped`, the one implementation of what computes in half
precision, and imports it where `ctx.compute`'s device pin, XLA mark or `tpu.rewrite`
apply to it. A float32 variant with a device pin, XLA or TPU is traced the same way, not
retyped, so that its tables stay on the host too.

The trace is a function graph: a tensor of the variant's graph that `fn` reads without
receiving it as an input (a mask, a length, an asset's path) is captured, and fed from
the variant's graph like an input. The variables `fn` creates (with `get_variable`,
`tf.Variable`, or a Keras layer's) are lifted out of it with `tf.init_scope`, as
`tf.function` lifts them, recorded by a custom getter or a variable creator, and made
again in the variant's graph, float32 (one checkpoint for every variant), with the
arguments `fn` gave; the traced graph reads them through their handles, as an imported
SavedModel's graph does. Assignments `fn` makes that nothing fetches (a Keras layer's
moving averages, a seed's state) are `UPDATE_OPS`, run with each train step as a
`tf.function` runs every stateful op it holds. The tables `fn` creates are created on the
host and filled by the package's init op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import graph_pb2

from smpack.errors import ModelError
from smpack.sources.graph_def import node_name, tensor_name
from smpack.sources.host_split import HostPart, split_host
from smpack.sources.precision import HalfTarget, retyped
from smpack.sources.python import keras_named_variables
from smpack.sources.training_mode import register_state_updates

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
# What tf.Variable (and so a Keras variable) is made from, replayed in the variant's graph.
_CREATED_ARGUMENTS = (
    "initial_value",
    "trainable",
    "dtype",
    "constraint",
    "synchronization",
    "aggregation",
    "shape",
)
# Variables and tables a function graph makes are lifted out of it (`tf.init_scope`) into
# this scope of the trace's own outer graph; the trace is their union.
_LIFTED = "lifted"
_TABLE_INITIALIZERS = "smpack_table_initializers"


@dataclass
class TracedCompute:
    """`fn` traced in float32 and split: its host part is in the variant's graph already,
    its device part is imported by `on_device` inside the variant's device context."""

    result: Any  # the structure `fn` returned
    device_inputs: list[tf.Tensor]  # variant tensors the device part reads, in order
    device: graph_pb2.GraphDef  # retyped
    device_input_names: list[str]  # the device part's names for `device_inputs`
    device_outputs: list[str]
    updates: list[str]  # ops of the device part that UPDATE_OPS lists
    variables: dict[str, dict[str, Any]]  # handle tensor -> get_variable's arguments
    # Handle tensor -> the variant graph's variable `fn` reads but did not make.
    outer_variables: dict[str, tf.Tensor] = field(default_factory=dict)
    host_outputs: dict[str, tf.Tensor] = field(default_factory=dict)  # output -> host tensor
    outputs: list[str] = field(default_factory=list)  # the flattened result's tensors

    def on_device(self, tensors: Sequence[tf.Tensor], dtype: tf.DType) -> list[tf.Tensor]:
        """The device part reading `tensors` (as `device_inputs`, floating ones in `dtype`):
        its outputs, in the order of `device_outputs`."""
        read = {tensor_name(i) for n in self.device.node for i in n.input if i[0] != "^"}
        input_map = {
            h: _variable_in_variant_graph(arguments).handle
            for h, arguments in self.variables.items()
            if h in read
        }
        input_map.update({h: v for h, v in self.outer_variables.items() if h in read})
        for name, tensor in zip(self.device_input_names, tensors, strict=True):
            # Floating inputs arrive in half precision, as retyped asks.
            input_map[name] = tf.cast(tensor, dtype) if tensor.dtype.is_floating else tensor
        results = tf.graph_util.import_graph_def(
            self.device,
            input_map=input_map,
            return_elements=[*self.device_outputs, *self.updates],
            name="compute",
        )
        for update in results[len(self.device_outputs) :]:
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, update)
        return list(results[: len(self.device_outputs)])

    def result_from(self, device_results: Sequence[tf.Tensor]) -> Any:
        """The structure `fn` returned, in the variant's graph: its device outputs from
        `device_results` (float32), the rest computed on the host."""
        on_device = dict(zip(self.device_outputs, device_results, strict=True))
        flat = [on_device[t] if t in on_device else self.host_outputs[t] for t in self.outputs]
        return tf.nest.pack_sequence_as(self.result, flat)


def trace_in_float32(
    fn: Callable[..., Any], tensors: Sequence[tf.Tensor], target: HalfTarget | None
) -> TracedCompute:
    """Trace `fn(*tensors)` in float32, import its host part, and retype its device part
    for `target` (a float32 variant's, with no target, is imported as traced)."""
    variant_graph = tf.compat.v1.get_default_graph()
    scope = tf.compat.v1.get_variable_scope()
    lifted = tf.Graph()
    # Random ops draw their seeds from the variant graph's seed: builds stay reproducible.
    lifted.seed = variant_graph.seed
    variables: dict[str, dict[str, Any]] = {}  # variable name -> get_variable's arguments
    recorded: dict[str, str] = {}  # handle tensor in `lifted` -> variable name
    created: dict[str, dict[str, Any]] = {}  # handle tensor in `lifted` -> tf.Variable's
    # `tf.init_scope` lifts into the innermost graph entered that is not a function's.
    with lifted.as_default():
        trace = tf.__internal__.FuncGraph("compute")
    with lifted.as_default(), trace.as_default():
        with (
            tf.compat.v1.variable_scope(
                scope.name,
                reuse=scope.reuse or None,
                custom_getter=_recording_getter(variables, recorded),
                auxiliary_name_scope=False,
            ),
            tf.variable_creator_scope(_recording_creator(created)),
            tf.variable_creator_scope(keras_named_variables),
        ):
            result = fn(*tensors)
        # A result `fn` passed through unchanged is still the trace's own tensor.
        outputs = [
            tf.identity(t) if t.graph is not trace else t
            for t in (tf.convert_to_tensor(t) for t in tf.nest.flatten(result))
        ]
        # Assignments nothing fetches (a Keras layer's moving averages, a dropout seed's
        # state) run with each step, as they would in a tf.function.
        register_state_updates(trace.get_operations())
        updates = list(
            {
                (u.op if isinstance(u, tf.Tensor) else u).name: None
                for u in tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
            }
        )
        table_init = tf.group(
            *tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS),
            name=_TABLE_INITIALIZERS,
        )

    # get_variable's variables may pass the creator too; its arguments are the ones to replay.
    handles = {f"{_LIFTED}/{h}": h for h in {**created, **dict.fromkeys(recorded)}}
    # The trace and what was lifted out of it, as one graph; captured tensors of the
    # variant's graph stay placeholders, its external inputs.
    merged = tf.Graph()
    captured: dict[str, tf.Tensor] = {}
    with merged.as_default():
        # Only the variables' and tables' own nodes: their initialisers (which may hold
        # large constants) are not the trace's business.
        read_from_lifted = {outer.op.name for outer, _ in trace.captures if outer.graph is lifted}
        tf.graph_util.import_graph_def(
            tf.compat.v1.graph_util.extract_sub_graph(
                lifted.as_graph_def(), sorted(read_from_lifted)
            ),
            name=_LIFTED,
        )
        lifted_map = {}
        for outer, inner in trace.captures:
            if outer.graph is lifted:
                lifted_map[inner.name] = merged.get_tensor_by_name(f"{_LIFTED}/{outer.name}")
            else:
                captured[inner.name] = outer
        tf.graph_util.import_graph_def(trace.as_graph_def(), input_map=lifted_map, name="")
    external = {node_name(t) for t in (*handles, *captured)}
    # ctx.asset's tensors, which a table may be filled from: the loaders rewrite them.
    assets = {t.name for t in variant_graph.get_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS)}
    asset_paths = {node_name(t): v.name for t, v in captured.items() if v.name in assets}
    flat = merged.as_graph_def()
    fetches = [t.name for t in outputs] + updates
    signature_graph = tf.compat.v1.graph_util.extract_sub_graph(
        flat, sorted({node_name(f) for f in fetches})
    )
    try:
        split = split_host(flat, signature_graph, external, table_init.name, asset_paths, {})
    except ModelError as e:  # one line, raised again where the model function's line is found
        raise ValueError(e.message) from e

    device = graph_pb2.GraphDef(versions=split.device.versions, library=split.device.library)
    device.node.extend(n for n in split.device.node if n.name not in external)
    for node in device.node:
        # Colocation with the trace's variables, which are not imported.
        if "_class" in node.attr:
            del node.attr["_class"]
    defined = {n.name for n in device.node}
    read = {tensor_name(i) for n in device.node for i in n.input if not i.startswith("^")}
    # A variable of the variant's graph that `fn` reads without making it (made by the model
    # file at module level, or outside ctx.compute) is read through its handle, as the
    # variables `fn` makes are, not fed to the device computation as a tensor.
    outer_variables = {t: v for t, v in captured.items() if v.dtype == tf.resource}
    device_input_names = sorted(
        t for t in read - set(handles) - set(outer_variables) if node_name(t) not in defined
    )
    flat_outputs = [t.name for t in outputs]
    host_tensors: dict[str, tf.Tensor] = {}
    if split.host is not None:
        on_host = {n.name for n in split.host.graph_def.node}
        from_host = [t for t in (*device_input_names, *flat_outputs) if node_name(t) in on_host]
        host_tensors = _import_host_part(split.host, captured, list(dict.fromkeys(from_host)))
    return TracedCompute(
        result=result,
        device_inputs=[
            host_tensors[t] if t in host_tensors else captured[t] for t in device_input_names
        ],
        device=device if target is None else retyped(device, target),
        device_input_names=device_input_names,
        device_outputs=[t for t in flat_outputs if t not in host_tensors],
        updates=updates,
        variables={
            h: variables[recorded[lifted_h]] if lifted_h in recorded else created[lifted_h]
            for h, lifted_h in handles.items()
        },
        outer_variables=outer_variables,
        host_outputs={t: host_tensors[t] for t in flat_outputs if t in host_tensors},
        outputs=flat_outputs,
    )


def _import_host_part(
    host: HostPart, captured: dict[str, tf.Tensor], wanted: list[str]
) -> dict[str, tf.Tensor]:
    """Import the host part into the variant's graph, outside any device context, its
    tables' initialisers added to the package's init op; return the `wanted` tensors."""
    results = tf.graph_util.import_graph_def(
        host.graph_def,
        input_map={t: captured[t] for t in host.inputs},
        return_elements=[*wanted, *host.initializers],
        name="compute_host",
    )
    for initializer in results[len(wanted) :]:
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS, initializer)
    return dict(zip(wanted, results[: len(wanted)], strict=True))


def _recording_getter(
    variables: dict[str, dict[str, Any]], handles: dict[str, str]
) -> Callable[..., Any]:
    def record(getter: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
        requested = tf.as_dtype(kwargs.get("dtype") or tf.float32)
        # Stored float32 whatever `fn` asks (a model written for ctx.dtype asks half); the
        # trace computes in float32 and the retyping decides what becomes half.
        kwargs["dtype"] = tf.float32 if requested.is_floating else requested
        variables.setdefault(name, {**kwargs, "args": args, "name": name})
        # A variable `fn` reuses from an earlier ctx.compute is new to this trace.
        kwargs["reuse"] = tf.compat.v1.AUTO_REUSE
        kwargs["use_resource"] = True  # read through a handle the variant's graph maps
        variable = getter(name, *args, **kwargs)
        handles[variable.handle.name] = name
        return variable

    return record


def _recording_creator(created: dict[str, dict[str, Any]]) -> Callable[..., Any]:
    def record(next_creator: Callable[..., Any], **kwargs: Any) -> Any:
        initial_value = kwargs.get("initial_value")
        if isinstance(initial_value, (tf.Tensor, tf.Variable)):
            # Made in the trace, which the lifted variable cannot read: only a value known
            # while tracing can be replayed.
            value = None
            if isinstance(initial_value, tf.Tensor):
                value = tf.get_static_value(initial_value)
            if value is None:
                name = kwargs.get("name")
                msg = (
                    f"{f'variable {name!r}' if name else 'a tf.Variable'} made inside "
                    "ctx.compute starts from a value computed while tracing it; give it a "
                    "constant or an initializer"
                )
                raise ValueError(msg)
            kwargs["initial_value"] = value
        variable = next_creator(**kwargs)
        created[variable.handle.name] = {
            "created": {k: kwargs[k] for k in _CREATED_ARGUMENTS if kwargs.get(k) is not None},
            # With the name scopes it was made in (a Keras layer's), which replaying drops.
            "name": variable.handle.op.name,
        }
        return variable

    return record


def _variable_in_variant_graph(given: dict[str, Any]) -> Any:
    """The variant graph's variable, made (or reused) as `fn` asked for it."""
    if "created" in given:
        # Named as in the trace, outside the variant graph's name scope.
        with tf.compat.v1.get_default_graph().name_scope(""):
            return tf.Variable(**given["created"], name=given["name"])
    kwargs = {k: given[k] for k in _VARIABLE_ARGUMENTS if k in given}
    root = tf.compat.v1.VariableScope(reuse=given.get("reuse"), name="")
    with tf.compat.v1.variable_scope(root, auxiliary_name_scope=False):
        return tf.compat.v1.get_variable(
            given["name"], *given["args"], dtype=given["dtype"], use_resource=True, **kwargs
        )
