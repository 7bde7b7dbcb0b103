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

A TPU variant is the same computation inside `tpu.rewrite`'s cluster: what the rewrite and
the rest of the Python path make around the computation is taken from that path itself,
run on a stand-in computation of one constant per output, and the computation's nodes get
what `TPUReplicateContext.AddOp` gives an imported op (the cluster's mark, a control input
on the metadata op).

Not assembled (the variant is built in Python, as before): train variants (see
builder/assembled_training.py), sources with a host part (tables), a computation that calls
functions (a loop kept for XLA or a TPU), ops the TPU rewrite logs or refuses, and anything
whose names the Python graph would make unique differently.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import attr_value_pb2, graph_pb2, node_def_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.client import pywrap_tf_session as c_api
from tensorflow.python.framework import c_api_util, ops
from tensorflow.python.tpu import tpu_replication

from smpack.builder.graphs import (
    AssembledGraph,
    VariableSpec,
    VariantGraph,
    check_float32_storage,
    make_init_op,
    serving_signature_defs,
)
from smpack.builder.targets import compute_for, placement
from smpack.manifest import LoadedManifest, Variant
from smpack.model import ModelSpec
from smpack.sources.graph_def import node_name
from smpack.sources.precision import output_dtype
from smpack.sources.savedmodel import ImportedModel, VariablesTemplate, batched

_MODEL_SCOPE = "model"
# Names the Python graph gives nodes it makes after the imports; a source or signature
# name like these would be made unique there, so such a variant is built in Python.
_NAMED_LATER = re.compile(r"^(cast|model|init|init_all_tables|smpack_init|save|host)(_\d+)?$")


class NotAssembled(Exception):  # noqa: N818 -- control flow: build this one in Python
    pass


def assembled_graph(
    loaded: LoadedManifest, imported: ImportedModel, name: str, variant: Variant
) -> VariantGraph | None:
    """Serving variant `name` replaying `imported`, assembled; None to build it in Python."""
    if variant.is_training or imported.host is not None:
        return None
    try:
        return _assembled(loaded, imported, name, variant)
    except NotAssembled:
        return None


def _assembled(
    loaded: LoadedManifest, imported: ImportedModel, name: str, variant: Variant
) -> VariantGraph:
    computation = imported.graph_def_for(variant)
    template = imported.variables_template()
    if computation.library.function or not template.variable_defs or not imported.outputs:
        raise NotAssembled
    _check_names(imported, [node.name for node in template.graph_def.node])
    variables = {
        variable.name: VariableSpec(variable.shape, variable.dtype)
        for variable, _ in template.variable_defs
    }
    check_float32_storage(variables, {"file": loaded.path, "field": f"variants.{name}"})

    first = _TEMPLATE_IMPORTS.get(template)
    added = first.added_attrs() if first is not None else None
    build = _on_tpu if variant.on_tpu else _placed
    graph, results, init_op_name, placed = build(
        imported, variant, computation, template, whole_template=added is None
    )
    known = _TEMPLATE_SHAPES.get(template)
    graph_def, shapes = graph_def_and_shapes(graph, known)
    if known is None:
        names = (node.name for node in template.graph_def.node)
        _TEMPLATE_SHAPES[template] = known = {name: shapes[name] for name in names}
    if added is not None:
        graph_def = _with_template(graph_def, placed, added)
        shapes.update({node.name: known[node.name] for node in placed})
    elif first is None:
        _TEMPLATE_IMPORTS[template] = _TemplateImport(placed, graph_def)
    variable_names = [
        name
        for variable, variable_def in template.variable_defs
        for name in (variable.name, node_name(variable_def.snapshot_name))
    ]
    # One walk over the graph's nodes: the variables' and outputs' taken (before their
    # shapes are added, as the Saver reads them), every node's shapes added.
    wanted = {*variable_names, *results.values()}
    nodes = {}
    for node in graph_def.node:
        # (not `name`: the variant's, which the graph is returned under)
        op_name = node.name
        if op_name in wanted:
            nodes[op_name] = type(node)()
            nodes[op_name].CopyFrom(node)
        if shapes[op_name] is not None:
            node.attr["_output_shapes"].CopyFrom(shapes[op_name])
    variable_nodes = [nodes[name] for name in variable_names]
    defs = [variable_def for _, variable_def in template.variable_defs]
    collections = {}
    for key, chosen in (
        (tf.compat.v1.GraphKeys.GLOBAL_VARIABLES, defs),
        (tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES, [d for d in defs if d.trainable]),
    ):
        if chosen:
            collections[key] = meta_graph_pb2.CollectionDef()
            collections[key].bytes_list.value.extend(d.SerializeToString() for d in chosen)
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
            collections=collections,
            init_op_name=init_op_name,
        ),
    )


