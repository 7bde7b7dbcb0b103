"""Serving graphs of an imported source, assembled as protos rather than built in Python.

A serving variant of a `savedmodel:` or `keras:` source is the signature's placeholders,
casts into the variant's precision, the variables' nodes (`VariablesTemplate`), the source's
computation under `model/` fed those, casts back to float32, an identity per output and the
init op, the device computation placed and marked for XLA. Built as a Python graph, every
imported node gets a Python `Operation` (and its device functions and attribute scopes run
in Python), and the export walks every node again. Here the nodes are written into one
GraphDef in the order the Python graph makes them, each with the device and XLA mark Python
gives it, and imported into a graph of no Python operations: TensorFlow's C++ importer adds
default attributes, infers shapes and orders each imported part as `import_graph_def`
does. That graph's GraphDef, with its inferred shapes, is what the Python graph's
`as_graph_def(add_shapes=True)` is, and the writer exports it with the shared Saver
(`writer.SharedSavers`). `tests/test_assembled_graphs.py` holds the MetaGraphs to the Python
path's, byte for byte.

Not assembled (the variant is built in Python, as before): train and TPU variants (TF1
gradients and `tpu.rewrite` work on Python graphs), sources with a host part (tables), a
computation that calls functions (a loop kept for XLA), and anything whose names the Python
graph would make unique differently.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2
from tensorflow.python.client import pywrap_tf_session as c_api
from tensorflow.python.framework import c_api_util, ops

from smpack.builder.graphs import (
    AssembledGraph,
    VariableSpec,
    VariantGraph,
    check_float32_storage,
    make_init_op,
    serving_signature_defs,
)
from smpack.builder.targets import placement
from smpack.manifest import LoadedManifest, Variant
from smpack.model import ModelSpec
from smpack.sources.graph_def import node_name
from smpack.sources.savedmodel import ImportedModel, batched

_MODEL_SCOPE = "model"
# Names the Python graph gives nodes it makes after the imports; a source or signature
# name like these would be made unique there, so such a variant is built in Python.
_NAMED_LATER = re.compile(r"^(cast|model|init|init_all_tables|smpack_init|save|host)(_\d+)?$")


class _NotAssembled(Exception):  # noqa: N818 -- control flow: build this one in Python
    pass


def assembled_graph(
    loaded: LoadedManifest, imported: ImportedModel, name: str, variant: Variant
) -> VariantGraph | None:
    """Serving variant `name` replaying `imported`, assembled; None to build it in Python."""
    if variant.is_training or variant.on_tpu or imported.host is not None:
        return None
    try:
        return _assembled(loaded, imported, name, variant)
    except _NotAssembled:
        return None


def _assembled(
    loaded: LoadedManifest, imported: ImportedModel, name: str, variant: Variant
) -> VariantGraph:
    computation = imported.graph_def_for(variant)
    template = imported.variables_template()
    if computation.library.function or not template.variable_defs or not imported.outputs:
        raise _NotAssembled
    if any("_class" in node.attr for node in computation.node):
        raise _NotAssembled  # colocations, which decide devices their own way
    _check_names(imported, [node.name for node in template.graph_def.node])
    variables = {
        variable.name: VariableSpec(variable.shape, variable.dtype)
        for variable, _ in template.variable_defs
    }
    check_float32_storage(variables, {"file": loaded.path, "field": f"variants.{name}"})

    device, marks = _placement(variant)
    compute_dtype = tf.as_dtype(variant.precision)
    casts = _Casts(device, marks)
    head = graph_pb2.GraphDef()
    head.versions.CopyFrom(computation.versions)
    for tensor in imported.inputs:
        placeholder = head.node.add(name=tensor.key, op="Placeholder")
        placeholder.attr["dtype"].type = tf.as_dtype(tensor.dtype).as_datatype_enum
        shape = tf.TensorShape(batched(tensor.shape, variant.batch_size))
        placeholder.attr["shape"].shape.CopyFrom(shape.as_proto())
    fed = {
        tensor.tensor: casts.add(head, tensor.key, tf.as_dtype(tensor.dtype), compute_dtype)
        or tensor.key
        for tensor in imported.inputs  # without a host part, what the device part reads
    }
    initial_values = set(template.initial_value_ops)
    for node in template.graph_def.node:
        placed = head.node.add()
        placed.CopyFrom(node)
        # get_variable makes initial values under `device(None)` (VariablesTemplate.create).
        placed.device = "" if node.name in initial_values else device
        _mark(placed, marks)
    fed.update({handle: variable for handle, variable in imported.handles.items()})
    _add_computation(head, computation, fed, device, marks)

    graph = tf.Graph()
    on_device = [_in_scope(t.tensor) for t in imported.outputs]
    outputs = _imported(graph, head, returning=on_device)
    tail = graph_pb2.GraphDef()
    tail.versions.CopyFrom(head.versions)
    results = {}
    for tensor, output in zip(imported.outputs, outputs, strict=True):
        dtype = tf.dtypes.as_dtype(c_api.TF_OperationOutputType(output))
        cast = casts.add(tail, _in_scope(tensor.tensor), dtype, tf.float32)
        identity = tail.node.add(name=tensor.key, op="Identity")
        identity.input.append(cast or _in_scope(tensor.tensor))
        identity.attr["T"].type = (tf.float32 if cast else dtype).as_datatype_enum
        results[tensor.key] = identity.name
    init_graph = tf.Graph()
    with init_graph.as_default():
        init_op_name = make_init_op().name
    tail.node.extend(init_graph.as_graph_def().node)
    _imported(graph, tail, mapped=dict(zip(on_device, outputs, strict=True)))

    graph_def, shapes = _graph_def_and_shapes(graph)
    nodes = {node.name: node for node in graph_def.node}
    variable_nodes = []
    for variable, variable_def in template.variable_defs:
        for node in (variable.name, node_name(variable_def.snapshot_name)):
            copy = type(nodes[node])()
            copy.CopyFrom(nodes[node])
            variable_nodes.append(copy)
    for node in graph_def.node:
        if shapes[node.name] is not None:
            node.attr["_output_shapes"].CopyFrom(shapes[node.name])
    defs = [variable_def for _, variable_def in template.variable_defs]
    collections = {
        tf.compat.v1.GraphKeys.GLOBAL_VARIABLES: [d.SerializeToString() for d in defs],
        tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES: [
            d.SerializeToString() for d in defs if d.trainable
        ],
    }
    return VariantGraph(
        name=name,
        variant=variant,
        graph=None,
        signature_defs=_signature_defs(loaded, name, imported, variant, nodes, shapes, results),
        init_op=None,
        variables=variables,
        model_variables=list(variables),
        assembled=AssembledGraph(
            graph_def=graph_def,
            variable_nodes=variable_nodes,
            collections={k: v for k, v in collections.items() if v},
            init_op_name=init_op_name,
        ),
    )


def _check_names(imported: ImportedModel, variable_nodes: Iterable[str]) -> None:
    for side in (imported.inputs, imported.outputs):
        if len({t.tensor for t in side}) < len(side):
            # Two keys, one tensor: the Python graph feeds both from the last one made.
            raise _NotAssembled
    keys = [t.key for t in imported.inputs] + [t.key for t in imported.outputs]
    names = [*keys, *variable_nodes]
    lowered = [name.lower() for name in names]
    if len(set(lowered)) < len(lowered):
        raise _NotAssembled  # one name twice: the Python graph makes one unique, or refuses
    if any(_NAMED_LATER.match(name.partition("/")[0]) for name in lowered):
        raise _NotAssembled


def _placement(variant: Variant) -> tuple[str, Any]:
    """The device string `variant` gives its computation, and the attributes its scopes
    add (XLA marks), as a NodeDef holding only those."""
    graph = tf.Graph()
    with graph.as_default(), placement(variant):
        probe = tf.no_op()
    marks = node_def_pb2.NodeDef()
    for key, value in probe.node_def.attr.items():
        marks.attr[key].CopyFrom(value)
    return probe.device, marks


def _mark(node: Any, marks: Any) -> None:
    """Add `marks` (a NodeDef holding only attributes) to `node`'s attributes."""
    if any(key in node.attr for key in marks.attr):
        # An attribute scope sets only what a node does not have already.
        for key, value in marks.attr.items():
            if key not in node.attr:
                node.attr[key].CopyFrom(value)
    else:
        node.MergeFrom(marks)


