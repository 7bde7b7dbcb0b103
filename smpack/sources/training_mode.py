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
from smpack.sources.graph_def import FUNCTION_CALLS, node_name

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


def trainable_keys(meta_graph: meta_graph_pb2.MetaGraphDef, checkpoint: Path) -> set[str]:
    """Checkpoint keys of the variables the source marks trainable.

    A SavedModel's object graph (`SavedObjectGraph`) has each variable's `trainable` flag,
    and its checkpoint's `TrackableObjectGraph` has each one's checkpoint key; TF writes
    both from one object graph, so node ids agree.
    """
    reader = tf.train.load_checkpoint(str(checkpoint))
    if not reader.has_tensor(_OBJECT_GRAPH_KEY):
        # Not object-based: nothing says which are frozen, so every variable trains.
        return set(reader.get_variable_to_shape_map())
    stored = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor(_OBJECT_GRAPH_KEY)
    )
    saved = meta_graph.object_graph_def.nodes
    trainable: set[str] = set()
    for saved_node, stored_node in zip(saved, stored.nodes, strict=False):
        if saved_node.WhichOneof("kind") != "variable" or not saved_node.variable.trainable:
            continue
        trainable.update(a.checkpoint_key for a in stored_node.attributes)
    return trainable


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
    training = named_like(_without_custom_gradients(training), serving)
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
    nodes = {n.name: n for n in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    concrete = meta_graph.object_graph_def.concrete_functions
    outer_names = {node_name(t.name) for t in meta_graph.signature_def[signature].outputs.values()}
    outer = nodes.get(next(iter(outer_names))) if len(outer_names) == 1 else None
    if outer is None or outer.op not in FUNCTION_CALLS:
        return None
    wrapper = functions.get(outer.attr["f"].func.name)
    inner_calls = [n for n in wrapper.node_def if n.op in FUNCTION_CALLS] if wrapper else []
    if wrapper is None or len(inner_calls) != 1 or wrapper.signature.name not in concrete:
        return None
    inner = inner_calls[0].attr["f"].func.name
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


def composite_inputs(meta_graph: meta_graph_pb2.MetaGraphDef, signature: str) -> dict[str, str]:
    """Signature input key -> the composite type (`SparseTensor`, `RaggedTensor`) of
    the source function's argument it is a component of, for the inputs that are one.

    TF saves a signature whose function takes a SparseTensor or a RaggedTensor with each of
    its components (indices, values, dense shape; values, row splits) as an input of its
    own; only the traced function's input signature, in the object graph, says which. The
    signature's wrapper function feeds that function its inputs in the order of that input
    signature's leaves, a composite taking `num_flat_components` of them.
    """
    graph = meta_graph.graph_def
    signature_def = meta_graph.signature_def[signature]
    nodes = {n.name: n for n in graph.node}
    functions = {f.signature.name: f for f in graph.library.function}
    outer_names = {node_name(t.name) for t in signature_def.outputs.values()}
    outer = nodes.get(next(iter(outer_names))) if len(outer_names) == 1 else None
    if outer is None or outer.op not in FUNCTION_CALLS:
        return {}
    wrapper = functions.get(outer.attr["f"].func.name)
    inner_calls = [n for n in wrapper.node_def if n.op in FUNCTION_CALLS] if wrapper else []
    concrete = meta_graph.object_graph_def.concrete_functions
    inner = inner_calls[0].attr["f"].func.name if len(inner_calls) == 1 else None
    if wrapper is None or inner not in concrete:
        return {}
    key_of_placeholder = {node_name(i.name): key for key, i in signature_def.inputs.items()}
    key_of_argument = {
        argument.name: key_of_placeholder.get(node_name(fed))
        for argument, fed in zip(wrapper.signature.input_arg, outer.input, strict=False)
    }
    fed = iter(node_name(i) for i in inner_calls[0].input if not i.startswith("^"))
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


def _without_custom_gradients(imported: ImportedModel) -> ImportedModel:
    """`imported` differentiated through its own ops, not `tf.custom_gradient` overrides.

    A custom gradient (Keras's swish, for one) is a Python function registered, under the
    name in an `IdentityN`'s `_gradient_op_type`, by the process that traced the source: in
    another process the name is unknown, in the tracing one it closes over tensors of the
    trace's FuncGraph. Without the attr, `IdentityN` passes gradients to the ops that
    computed its inputs, which autodiff differentiates: the same derivative.
    """
    if not any(_CUSTOM_GRADIENT in node.attr for node in imported.graph_def.node):
        return imported
    graph_def = graph_pb2.GraphDef()
    graph_def.CopyFrom(imported.graph_def)
    for node in graph_def.node:
        if _CUSTOM_GRADIENT in node.attr:
            del node.attr[_CUSTOM_GRADIENT]
    return dataclasses.replace(imported, graph_def=graph_def, _retyped={})


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