def add_input_placeholders(graph_def: Any, inputs: Iterable[Any], batch_size: int | None) -> None:
    """A `Placeholder` per signature input of the source, named by its key, batched as the
    variant asks (what `tf.compat.v1.placeholder` writes)."""
    for tensor in inputs:
        placeholder = graph_def.node.add(name=tensor.key, op="Placeholder")
        placeholder.attr["dtype"].type = tf.as_dtype(tensor.dtype).as_datatype_enum
        shape = tf.TensorShape(batched(tensor.shape, batch_size))
        placeholder.attr["shape"].shape.CopyFrom(shape.as_proto())


# What `_placed` and `_on_tpu` make of a variant: its graph, each output key's node, the
# init op's name, and the template's nodes as placed in it.
_Built = tuple[tf.Graph, dict[str, str], str, list[Any]]


def _placed(
    imported: ImportedModel,
    variant: Variant,
    computation: Any,
    template: VariablesTemplate,
    whole_template: bool,
) -> _Built:
    """The graph of a variant not on a TPU: its computation placed and marked, as
    `targets.placement` puts it; with each output key's node, the init op's name and the
    template's nodes as placed here. Without `whole_template`, only the template's variable
    handles are imported (`_with_template` adds the rest)."""
    device, marks = _placement(variant)
    compute_dtype = tf.as_dtype(variant.precision)
    casts = _Casts(device, marks)
    head = graph_pb2.GraphDef()
    head.versions.CopyFrom(computation.versions)
    add_input_placeholders(head, imported.inputs, variant.batch_size)
    fed = {
        tensor.tensor: casts.add(head, tensor.key, tf.as_dtype(tensor.dtype), compute_dtype)
        or tensor.key
        for tensor in imported.inputs  # without a host part, what the device part reads
    }
    initial_values = set(template.initial_value_ops)
    template_nodes = []
    for node in template.graph_def.node:
        imports = whole_template or node.op == _HANDLE
        placed = head.node.add() if imports else node_def_pb2.NodeDef()
        placed.CopyFrom(node)
        # get_variable makes initial values under `device(None)` (VariablesTemplate.create).
        placed.device = "" if node.name in initial_values else device
        marks.add_to(placed)
        template_nodes.append(placed)
    fed.update({handle: variable for handle, variable in imported.handles.items()})

    def place(node: Any) -> None:
        node.device = device
        marks.add_to(node)

    _add_computation(head, computation, fed, place)

    graph = tf.Graph()
    on_device = [_in_scope(t.tensor) for t in imported.outputs]
    outputs = import_into(graph, head, returning=on_device)
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
    import_into(graph, tail, mapped=dict(zip(on_device, outputs, strict=True)))

    return graph, results, init_op_name, template_nodes


