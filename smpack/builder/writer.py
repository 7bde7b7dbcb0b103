"""Writing variant graphs into one SavedModel that shares one checkpoint.

Each distinct graph is exported once, as `SavedModelBuilder` exports it (the graph holding
every variable, through the Saver that writes the variables; a graph assembled as protos,
see builder/assembled.py, with the Saver its Python twin would get), and the SavedModel is
written in one piece. TensorFlow checks neither that the other graphs' variables are in that
checkpoint nor that tag sets are distinct, so this module does, before anything is written.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from smpack.builder.checkpoint_bundle import (
    StreamingSaver,
    read_bundle,
    save_assembled,
    soft_placement,
)
from smpack.builder.default_attrs import strip_default_valued_attrs
from smpack.builder.graphs import VariableSpec, VariantGraph
from smpack.builder.restore_groups import checkpoint_groups, split_restores
from smpack.errors import GraphError, ManifestError, PackageError
from smpack.manifest import LoadedManifest
from smpack.package.wire import length_delimited
from smpack.sources.graph_def import FUNCTION_CALLS
from smpack.sources.model_source import ModelSource

# The SignatureDef every loader runs after restoring (tf.estimator's builder's, and TF2's).
INIT_OP_SIGNATURE_KEY = "__saved_model_init_op"


class SavedModelWriter:
    """Writes variant graphs as the MetaGraphs of the SavedModel at `export_dir`, sharing one
    checkpoint: model variables start from `source.checkpoint`, or from their initializers
    without one.

    While a child assembles some graphs (builder/ahead.py) the build would only wait for it,
    so `write_ahead` writes what the build's own graphs already decide: the checkpoint of
    the one holding every variable, and their MetaGraphs. `write`, given every graph, keeps
    that work where the whole set decides alike and does the rest, redoing what it does not.
    """

    def __init__(self, export_dir: Path, loaded: LoadedManifest, source: ModelSource) -> None:
        self.export_dir = export_dir
        self.loaded = loaded
        self.source = source
        self.savers = SharedSavers()
        # The graph the checkpoint was written from, the Saver that wrote it (the graph is
        # exported with it), and how every graph's restore is split to read it.
        self._first: VariantGraph | None = None
        self._saver: tf.compat.v1.train.Saver | None = None
        self._restore_groups: dict[str, int] = {}
        # Variants sharing one graph (see graphs.built_before) share its exported MetaGraph,
        # its assets included (the copies' `asset_files` are the graph's).
        self._exported: dict[int, Any] = {}

    def write_ahead(self, graphs: list[VariantGraph]) -> None:
        """Write the checkpoint and `graphs`' MetaGraphs now, from the one of `graphs` that
        holds every variable of them, if any; only assembled graphs, whose export leaves
        them as they were (a Python graph's may add a Saver's ops to it, twice if redone).

        Nothing is raised here: errors come in the order building and writing in turn gave
        them, after any of a graph still being built, so `write` does again what failed
        and raises it there."""
        if any(graph.assembled is None for graph in graphs):
            return
        try:
            first = graph_holding_all_variables(graphs, self.loaded.path)
            self._write_variables_from(first)
            for graph in graphs:
                self._exported_once(graph)
        except Exception:  # raised again by `write`, in its place
            self._forget()

    def write(self, graphs: list[VariantGraph], as_text: bool) -> None:
        """Write the SavedModel of `graphs`, every variant's, in manifest order."""
        first = graph_holding_all_variables(graphs, self.loaded.path)
        if first is not self._first:  # not written ahead, or from another graph
            if self._first is not None:
                self._forget()
            self._write_variables_from(first)
        ordered = [first] + [g for g in graphs if g is not first]
        meta_graphs = [(self._exported_once(graph), graph.tags) for graph in ordered]
        _write_saved_model_proto(self.export_dir, meta_graphs, as_text)

    def _write_variables_from(self, first: VariantGraph) -> None:
        self._saver = _write_variables(
            self.export_dir, first, self.loaded, self.source, self.savers
        )
        self._first = first
        # Every graph restores the same checkpoint, so every graph's restore is split alike.
        prefix = self.export_dir / "variables" / "variables"
        # A graph without variables writes no checkpoint (and has no restore to split).
        entries = read_bundle(prefix)[1] if Path(f"{prefix}.index").exists() else {}
        self._restore_groups = checkpoint_groups(entries)

    def _exported_once(self, variant_graph: VariantGraph) -> Any:
        key = id(variant_graph.built)
        if key not in self._exported:
            saver = self._saver if variant_graph is self._first else None
            exported = exported_meta_graph(variant_graph, self.savers, saver)
            split_restores(exported, self._restore_groups)
            _register_assets(exported, variant_graph)
            self._exported[key] = exported
        return self._exported[key]

    def _forget(self) -> None:
        """Undo what was written ahead: the checkpoint, and the exports that read it."""
        shutil.rmtree(self.export_dir / "variables", ignore_errors=True)
        self._first, self._saver, self._restore_groups = None, None, {}
        self._exported.clear()


