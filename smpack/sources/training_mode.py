"""What a train variant of an imported source runs: the source's own training-mode function.

A Keras model is exported with a second endpoint calling it with `training=True` (dropout
on, batch normalisation on batch statistics and updating its moving averages), so the
train graph computes what `model.fit` computes. A TF2 SavedModel may name such a function
(`source.train_signature`); without one its inference function is trained. Either way a
variable the source marks non-trainable (BN statistics, frozen layers, seed state) is
never given to the optimizer: the flag is read from the SavedModel's object graph. The
source function's own assignments (moving averages, a dropout seed's state) are collected
in `UPDATE_OPS`, which the train op runs, as TF1's batch normalisation asks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.protobuf import meta_graph_pb2, struct_pb2, trackable_object_graph_pb2

from smpack.errors import ModelError
from smpack.sources.graph_def import FUNCTION_CALLS, node_name, tensor_name

if TYPE_CHECKING:
    from smpack.sources.savedmodel import ImportedModel

# The endpoint smpack adds to a Keras model's export: its call with training=True.
KERAS_TRAINING_ENDPOINT = "smpack_training_call"
# The signature smpack adds to a TF2 SavedModel for its signature's training-mode twin.
TRAINING_TWIN = "smpack_training_twin"
# The checkpoint tensor holding the TrackableObjectGraph of an object-based checkpoint.
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
STATE_UPDATES = ("AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp")
_CUSTOM_GRADIENT = "_gradient_op_type"
# The gradient of every custom-gradient op whose saved gradient function train variants
# call (`with_saved_gradients`), and the attrs saying which function, how.
_SAVED_GRADIENT = "SmpackSavedGradient"
_GRADIENT_FUNCTION = "_smpack_gradient_function"
_GRADIENT_CAPTURES = "_smpack_gradient_captures"  # how many trailing inputs are captures
_GRADIENT_OF = "_smpack_gradient_of"  # the inputs the function's outputs differentiate
# The function's argument types, as numbers: half precision retypes a list of types.
_GRADIENT_TYPES = "_smpack_gradient_types"


def trainable_keys(meta_graph: meta_graph_pb2.MetaGraphDef, checkpoint: Path) -> set[str]:
    """Checkpoint keys of the variables the source marks trainable.

    A SavedModel's object graph (`SavedObjectGraph`) has each variable's `trainable` flag,
    and its checkpoint's `TrackableObjectGraph` has each one's checkpoint key; TF writes
    both from one object graph, so node ids agree.
    """
    reader = tf.train.load_checkpoint(str(checkpoint))
    stored = _stored_object_graph(reader)
    if stored is None:
        # Not object-based: nothing says which are frozen, so every variable trains.
        return set(reader.get_variable_to_shape_map())
    saved = meta_graph.object_graph_def.nodes
    trainable: set[str] = set()
    for saved_node, stored_node in zip(saved, stored.nodes, strict=False):
        if saved_node.WhichOneof("kind") != "variable" or not saved_node.variable.trainable:
            continue
        trainable.update(a.checkpoint_key for a in stored_node.attributes)
    return trainable


def _stored_object_graph(
    reader: Any,
) -> trackable_object_graph_pb2.TrackableObjectGraph | None:
    """The object graph an object-based checkpoint (`reader`'s) stores, each object's
    checkpoint keys, whose node ids are the SavedModel's object graph's; None for a
    name-based one."""
    if not reader.has_tensor(_OBJECT_GRAPH_KEY):
        return None
    return trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor(_OBJECT_GRAPH_KEY)
    )


def register_state_updates(operations: Iterable[tf.Operation]) -> None:
    """Put the imported function's variable assignments in `UPDATE_OPS` for the train op."""
    for operation in operations:
        if operation.type in STATE_UPDATES:
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, operation)