class _Casts:
    """The casts a variant's device computation starts and ends with, named as `tf.cast`."""

    def __init__(self, device: str, marks: Any) -> None:
        self._device = device
        self._marks = marks
        self._made = 0

    def add(self, graph_def: Any, tensor: str, dtype: tf.DType, to: tf.DType) -> str | None:
        """A cast of floating `tensor` to `to`, if it is not that already."""
        if not dtype.is_floating or dtype == to:
            return None
        name = f"Cast_{self._made}" if self._made else "Cast"
        self._made += 1
        cast = graph_def.node.add(name=name, op="Cast", input=[tensor], device=self._device)
        cast.attr["SrcT"].type = dtype.as_datatype_enum
        cast.attr["DstT"].type = to.as_datatype_enum
        _mark(cast, self._marks)
        return name


def _in_scope(tensor: str) -> str:
    return f"{_MODEL_SCOPE}/{tensor}"


def _add_computation(
    graph_def: Any, computation: Any, fed: dict[str, str], device: str, marks: Any
) -> None:
    """`computation`'s nodes under `model/`, its inputs and handles read from `fed`."""
    unused = set(fed)
    for node in computation.node:
        added = graph_def.node.add()
        added.CopyFrom(node)
        added.name = _in_scope(node.name)
        inputs = []
        for name in node.input:
            if name.startswith("^"):
                inputs.append("^" + _in_scope(name[1:]))
                continue
            tensor = name if ":" in name else f"{name}:0"
            if tensor in fed:
                unused.discard(tensor)
                inputs.append(fed[tensor])
            else:
                inputs.append(_in_scope(name))
        added.input[:] = inputs
        added.device = device
        _mark(added, marks)
    if unused:
        raise _NotAssembled  # import_graph_def refuses a mapping it cannot use