def _write_variables(
    export_dir: Path,
    variant_graph: VariantGraph,
    loaded: LoadedManifest,
    source: ModelSource,
    savers: SharedSavers,
) -> tf.compat.v1.train.Saver | None:
    """Write the checkpoint of `variant_graph`, which holds every variable, as `variables/`.

    Returns the Saver that wrote it, which the graph is exported with; None for an
    assembled graph.
    """
    prefix = export_dir / "variables" / "variables"
    prefix.parent.mkdir(exist_ok=True)
    keys = None
    if source.checkpoint is not None and variant_graph.model_variables:
        keys = _checkpoint_keys(variant_graph, loaded, source)
    if variant_graph.assembled is not None:
        # Assembled graphs are an imported source's, every model variable from its
        # checkpoint; the others (a train graph's global step and slots) start from their
        # initial values, as StreamingSaver saves them.
        assert source.checkpoint is not None and keys is not None
        fresh = _fresh_variables(variant_graph, keys)
        with _disk_errors():
            save_assembled(
                prefix, source.checkpoint, keys, variant_graph.assembled.graph_def, fresh
            )
        return None
    assert variant_graph.graph is not None
    with (
        variant_graph.graph.as_default(),
        tf.compat.v1.Session(graph=variant_graph.graph, config=soft_placement()) as session,
    ):
        if keys is not None:
            assert source.checkpoint is not None
            saver = savers.streaming(source.checkpoint, keys)
        else:
            session.run(tf.compat.v1.global_variables_initializer())
            saver = _builders_saver()
        with _disk_errors():
            saver.save(session, str(prefix), write_meta_graph=False, write_state=False)
    return saver


