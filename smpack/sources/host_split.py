"""An imported signature split into the part that stays on the host and the device part.

String parsing, lookup tables and ops XLA has no kernel for cannot run on a TPU or inside an
XLA cluster, and a real TPU serving graph keeps them on the host. The host part is every op
that touches a string or a resource other than a variable (a table, a tokenizer's model),
everything upstream of those, and every op without an XLA kernel
computed only from them and constants (the ragged-to-dense step after a tokenizer, say).
The device part is the rest; the host tensors it reads become the inputs of the variant's
`ctx.compute`, so device pins, half precision, XLA marks and `tpu.rewrite` reach only it.

The host part carries each of its tables' initialisers, taken from the source's own init
op, so the package's init op fills them as loading the source would; a vocabulary file the
source reads is an asset of the package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2

from smpack.errors import ModelError
from smpack.io.tf_quietly import register_xla_kernels
from smpack.sources.graph_def import node_name, tensor_name, through_identities

# Ops reading a checkpoint: a table filled by them holds trained state (a MutableHashTable),
# which would have to be restored from the source's checkpoint.
_CHECKPOINT_READS = ("RestoreV2", "RestoreSlice", "Restore")

# Ops replacing a table's contents: what a restore function fills a MutableHashTable with.
_TABLE_IMPORTS = ("LookupTableImportV2", "LookupTableImport")
# The most a table restored from the checkpoint may hold, stored as constants in every graph
# of the package: a tokenizer's cache of special tokens is a few bytes, and saved_model.pb,
# a protocol buffer, cannot pass 2 GiB.
MAX_RESTORED_TABLE_BYTES = 16 << 20

_Types = tuple[list[tf.DType], list[tf.DType]]  # data input and output dtypes of a node


@dataclass
class HostPart:
    """The host ops of a signature, with the creation and initialisation of its tables."""

    graph_def: graph_pb2.GraphDef
    inputs: list[str]  # signature input tensors the host ops read
    initializers: list[str]  # ops of graph_def the package's init op runs
    assets: dict[str, str]  # tensor fed an asset's path -> the asset's file name
    tables: list[str]  # the op type of each table, for the record

    def computes(self, tensor: str) -> bool:
        """Whether `tensor` is an output of one of the host part's ops."""
        return any(n.name == node_name(tensor) for n in self.graph_def.node)


@dataclass
class Split:
    """The device part, the flat graph's tensors it reads (in order), and the host part."""

    device: graph_pb2.GraphDef
    device_inputs: list[str]
    host: HostPart | None  # None when every op can go to the device


def split_host(
    flat: graph_pb2.GraphDef,
    signature_graph: graph_pb2.GraphDef,
    external: set[str],
    init_op: str | None,
    asset_placeholders: Mapping[str, str],
    where: dict[str, Any],
    checkpoint: str | None = None,
) -> Split:
    """Split `signature_graph`, the signature's ops in the inlined `flat`, at the host's edge.

    `external` names the nodes fed from outside (signature inputs, variable handles); the
    device part keeps them for the caller to cut. `init_op` is the source's init op in
    `flat`; `asset_placeholders` maps the nodes its loaders feed asset paths to the files;
    `checkpoint` is the source's checkpoint prefix, which its restore function (in `flat`, if
    it has one) reads.
    """
    nodes = {n.name: n for n in signature_graph.node}
    types = _tensor_types(signature_graph)
    tables = _table_tensors(nodes, types)
    anchors = {
        name
        for name, (inputs, outputs) in types.items()
        if name not in external
        and (
            tf.string in inputs
            or tf.string in outputs
            or f"{name}:0" in tables
            or any(tensor_name(i) in tables for i in _data(nodes[name]))
        )
    }
    if not anchors:
        return Split(signature_graph, [], None)
    host = _with_ancestors(anchors, nodes, external)
    handles = {
        tensor_name(i)
        for name in nodes
        for i, dtype in zip(_data(nodes[name]), types[name][0], strict=True)
        if dtype == tf.resource and tensor_name(i) not in tables
    }
    _add_host_only_ops(host, nodes, external, handles)
    reading = sorted(n for n in host if any(tensor_name(i) in handles for i in _data(nodes[n])))
    if reading:
        msg = (
            f"op {reading[0]!r} reads a variable upstream of the signature's string or table "
            "ops; smpack keeps those ops on the host and cannot feed them variables"
        )
        raise ModelError(msg, **where)

    device = graph_pb2.GraphDef(versions=signature_graph.versions, library=signature_graph.library)
    read_by_device = {node_name(i) for n in nodes.values() if n.name not in host for i in _data(n)}
    crossing: list[str] = []
    for node in signature_graph.node:
        # Constants the device reads are copied, not fed: XLA needs shapes as constants.
        if node.name in host and not (node.op == "Const" and node.name in read_by_device):
            continue
        kept = device.node.add()
        kept.CopyFrom(node)
        del kept.input[:]
        for i in node.input:
            from_host = node_name(i) in host and nodes[node_name(i)].op != "Const"
            if i.startswith("^"):
                if not from_host:  # the data edges order the device part after the host
                    kept.input.append(i)
                continue
            if from_host or (node_name(i) in external and tensor_name(i) not in handles):
                crossing.append(tensor_name(i))
            kept.input.append(i)
    host_part = _host_part(
        flat, nodes, host, external, init_op, asset_placeholders, where, checkpoint
    )
    return Split(device, list(dict.fromkeys(crossing)), host_part)


