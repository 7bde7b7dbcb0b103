"""A TF2 SavedModel's signature as an smpack model: its own function graph, replayed per variant.

The signature's function (and every function it calls) is inlined by Grappler into one flat
GraphDef. Its variable handles are cut out and fed, when the graph is imported inside
`ctx.compute`, the handles of package variables smpack creates there, so the variant's
placement, precision (the graph retyped, each read cast, the checkpoint kept float32), XLA
mark and `tpu.rewrite` apply to the imported computation exactly as to a Python model's.
Which checkpoint key each variable restores from is read from the source's own restore
function, the mapping TF's loaders use.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import (
    config_pb2,
    meta_graph_pb2,
    rewriter_config_pb2,
    saved_model_pb2,
)

from smpack.errors import ManifestError, ModelError, PackageError
from smpack.manifest import LoadedManifest, Variant
from smpack.model import ModelContext, ModelSpec
from smpack.package.protos import read_saved_model
from smpack.sources.graph_def import FUNCTION_CALLS, node_name, through_identities
from smpack.sources.host_split import HostPart, split_host
from smpack.sources.op_libraries import check_ops_registered
from smpack.sources.precision import HalfTarget, Retyping, half_target
from smpack.sources.training_mode import (
    composite_inputs,
    register_state_updates,
    trainable_keys,
)

_UNIQUIFIED = re.compile(r"^(?P<base>.+)_\d+$")
# What Grappler lowers functional control flow to: a loop's frames, a branch's switches.
_LOWERED_CONTROL_FLOW = ("Enter", "Switch", "_SwitchN")


@dataclass(frozen=True)
class SourceVariable:
    """One variable the signature reads: its package name and where its value is stored."""

    name: str
    checkpoint_key: str
    shape: tuple[int, ...]
    dtype: str
    # As the source marks it: BN statistics and frozen layers are never trained.
    trainable: bool = True


@dataclass(frozen=True)
class SourceTensor:
    """A signature input or output: its key, the tensor in the flat graph, dtype and shape."""

    key: str
    tensor: str
    dtype: str
    shape: tuple[int | None, ...] | None  # None: unknown rank
    # The composite (`SparseTensor`, `RaggedTensor`) this input is a component of.
    composite: str | None = None


@dataclass
class ImportedModel:
    """A source signature ready to be replayed in any variant's graph."""

    checkpoint: Path
    inputs: list[SourceTensor]
    outputs: list[SourceTensor]
    variables: list[SourceVariable]
    handles: dict[str, str]  # variable handle in the flat graph -> package variable name
    graph_def: graph_pb2.GraphDef  # what runs in ctx.compute: all of it, or the device part
    device_inputs: list[str]  # the flat graph's tensors graph_def reads, in order
    host: HostPart | None = None  # string parsing and tables, kept out of ctx.compute
    host_outputs: set[str] = field(default_factory=set)  # outputs the host part computes
    assets: dict[str, Path] = field(default_factory=dict)  # assets/ name -> the source's file
    _retyped: dict[HalfTarget, graph_pb2.GraphDef] = field(default_factory=dict)
    _retyping: Retyping | None = None  # what every target's retyping reads of graph_def
    # Templates by the variables they are made of, shared by the imports of one source
    # (`training_mode.named_like`): a train import naming its variables as the serving one
    # does reads the serving one's template, not a second one made alike.
    _templates: dict[tuple[SourceVariable, ...], VariablesTemplate] = field(default_factory=dict)

    def variables_template(self) -> VariablesTemplate:
        """The package variables' ops, made once and imported into every variant's graph."""
        key = tuple(self.variables)
        if key not in self._templates:
            self._templates[key] = VariablesTemplate(self.variables)
        return self._templates[key]

    @property
    def has_lowered_control_flow(self) -> bool:
        """Whether a loop or a branch (`tf.cond`, `tf.switch_case`) runs here lowered to TF1
        frames and switches, not as the `While`, `If` or `Case` op the source traced."""
        return any(n.op in _LOWERED_CONTROL_FLOW for n in self.graph_def.node)

    @property
    def keeps_a_call(self) -> bool:
        """Whether a function call is left in the flat graph: one the source marks
        must-compile (a Keras grouped convolution), which Grappler does not inline."""
        return any(n.op in FUNCTION_CALLS for n in self.graph_def.node)

    def graph_def_for(self, variant: Variant) -> graph_pb2.GraphDef:
        """The flat graph computing in `variant`'s precision (float32: the source's own)."""
        target = half_target(variant)
        if target is None:
            return self.graph_def
        if target not in self._retyped:
            if self._retyping is None or self._retyping.graph_def is not self.graph_def:
                self._retyping = Retyping(self.graph_def)
            self._retyped[target] = self._retyping.to(target)
        return self._retyped[target]