def _fresh_variables(
    variant_graph: VariantGraph, keys: dict[str, str]
) -> list[tuple[str, str, int]]:
    """An assembled graph's variables not in the checkpoint, in the order of its global
    variables: (name, initial value tensor, size in bytes)."""
    from tensorflow.core.framework import variable_pb2

    assert variant_graph.assembled is not None
    collection = variant_graph.assembled.collections.get(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    fresh = []
    for serialized in collection.bytes_list.value if collection is not None else []:
        variable_def = variable_pb2.VariableDef.FromString(serialized)
        name = variable_def.variable_name.partition(":")[0]
        if name in keys:
            continue
        spec = variant_graph.variables[name]
        size = math.prod(d or 0 for d in spec.shape) * tf.as_dtype(spec.dtype).size
        fresh.append((name, variable_def.initial_value_name, size))
    return fresh


def exported_meta_graph(
    variant_graph: VariantGraph,
    savers: SharedSavers,
    saver: tf.compat.v1.train.Saver | None = None,
) -> Any:
    """`variant_graph`'s MetaGraph as `SavedModelBuilder` exports it (with `saver`, the one
    that wrote the variables, if given), untagged."""
    # Plain serve graphs carry no placement, so they run wherever they are loaded.
    clear_devices = variant_graph.variant.device is None
    init = meta_graph_pb2.SignatureDef()
    if variant_graph.assembled is not None:
        assembled = variant_graph.assembled
        # An empty graph as the default: exporting a GraphDef reads nothing from it.
        with tf.Graph().as_default():
            saver = _SplicedSaver(*savers.made_for(assembled.variable_nodes))
            exported = saver.export_assembled(assembled.graph_def, clear_devices)
        for key, collection in sorted(assembled.collections.items()):
            exported.collection_def[key].CopyFrom(collection)
        init_op_name = assembled.init_op_name
    else:
        assert variant_graph.graph is not None and variant_graph.init_op is not None
        with variant_graph.graph.as_default():
            saver = saver or savers.for_default_graph() or _builders_saver()
            # What strip_default_attrs=True would strip, for a fraction of TF's cost; a
            # spliced Saver's nodes come stripped, and stripping twice changes nothing.
            exported = saver.export_meta_graph(clear_devices=clear_devices)
            strip_default_valued_attrs(exported)
        init_op_name = variant_graph.init_op.name
    # What `build_tensor_info_from_op` makes of an op: its name, no dtype, no shape.
    init.outputs[INIT_OP_SIGNATURE_KEY].name = init_op_name
    init.outputs[INIT_OP_SIGNATURE_KEY].tensor_shape.unknown_rank = True
    for key, signature_def in {
        **variant_graph.signature_defs,
        INIT_OP_SIGNATURE_KEY: init,
    }.items():
        exported.signature_def[key].CopyFrom(signature_def)
    return exported


def _builders_saver() -> tf.compat.v1.train.Saver:
    """The Saver `SavedModelBuilder` makes when given none: sharded, every saveable."""
    from tensorflow.python.ops import variables

    return tf.compat.v1.train.Saver(
        variables._all_saveable_objects(),  # noqa: SLF001
        sharded=True,
        write_version=tf.compat.v1.train.SaverDef.V2,
        allow_empty=True,
    )


class SharedSavers:
    """One Saver's ops per distinct set of variables, shared by every graph that has it.

    `SavedModelBuilder` builds a sharded Saver in each graph it exports: Python ops for
    every variable, graph after graph. The Saver's ops refer to the variables only by the
    names of their handles and reads, so they are built once, in a scratch graph holding
    copies of just those nodes, and spliced into each export; the MetaGraph is the one the
    builder's own Saver would have given.
    """

    def __init__(self) -> None:
        self._made: dict[tuple[bytes, ...], tuple[Any, list[Any], list[Any]]] = {}

    def for_default_graph(self) -> _SplicedSaver | None:
        """The Saver to export the default graph with; None leaves it to the builder's."""
        graph = tf.compat.v1.get_default_graph()
        stand_ins = variable_nodes(graph)
        # Without variables the builder's Saver is empty and costs nothing.
        if not stand_ins or graph.unique_name("save", mark_as_used=False) != "save":
            return None
        return _SplicedSaver(*self.made_for(stand_ins))

    def made_for(self, stand_ins: list[Any]) -> tuple[Any, list[Any], list[Any]]:
        """The Saver over the variables whose handle and read nodes are `stand_ins`: its
        SaverDef, its nodes and their op defs."""
        key = tuple(node.SerializeToString(deterministic=True) for node in stand_ins)
        if key not in self._made:
            self._made[key] = _saver_nodes(stand_ins)
        return self._made[key]

    def streaming(self, checkpoint: Path, keys: dict[str, str]) -> tf.compat.v1.train.Saver:
        """A `StreamingSaver` of the default graph from `checkpoint`, its ops shared."""
        spliced = self.for_default_graph()
        if spliced is None:
            return StreamingSaver(checkpoint, keys)
        spliced.saving = StreamingSaver(checkpoint, keys, saver_def=spliced.saver_def)
        return spliced


def variable_nodes(graph: tf.Graph) -> list[Any] | None:
    """Each variable's handle and read nodes, which is all a Saver's ops refer to.

    None where the builder's Saver would save something else (saveable objects, reference
    variables, partitioned ones, reads that are not the handle's plain `ReadVariableOp`).
    """
    from tensorflow.python.ops import resource_variable_ops

    if tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS):
        return None
    nodes = []
    for variable in tf.compat.v1.global_variables():
        if not resource_variable_ops.is_resource_variable(variable):
            return None
        if variable._save_slice_info:  # a part, saved as a slice of one tensor  # noqa: SLF001
            return None
        read = variable._graph_element  # what the Saver saves  # noqa: SLF001
        handle = variable.handle
        if read.op.type != "ReadVariableOp" or read.op.inputs[0] is not handle:
            return None
        if handle.op.type != "VarHandleOp":
            return None
        nodes += [handle.op.node_def, read.op.node_def]
    return nodes