def training_import(
    path: Path,
    serving: ImportedModel,
    signature: str,
    train_signature: str | None,
    where: dict[str, Any],
    *,
    keras: bool,
    imports: Sequence[str] = (),
) -> tuple[ImportedModel, str]:
    """The function train variants replay, and a sentence saying which one it is.

    Its variables take the names the serving function gives them (same checkpoint key, same
    variable), so every variant shares them.
    """
    from smpack.sources.savedmodel import load_saved_model, serve_meta_graph

    twin = None
    if train_signature is None and not keras:
        meta_graph = serve_meta_graph(path, where)
        twin = add_training_twin(meta_graph, signature)
    if twin is not None:
        training = load_saved_model(
            path, TRAINING_TWIN, where, imports, keep_loops=True, meta_graph=meta_graph
        )
    elif (
        train_signature is None
        and not serving.has_lowered_control_flow
        and not serving.keeps_a_call
    ):
        # Otherwise imported again for gradients: lowered control flow functional, and a
        # must-compile call inlined (its SymbolicGradient would run on CPU kernels).
        training = serving
    else:
        name = train_signature or signature
        training = load_saved_model(path, name, where, imports, keep_loops=True)
    _check_same_interface(serving, training, train_signature or signature, where)
    training = named_like(with_saved_gradients(training, path, where), serving)
    frozen = sum(not v.trainable for v in training.variables)
    if keras:
        description = (
            "the Keras model's training-mode call (training=True): dropout on, batch "
            "normalisation on batch statistics with its moving averages updated"
        )
    elif train_signature is not None:
        description = f"the source's training-mode signature {train_signature!r}"
    elif twin is not None:
        description = (
            f"the source's training-mode function {twin!r} (traced with training=True; "
            f"signature {signature!r} is its training=False trace)"
        )
    else:
        description = f"the source's inference signature {signature!r}"
    return training, f"{description}; {frozen} non-trainable variables frozen"


def add_training_twin(meta_graph: meta_graph_pb2.MetaGraphDef, signature: str) -> str | None:
    """Add a signature `TRAINING_TWIN` to `meta_graph`: `signature`'s function as the source
    traced it with `training=True`. Returns that function's path in the object graph
    (`__call__`, `model.call`), or None if the source traced no such twin.

    A `tf.function` with a `training` argument traced both ways (a Keras 2 model's call, a
    `tf.Module`'s `__call__(x, training)`) keeps both traces in the SavedModel's object
    graph, told apart by `training`'s value in their input signatures. A signature calls a
    trace through a wrapper function; the twin is the trace whose input signature is the
    one of a `training=False` trace like the signature's (same inputs, outputs and captured
    variables) but for `training=True`. The added signature calls a copy of the wrapper
    calling the twin instead. Exactly one twin, or none is used.
    """
    graph = meta_graph.graph_def
    functions = {f.signature.name: f for f in graph.library.function}
    concrete = meta_graph.object_graph_def.concrete_functions
    called = _signature_call(meta_graph, signature)
    if called is None or called.wrapper.signature.name not in concrete:
        return None
    outer, wrapper = called.outer, called.wrapper
    inner = called.inner.attr["f"].func.name
    captures = list(concrete[wrapper.signature.name].bound_inputs)

    def like_inner(name: str) -> bool:
        a, b = functions[inner].signature, functions[name].signature
        return (
            list(concrete[name].bound_inputs) == captures
            and [x.type for x in a.input_arg] == [x.type for x in b.input_arg]
            and [x.type for x in a.output_arg] == [x.type for x in b.output_arg]
        )

    if inner not in functions:
        return None
    twins: dict[str, str] = {}  # concrete function -> its path in the object graph
    for path, node in _object_paths(meta_graph):
        if node.WhichOneof("kind") != "function":
            continue
        names = _arg_names(node.function.function_spec)
        traced = [n for n in node.function.concrete_functions if n in functions and n in concrete]
        for inference in (n for n in traced if n == inner or like_inner(n)):
            for name in traced:
                if like_inner(name) and _training_flipped(
                    concrete[inference].canonicalized_input_signature,
                    concrete[name].canonicalized_input_signature,
                    names,
                ):
                    twins[name] = path
    if len(twins) != 1:
        return None
    ((twin, path),) = twins.items()
    twin_wrapper = graph.library.function.add()
    twin_wrapper.CopyFrom(wrapper)
    twin_wrapper.signature.name = f"{wrapper.signature.name}_{TRAINING_TWIN}"
    for node in twin_wrapper.node_def:
        if node.op in FUNCTION_CALLS:
            node.attr["f"].func.name = twin
    call = graph.node.add()
    call.CopyFrom(outer)
    call.name = f"{outer.name}_{TRAINING_TWIN}"
    call.attr["f"].func.name = twin_wrapper.signature.name
    added = meta_graph.signature_def[TRAINING_TWIN]
    added.CopyFrom(meta_graph.signature_def[signature])
    for info in added.outputs.values():
        info.name = call.name + info.name[len(outer.name) :]
    return path