def creates_resource(node: Any) -> bool:
    """Whether `node` makes a resource (a table, a variable) rather than passing one on."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node.op)
    if op_def is None or _data(node):
        return False
    return any(arg.type == tf.resource.as_datatype_enum for arg in op_def.output_arg)


def _host_part(
    flat: graph_pb2.GraphDef,
    nodes: dict[str, Any],
    host: set[str],
    external: set[str],
    init_op: str | None,
    asset_placeholders: Mapping[str, str],
    where: dict[str, Any],
    checkpoint: str | None,
) -> HostPart:
    flat_nodes = _asset_variables_read_directly(
        {n.name: n for n in flat.node}, set(asset_placeholders)
    )
    tables = sorted(n for n in host if creates_resource(nodes[n]))
    initializers, filled = set(), set()
    in_init = _with_ancestors({init_op}, flat_nodes, set()) if init_op else set()
    for name in in_init:
        node = flat_nodes[name]
        if node.op == "Identity":
            continue
        for i in _data(node):
            table = through_identities(flat_nodes, i)
            if table is not None and node_name(table) in tables:
                initializers.add(name)
                filled.add(node_name(table))
    # A resource neither filled by the init op nor restored from the checkpoint is what its
    # creation op makes it (a SentencePiece model held in the op's attribute), as TF's own
    # loader leaves it. A table the restore function fills from the checkpoint (a
    # MutableHashTable: keras_hub's BytePairTokenizer caches its special tokens in one) is
    # filled by the package's init op with the contents the checkpoint holds.
    restored = _restored_tables(flat_nodes)
    imported = []
    for table in (t for t in tables if t not in filled and t in restored):
        assert checkpoint is not None  # a graph restoring tables came with its checkpoint
        contents = _checkpoint_contents(table, restored[table], flat_nodes, checkpoint, where)
        imported.extend(contents)
    initializing = _with_ancestors(initializers, flat_nodes, set(asset_placeholders))
    for name in sorted(initializing):
        node = flat_nodes[name]
        if node.op in _CHECKPOINT_READS or node.op in ("Placeholder", "VarHandleOp"):
            msg = (
                f"a table of the signature is initialised from {name!r} ({node.op}), not from "
                "constants or vocabulary files; smpack cannot import it"
            )
            raise ModelError(msg, **where)
    keep = (host | initializing) - external
    graph_def = graph_pb2.GraphDef(versions=flat.versions, library=flat.library)
    for name in (n.name for n in flat.node if n.name in keep):
        kept = graph_def.node.add()
        kept.CopyFrom(flat_nodes[name])
        kept.ClearField("device")
        del kept.input[:]
        # Control edges to ops the host part does not hold (the source's init op's other
        # work, say) would fail the import; data edges to the signature inputs are mapped.
        kept.input.extend(
            i for i in flat_nodes[name].input if not i.startswith("^") or node_name(i) in keep
        )
    graph_def.node.extend(imported)
    read = {tensor_name(i) for n in graph_def.node for i in _data(n) if node_name(i) not in keep}
    return HostPart(
        graph_def=graph_def,
        inputs=sorted(t for t in read if node_name(t) in external),
        initializers=sorted(initializers | {n.name for n in imported if n.op in _TABLE_IMPORTS}),
        assets={
            t: asset_placeholders[node_name(t)]
            for t in sorted(read)
            if node_name(t) in asset_placeholders
        },
        tables=[nodes[t].op for t in tables],
    )


def _restored_tables(nodes: dict[str, Any]) -> dict[str, Any]:
    """The tables the source's restore function fills from its checkpoint, each with the op
    importing its contents."""
    restored = {}
    for node in nodes.values():
        if node.op in _TABLE_IMPORTS:
            reads = _with_ancestors({node.name}, nodes, set())
            table = through_identities(nodes, node.input[0])
            if table is not None and any(nodes[r].op in _CHECKPOINT_READS for r in reads):
                restored[node_name(table)] = node
    return restored


def _checkpoint_contents(
    table: str, restoring: Any, nodes: dict[str, Any], checkpoint: str, where: dict[str, Any]
) -> list[node_def_pb2.NodeDef]:
    """Ops importing into `table` the keys and values `restoring` (the source's restore of
    it) reads from `checkpoint`, as constants."""
    reader = tf.train.load_checkpoint(checkpoint)
    made, size = [], 0
    for role, tensor in (("keys", restoring.input[1]), ("values", restoring.input[2])):
        read = through_identities(nodes, tensor)
        restore = nodes[node_name(read or tensor)]
        if restore.op != "RestoreV2":
            msg = f"the restore of table {table!r} reads {restore.op}, not RestoreV2"
            raise AssertionError(msg)  # the restore functions TF writes read RestoreV2
        keys = tf.make_ndarray(nodes[node_name(restore.input[1])].attr["value"].tensor)
        key = keys.flat[int((read or tensor).partition(":")[2] or 0)].decode()
        constant = node_def_pb2.NodeDef(name=f"{table}/smpack_restored_{role}", op="Const")
        value = reader.get_tensor(key)
        size += sum(map(len, value.flat)) if value.dtype == object else value.nbytes
        if size > MAX_RESTORED_TABLE_BYTES:
            msg = (
                f"table {table!r} ({nodes[table].op}) holds {size:,} bytes or more in the "
                f"source's checkpoint, more than the {MAX_RESTORED_TABLE_BYTES:,} smpack stores "
                "in every graph (saved_model.pb cannot pass 2 GiB); fill it from a vocabulary "
                "file (tf.lookup.TextFileInitializer) instead"
            )
            raise ModelError(msg, **where)
        constant.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        constant.attr["dtype"].type = constant.attr["value"].tensor.dtype
        made.append(constant)
    fill = node_def_pb2.NodeDef(name=f"{table}/smpack_restored", op=restoring.op)
    fill.input.extend([f"{table}:0", made[0].name, made[1].name])
    fill.attr["Tin"].CopyFrom(restoring.attr["Tin"])
    fill.attr["Tout"].CopyFrom(restoring.attr["Tout"])
    return [*made, fill]


def _asset_variables_read_directly(
    nodes: dict[str, Any], asset_placeholders: set[str]
) -> dict[str, Any]:
    """`nodes` with each read of a variable holding an asset's path replaced by the path.

    TF2 keeps an asset's path in a string variable its init op assigns from the placeholder
    the loader feeds; as a package variable it would need a checkpoint entry, so the tables
    read the (loader-rewritten) path itself.
    """
    assigned = {}
    for node in nodes.values():
        if node.op == "AssignVariableOp" and node_name(node.input[1]) in asset_placeholders:
            variable = through_identities(nodes, node.input[0])
            assigned[variable and node_name(variable)] = tensor_name(node.input[1])
    rewritten = dict(nodes)
    for name, node in nodes.items():
        variable = through_identities(nodes, node.input[0]) if node.input else None
        if node.op == "ReadVariableOp" and variable and node_name(variable) in assigned:
            read = node_def_pb2.NodeDef(name=name, op="Identity")
            read.input.append(assigned[node_name(variable)])
            read.attr["T"].type = tf.string.as_datatype_enum
            rewritten[name] = read
    return rewritten


def _add_host_only_ops(
    host: set[str], nodes: dict[str, Any], external: set[str], handles: set[str]
) -> None:
    """Add each op without an XLA kernel computed from host tensors and constants only."""
    compilable = _xla_compilable_ops()
    grown = True
    while grown:
        grown = False
        for name, node in nodes.items():
            if name in host or name in external or node.op in compilable:
                continue
            ancestors = _with_ancestors({name}, nodes, external)
            reads = {tensor_name(i) for a in ancestors for i in _data(nodes[a])}
            if ancestors & host and not reads & handles:
                host.update(ancestors)
                grown = True


_XLA_OPS: set[str] = set()


def _xla_compilable_ops() -> set[str]:
    """Op types XLA has a kernel for (XLA registers them when it first compiles something)."""
    if not _XLA_OPS:
        from tensorflow.python.framework import kernels

        register_xla_kernels()
        _XLA_OPS.update(
            k.op
            for k in kernels.get_all_registered_kernels().kernel
            if k.device_type == "XLA_CPU_JIT"
        )
    return _XLA_OPS


def _tensor_types(graph_def: graph_pb2.GraphDef) -> dict[str, _Types]:
    """Node name -> the dtypes of its data inputs and of its outputs, as TF's importer infers
    them.

    Read from the imported C++ graph alone: Python operations for every node, which
    `import_graph_def` makes, cost ~0.1 ms a node (0.7 s of a 1,000-variable source's load).
    """
    from tensorflow.python.client import pywrap_tf_session as c_api
    from tensorflow.python.framework import c_api_util

    graph = tf.Graph()
    options = c_api_util.ScopedTFImportGraphDefOptions()
    serialized = c_api.TF_NewBufferFromString(graph_def.SerializeToString())
    try:
        with graph._c_graph.get() as c_graph:  # noqa: SLF001
            c_api_util.ScopedTFImportGraphDefResults(
                c_api.TF_GraphImportGraphDefWithResults(c_graph, serialized, options.options)
            )
    finally:
        c_api.TF_DeleteBuffer(serialized)
    types: dict[str, _Types] = {}
    for c_op in graph.new_operations():
        inputs: list[tf.DType] = []
        for index in range(c_api.TF_OperationNumInputs(c_op)):
            data_input = c_api.TF_Input()
            data_input.oper, data_input.index = c_op, index
            inputs.append(tf.as_dtype(c_api.TF_OperationInputType(data_input)))
        outputs = [
            tf.as_dtype(c_api.TF_OperationOutputType(c_api_util.tf_output(c_op, index)))
            for index in range(c_api.TF_OperationNumOutputs(c_op))
        ]
        types[c_api.TF_OperationName(c_op)] = (inputs, outputs)
    return types


def _table_tensors(nodes: dict[str, Any], types: dict[str, _Types]) -> set[str]:
    """Resource tensors that are not variables (tables), and every op's output passing one on."""
    tables = {
        f"{name}:0"
        for name, node in nodes.items()
        if node.op != "VarHandleOp" and creates_resource(node)
    }
    grown = True
    while grown:
        grown = False
        for name, node in nodes.items():
            if not any(tensor_name(i) in tables for i in _data(node)):
                continue
            passed = {f"{name}:{k}" for k, d in enumerate(types[name][1]) if d == tf.resource}
            grown |= not passed <= tables
            tables |= passed
    return tables


def _with_ancestors(names: set[str], nodes: Mapping[str, Any], stop: set[str]) -> set[str]:
    """`names` and every node they depend on (data or control), not crossing `stop`."""
    seen: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in seen or name in stop or name not in nodes:
            continue
        seen.add(name)
        pending.extend(node_name(i) for i in nodes[name].input)
    return seen


def _data(node: Any) -> list[str]:
    return [i for i in node.input if not i.startswith("^")]