# The last nodes of a Saver over one variable: its restoring pair, then the groups.
_ONE_VARIABLE_RESTORE = [
    "save/Identity_1",
    "save/AssignVariableOp",
    "save/restore_shard",
    "save/restore_all",
]


def _saver_nodes(stand_ins: list[Any]) -> tuple[Any, list[Any], list[Any]]:
    """The builder's Saver over `stand_ins`' variables: its SaverDef, nodes and op defs.

    TF's Saver costs milliseconds of Python per variable. With every variable on one device
    (one shard) its ops are the same for any number of variables but for their lists and
    one restoring pair (an `Identity` and an `AssignVariableOp`) per variable, so it is
    built over the first variable alone and widened to all of them.
    """
    handles, reads = stand_ins[0::2], stand_ins[1::2]
    if len({h.device for h in handles}) > 1 or len({r.device for r in reads}) > 1:
        return _built_saver(stand_ins)  # a shard per device
    saver_def, one, op_defs = _built_saver(stand_ins[:2])
    if [node.name for node in one[-4:]] != _ONE_VARIABLE_RESTORE:
        return _built_saver(stand_ins)  # a TensorFlow whose Saver is made differently
    pattern = {node.name: node for node in one}
    # The Saver orders its variables by name.
    pairs = sorted(zip(handles, reads, strict=True), key=lambda pair: pair[0].name)
    dtypes = [handle.attr["dtype"].type for handle, _ in pairs]
    nodes = []
    for node in one:
        if node.name == "save/Identity_1":
            break
        widened = type(node)()
        widened.CopyFrom(node)
        if node.name.endswith(("/tensor_names", "/shape_and_slices")):
            names = node.name.endswith("/tensor_names")
            values = [h.name.encode() if names else b"" for h, _ in pairs]
            widened.attr["value"].tensor.string_val[:] = values
            widened.attr["value"].tensor.tensor_shape.dim[0].size = len(pairs)
            widened.attr["_output_shapes"].list.shape[0].dim[0].size = len(pairs)
        elif node.op == "SaveV2":
            widened.input[3:] = [read.name for _, read in pairs]
            widened.attr["dtypes"].list.type[:] = dtypes
        elif node.op == "RestoreV2":
            widened.attr["dtypes"].list.type[:] = dtypes
            shape = node.attr["_output_shapes"].list.shape[0]
            del widened.attr["_output_shapes"].list.shape[:]
            widened.attr["_output_shapes"].list.shape.extend([shape] * len(pairs))
        nodes.append(widened)
    assigns = []
    for index, ((handle, _), dtype) in enumerate(zip(pairs, dtypes, strict=True)):
        identity = type(pattern["save/Identity_1"])()
        identity.CopyFrom(pattern["save/Identity_1"])
        identity.name = f"save/Identity_{index + 1}"
        identity.input[:] = [f"save/RestoreV2:{index}" if index else "save/RestoreV2"]
        identity.attr["T"].type = dtype
        assign = type(pattern["save/AssignVariableOp"])()
        assign.CopyFrom(pattern["save/AssignVariableOp"])
        assign.name = f"save/AssignVariableOp_{index}" if index else "save/AssignVariableOp"
        assign.input[:] = [handle.name, identity.name]
        assign.attr["dtype"].type = dtype
        nodes += [identity, assign]
        assigns.append(assign.name)
    restore_shard = type(pattern["save/restore_shard"])()
    restore_shard.CopyFrom(pattern["save/restore_shard"])
    # A GraphDef lists control inputs by name.
    restore_shard.input[:] = sorted(f"^{name}" for name in assigns)
    nodes += [restore_shard, pattern["save/restore_all"]]
    return saver_def, nodes, op_defs