def load_saved_model(
    path: Path,
    signature: str,
    where: dict[str, Any],
    imports: Sequence[str] = (),
    *,
    keep_loops: bool = False,
    meta_graph: meta_graph_pb2.MetaGraphDef | None = None,
) -> ImportedModel:
    """Read the `serve` MetaGraph of the TF2 SavedModel at `path` and flatten `signature`.

    `imports` are the modules the manifest imported for the source's custom ops.
    `keep_loops` keeps while loops functional `While` ops, which TF1 gradients can
    differentiate, instead of lowering them to the Enter/Exit frames serving variants use.
    `meta_graph`, if given, is that MetaGraph already read (with a signature added).
    """
    if meta_graph is None:
        meta_graph = serve_meta_graph(path, where)
    check_ops_registered(meta_graph, imports, where)
    signatures = {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}
    if signature not in signatures:
        msg = (
            f"{path} has no signature {signature!r} (signatures: "
            f"{', '.join(sorted(signatures)) or 'none'})"
        )
        raise ModelError(msg, **where)
    signature_def = signatures[signature]
    _check_plain_tensors(signature, signature_def, where)
    restore_op = meta_graph.saver_def.restore_op_name
    init_op = _init_op(meta_graph)
    fetches = [t.name for t in signature_def.outputs.values()]
    fetches += [op for op in (restore_op, init_op) if op]
    flat = _inlined(meta_graph, fetches, keep_loops)
    keys = _restored_keys(flat)
    trainable = trainable_keys(meta_graph, path / "variables" / "variables")
    output_nodes = sorted({node_name(t.name) for t in signature_def.outputs.values()})
    graph_def = tf.compat.v1.graph_util.extract_sub_graph(flat, output_nodes)
    composites = composite_inputs(meta_graph, signature)
    inputs = [_tensor(k, v, composites.get(k)) for k, v in sorted(signature_def.inputs.items())]
    outputs = [_tensor(k, v) for k, v in sorted(signature_def.outputs.items())]
    input_nodes = {node_name(t.tensor) for t in inputs}
    external = input_nodes | {n.name for n in graph_def.node if n.op == "VarHandleOp"}
    assets = {node_name(a.tensor_info.name): a.filename for a in meta_graph.asset_file_def}
    init_node = node_name(init_op) if init_op else None
    checkpoint = str(path / "variables" / "variables")
    split = split_host(flat, graph_def, external, init_node, assets, where, checkpoint)
    graph_def, handles = _cut_variables(split.device, input_nodes)
    in_source = {_shared_name(n) for n in meta_graph.graph_def.node if n.op == "VarHandleOp"}
    names = _readable_names({h: _shared_name(node) for h, node in handles.items()}, in_source)
    variables = []
    for handle, node in sorted(handles.items(), key=lambda kv: names[kv[0]]):
        if handle not in keys:
            msg = f"variable {handle!r} of signature {signature!r} is not in the checkpoint"
            raise ModelError(msg, **where)
        variables.append(
            SourceVariable(
                name=names[handle],
                checkpoint_key=keys[handle],
                shape=tuple(d.size for d in node.attr["shape"].shape.dim),
                dtype=tf.as_dtype(node.attr["dtype"].type).name,
                trainable=keys[handle] in trainable,
            )
        )
    return ImportedModel(
        checkpoint=path / "variables" / "variables",
        inputs=inputs,
        outputs=outputs,
        variables=variables,
        handles={f"{handle}:0": names[handle] for handle in handles},
        graph_def=graph_def,
        device_inputs=split.device_inputs if split.host else [t.tensor for t in inputs],
        host=split.host,
        host_outputs={t.tensor for t in outputs if split.host and split.host.computes(t.tensor)},
        assets={name: path / "assets" / name for name in split.host.assets.values()}
        if split.host
        else {},
    )