def _on_tpu(
    imported: ImportedModel,
    variant: Variant,
    computation: Any,
    template: VariablesTemplate,
    whole_template: bool,
) -> _Built:
    """The graph of a TPU variant: its computation inside `tpu.rewrite`'s cluster (returned
    as `_placed` returns its graph).

    What the rewrite makes around the computation (replicated inputs, pivot, metadata,
    casts, output identities, replicated outputs) and everything after it is taken from the
    Python path itself, run on a stand-in computation (`_TpuScaffolding`); the computation's
    nodes get what `TPUReplicateContext.AddOp` gives an imported op.
    """
    for tensor in imported.inputs:
        shape = batched(tensor.shape, variant.batch_size)
        if not shape or shape[0] is None:
            raise NotAssembled  # the Python path refuses it (a TPU graph's batch is static)
    returned = {node_name(t.tensor) for t in imported.outputs}
    nodes = {}  # the nodes computing the outputs
    for node in computation.node:
        if node.op in _NOT_ON_TPU or _TPU_REPLICATE in node.attr:
            raise NotAssembled  # the rewrite logs, refuses or nests these its own way
        if node.name in returned:
            nodes[node.name] = node
    if len(nodes) < len(returned):
        raise NotAssembled  # an input returned as it is
    dtypes = []
    for tensor in imported.outputs:
        _, _, index = tensor.tensor.partition(":")
        dtype = output_dtype(nodes[node_name(tensor.tensor)], int(index or 0))
        if not dtype:
            raise NotAssembled  # (checked again after the import)
        dtypes.append(tf.as_dtype(dtype))
    scaffolding = _TpuScaffolding(
        imported,
        variant,
        dtypes=dtypes,
        devices=[nodes[node_name(t.tensor)].device for t in imported.outputs],
    )
    taken = {_base_name(node.name) for node in scaffolding.before + scaffolding.after}
    # Every template node is under its variable's name.
    if any(_base_name(variable.name) in taken for variable, _ in template.variable_defs):
        raise NotAssembled  # the Python graph would name its own nodes around these

    graph_def = graph_pb2.GraphDef()
    graph_def.versions.CopyFrom(computation.versions)
    graph_def.node.extend(scaffolding.before)
    # Imported outside the cluster (`VariablesTemplate.create`), with no device to apply.
    template_nodes = list(template.graph_def.node)
    graph_def.node.extend(n for n in template_nodes if whole_template or n.op == _HANDLE)
    fed = dict(zip(imported.device_inputs, scaffolding.computation_inputs, strict=True))
    fed.update({handle: variable for handle, variable in imported.handles.items()})
    metadata = scaffolding.metadata

    def replicate(node: Any) -> None:
        # Every imported op gets the metadata op the computation's `control_dependencies`
        # name (an imported op's inputs never dominate them), and the cluster's mark.
        node.input.append("^" + metadata.name)
        node.attr[_TPU_REPLICATE].CopyFrom(metadata.attr[_TPU_REPLICATE])

    _add_computation(graph_def, computation, fed, replicate)
    on_device = [_in_scope(t.tensor) for t in imported.outputs]
    graph_def.node.extend(scaffolding.reading(on_device))

    graph = tf.Graph()
    outputs = import_into(graph, graph_def, returning=on_device)
    made = [tf.as_dtype(c_api.TF_OperationOutputType(output)) for output in outputs]
    if made != scaffolding.dtypes:
        raise NotAssembled  # an op definition said less than the import found
    outputs_by_key = {t.key: t.key for t in imported.outputs}
    return graph, outputs_by_key, scaffolding.init_op_name, template_nodes


_TPU_REPLICATE = "_tpu_replicate"
_STAND_IN = "smpack_stand_in"
# Ops `TPUReplicateContext.AddOp` logs as denied or unsupported (its own lists), and
# variables read through references, which it refuses: left to the Python path.
_NOT_ON_TPU = (
    tpu_replication._DENYLISTED_OPS  # noqa: SLF001
    | tpu_replication._UNSUPPORTED_OPS  # noqa: SLF001
    | {"Variable", "VariableV2", "TemporaryVariable"}
)


def _base_name(name: str) -> str:
    """A node name's first part, lowered, without the `_N` suffix that makes names unique."""
    return re.sub(r"_\d+$", "", name.partition("/")[0].lower())


