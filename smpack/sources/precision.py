"""Half precision for an imported graph: the float32 graph retyped to float16 or bfloat16.

Variables stay float32 (one checkpoint for every variant): what is read from them is cast
right after the read, as smpack's float32-storage getter does for Python models.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from tensorflow.core.framework import graph_pb2, types_pb2

from smpack.sources.graph_def import node_name

# Ops whose output is (part of) a variable's value, in the variable's own dtype.
_VARIABLE_READS = ("ReadVariableOp", "ResourceGather", "ResourceGatherNd")
_READ_CAST = "/smpack_cast"  # suffix of the cast following a variable read


def retyped(graph_def: graph_pb2.GraphDef, dtype: tf.DType) -> graph_pb2.GraphDef:
    """The graph computing in `dtype` where it computed in float32: attrs and constants.

    Variables stay float32 (one checkpoint for every variant): what is read from them is
    cast right after the read, as smpack's float32-storage getter does for Python models.
    """
    retyped = graph_pb2.GraphDef()
    retyped.CopyFrom(graph_def)
    target = dtype.as_datatype_enum
    reads = {
        n.name
        for n in retyped.node
        if n.op in _VARIABLE_READS and n.attr["dtype"].type == types_pb2.DT_FLOAT
    }
    for node in retyped.node:
        node.input[:] = [_cast_read(i, reads) for i in node.input]
        if node.name in reads:
            continue
        for attr in node.attr.values():
            if attr.WhichOneof("value") == "type" and attr.type == types_pb2.DT_FLOAT:
                attr.type = target
            elif attr.WhichOneof("value") == "list":
                types = [target if t == types_pb2.DT_FLOAT else t for t in attr.list.type]
                del attr.list.type[:]
                attr.list.type.extend(types)
            elif attr.WhichOneof("value") == "tensor" and attr.tensor.dtype == types_pb2.DT_FLOAT:
                value = tf.make_ndarray(attr.tensor).astype(dtype.as_numpy_dtype)
                attr.tensor.CopyFrom(tf.make_tensor_proto(value, dtype))
    for name in sorted(reads):
        _add_cast(retyped, name, f"{name}{_READ_CAST}", types_pb2.DT_FLOAT, target)
    for node in list(retyped.node):
        _keep_float32_where_required(retyped, node, target)
    return retyped


def _keep_float32_where_required(graph_def: graph_pb2.GraphDef, node: Any, target: int) -> None:
    """Undo the retyping of a type attr that the op does not allow in `target`.

    FusedBatchNorm, for one, takes half-precision `x` but float32 scale, offset and
    statistics: those inputs are cast back to float32, and its float32 outputs forward.
    """
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node.op)
    args = [*op_def.input_arg, *op_def.output_arg] if op_def is not None else []
    if op_def is None or any(a.number_attr or a.type_list_attr for a in args):
        return
    for attr_def in op_def.attr:
        allowed = attr_def.allowed_values.list.type
        if attr_def.type != "type" or not allowed or target in allowed:
            continue
        if attr_def.name not in node.attr or node.attr[attr_def.name].type != target:
            continue
        node.attr[attr_def.name].type = types_pb2.DT_FLOAT
        for i, arg in enumerate(op_def.input_arg):
            if arg.type_attr != attr_def.name:
                continue
            if node.input[i].endswith(_READ_CAST):  # the float32 read itself, uncast
                node.input[i] = node.input[i].removesuffix(_READ_CAST)
            else:
                cast = f"{node.name}/smpack_in_{i}"
                _add_cast(graph_def, node.input[i], cast, target, types_pb2.DT_FLOAT)
                node.input[i] = cast
        for j, arg in enumerate(op_def.output_arg):
            if arg.type_attr == attr_def.name:
                _recast_output(graph_def, node.name, j, target)


def _recast_output(graph_def: graph_pb2.GraphDef, name: str, index: int, target: int) -> None:
    """Make the consumers of float32 output `index` of `name` read it cast to `target`."""
    output = {f"{name}:{index}"} | ({name} if index == 0 else set())
    consumers = [n for n in graph_def.node if any(i in output for i in n.input)]
    if not consumers:
        return
    cast = f"{name}/smpack_out_{index}"
    _add_cast(graph_def, f"{name}:{index}", cast, types_pb2.DT_FLOAT, target)
    for consumer in consumers:
        consumer.input[:] = [cast if i in output else i for i in consumer.input]


def _add_cast(graph_def: graph_pb2.GraphDef, tensor: str, name: str, src: int, dst: int) -> None:
    cast = graph_def.node.add()
    cast.name, cast.op = name, "Cast"
    cast.input.append(tensor)
    cast.attr["SrcT"].type = src
    cast.attr["DstT"].type = dst


def _cast_read(tensor: str, reads: set[str]) -> str:
    """`tensor`, or the cast of it if it is a float read of a variable."""
    if tensor.startswith("^") or node_name(tensor) not in reads:
        return tensor
    if tensor.partition(":")[2] not in ("", "0"):
        return tensor
    return f"{node_name(tensor)}{_READ_CAST}"