def _built_saver(stand_ins: list[Any]) -> tuple[Any, list[Any], list[Any]]:
    """TF's own Saver over `stand_ins`' variables, in a scratch graph."""
    from tensorflow.core.framework import graph_pb2

    graph_def = graph_pb2.GraphDef()
    graph_def.node.extend(stand_ins)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        reads = [graph.get_tensor_by_name(f"{n.name}:0") for n in stand_ins[1::2]]
        saver = tf.compat.v1.train.Saver(
            reads,
            sharded=True,
            write_version=tf.compat.v1.train.SaverDef.V2,
            allow_empty=True,
        )
        exported = saver.export_meta_graph(strip_default_attrs=True)
    nodes = list(exported.graph_def.node)[len(stand_ins) :]
    return saver.saver_def, nodes, list(exported.meta_info_def.stripped_op_list.op)


def stripped_op_list(graph_def: Any) -> Any:
    """TF's `meta_graph.stripped_op_list_for_graph(graph_def)`: the OpDefs of the op types
    `graph_def` uses, sorted by name.

    TF calls two Python functions per node to gather the op types (30 ms of a 15,000-node
    graph, for each distinct graph a build exports); a graph without functions or calls to
    them uses just its nodes' op types, gathered here in one pass.
    """
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.framework import meta_graph, op_def_registry

    used = {node.op for node in graph_def.node}
    # A call names its function by an attribute: TF's op list then follows the call.
    if graph_def.library.function or not used.isdisjoint(FUNCTION_CALLS):
        return meta_graph.stripped_op_list_for_graph(graph_def)
    op_defs = [op_def_registry.get(op) for op in sorted(used)]
    return op_def_pb2.OpList(op=[op_def for op_def in op_defs if op_def is not None])


# The collection `export_meta_graph` rewrites when it clears devices.
_UNBOUND_INPUTS = "unbound_inputs"


class _SplicedSaver(tf.compat.v1.train.Saver):
    """A Saver whose ops are not in the graph: its export adds them, made once elsewhere.

    `saving` (a `StreamingSaver` sharing its SaverDef) writes the variables.
    """

    def __init__(self, saver_def: Any, nodes: list[Any], op_defs: list[Any]) -> None:
        super().__init__(saver_def=saver_def)
        self._nodes = nodes
        self._op_defs = op_defs
        self.saving: tf.compat.v1.train.Saver | None = None

    def save(self, *args: Any, **kwargs: Any) -> Any:
        # The graph cannot run the Saver's own save ops: they are not in it.
        if self.saving is None:
            msg = "a spliced Saver only exports; saving needs a Saver that saves"
            raise RuntimeError(msg)
        return self.saving.save(*args, **kwargs)

    def export_meta_graph(self, *args: Any, clear_devices: bool = False, **kwargs: Any) -> Any:
        # TF clears devices by deep-copying every node in Python (and empties the graph's
        # unbound-inputs collection, which only a graph holding one would notice); clearing
        # the exported nodes in place is the same MetaGraph for a fraction of the cost.
        in_place = clear_devices and not tf.compat.v1.get_collection(_UNBOUND_INPUTS)
        exported = super().export_meta_graph(
            *args, clear_devices=clear_devices and not in_place, **kwargs
        )
        return self._spliced(exported, clear_devices, in_place)

    def export_assembled(self, graph_def: Any, clear_devices: bool) -> Any:
        """What `export_meta_graph(clear_devices=..., strip_default_attrs=True)` gives for a
        graph whose `as_graph_def(add_shapes=True)` is `graph_def` and whose collections
        the caller adds."""
        from tensorflow.python.framework import meta_graph

        exported = meta_graph.create_meta_graph_def(
            meta_info_def=meta_graph_pb2.MetaGraphDef.MetaInfoDef(
                stripped_op_list=stripped_op_list(graph_def)
            ),
            graph_def=graph_def,
            saver_def=self.saver_def,
            collection_list=[],
        )
        strip_default_valued_attrs(exported)
        return self._spliced(exported, clear_devices, in_place=clear_devices)

    def _spliced(self, exported: Any, clear_devices: bool, in_place: bool) -> Any:
        start = 0 if in_place else len(exported.graph_def.node)
        if in_place:
            # TF's copy writes the function library even when it is empty.
            exported.graph_def.library.SetInParent()
        exported.graph_def.node.extend(self._nodes)
        if clear_devices:
            for node in exported.graph_def.node[start:]:
                node.device = ""
        # The graph's ops and the Saver's, sorted by name: TF's stripped_op_list_for_graph.
        used = exported.meta_info_def.stripped_op_list
        op_defs = {op.name: op for op in [*used.op, *self._op_defs]}
        ordered = [op_defs[name] for name in sorted(op_defs)]
        del used.op[:]
        used.op.extend(ordered)
        return exported