class _TpuScaffolding:
    """A TPU variant's graph built the Python way around a stand-in computation.

    The stand-in is one constant per output, of that output's dtype and on its device,
    imported under `model/` where the source's computation would be: the nodes made before
    it (`before`) and after it are the real graph's, the latter reading the stand-ins
    where the real graph reads the computation's outputs.
    """

    def __init__(
        self,
        imported: ImportedModel,
        variant: Variant,
        dtypes: list[tf.DType],
        devices: list[str],
    ) -> None:
        self.dtypes = dtypes
        stand_ins = graph_pb2.GraphDef()
        for index, (dtype, device) in enumerate(zip(dtypes, devices, strict=True)):
            node = stand_ins.node.add(name=f"{_STAND_IN}_{index}", op="Const", device=device)
            node.attr["dtype"].type = dtype.as_datatype_enum
            node.attr["value"].tensor.dtype = dtype.as_datatype_enum
        computation_inputs: list[str] = []

        def compute(*device_inputs: tf.Tensor) -> list[tf.Tensor]:
            computation_inputs.extend(t.name for t in device_inputs)
            return tf.graph_util.import_graph_def(
                stand_ins,
                return_elements=[f"{node.name}:0" for node in stand_ins.node],
                name=_MODEL_SCOPE,
            )

        graph = tf.Graph()
        with graph.as_default():
            # As `savedmodel.model_function` and `graphs.build_variant_graph` make them.
            placeholders = {
                t.tensor: tf.compat.v1.placeholder(
                    t.dtype, batched(t.shape, variant.batch_size), name=t.key
                )
                for t in imported.inputs
            }
            results = compute_for(variant)(
                compute, *(placeholders[t] for t in imported.device_inputs), retype=False
            )
            for tensor, result in zip(imported.outputs, results, strict=True):
                tf.identity(result, name=tensor.key)
            self.init_op_name = make_init_op().name
        self.computation_inputs = [
            name[: -len(":0")] if name.endswith(":0") else name for name in computation_inputs
        ]
        nodes = list(graph.as_graph_def().node)
        stand_in_nodes = {f"{_MODEL_SCOPE}/{node.name}" for node in stand_ins.node}
        first = next(i for i, node in enumerate(nodes) if node.name in stand_in_nodes)
        self.before = nodes[:first]
        self.after = nodes[first + len(stand_in_nodes) :]
        if {node.name for node in nodes[first : first + len(stand_in_nodes)]} != stand_in_nodes:
            raise NotAssembled
        self.metadata = next(n for n in self.before if n.op == "TPUReplicateMetadata")

    def reading(self, outputs: list[str]) -> list[Any]:
        """The nodes after the computation, reading `outputs` where they read stand-ins."""
        real = {
            f"{_MODEL_SCOPE}/{_STAND_IN}_{index}": output for index, output in enumerate(outputs)
        }
        nodes = []
        for node in self.after:
            copy = type(node)()
            copy.CopyFrom(node)
            copy.input[:] = [_read_from(name, real) for name in node.input]
            nodes.append(copy)
        return nodes


def _read_from(name: str, real: dict[str, str]) -> str:
    control = name.startswith("^")
    node, _, index = name.lstrip("^").partition(":")
    if node not in real:
        return name
    if control or index not in ("", "0"):
        raise NotAssembled  # the stand-ins have one output, read as data
    return real[node]


def _check_names(imported: ImportedModel, variable_nodes: Iterable[str]) -> None:
    for side in (imported.inputs, imported.outputs):
        if len({t.tensor for t in side}) < len(side):
            # Two keys, one tensor: the Python graph feeds both from the last one made.
            raise NotAssembled
    keys = [t.key for t in imported.inputs] + [t.key for t in imported.outputs]
    names = [*keys, *variable_nodes]
    lowered = [name.lower() for name in names]
    if len(set(lowered)) < len(lowered):
        raise NotAssembled  # one name twice: the Python graph makes one unique, or refuses
    if any(_NAMED_LATER.match(name.partition("/")[0]) for name in lowered):
        raise NotAssembled


