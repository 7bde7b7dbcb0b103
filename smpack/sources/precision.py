"""Half precision for an imported graph, safe by construction.

Retyping every float32 attr of a graph breaks real models: a causal mask built with a
float32 `Range` has no half-precision kernel on XLA, a `-1e9` mask constant becomes `-inf`
in float16, and sums, softmax and normalisation statistics lose what makes them right. So
each node computing in float32 gets one of three classes, following TensorFlow's automatic
mixed precision lists and Keras's mixed-precision layers:

- `half`: the matrix products and convolutions (`HALF_OPS`), and every op that reads a
  `half` tensor. The variant's floating inputs arrive in half precision.
- `float32`: softmax, accumulating reductions, exponentials and powers, and the
  normalisation statistics (`FLOAT32_OPS`; Keras computes its normalisation layers and
  recommends its softmax outputs in float32); ops the target has no half-precision kernel
  for (by the op's definition, or the kernel registry of the variant's device or XLA); ops
  calling a function (a functional `While` or `If`, whose functions are not retyped) and
  the `TensorList`s such a loop reads; and every op that reads such a tensor and no `half`
  one (variance + epsilon, then `Rsqrt`).
- `free`: constants, variable reads, and arithmetic on nothing but those and integers:
  index, shape, range and mask arithmetic. It stays float32.

A tensor consumed by an op of another precision is converted at that edge: constants are
converted in place of the original, anything else is cast. Conversions to float16 saturate
at its largest finite value (as Keras's float16 masks do), so `-1e9` becomes `-65504`.
Variables stay float32 (one checkpoint for every variant): a read is cast where a `half` op
consumes it and used as it is by a float32 op (batch-norm statistics).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, types_pb2
from tensorflow.python.framework import op_def_registry

from smpack.io.tf_quietly import register_xla_kernels
from smpack.manifest import Variant
from smpack.sources.graph_def import calls_function, node_name

_FLOAT = types_pb2.DT_FLOAT
_FLOAT16_MAX = float(np.finfo(np.float16).max)

# The compute-heavy ops half precision is for (TensorFlow's mixed-precision allow list).
HALF_OPS = frozenset(
    {
        "BatchMatMul",
        "BatchMatMulV2",
        "BatchMatMulV3",
        "Conv2D",
        "Conv2DBackpropInput",
        "Conv3D",
        "Conv3DBackpropInputV2",
        "DepthwiseConv2dNative",
        "Einsum",
        "MatMul",
    }
)
# Ops kept in float32 whatever they read.
FLOAT32_OPS = frozenset(
    {
        # softmax: the sum over exponentials, and what Keras advises for outputs
        "Softmax",
        "LogSoftmax",
        "SoftmaxCrossEntropyWithLogits",
        "SparseSoftmaxCrossEntropyWithLogits",
        # accumulating reductions overflow float16 and lose bfloat16's few mantissa bits
        "Mean",
        "Sum",
        "Prod",
        "EuclideanNorm",
        "L2Loss",
        "Cumsum",
        "Cumprod",
        # exponentials and powers overflow float16
        "Exp",
        "Expm1",
        "Log",
        "Log1p",
        "Pow",
        # normalisation statistics: variance and its inverse square root
        "Square",
        "SquaredDifference",
        "Sqrt",
        "Rsqrt",
    }
)
# Ops whose output is (part of) a variable's value, in the variable's own dtype.
VARIABLE_READS = frozenset({"ReadVariableOp", "ResourceGather", "ResourceGatherNd"})

_FREE, _FLOAT32, _HALF = 0, 1, 2  # an op reading several classes takes the highest


@dataclass(frozen=True)
class HalfTarget:
    """A half-precision dtype and the kernel registries whose kernels will run the graph."""

    dtype: int  # types_pb2.DT_HALF or types_pb2.DT_BFLOAT16
    device_types: tuple[str, ...]


def half_target(variant: Variant) -> HalfTarget | None:
    """What `variant` computes in and on, or None for a float32 variant."""
    if variant.precision == "float32":
        return None
    dtype = tf.as_dtype(variant.precision).as_datatype_enum
    device = (variant.device or "").rpartition("/device:")[2].partition(":")[0]
    if variant.on_tpu:
        # TPU kernels are only registered in TPU builds of TensorFlow; XLA:CPU's stand in,
        # as they do when verify compiles the TPU computation.
        devices: tuple[str, ...] = ("XLA_TPU_JIT", "XLA_CPU_JIT")
    elif variant.xla:
        devices = (f"XLA_{device}_JIT",) if device else ("XLA_CPU_JIT", "XLA_GPU_JIT")
    else:
        devices = (device,) if device else ("CPU", "GPU")
    return HalfTarget(dtype, devices)


def retyped(graph_def: graph_pb2.GraphDef, target: HalfTarget) -> graph_pb2.GraphDef:
    """`graph_def` computing in `target.dtype` where that is safe (see the module docstring).

    The tensors it reads but does not define are the inputs of the device computation:
    `ctx.compute` feeds the floating ones in `target.dtype`.
    """
    return Retyping(graph_def).to(target)


class Retyping:
    """What retyping `graph_def` reads of it whatever the target, read once for every target
    (a source's float16 and bfloat16 variants retype one graph): each node's data inputs, the
    tensors it reads from outside, and which nodes compute in float32, with the class of
    those whose class does not depend on the target's kernels."""

    def __init__(self, graph_def: graph_pb2.GraphDef) -> None:
        self.graph_def = graph_def
        # Every node's output dtypes read here: a target's copy of the graph changes only
        # those of the nodes it retypes (`_Types.copy_of`).
        self._types = types = _Types(graph_def, {})
        for name in types.nodes:
            types.output_type(name)
        # Each node's data inputs: only retyping a node changes its own.
        self._reads = {node.name: types.data_inputs(node) for node in graph_def.node}
        self._external = [
            (tensor, wanted)
            for node in graph_def.node
            for _, tensor, wanted in self._reads[node.name]
            if node_name(tensor) not in types.nodes and wanted is not None
        ]
        # (position in graph_def.node, class, or None where the target's kernels decide)
        self._float32: list[tuple[int, int | None]] = []
        # The float32 tensors each node of no fixed class reads: its class follows theirs.
        self._float32_inputs: dict[str, list[str]] = {}
        for position, node in enumerate(graph_def.node):
            if not _has_float32_attr(node):
                continue
            if node.op == "Const" or node.op in VARIABLE_READS:
                fixed: int | None = _FREE
            elif (
                types.op_def(node) is None
                or node.op in FLOAT32_OPS
                # A functional loop or call: its functions are not retyped, so it computes
                # in float32, its half-precision inputs cast at its edges. So do the
                # TensorLists a loop reads (a recurrent layer's time steps): their element
                # dtype must be the one the loop's functions read.
                or calls_function(node)
                or node.op.startswith("TensorList")
            ):
                fixed = _FLOAT32
            else:
                fixed = None
                self._float32_inputs[node.name] = [
                    tensor for _, tensor, wanted in self._reads[node.name] if wanted == _FLOAT
                ]
            self._float32.append((position, fixed))

    def to(self, target: HalfTarget) -> graph_pb2.GraphDef:
        """The graph computing in `target.dtype` where that is safe."""
        graph = graph_pb2.GraphDef()
        graph.CopyFrom(self.graph_def)
        nodes = list(graph.node)
        external = {
            tensor: target.dtype if wanted == _FLOAT else wanted
            for tensor, wanted in self._external
        }
        types = self._types.copy_of(graph, nodes, external)
        reads = dict(self._reads)
        classes = self._classes(nodes, types, _Kernels(target))
        for position, _ in self._float32:
            node = nodes[position]
            if classes[node.name] == _HALF:
                _retype_attrs(node, types.allowed_types(node), target.dtype)
                types.forget_outputs(node)
                reads[node.name] = types.data_inputs(node)
        _convert_edges(types, nodes, reads, target.dtype)
        return graph

    def _classes(self, nodes: list[Any], types: _Types, kernels: _Kernels) -> dict[str, int]:
        """Each node computing in float32 -> its class, to a fixed point (loops are cycles)."""
        classes: dict[str, int] = {}
        following: list[str] = []  # nodes whose class follows their inputs'
        for position, fixed in self._float32:
            node = nodes[position]
            if fixed is not None:
                classes[node.name] = fixed
            elif not kernels.has_half(node, types.op_def(node)):
                classes[node.name] = _FLOAT32
            elif node.op in HALF_OPS:
                classes[node.name] = _HALF
            else:
                classes[node.name] = _FREE
                following.append(node.name)
        changed = True
        while changed:  # classes only rise, so this ends
            changed = False
            for name in following:
                found = max(
                    (types.class_of(tensor, classes) for tensor in self._float32_inputs[name]),
                    default=_FREE,
                )
                if found > classes[name]:
                    classes[name] = found
                    changed = True
        return classes


def _has_float32_attr(node: Any) -> bool:
    return any(
        (attr.WhichOneof("value") == "type" and attr.type == _FLOAT)
        or (attr.WhichOneof("value") == "list" and _FLOAT in attr.list.type)
        for attr in node.attr.values()
    )


def _retype_attrs(node: Any, allowed: dict[str, list[int]], dtype: int) -> None:
    """Float32 type attrs of `node` to `dtype`, where its op definition (`allowed`: the
    dtypes each attr allows, none listed: any) allows `dtype`."""
    for name, attr in node.attr.items():
        if allowed.get(name) and dtype not in allowed[name]:
            continue  # FusedBatchNorm's U: the statistics are float32 by definition
        if attr.WhichOneof("value") == "type" and attr.type == _FLOAT:
            attr.type = dtype
        elif attr.WhichOneof("value") == "list" and _FLOAT in attr.list.type:
            retyped_list = [dtype if t == _FLOAT else t for t in attr.list.type]
            del attr.list.type[:]
            attr.list.type.extend(retyped_list)


def _convert_edges(
    types: _Types,
    nodes: list[Any],
    reads: dict[str, list[tuple[int, str, int | None]]],
    dtype: int,
) -> None:
    """Convert each tensor whose dtype is not the one its consumer (of `nodes`) now reads
    (`reads`: each node's data inputs, read after retyping)."""
    converted: dict[tuple[str, int], str] = {}
    for node in nodes:
        for position, tensor, wanted in reads[node.name]:
            have = types.output_type(tensor)
            if have == wanted or {have, wanted} != {_FLOAT, dtype}:
                continue  # the same dtype, or not a difference of precision
            assert have is not None and wanted is not None  # both are in {_FLOAT, dtype}
            key = (tensor, wanted)
            if key not in converted:
                converted[key] = _converted(types, tensor, have, wanted)
            node.input[position] = converted[key]


def _converted(types: _Types, tensor: str, src: int, dst: int) -> str:
    """A tensor holding `tensor` in `dst`: a converted constant, or a cast (saturating)."""
    name = f"{tensor.replace(':', '/output_')}/smpack_{tf.as_dtype(dst).name}"
    producer = types.nodes.get(node_name(tensor))
    if producer is not None and producer.op == "Const":
        value = tf.make_ndarray(producer.attr["value"].tensor)
        if dst == types_pb2.DT_HALF:
            value = np.clip(value, -_FLOAT16_MAX, _FLOAT16_MAX)
        const = types.add(name, "Const", [f"^{i.lstrip('^')}" for i in producer.input])
        const.attr["dtype"].type = dst
        # Control inputs copied: a constant inside a loop stays in the loop's frame.
        const.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value, tf.as_dtype(dst)))
        return const.name
    if dst == types_pb2.DT_HALF:
        low = _scalar(types, f"{name}/min", -_FLOAT16_MAX, src, tensor)
        high = _scalar(types, f"{name}/max", _FLOAT16_MAX, src, tensor)
        clip = types.add(f"{name}/saturated", "ClipByValue", [tensor, low, high])
        clip.attr["T"].type = src
        tensor = clip.name
    cast = types.add(name, "Cast", [tensor])
    cast.attr["SrcT"].type, cast.attr["DstT"].type = src, dst
    return cast.name