def _imported(
    graph: tf.Graph,
    graph_def: Any,
    returning: list[str] = (),  # type: ignore[assignment]
    mapped: dict[str, Any] | None = None,
) -> list[Any]:
    """Import `graph_def` into `graph`'s C++ graph alone, as `import_graph_def` does.

    Returns the outputs named in `returning`; `mapped` feeds tensors of `graph_def` from
    outputs already in the graph.
    """
    options = c_api_util.ScopedTFImportGraphDefOptions()
    for tensor in returning:
        op, _, index = tensor.partition(":")
        c_api.TF_ImportGraphDefOptionsAddReturnOutput(options.options, op, int(index or 0))
    for tensor, output in (mapped or {}).items():
        op, _, index = tensor.partition(":")
        c_api.TF_ImportGraphDefOptionsAddInputMapping(options.options, op, int(index or 0), output)
    serialized = c_api.TF_NewBufferFromString(graph_def.SerializeToString())
    try:
        with graph._c_graph.get() as c_graph:  # noqa: SLF001
            results = c_api.TF_GraphImportGraphDefWithResults(c_graph, serialized, options.options)
    except tf.errors.InvalidArgumentError as e:
        raise _NotAssembled from e  # the Python path reports it as it always did
    finally:
        c_api.TF_DeleteBuffer(serialized)
    scoped = c_api_util.ScopedTFImportGraphDefResults(results)
    return list(c_api.TF_ImportGraphDefResultsReturnOutputs(scoped.results))


def _graph_def_and_shapes(graph: tf.Graph) -> tuple[Any, dict[str, Any]]:
    """The graph's GraphDef and each node's `_output_shapes` (None: no outputs), the
    inferred shapes `as_graph_def(add_shapes=True)` gives."""
    with graph._c_graph.get() as c_graph:  # noqa: SLF001
        graph_def = graph_pb2.GraphDef()
        graph_def.CopyFrom(c_api.TF_GraphToGraphDefPybind(c_graph))
    if not graph_def.library.function:
        graph_def.ClearField("library")
    shapes = {}
    made: dict[tuple[Any, ...], Any] = {}  # most nodes share a few shapes: each made once
    for c_op in graph.new_operations():
        # An Operation holding only its outputs: graph registration, device functions and
        # control-flow bookkeeping, what makes import_graph_def slow, are not needed here.
        op = ops.Operation(c_op, ops.SymbolicTensor)
        op.graph = graph
        op._init_outputs()  # noqa: SLF001
        # (dims, unknown rank) of each output, from the C++ graph.
        inferred = (output._shape for output in op.outputs)  # noqa: SLF001
        key = tuple(None if unknown else tuple(dims) for dims, unknown in inferred)
        if key and key not in made:
            made[key] = attr_value_pb2.AttrValue()
            made[key].list.shape.extend(tf.TensorShape(shape).as_proto() for shape in key)
        shapes[op.name] = made.get(key)
    return graph_def, shapes


def _signature_defs(
    loaded: LoadedManifest,
    name: str,
    imported: ImportedModel,
    variant: Variant,
    nodes: dict[str, Any],
    shapes: dict[str, Any],
    results: dict[str, str],
) -> dict[str, Any]:
    """The variant's SignatureDefs, over its inputs and outputs made again in a graph alone."""
    with tf.Graph().as_default():
        inputs = {
            t.key: tf.compat.v1.placeholder(
                t.dtype, batched(t.shape, variant.batch_size), name=t.key
            )
            for t in imported.inputs
        }
        outputs = {}
        for key, node in results.items():
            dtype = tf.as_dtype(nodes[node].attr["T"].type)
            shape = tf.TensorShape(shapes[node].list.shape[0])
            outputs[key] = tf.compat.v1.placeholder(dtype, shape, name=key)
        spec = ModelSpec(inputs=inputs, outputs=outputs)
        return serving_signature_defs(loaded, name, variant, spec)