def _placement(variant: Variant) -> tuple[str, _Marks]:
    """The device string `variant` gives its computation, and the attributes its scopes
    add (XLA marks)."""
    graph = tf.Graph()
    with graph.as_default(), placement(variant):
        probe = tf.no_op()
    marks = node_def_pb2.NodeDef()
    for key, value in probe.node_def.attr.items():
        marks.attr[key].CopyFrom(value)
    return probe.device, _Marks(marks, tuple(marks.attr))


@dataclass(frozen=True)
class _Marks:
    """The attributes a variant's scopes add to each op: `node`, a NodeDef holding only
    those, and their names (`keys`), read once rather than for each of the graph's nodes
    (a generator over the NodeDef's map per node was half the cost of marking one)."""

    node: Any
    keys: tuple[str, ...]

    def add_to(self, node: Any) -> None:
        """Add the marks to `node`'s attributes."""
        if not self.keys:
            return  # (a variant without an XLA mark: most nodes of most builds)
        attrs = node.attr
        for key in self.keys:
            if key in attrs:
                break
        else:
            node.MergeFrom(self.node)
            return
        # An attribute scope sets only what a node does not have already.
        for key in self.keys:
            if key not in attrs:
                attrs[key].CopyFrom(self.node.attr[key])


class _Casts:
    """The casts a variant's device computation starts and ends with, named as `tf.cast`."""

    def __init__(self, device: str, marks: _Marks) -> None:
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
        self._marks.add_to(cast)
        return name


def _in_scope(tensor: str) -> str:
    return f"{_MODEL_SCOPE}/{tensor}"


def _add_computation(
    graph_def: Any, computation: Any, fed: dict[str, str], place: Callable[[Any], None]
) -> None:
    """`computation`'s nodes under `model/`, its inputs and handles read from `fed`, each
    then given what the variant's device context gives it (`place`)."""
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
        place(added)
    if unused:
        raise NotAssembled  # import_graph_def refuses a mapping it cannot use