def _scalar(types: _Types, name: str, value: float, dtype: int, beside: str) -> str:
    # Anchored to the tensor it bounds, so inside a loop it joins the loop's frame.
    const = types.add(name, "Const", [f"^{node_name(beside)}"])
    const.attr["dtype"].type = dtype
    const.attr["value"].tensor.CopyFrom(_scalar_tensor(value, dtype))
    return const.name


@functools.cache
def _scalar_tensor(value: float, dtype: int) -> Any:
    """A scalar's TensorProto, only ever copied: made once, not twice per variable read cast
    to float16 (`make_tensor_proto` costs ~0.1 ms a call: 0.2 s, a third of the float16
    retyping of a 1,000-variable source)."""
    return tf.make_tensor_proto(value, tf.as_dtype(dtype))


@dataclass
class _Types:
    """The dtypes a graph's nodes read and produce, from their op definitions and attrs."""

    graph: graph_pb2.GraphDef
    external: dict[str, int]
    nodes: dict[str, Any] = field(init=False)
    # By op type, and by node (until `forget_outputs`): a graph has few op types, and each
    # node's outputs are read once per consumer.
    _op_defs: dict[str, Any] = field(init=False, default_factory=dict)
    _allowed: dict[str, dict[str, list[int]]] = field(init=False, default_factory=dict)
    _outputs: dict[str, list[int]] = field(init=False, default_factory=dict)

    _names: list[str] = field(init=False)  # of the graph's nodes, in order

    def __post_init__(self) -> None:
        self._names = [n.name for n in self.graph.node]
        self.nodes = dict(zip(self._names, self.graph.node, strict=True))

    def copy_of(
        self, graph: graph_pb2.GraphDef, nodes: list[Any], external: dict[str, int]
    ) -> _Types:
        """The types of `graph`, a copy of this one's graph before any `add` (`nodes`: its
        nodes): what this one read of its nodes is kept (until `forget_outputs`), not read
        again."""
        copy = _Types.__new__(_Types)
        copy.graph, copy.external, copy._names = graph, external, self._names
        copy.nodes = dict(zip(self._names, nodes, strict=True))
        copy._op_defs, copy._allowed = self._op_defs, self._allowed
        copy._outputs = dict(self._outputs)
        return copy

    def op_def(self, node: Any) -> Any:
        if node.op not in self._op_defs:
            self._op_defs[node.op] = op_def_registry.get(node.op)
        return self._op_defs[node.op]

    def allowed_types(self, node: Any) -> dict[str, list[int]]:
        """The dtypes each attr of `node`'s op definition allows (none listed: any)."""
        if node.op not in self._allowed:
            attrs = self.op_def(node).attr
            self._allowed[node.op] = {a.name: list(a.allowed_values.list.type) for a in attrs}
        return self._allowed[node.op]

    def add(self, name: str, op: str, inputs: list[str]) -> Any:
        node = self.graph.node.add()
        node.name, node.op = name, op
        node.input.extend(inputs)
        self.nodes[name] = node
        return node

    def data_inputs(self, node: Any) -> list[tuple[int, str, int | None]]:
        """(position in node.input, tensor, dtype the node reads it as) of each data input."""
        op_def = self.op_def(node)
        wanted = _arg_types(node, op_def.input_arg) if op_def is not None else []
        inputs = []
        index = 0
        for position, tensor in enumerate(node.input):
            if tensor.startswith("^"):
                continue
            inputs.append((position, tensor, wanted[index] if index < len(wanted) else None))
            index += 1
        return inputs

    def forget_outputs(self, node: Any) -> None:
        """Forget `node`'s output dtypes, read before its attributes changed."""
        self._outputs.pop(node.name, None)

    def class_of(self, tensor: str, classes: dict[str, int]) -> int:
        if node_name(tensor) not in self.nodes:  # a signature input, fed in half precision
            return _HALF if self.output_type(tensor) not in (None, _FLOAT) else _FREE
        return classes.get(node_name(tensor), _FREE)

    def _read_outputs(self, node: Any) -> list[int]:
        op_def = self.op_def(node)
        return _arg_types(node, op_def.output_arg) if op_def is not None else []

    def output_type(self, tensor: str) -> int | None:
        name, _, index = tensor.partition(":")
        node = self.nodes.get(name)
        if node is None:
            return self.external.get(tensor, self.external.get(f"{tensor}:0"))
        if name not in self._outputs:
            self._outputs[name] = self._read_outputs(node)
        outputs, position = self._outputs[name], int(index or 0)
        return outputs[position] if position < len(outputs) else None