def _check_plain_tensors(
    signature: str, signature_def: meta_graph_pb2.SignatureDef, where: dict[str, Any]
) -> None:
    """Refuse a signature returning a RaggedTensor or SparseTensor as one output.

    TF saves such an output as a composite (its TensorInfo names no tensor, only a type
    spec), which only TF2's own loader rebuilds; a package's signatures, like TF Serving's
    requests, name tensors. Composite inputs are saved as their component tensors instead,
    each a plain input.
    """
    for key, info in sorted(signature_def.outputs.items()):
        encoding = info.WhichOneof("encoding")
        if encoding == "name":
            continue
        kind = (
            info.composite_tensor.type_spec.type_spec_class_name
            if encoding == "composite_tensor"
            else "SparseTensor"
        )
        msg = (
            f"output {key!r} of signature {signature!r} is a composite tensor ({kind}), which "
            "a SignatureDef cannot return as one tensor; return its components (a ragged "
            "tensor's .flat_values and .row_splits, a sparse one's .indices, .values and "
            ".dense_shape) or a dense tensor (.to_tensor())"
        )
        raise ModelError(msg, **where)


def _init_op(meta_graph: meta_graph_pb2.MetaGraphDef) -> str | None:
    """The source's init op: TF2's `__saved_model_init_op` signature, or TF1's main op."""
    init = meta_graph.signature_def.get("__saved_model_init_op")
    if init is not None:
        return str(init.outputs["__saved_model_init_op"].name)
    for key in ("saved_model_main_op", "legacy_init_op"):
        if key in meta_graph.collection_def:
            return str(meta_graph.collection_def[key].node_list.value[0])
    return None


def model_function(
    serving: ImportedModel,
    loss: Callable[..., Any] | None,
    loaded: LoadedManifest,
    training: ImportedModel | None = None,
    compiled: ImportedModel | None = None,
) -> Callable[[ModelContext], ModelSpec]:
    """A model function replaying `serving`, or in train variants `training`, with `loss`.

    `compiled`, if given, is `serving` with its loops kept functional, for the variants
    XLA compiles (`xla`, TPU): XLA compiles a `While` op, not a lowered loop's frames.
    """

    def model_fn(ctx: ModelContext) -> ModelSpec:
        where: dict[str, Any] = {"file": loaded.path, "field": f"variants.{ctx.variant}"}
        variant = loaded.spec.variants[ctx.variant]
        if ctx.training and training is not None:
            imported = training
        else:
            imported = replayed_by(variant, serving, compiled)
        placeholders = {
            t.key: tf.compat.v1.placeholder(t.dtype, batched(t.shape, ctx.batch_size), name=t.key)
            for t in imported.inputs
        }

        tensors = {t.tensor: placeholders[t.key] for t in imported.inputs}
        on_device = [t.tensor for t in imported.outputs if t.tensor not in imported.host_outputs]
        if imported.host is not None:
            wanted = [t for t in imported.device_inputs if t not in tensors]
            wanted += [t.tensor for t in imported.outputs if t.tensor in imported.host_outputs]
            tensors.update(_host_tensors(imported.host, wanted, tensors, ctx))

        def compute(*device_inputs: tf.Tensor) -> list[tf.Tensor]:
            variables = imported.variables_template().create(where)
            input_map = dict(zip(imported.device_inputs, device_inputs, strict=True))
            input_map.update({h: variables[name].handle for h, name in imported.handles.items()})
            graph = tf.compat.v1.get_default_graph()
            before = len(graph.get_operations())
            results = tf.graph_util.import_graph_def(
                imported.graph_def_for(variant),
                input_map=input_map,
                return_elements=on_device,
                name="model",
            )
            if ctx.training:
                register_state_updates(graph.get_operations()[before:])
            return results

        if on_device:
            # The graph is retyped for the variant already (ImportedModel.graph_def_for).
            results = ctx.compute(
                compute, *(tensors[t] for t in imported.device_inputs), retype=False
            )
            tensors.update(zip(on_device, results, strict=True))
        elif settings := variant.device_settings:
            msg = (
                "every output of the signature is computed on the host (strings, tables), so "
                f"this variant's {', '.join(settings)} has nothing to act on"
            )
            raise ModelError(msg, **where)
        outputs = {t.key: tf.identity(tensors[t.tensor], name=t.key) for t in imported.outputs}
        if not ctx.training or loss is None:
            return ModelSpec(inputs=placeholders, outputs=outputs)
        labels, value = loss(outputs)
        return ModelSpec(inputs=placeholders, outputs=outputs, labels=labels, loss=value)

    return model_fn