@contextlib.contextmanager
def _disk_errors() -> Iterator[None]:
    """TF's file errors (disk full, file-size limit) while writing, as one `PackageError`."""
    try:
        yield
    except tf.errors.OpError as e:
        # TF wraps the OS error as "<path>; <reason>" among lines of graph context.
        lines = [line.strip() for line in e.message.splitlines() if line.strip()]
        detail = next((line for line in lines if "; " in line), lines[0] if lines else str(e))
        reason = detail.rpartition("; ")[2]
        msg = f"cannot write the SavedModel: {reason}; the package was not written"
        raise PackageError(msg) from e


def graph_holding_all_variables(graphs: list[VariantGraph], manifest: Path) -> VariantGraph:
    """The graph whose variables are a superset of every other's, with equal shapes/dtypes."""
    where: dict[str, Any] = {"file": manifest, "field": "variants"}
    union: dict[str, tuple[VariableSpec, str]] = {}
    for graph in graphs:
        for name, spec in graph.variables.items():
            seen = union.setdefault(name, (spec, graph.name))
            if seen[0] != spec:
                msg = (
                    f"variable {name!r} is {_describe(spec)} in variant {graph.name!r} but "
                    f"{_describe(seen[0])} in variant {seen[1]!r}; every variant restores the "
                    "same checkpoint, so shapes and dtypes must agree"
                )
                raise GraphError(
                    msg,
                    **where,
                )
    candidates = [g for g in graphs if g.variables.keys() >= union.keys()]
    if not candidates:
        lacking = {g.name: sorted(union.keys() - g.variables.keys())[:3] for g in graphs}
        msg = (
            "no variant holds every variable, so no single checkpoint can serve them all "
            f"(missing per variant: {lacking}); give one variant (usually train) all of them"
        )
        raise GraphError(
            msg,
            **where,
        )
    # A TPU graph's initialisers may sit inside the TPU computation, which a host without
    # TPUs cannot run, so write the checkpoint from another graph when one qualifies.
    return max(candidates, key=lambda g: not g.variant.on_tpu)


def _describe(spec: VariableSpec) -> str:
    return f"{spec.dtype}{list(spec.shape)}"