def output_dtype(node: Any, index: int) -> int | None:
    """The dtype (enum) of `node`'s output `index`, as its op definition and attrs say;
    None if they do not say."""
    op_def = op_def_registry.get(node.op)
    outputs = _arg_types(node, op_def.output_arg) if op_def is not None else []
    return outputs[index] if index < len(outputs) else None


def _arg_types(node: Any, args: Any) -> list[int]:
    """The dtypes of a node's inputs or outputs, expanded as its attrs say."""
    types: list[int] = []
    for arg in args:
        if arg.type_list_attr:
            types.extend(node.attr[arg.type_list_attr].list.type)
            continue
        dtype = arg.type or node.attr[arg.type_attr].type
        count = node.attr[arg.number_attr].i if arg.number_attr else 1
        types.extend([dtype] * count)
    return types


class _Kernels:
    """Whether the target's kernel registries hold a half-precision kernel for a node.

    A registry without any kernel for the op says nothing (the op runs elsewhere, or the
    device is absent from this build); one that has kernels must have a half-precision one.
    """

    def __init__(self, target: HalfTarget) -> None:
        self.target = target
        self._registered: dict[str, dict[str, list[dict[str, list[int]]]]] = {}
        # By op type: its type attrs that may be `target.dtype`; by op type and which of
        # those a node sets to float32: the answer (a graph has few of each).
        self._retypable: dict[str, list[str]] = {}
        self._answers: dict[tuple[str, tuple[str, ...]], bool] = {}
        if any(d.startswith("XLA_") for d in target.device_types):
            register_xla_kernels()

    def has_half(self, node: Any, op_def: Any) -> bool:
        if node.op not in self._retypable:
            self._retypable[node.op] = [
                a.name
                for a in op_def.attr
                if a.type == "type"
                and (
                    not a.allowed_values.list.type
                    or self.target.dtype in a.allowed_values.list.type
                )
            ]
        attrs = tuple(
            name
            for name in self._retypable[node.op]
            if name in node.attr and node.attr[name].type == _FLOAT
        )
        if (node.op, attrs) not in self._answers:
            self._answers[node.op, attrs] = self._has_half(node.op, attrs)
        return self._answers[node.op, attrs]

    def _has_half(self, op: str, attrs: tuple[str, ...]) -> bool:
        """Whether `op`, its `attrs` float32 (and retypable), has a half-precision kernel."""
        if not attrs:
            return True
        registered = self._kernels(op)
        for device in self.target.device_types:
            kernels = registered.get(device)
            if kernels and not any(
                all(self.target.dtype in k.get(a, [self.target.dtype]) for a in attrs)
                for k in kernels
            ):
                return False
        return True

    def _kernels(self, op: str) -> dict[str, list[dict[str, list[int]]]]:
        if op not in self._registered:
            from tensorflow.python.framework import kernels

            found: dict[str, list[dict[str, list[int]]]] = {}
            for kernel in kernels.get_registered_kernels_for_op(op).kernel:
                constraints = {c.name: list(c.allowed_values.list.type) for c in kernel.constraint}
                found.setdefault(kernel.device_type, []).append(constraints)
            self._registered[op] = found
        return self._registered[op]