def replayed_by(
    variant: Variant, serving: ImportedModel, compiled: ImportedModel | None
) -> ImportedModel:
    """What a variant not training replays: `compiled` where XLA compiles it, if given."""
    if compiled is not None and (variant.xla or variant.on_tpu):
        return compiled
    return serving


def _host_tensors(
    host: HostPart, wanted: list[str], feeds: dict[str, tf.Tensor], ctx: ModelContext
) -> dict[str, tf.Tensor]:
    """Import the host part outside `ctx.compute`, its tables filled by the package's init op.

    Returns the `wanted` tensors of the host part by their name in the flat graph.
    """
    input_map = {t: feeds[t] for t in host.inputs}
    # ctx.asset's tensor is what every loader rewrites to the package's own assets/ copy.
    input_map.update({t: ctx.asset(name) for t, name in host.assets.items()})
    results = tf.graph_util.import_graph_def(
        host.graph_def,
        input_map=input_map,
        return_elements=[*wanted, *host.initializers],
        name="host",
    )
    for initializer in results[len(wanted) :]:
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.TABLE_INITIALIZERS, initializer)
    return dict(zip(wanted, results[: len(wanted)], strict=True))


def serve_meta_graph(path: Path, where: dict[str, Any]) -> meta_graph_pb2.MetaGraphDef:
    try:
        saved_model = read_saved_model(path, saved_model_pb2.SavedModel)
    except PackageError as e:
        msg = f"{path}: {e.message}"
        raise ModelError(msg, **where) from e
    candidates = [m for m in saved_model.meta_graphs if set(m.meta_info_def.tags) == {"serve"}]
    if len(saved_model.meta_graphs) == 1:
        candidates = list(saved_model.meta_graphs)
    if len(candidates) != 1:
        tags = [",".join(m.meta_info_def.tags) for m in saved_model.meta_graphs]
        msg = f"{path} needs exactly one 'serve' MetaGraph to import (tag sets: {tags})"
        raise ModelError(msg, **where)
    return candidates[0]


def _inlined(
    meta_graph: meta_graph_pb2.MetaGraphDef, fetches: list[str], keep_loops: bool = False
) -> graph_pb2.GraphDef:
    """The graph with every function call inlined (what `convert_to_constants` does)."""
    from tensorflow.python.grappler import tf_optimizer

    item = meta_graph_pb2.MetaGraphDef()
    item.graph_def.CopyFrom(meta_graph.graph_def)
    # A placeholder of unknown rank (`TensorSpec(None)`) is saved without its `shape` attr
    # (the default), and Grappler refuses to import a graph with such a placeholder. Given an
    # explicit unknown shape it imports; the attr is dropped again below, so the flat graph
    # keeps the source's own placeholders (Grappler would have made them scalars).
    shapeless = {
        n.name for n in item.graph_def.node if n.op == "Placeholder" and "shape" not in n.attr
    }
    for node in item.graph_def.node:
        if node.name in shapeless:
            node.attr["shape"].shape.unknown_rank = True
    if keep_loops:
        _inlinable_must_compile(item.graph_def)
    item.collection_def["train_op"].node_list.value.extend(fetches)
    config = config_pb2.ConfigProto()
    if keep_loops:
        # Grappler lowers functional control flow while inlining unless the graph is to
        # run on this executor (MetaOptimizer::LowerControlFlow); nothing else changes.
        config.experimental.executor_type = "SINGLE_THREADED_EXECUTOR"
    rewrite = config.graph_options.rewrite_options
    rewrite.min_graph_nodes = -1  # inline even the tiniest graphs
    # Only inlining: any other rewrite could change the numbers the source computes.
    rewrite.optimizers.append("function")
    rewrite.function_optimization = rewriter_config_pb2.RewriterConfig.AGGRESSIVE
    # One pass inlines every call, nested ones and loop bodies included; Grappler's default
    # second pass gave the same graph on every source tried (15 SavedModels: Keras CNNs,
    # BERT, GPT-2, text, tables, loops; lowered or kept) and cost 10-35% more.
    rewrite.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    flat = tf_optimizer.OptimizeGraph(config, item)
    # Grappler colocates every inlined input with its caller's; those constraints would tie
    # the signature to unrelated functions (the restore function) and to the source's
    # variables, where the variant's own placement must decide.
    for node in flat.node:
        if node.name in shapeless:
            del node.attr["shape"]
        if "_class" in node.attr:
            del node.attr["_class"]
        # The traced function each inlined node came from, named by a process-wide counter
        # (`__inference___call___568`): what else the process traced would be in the package.
        node.experimental_debug_info.ClearField("original_func_names")
    return flat