def _checkpoint_keys(
    graph: VariantGraph, loaded: LoadedManifest, source: ModelSource
) -> dict[str, str]:
    """Model variable -> its key in the source checkpoint, checked against the checkpoint."""
    checkpoint = str(source.checkpoint)
    _, entries = read_bundle(Path(checkpoint))
    where: dict[str, Any] = {"file": loaded.path, "field": source.weights_field}
    keys = {}
    for name in graph.model_variables:
        key = source.checkpoint_keys.get(name, name)
        if key not in entries:
            msg = f"checkpoint {checkpoint} has no variable {key!r}"
            raise ManifestError(msg, **where)
        entry = entries[key]
        expected = graph.variables[name]
        found = VariableSpec(tuple(d.size for d in entry.shape.dim), tf.as_dtype(entry.dtype).name)
        if found != expected:
            msg = (
                f"checkpoint variable {key!r} is {_describe(found)}, the model's is "
                f"{_describe(expected)}"
            )
            raise ManifestError(msg, **where)
        keys[name] = key
    return keys


def _register_assets(meta_graph: Any, variant_graph: VariantGraph) -> None:
    """Add AssetFileDefs keeping folder structure (TF's builder flattens to basenames)."""
    if not variant_graph.asset_files:
        return
    constants = {node.name: node for node in meta_graph.graph_def.node if node.op == "Const"}
    for tensor_name, filename in sorted(variant_graph.asset_files.items()):
        asset = meta_graph.asset_file_def.add()
        asset.filename = filename
        asset.tensor_info.name = tensor_name
        # Loaders feed this tensor the packaged copy's path; the build-time value was
        # the source file's absolute path, which would make the package depend on
        # where it was built.
        value = constants[tensor_name.partition(":")[0]].attr["value"].tensor
        value.string_val[:] = [filename.encode()]


def _write_saved_model_proto(
    export_dir: Path, meta_graphs: list[tuple[Any, list[str]]], as_text: bool
) -> None:
    if not as_text:
        (export_dir / "saved_model.pb").write_bytes(saved_model_bytes(meta_graphs))
        return
    saved_model = saved_model_pb2.SavedModel(saved_model_schema_version=_SCHEMA_VERSION)
    for untagged, tags in meta_graphs:
        meta_graph = saved_model.meta_graphs.add()
        meta_graph.CopyFrom(untagged)
        meta_graph.meta_info_def.tags.extend(tags)
    (export_dir / "saved_model.pbtxt").write_text(text_format.MessageToString(saved_model))


_SCHEMA_VERSION = 1
_META_GRAPHS_FIELD = saved_model_pb2.SavedModel.DESCRIPTOR.fields_by_name["meta_graphs"].number


def saved_model_bytes(meta_graphs: list[tuple[Any, list[str]]]) -> bytes:
    """The SavedModel holding `meta_graphs` (each untagged, with its tags) as its
    `SerializeToString(deterministic=True)` is, each distinct MetaGraph serialized once.

    Variants sharing one graph share one exported MetaGraph (a 7,000-node GraphDef, say):
    copying it per variant and serializing every copy cost more than exporting it. A
    deterministic serialization writes fields in number order, `meta_info_def` (1, where
    the tags are) first, so a tagged MetaGraph's bytes are its tagged `meta_info_def`'s
    followed by the untagged one's after its `meta_info_def`.
    """
    saved_model = saved_model_pb2.SavedModel(saved_model_schema_version=_SCHEMA_VERSION)
    parts = [saved_model.SerializeToString(deterministic=True)]
    rest: dict[int, bytes] = {}
    for meta_graph, tags in meta_graphs:
        head = meta_graph_pb2.MetaGraphDef()
        if meta_graph.HasField("meta_info_def"):
            head.meta_info_def.CopyFrom(meta_graph.meta_info_def)
        if id(meta_graph) not in rest:
            whole = meta_graph.SerializeToString(deterministic=True)
            untagged = head.SerializeToString(deterministic=True)
            assert whole.startswith(untagged), "a MetaGraph serialized out of field order"
            rest[id(meta_graph)] = whole[len(untagged) :]
        head.meta_info_def.tags.extend(tags)
        tagged = head.SerializeToString(deterministic=True) + rest[id(meta_graph)]
        parts.append(length_delimited(_META_GRAPHS_FIELD, tagged))
    return b"".join(parts)