def import_into(
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
        raise NotAssembled from e  # the Python path reports it as it always did
    finally:
        c_api.TF_DeleteBuffer(serialized)
    scoped = c_api_util.ScopedTFImportGraphDefResults(results)
    return list(c_api.TF_ImportGraphDefResultsReturnOutputs(scoped.results))


# The `_output_shapes` of a variables template's nodes, by name: the same in every graph the
# template is imported into, as their inputs are their own nodes. Read from the first serving
# graph of a build, reused by the others (half a 1,000-variable graph's nodes); kept only as
# long as the template, which the build's source holds.
_TEMPLATE_SHAPES: weakref.WeakKeyDictionary[VariablesTemplate, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)


_HANDLE = "VarHandleOp"


class _TemplateImport:
    """A variables template's nodes as the first serving graph placed them and as TF's
    importer wrote them back, to make a later graph's without importing them again.

    Importing the template is half of importing a 1,000-variable serving graph (0.13-0.15 s
    of 0.26-0.31 s), and what the importer does to its nodes is the same in every graph: it
    adds their ops' default attributes. A later graph imports only the variables' handles
    (what the computation's reads infer their shapes from) and gets the other nodes as
    placed for it, with those attributes added (`_with_template`).
    """

    def __init__(self, placed: list[Any], graph_def: Any) -> None:
        # Read when a second graph needs them: a build of one serving graph never does.
        self._placed: list[Any] | None = placed
        self._graph_def = graph_def
        self._added: list[Any] | None = None

    def added_attrs(self) -> list[Any] | None:
        """For each template node, a NodeDef holding the attributes the importer added to
        it; None if it changed anything else (each later graph then imports the template)."""
        if self._placed is None:
            return self._added
        placed, self._placed = self._placed, None
        written = {node.name: node for node in self._graph_def.node}
        self._graph_def = None
        added = []
        for node in placed:
            imported = written.get(node.name)
            if imported is None or not _only_added_to(node, imported):
                return None
            holder = node_def_pb2.NodeDef()
            for key in imported.attr:
                # (`_output_shapes` is smpack's, added after the import.)
                if key not in node.attr and key != "_output_shapes":
                    holder.attr[key].CopyFrom(imported.attr[key])
            added.append(holder)
        self._added = added
        return added


def _only_added_to(node: Any, imported: Any) -> bool:
    """Whether `imported` is `node` with attributes added, none of its own changed."""
    return (
        imported.op == node.op
        and imported.device == node.device
        and list(imported.input) == list(node.input)
        and all(key in imported.attr and imported.attr[key] == node.attr[key] for key in node.attr)
    )


def _with_template(graph_def: Any, placed: list[Any], added: list[Any]) -> Any:
    """`graph_def`, imported with only the template's handles, with the template's other
    nodes (`placed`, their importer's attributes `added`) where importing them would have
    put them.

    TF's importer adds a GraphDef's nodes in their order, each as soon as its inputs are
    in (the ready node of the lowest index first), so the template, placed in one run after
    the nodes it does not read and before every node reading it, is written in one run in
    its own order; its handles, alone, take the place of that run.
    """
    handles = [node.name for node in placed if node.op == _HANDLE]
    nodes = graph_def.node
    start = next((i for i, node in enumerate(nodes) if node.name == handles[0]), None)
    if start is None or [node.name for node in nodes[start : start + len(handles)]] != handles:
        raise NotAssembled  # not where the template would have been: built in Python
    imported_handles = iter(nodes[start : start + len(handles)])
    whole = graph_pb2.GraphDef()
    whole.versions.CopyFrom(graph_def.versions)
    if graph_def.HasField("library"):
        whole.library.CopyFrom(graph_def.library)
    whole.node.extend(nodes[:start])
    for node, attrs in zip(placed, added, strict=True):
        if node.op == _HANDLE:
            whole.node.append(next(imported_handles))
        else:
            copy = whole.node.add()
            copy.CopyFrom(node)
            copy.MergeFrom(attrs)
    whole.node.extend(nodes[start + len(handles) :])
    return whole


# The first serving graph's template nodes by template (`_TemplateImport`), kept as long as
# the template, as `_TEMPLATE_SHAPES`.
_TEMPLATE_IMPORTS: weakref.WeakKeyDictionary[VariablesTemplate, _TemplateImport] = (
    weakref.WeakKeyDictionary()
)


def graph_def_and_shapes(
    graph: tf.Graph, known: Mapping[str, Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The graph's GraphDef and each node's `_output_shapes` (None: no outputs), the
    inferred shapes `as_graph_def(add_shapes=True)` gives; those of nodes named in `known`
    taken from it."""
    with graph._c_graph.get() as c_graph:  # noqa: SLF001
        # A GraphDef of its own already (`as_graph_def` copies it once more).
        graph_def = c_api.TF_GraphToGraphDefPybind(c_graph)
    if not graph_def.library.function:
        graph_def.ClearField("library")
    shapes = {}
    made: dict[tuple[Any, ...], Any] = {}  # most nodes share a few shapes: each made once
    for c_op in graph.new_operations():
        if known:
            name = c_api.TF_OperationName(c_op)
            if name in known:
                shapes[name] = known[name]
                continue
        # An Operation holding only its outputs: graph registration, device functions and
        # control-flow bookkeeping, what makes import_graph_def slow, are not needed here.
        op = ops.Operation(c_op, _ShapeReader)
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


class _ShapeReader(c_api.PyTensor):
    """An op's output made only to read its inferred shape (`_shape`, from the C++ graph).

    `SymbolicTensor` draws a unique id and looks up a `DType` for every output (a third of
    reading a graph's shapes); neither is read here.
    """

    def __new__(cls, op: Any, value_index: int, dtype: int) -> _ShapeReader:
        return c_api.PyTensor.__new__(cls, op, value_index, dtype, 0)


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