def _inlinable_must_compile(graph_def: graph_pb2.GraphDef) -> None:
    """Let Grappler inline the functions the source marks must-compile, their ops marked
    compiled in one XLA scope per function.

    Keras compiles what TF's CPU kernels cannot run (a grouped convolution) this way. Kept
    as a call, such a function runs compiled, but TF1 gradients differentiate a call with
    a `SymbolicGradient`, which XLA never compiles: its CPU kernels then reject the
    gradient. Inlined ops keep their marks, and TF1 gradients copy `_XlaCompile` and
    `_XlaScope` from each op to its gradient ops, so forward and backward run compiled.
    """
    must_compile = {
        f.signature.name
        for f in graph_def.library.function
        if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b
    }
    if not must_compile:
        return
    calls = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    for node in calls:
        if "f" in node.attr and node.attr["f"].func.name in must_compile:
            for mark in ("_XlaMustCompile", "_noinline"):
                node.attr.pop(mark, None)
    for function in graph_def.library.function:
        if function.signature.name not in must_compile:
            continue
        for mark in ("_XlaMustCompile", "_noinline"):
            function.attr.pop(mark, None)
        for node in function.node_def:
            node.attr["_XlaCompile"].b = True
            node.attr["_XlaScope"].s = function.signature.name.encode()
            # Read by TF1 gradients with the two above: without it they copy neither.
            node.attr["_XlaSeparateCompiledGradients"].b = False


def _restored_keys(graph_def: graph_pb2.GraphDef) -> dict[str, str]:
    """Variable handle node -> checkpoint key, from the source's restore function."""
    nodes = {n.name: n for n in graph_def.node}
    keys = {}
    for node in graph_def.node:
        if node.op != "AssignVariableOp":
            continue
        handle = through_identities(nodes, node.input[0])
        value = through_identities(nodes, node.input[1])
        if handle is None or value is None:
            continue
        restore = nodes.get(node_name(value))
        if restore is None or restore.op != "RestoreV2":
            continue
        if nodes[node_name(handle)].op != "VarHandleOp":
            continue
        names = tf.make_ndarray(nodes[node_name(restore.input[1])].attr["value"].tensor)
        index = int(value.partition(":")[2] or 0)
        keys[node_name(handle)] = names.flat[index].decode()
    return keys


def _cut_variables(
    graph_def: graph_pb2.GraphDef, inputs: set[str]
) -> tuple[graph_pb2.GraphDef, dict[str, Any]]:
    """Drop the signature's input placeholders and variable handles; return the handles.

    What is left refers to them by name, and `import_graph_def` connects those names to the
    variant's own inputs and variables through its `input_map`. Reads, gathers and control
    flow on the handles stay exactly as the source wrote them.
    """
    handles = {n.name: n for n in graph_def.node if n.op == "VarHandleOp"}
    dropped = set(handles) | inputs
    flat = graph_pb2.GraphDef()
    flat.versions.CopyFrom(graph_def.versions)
    called = set()
    for node in graph_def.node:
        if node.name in dropped:
            continue
        kept = flat.node.add()
        kept.CopyFrom(node)
        del kept.input[:]
        kept.input.extend(i for i in node.input if not (i.startswith("^") and i[1:] in dropped))
        kept.ClearField("device")
        called.add(kept.op)
        # A kept `While` or `If` names its functions in attrs, not as its op type; a `Case`
        # names its branches in a list.
        for value in kept.attr.values():
            if value.WhichOneof("value") == "func":
                called.add(value.func.name)
            elif value.WhichOneof("value") == "list":
                called.update(f.name for f in value.list.func)
    # Functions left after inlining (loop bodies, say) are needed; the rest is dead weight.
    if any(f.signature.name in called for f in graph_def.library.function):
        flat.library.CopyFrom(graph_def.library)
    return flat, handles