@dataclasses.dataclass(frozen=True)
class _SignatureCall:
    """How a TF2 signature calls its traced function: the graph's call of the signature's
    wrapper function, that wrapper, and the wrapper's one call of the traced function."""

    outer: Any
    wrapper: Any
    inner: Any


def _signature_call(
    meta_graph: meta_graph_pb2.MetaGraphDef, signature: str
) -> _SignatureCall | None:
    """`signature`'s calls, or None for a signature that does not call one traced function
    through one wrapper (a TF1 graph's)."""
    graph = meta_graph.graph_def
    nodes = {n.name: n for n in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    outer_names = {node_name(t.name) for t in meta_graph.signature_def[signature].outputs.values()}
    outer = nodes.get(next(iter(outer_names))) if len(outer_names) == 1 else None
    if outer is None or outer.op not in FUNCTION_CALLS:
        return None
    wrapper = functions.get(outer.attr["f"].func.name)
    inner_calls = [n for n in wrapper.node_def if n.op in FUNCTION_CALLS] if wrapper else []
    if wrapper is None or len(inner_calls) != 1:
        return None
    return _SignatureCall(outer, wrapper, inner_calls[0])


def composite_inputs(meta_graph: meta_graph_pb2.MetaGraphDef, signature: str) -> dict[str, str]:
    """Signature input key -> the composite type (`SparseTensor`, `RaggedTensor`) of
    the source function's argument it is a component of, for the inputs that are one.

    TF saves a signature whose function takes a SparseTensor or a RaggedTensor with each of
    its components (indices, values, dense shape; values, row splits) as an input of its
    own; only the traced function's input signature, in the object graph, says which. The
    signature's wrapper function feeds that function its inputs in the order of that input
    signature's leaves, a composite taking `num_flat_components` of them.
    """
    signature_def = meta_graph.signature_def[signature]
    concrete = meta_graph.object_graph_def.concrete_functions
    called = _signature_call(meta_graph, signature)
    inner = called.inner.attr["f"].func.name if called is not None else None
    if called is None or inner not in concrete:
        return {}
    key_of_placeholder = {node_name(i.name): key for key, i in signature_def.inputs.items()}
    key_of_argument = {
        argument.name: key_of_placeholder.get(node_name(fed))
        for argument, fed in zip(
            called.wrapper.signature.input_arg, called.outer.input, strict=False
        )
    }
    fed = iter(node_name(i) for i in called.inner.input if not i.startswith("^"))
    composites = {}
    for _, leaf in _leaves(concrete[inner].canonicalized_input_signature):
        kind = leaf.WhichOneof("kind")
        if kind == "tensor_spec_value":
            next(fed, None)
        elif kind == "type_spec_value":
            if not leaf.type_spec_value.num_flat_components:
                return {}  # written by a TF that did not count them: nothing to go by
            for _ in range(leaf.type_spec_value.num_flat_components):
                key = key_of_argument.get(next(fed, ""))
                if key is not None:
                    composites[key] = leaf.type_spec_value.type_spec_class_name.removesuffix("Spec")
    return composites


def _object_paths(meta_graph: meta_graph_pb2.MetaGraphDef) -> Iterator[tuple[str, Any]]:
    """(dotted path from the root object, node) of each object graph node, first path only."""
    nodes = meta_graph.object_graph_def.nodes
    seen = {0}
    pending = [("", 0)]
    while pending:
        path, index = pending.pop(0)
        yield path, nodes[index]
        for child in nodes[index].children:
            if child.node_id not in seen:
                seen.add(child.node_id)
                pending.append((f"{path}.{child.local_name}".lstrip("."), child.node_id))


def _arg_names(function_spec: Any) -> list[str]:
    """The positional argument names in a SavedFunction's FullArgSpec."""
    for field in function_spec.fullargspec.named_tuple_value.values:
        if field.key == "args":
            return [v.string_value for v in field.value.list_value.values]
    return []


def _leaves(value: struct_pb2.StructuredValue, path: tuple[Any, ...] = ()) -> list[Any]:
    """(path, leaf) of each leaf of a nested StructuredValue (tuples, lists, dicts)."""
    kind = value.WhichOneof("kind")
    if kind in ("tuple_value", "list_value"):
        items: Iterable[tuple[Any, Any]] = enumerate(getattr(value, kind).values)
    elif kind == "dict_value":
        items = sorted(value.dict_value.fields.items())
    else:
        return [(path, value)]
    return [leaf for key, item in items for leaf in _leaves(item, (*path, key))]


def _training_flipped(inference: Any, candidate: Any, arg_names: list[str]) -> bool:
    """Whether `candidate`'s input signature is `inference`'s with `training` False -> True.

    Input signatures are (args, kwargs): `training` is found by position or by keyword.
    """
    a, b = _leaves(inference), _leaves(candidate)
    if [path for path, _ in a] != [path for path, _ in b]:
        return False
    differing = [(path, x, y) for (path, x), (_, y) in zip(a, b, strict=True) if x != y]
    if len(differing) != 1:
        return False
    path, before, after = differing[0]
    if before.WhichOneof("kind") != "bool_value" or before.bool_value or not after.bool_value:
        return False
    if path[0] == 1:  # a keyword argument
        return bool(path[1] == "training")
    return len(path) == 2 and path[1] < len(arg_names) and arg_names[path[1]] == "training"


def _check_same_interface(
    serving: ImportedModel, training: ImportedModel, name: str, where: dict[str, Any]
) -> None:
    def interface(imported: ImportedModel) -> tuple[Any, ...]:
        return (
            [(t.key, t.dtype) for t in imported.inputs],
            [(t.key, t.dtype) for t in imported.outputs],
        )

    if interface(serving) != interface(training):
        msg = (
            f"signature {name!r} must take and return what the serving signature does "
            f"(it has {interface(training)}, the serving one {interface(serving)})"
        )
        raise ModelError(msg, **where)


def with_saved_gradients(
    imported: ImportedModel, path: Path, where: dict[str, Any]
) -> ImportedModel:
    """`imported` differentiating each `tf.custom_gradient` with the gradient function the
    SavedModel at `path` saved for it, as TF2's loader does.

    A custom gradient is a Python function registered, under the name in an `IdentityN`'s
    `_gradient_op_type`, by the process that traced the source: in another process the
    name is unknown, in the tracing one it closes over tensors of the trace's FuncGraph.
    `tf.saved_model.save` saves it traced (`library.registered_gradients`), its captures of
    forward tensors named inside the traced function they belong to (object graph
    `captured_tensor`s), and they are found here in the inlined graph under the inlined
    `IdentityN`'s prefix. The op then takes them as extra inputs (passed through, never
    read by the forward computation), so the gradient `_SAVED_GRADIENT` receives them with
    the op. A custom gradient the source did not save (`SaveOptions(
    experimental_custom_gradients=False)`) is differentiated through its ops, as before.
    """
    if not any(_CUSTOM_GRADIENT in node.attr for node in imported.graph_def.node):
        return imported
    from smpack.sources.savedmodel import serve_meta_graph

    meta_graph = serve_meta_graph(path, where)
    library = meta_graph.graph_def.library
    saved = {g.registered_op_type: g.gradient_func for g in library.registered_gradients}
    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(imported.graph_def)
    nodes = {n.name: n for n in graph_def.node}
    # A variable the gradient function reads (tf.recompute_grad's recomputation, say): its
    # handle in the graph, by checkpoint key.
    keys = {v.name: v.checkpoint_key for v in imported.variables}
    by_key = {keys[name]: handle for handle, name in imported.handles.items() if name in keys}
    stored = _stored_object_graph(tf.train.load_checkpoint(str(path / "variables" / "variables")))
    handles = {
        node_id: by_key[attribute.checkpoint_key]
        for node_id, node in enumerate(stored.nodes if stored else [])
        for attribute in node.attributes
        if attribute.checkpoint_key in by_key
    }
    needed: set[str] = set()
    for node in graph_def.node:
        if _CUSTOM_GRADIENT not in node.attr:
            continue
        op_type = node.attr[_CUSTOM_GRADIENT].s.decode()
        del node.attr[_CUSTOM_GRADIENT]
        if op_type not in saved:
            continue
        gradient = _SavedGradient.of(meta_graph, node, op_type, saved[op_type], nodes, handles)
        if isinstance(gradient, str):
            msg = (
                f"the train variant cannot take the source's tf.custom_gradient of op "
                f"{node.name!r} ({op_type}, saved as {saved[op_type]!r}): {gradient}; "
                "training it through its ops would take another step than the source"
            )
            raise ModelError(msg, **where)
        gradient.mark(node)
        needed.add(saved[op_type])
    present = {f.signature.name for f in graph_def.library.function}
    functions = {f.signature.name: f for f in library.function}
    pending = sorted(needed)
    while pending:
        name = pending.pop()
        if name in present:
            continue
        present.add(name)
        graph_def.library.function.add().CopyFrom(functions[name])
        pending += sorted(_called(functions[name], functions))
    return dataclasses.replace(imported, graph_def=graph_def, _retyped={})


@dataclasses.dataclass(frozen=True)
class _SavedGradient:
    """A saved gradient function as one inlined custom-gradient op calls it."""

    function: str
    captures: list[str]  # the forward tensors it captured, in the inlined graph
    argument_types: list[int]  # the op's output gradients', then the captures'
    differentiated: list[int]  # the op's inputs its outputs are the gradients of, in order

    @classmethod
    def of(
        cls,
        meta_graph: meta_graph_pb2.MetaGraphDef,
        node: Any,
        op_type: str,
        function: str,
        nodes: dict[str, Any],
        handles: dict[int, str],
    ) -> _SavedGradient | str:
        """The gradient `function` of inlined op `node`, or why it cannot be called;
        `handles`: each variable's handle in the inlined graph, by object graph node id."""
        library = meta_graph.graph_def.library
        owners = [
            (f, n)
            for f in library.function
            for n in f.node_def
            if _CUSTOM_GRADIENT in n.attr and n.attr[_CUSTOM_GRADIENT].s.decode() == op_type
        ]
        if len(owners) != 1 or not node.name.endswith("/" + owners[0][1].name):
            return "the traced function holding the op was not found"
        owner, traced = owners[0]
        prefix = node.name[: -len(traced.name) - 1]
        concrete = meta_graph.object_graph_def.concrete_functions.get(function)
        if concrete is None:
            return "its inputs and outputs are not in the object graph"
        objects = meta_graph.object_graph_def.nodes
        functions = {f.signature.name: f for f in library.function}
        captures = []
        for node_id in concrete.bound_inputs:
            captured = objects[node_id]
            if captured.WhichOneof("kind") == "variable":
                if node_id not in handles:
                    return "it reads a variable that is not in the graph"
                captures.append(tensor_name(handles[node_id]))
                continue
            if captured.WhichOneof("kind") != "captured_tensor":
                return f"it captures a {captured.WhichOneof('kind')}, not a forward tensor"
            capture = captured.captured_tensor
            holder = functions.get(capture.concrete_function)
            # The op's own function is inlined under `prefix`; one enclosing it (whose
            # tensor the op's function captured in turn) under a parent of `prefix`.
            scopes = [prefix] if holder is owner else _parents(prefix)
            tensor = _inlined_tensor(holder, capture.name, scopes, nodes)
            if tensor is None:
                where = f"{capture.name!r} of {capture.concrete_function!r}"
                return f"its capture {where} is not in the inlined graph"
            captures.append(tensor)
        inputs = [i for i in node.input if not i.startswith("^")]
        arguments = functions[function].signature.input_arg
        if len(arguments) != len(inputs) + len(captures):
            return "it takes other inputs than the op's gradients and its captures"
        leaves = _leaves(concrete.output_signature)
        if len(leaves) != len(inputs):
            return "its outputs are not one per input of the op"
        return cls(
            function=function,
            captures=captures,
            argument_types=[a.type for a in arguments],
            differentiated=[
                i for i, (_, leaf) in enumerate(leaves) if leaf.WhichOneof("kind") != "none_value"
            ],
        )

    def mark(self, node: Any) -> None:
        """Make `node` take the captures as extra inputs and be differentiated by
        `_saved_gradient` calling this function."""
        forward = [i for i in node.input if not i.startswith("^")]
        controls = [i for i in node.input if i.startswith("^")]
        del node.input[:]
        node.input.extend([*forward, *self.captures, *controls])
        node.attr["T"].list.type.extend(self.argument_types[len(forward) :])
        node.attr.pop("_output_shapes", None)  # one per output: TF infers them again
        node.attr[_CUSTOM_GRADIENT].s = _SAVED_GRADIENT.encode()
        node.attr[_GRADIENT_FUNCTION].s = self.function.encode()
        node.attr[_GRADIENT_CAPTURES].i = len(self.captures)
        node.attr[_GRADIENT_OF].list.i.extend(self.differentiated)
        node.attr[_GRADIENT_TYPES].list.i.extend(self.argument_types)


@tf.RegisterGradient(_SAVED_GRADIENT)
def _saved_gradient(op: tf.Operation, *output_gradients: tf.Tensor | None) -> list[Any]:
    """The gradient of a custom-gradient op `with_saved_gradients` marked: its saved
    function called on the op's output gradients (an unconnected one zero, as TF2's loader
    makes it) and the forward tensors it captured, the op's trailing inputs."""
    forward = len(op.inputs) - op.get_attr(_GRADIENT_CAPTURES)
    given = [
        tf.zeros_like(output) if gradient is None else gradient
        for gradient, output in zip(output_gradients[:forward], op.outputs, strict=False)
    ]
    differentiated = list(op.get_attr(_GRADIENT_OF))
    # In the source's types: a half-precision variant computes the op in float16.
    types = [tf.as_dtype(t) for t in op.get_attr(_GRADIENT_TYPES)]
    arguments = [*given, *op.inputs[forward:]]
    results = tf.raw_ops.StatefulPartitionedCall(
        # A variable's handle as it is: no cast of a resource.
        args=[
            a if t == tf.resource else tf.cast(a, t) for a, t in zip(arguments, types, strict=True)
        ],
        Tout=[types[i] for i in differentiated],
        f=op.get_attr(_GRADIENT_FUNCTION).decode(),
    )
    gradients: list[Any] = [None] * len(op.inputs)
    for index, result in zip(differentiated, results, strict=True):
        gradients[index] = tf.cast(result, op.inputs[index].dtype)
    return gradients


def _parents(scope: str) -> list[str]:
    """The scopes enclosing `scope` (`a/b/c`: `a/b`, `a`), innermost first."""
    parts = scope.split("/")
    return ["/".join(parts[:end]) for end in range(len(parts) - 1, 0, -1)]


def _inlined_tensor(
    function: Any, name: str, scopes: list[str], nodes: dict[str, Any]
) -> str | None:
    """Tensor `name` of traced `function` in the inlined graph, `function` inlined under
    the first of `scopes` where it is found; None if it is not there (pruned, or not
    `function`'s).

    Grappler names an inlined node `<scope>/<its name in the function>`; an argument
    becomes an `Identity` of what the caller fed, named by a counter: it is found as the
    input of an inlined op reading it.
    """
    if function is None:
        return None
    op_name, _, index = name.partition(":")
    traced = {n.name: n for n in function.node_def}
    for scope in scopes:
        if any(a.name == op_name for a in function.signature.input_arg):
            for reader in function.node_def:
                inlined = nodes.get(f"{scope}/{reader.name}")
                if op_name in reader.input and inlined is not None and inlined.op == reader.op:
                    return str(inlined.input[list(reader.input).index(op_name)])
        elif op_name in traced:
            inlined = nodes.get(f"{scope}/{op_name}")
            if inlined is not None and inlined.op == traced[op_name].op:
                return f"{scope}/{op_name}:{index or 0}"
    return None


def _called(function: Any, functions: dict[str, Any]) -> set[str]:
    """The library functions `function` calls (as an op or through a function attr)."""
    called = set()
    for node in function.node_def:
        if node.op in functions:
            called.add(node.op)
        for value in node.attr.values():
            if value.HasField("func"):
                called.add(value.func.name)
            called.update(f.name for f in value.list.func)
    return called


def named_like(other: ImportedModel, serving: ImportedModel) -> ImportedModel:
    """`other` (another import of the source) with each variable named as `serving` names
    the same checkpoint key, so every variant shares one variable per key."""
    by_key = {v.checkpoint_key: v.name for v in serving.variables}
    renamed = {v.name: by_key.get(v.checkpoint_key, v.name) for v in other.variables}
    if len(set(renamed.values())) != len(renamed):
        msg = f"variable names of another import collide with the serving ones: {renamed}"
        raise AssertionError(msg)  # smpack's own bug: names come from distinct keys
    return dataclasses.replace(
        other,
        variables=[dataclasses.replace(v, name=renamed[v.name]) for v in other.variables],
        handles={h: renamed[name] for h, name in other.handles.items()},
        _templates=serving._templates,  # noqa: SLF001 -- one template per set of variables
    )