def _shared_name(node: Any) -> str:
    return str(node.attr["shared_name"].s.decode() or node.name)


def _readable_names(shared_names: dict[str, str], in_source: set[str]) -> dict[str, str]:
    """Package names: the source's variable names, minus the `_N` TF appends to a taken name.

    The suffix is dropped only where the source graph also holds the bare name (a Keras
    export copies each variable, and the copies it reads get `dense/kernel_1`) and no
    variable of the package has it.
    """
    names: dict[str, str] = {}
    for handle, name in shared_names.items():
        match = _UNIQUIFIED.match(name)
        base = match["base"] if match else None
        free = base not in shared_names.values() and base not in names.values()
        names[handle] = base if base is not None and base in in_source and free else name
    return names


class VariablesTemplate:
    """The ops `get_variable` makes for every source variable, as one GraphDef made once.

    `get_variable` costs milliseconds of Python per variable and variant; importing its
    nodes costs a fraction of that. The nodes are `get_variable`'s own: each distinct
    (shape, dtype) is made once by `get_variable` in a scratch graph and copied under every
    name of that kind, so every variant's graph holds exactly what it would have held.
    """

    _PROTOTYPE = "smpack_prototype"

    def __init__(self, variables: list[SourceVariable]) -> None:
        self.graph_def = graph_pb2.GraphDef()
        self.variable_defs: list[tuple[SourceVariable, Any]] = []
        self.initial_value_ops: list[str] = []
        prototypes: dict[tuple[tuple[int, ...], str], tuple[list[Any], Any, Any]] = {}
        for variable in variables:
            kind = (variable.shape, variable.dtype)
            if kind not in prototypes:
                prototypes[kind] = self._prototype(variable)
            nodes, variable_def, _ = prototypes[kind]
            for node in nodes:
                renamed_node = self._renamed_node(node, variable.name)
                self.graph_def.node.add().CopyFrom(renamed_node)
                if node.name.startswith(f"{self._PROTOTYPE}/Initializer/"):
                    self.initial_value_ops.append(renamed_node.name)
            renamed = type(variable_def)()
            renamed.CopyFrom(variable_def)
            for name in (
                "variable_name",
                "initial_value_name",
                "initializer_name",
                "snapshot_name",
            ):
                setattr(renamed, name, self._renamed(getattr(variable_def, name), variable.name))
            renamed.trainable = _trainable(variable)
            self.variable_defs.append((variable, renamed))
        if prototypes:
            self.graph_def.versions.CopyFrom(next(iter(prototypes.values()))[2])

    def _prototype(self, variable: SourceVariable) -> tuple[list[Any], Any, Any]:
        graph = tf.Graph()
        with graph.as_default():
            made = _variable(dataclasses.replace(variable, name=self._PROTOTYPE))
            variable_def = made.to_proto()
        graph_def = graph.as_graph_def()
        return list(graph_def.node), variable_def, graph_def.versions

    def _renamed(self, name: str, to: str) -> str:
        prefix = self._PROTOTYPE
        if name == prefix or name.startswith((prefix + "/", prefix + ":")):
            return to + name[len(prefix) :]
        if name.startswith("^"):
            return "^" + self._renamed(name[1:], to)
        return name

    def _renamed_node(self, node: Any, to: str) -> Any:
        renamed = type(node)()
        renamed.CopyFrom(node)
        renamed.name = self._renamed(node.name, to)
        renamed.input[:] = [self._renamed(i, to) for i in node.input]
        if "_class" in renamed.attr:
            locations = renamed.attr["_class"].list.s
            locations[:] = [
                b"loc:@" + self._renamed(s.decode()[len("loc:@") :], to).encode() for s in locations
            ]
        if node.op == "VarHandleOp":
            renamed.attr["shared_name"].s = to.encode()
            debug_name = self._renamed(node.attr["debug_name"].s.decode(), to)
            renamed.attr["debug_name"].s = debug_name.encode()
        return renamed

    def create(self, where: dict[str, Any]) -> dict[str, Any]:
        """The variables, imported into the default graph where `get_variable` would put them.

        Like `get_variable`, outside any control flow (a `tpu.rewrite`) and control
        dependencies, under the current device and op attributes (an XLA mark).
        """
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import resource_variable_ops

        graph = tf.compat.v1.get_default_graph()
        names = [variable.name for variable, _ in self.variable_defs]
        with ops.init_scope():
            handles = tf.graph_util.import_graph_def(self.graph_def, return_elements=names, name="")
        taken = [h.name for h, name in zip(handles, names, strict=True) if h.name != name]
        if taken:
            msg = f"the source's variable {taken[0]!r} has the name of another tensor of the graph"
            raise ModelError(msg, **where)
        # get_variable makes initial values under `device(None)`; importing placed them.
        for name in self.initial_value_ops:
            graph.get_operation_by_name(name)._set_device("")
        created = {}
        for variable, variable_def in self.variable_defs:
            made = resource_variable_ops.ResourceVariable(variable_def=variable_def)
            graph.add_to_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES, made)
            if variable_def.trainable:
                graph.add_to_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES, made)
            created[variable.name] = made
        return created


def _trainable(variable: SourceVariable) -> bool:
    return variable.trainable and tf.as_dtype(variable.dtype).is_floating


def _variable(variable: SourceVariable) -> Any:
    return tf.compat.v1.get_variable(
        variable.name,
        variable.shape,
        variable.dtype,  # the checkpoint's dtype; reads are cast to the variant's precision
        # The real values come from the source's checkpoint when the package is written.
        initializer=tf.compat.v1.zeros_initializer(),
        trainable=_trainable(variable),
    )


def check_fixed_batch(
    imported: ImportedModel, batch_size: int | None, where: dict[str, Any]
) -> None:
    """Refuse a batch_size other than an input's fixed first dimension, which `batched`
    would replace: the source computes on batches of its own size, and says so. A sparse or
    ragged argument's components (nonzeros, values, row splits) have no batch to fix."""
    for tensor in imported.inputs:
        if batch_size is not None and tensor.composite is not None:
            msg = (
                f"input {tensor.key!r} of the source's signature is a component of a "
                f"{tensor.composite} argument, whose first dimension is not the batch's, so "
                "batch_size cannot fix it; give this variant no batch_size (a TPU variant "
                "needs one), or export a signature taking dense tensors"
            )
            raise ManifestError(msg, **where)
        if batch_size is None or not tensor.shape or tensor.shape[0] in (None, batch_size):
            continue
        shape = ", ".join("None" if d is None else str(d) for d in tensor.shape)
        msg = (
            f"batch_size is {batch_size}, but input {tensor.key!r} of the source's signature "
            f"has a fixed batch of {tensor.shape[0]} (shape [{shape}]); set batch_size: "
            f"{tensor.shape[0]}, or export the source with shape [None, ...]"
        )
        raise ManifestError(msg, **where)


def batched(
    shape: tuple[int | None, ...] | None, batch_size: int | None
) -> list[int | None] | None:
    """A signature input's placeholder shape: its first dimension the static batch size."""
    if shape is None:
        return None
    if batch_size is None or not shape:
        return list(shape)
    return [batch_size, *shape[1:]]


def _tensor(key: str, info: Any, composite: str | None = None) -> SourceTensor:
    shape = (
        None
        if info.tensor_shape.unknown_rank
        else tuple(None if d.size < 0 else d.size for d in info.tensor_shape.dim)
    )
    return SourceTensor(key, info.name, tf.as_dtype(info.dtype).name, shape, composite)


def restore_map(imported: ImportedModel) -> dict[str, str]:
    """Package variable name -> the source checkpoint key holding its value."""
    return {v.name: v.checkpoint_key for v in imported.variables}
