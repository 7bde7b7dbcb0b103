"""Run a package's TPU MetaGraph on a CPU-only host, compiling its TPU computation with XLA.

`tf.compat.v1.tpu.rewrite` leaves the device computation in the graph as ordinary ops tagged
`_tpu_replicate`, bracketed by TPU-only ops (TPUReplicateMetadata, TPUReplicatedInput/Output)
that have no CPU kernels. Rather than rebuilding the model, this module cuts those ops out:
the host part runs in a normal Session, and the tagged ops, exactly as stored, are imported
into a `tf.function(jit_compile=True)` and run on XLA:CPU, where a failure to compile is an
error instead of a silent fallback to TensorFlow kernels.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.python.saved_model import loader_impl

from smpack.errors import SmpackError

_CLUSTER = "_tpu_replicate"


def run_tpu_graph_on_cpu(
    export_dir: str | os.PathLike[str],
    tags: Sequence[str],
    signature_key: str,
    inputs: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Run one signature of the MetaGraph tagged exactly `tags`, with TPU computations on XLA:CPU.

    Variables are restored from the package's checkpoint and the init op runs with asset paths
    pointing into `<export_dir>/assets`, as any SavedModel loader does. Each `tpu.rewrite`
    computation the signature needs is compiled with XLA for CPU and run once (replica 0).

    Returns the signature's outputs by output key. Raises `SmpackError` if XLA cannot compile
    a computation.
    """
    loader = loader_impl.SavedModelLoader(os.fspath(export_dir))
    meta_graph = loader.get_meta_graph_def_from_tags(tags)
    signature = meta_graph.signature_def[signature_key]
    tpu_graph = graph_pb2.GraphDef()
    tpu_graph.CopyFrom(meta_graph.graph_def)
    # A Session places every node of its graph, and the TPU ops have no CPU kernel. Swapping
    # the host part into the loader's parsed copy (the file is untouched) lets the stock
    # loader do the restore, asset rewiring and init op exactly as serving would.
    meta_graph.graph_def.CopyFrom(_host_graph(tpu_graph))

    feeds: dict[str, Any] = {signature.inputs[key].name: value for key, value in inputs.items()}
    fetches = {key: info.name for key, info in signature.outputs.items()}
    # closing(), not `with session`: that would make the session's graph the default one, and
    # the XLA side must run eagerly.
    with contextlib.closing(tf.compat.v1.Session(graph=tf.Graph())) as session:
        loader.load(session, tags)
        # Clusters are in creation order, so one that consumes another's output comes after it.
        for cluster in _clusters_reached(tpu_graph, fetches.values()):
            feeds.update(_run_cluster(session, tpu_graph, cluster, feeds))
        return session.run(fetches, feeds)


def _host_graph(tpu_graph: graph_pb2.GraphDef) -> graph_pb2.GraphDef:
    """`tpu_graph` without its TPU computations, their results left as placeholders to feed."""
    host = graph_pb2.GraphDef(versions=tpu_graph.versions, library=tpu_graph.library)
    dropped = {
        n.name
        for n in tpu_graph.node
        if _CLUSTER in n.attr or (n.op.startswith("TPU") and n.op != "TPUReplicatedOutput")
    }
    for node in tpu_graph.node:
        if node.op == "TPUReplicatedOutput":
            host.node.add(name=node.name, op="Placeholder").attr["dtype"].CopyFrom(node.attr["T"])
        elif node.name not in dropped:
            kept = host.node.add()
            kept.CopyFrom(node)
            del kept.input[:]
            # Control edges into a computation can go; a data edge would fail the import.
            kept.input.extend(i for i in node.input if not (i[0] == "^" and _node(i) in dropped))
    return host


def _clusters_reached(graph: graph_pb2.GraphDef, tensors: Iterable[str]) -> list[str]:
    """The TPU computations the given tensors depend on, in graph order."""
    nodes = {n.name: n for n in graph.node}
    seen: set[str] = set()
    pending = [_node(t) for t in tensors]
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(_node(i) for i in nodes[name].input)
    order = [_cluster_of(n) for n in graph.node if n.name in seen]
    return list(dict.fromkeys(c for c in order if c is not None))


def _run_cluster(
    session: tf.compat.v1.Session,
    tpu_graph: graph_pb2.GraphDef,
    cluster: str,
    feeds: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """Compile and run one TPU computation; returns feeds for the host placeholders it fills."""
    body, boundary = _extract(tpu_graph, cluster)
    members = {n.name for n in body.node}
    outputs = {  # host placeholder standing for a TPUReplicatedOutput -> computation tensor
        f"{n.name}:0": _tensor(n.input[0])
        for n in tpu_graph.node
        if n.op == "TPUReplicatedOutput" and _node(n.input[0]) in members
    }

    # What crosses into the computation: host tensors, entering through TPUReplicatedInput
    # (whose first input is replica 0's value), and the resource handles of variables, which
    # the computation reads in place. Both are taken from the host session.
    producers = {n.name: n for n in tpu_graph.node}
    host_tensors, variable_reads = {}, {}
    for name in boundary:
        producer = producers[_node(name)]
        if producer.op == "VarHandleOp":
            handle = session.graph.get_tensor_by_name(name)
            with session.graph.as_default():
                variable_reads[name] = tf.raw_ops.ReadVariableOp(
                    resource=handle, dtype=handle.op.get_attr("dtype")
                )
        else:
            source = producer.input[0] if producer.op == "TPUReplicatedInput" else name
            host_tensors[name] = _tensor(source)
    host_values, variable_values = session.run([host_tensors, variable_reads], feeds)

    results = _compile_and_run(
        body,
        cluster,
        {name: tf.constant(value) for name, value in host_values.items()},
        {name: tf.Variable(value) for name, value in variable_values.items()},
        list(outputs.values()),
    )
    return {name: result.numpy() for name, result in zip(outputs, results, strict=True)}


def _extract(tpu_graph: graph_pb2.GraphDef, cluster: str) -> tuple[graph_pb2.GraphDef, list[str]]:
    """The computation's ops as a standalone GraphDef, and the outside tensors they read."""
    members = [
        n for n in tpu_graph.node if _cluster_of(n) == cluster and n.op != "TPUReplicateMetadata"
    ]
    names = {n.name for n in members}
    body = graph_pb2.GraphDef(versions=tpu_graph.versions, library=tpu_graph.library)
    boundary: list[str] = []  # in first-use order
    for node in members:
        copy = body.node.add()
        copy.CopyFrom(node)
        # Device strings name TPU cores, and "_" attrs (TPU tags, colocation with host
        # variables) point at nodes left behind; neither changes what the op computes.
        copy.ClearField("device")
        for key in [k for k in copy.attr if k.startswith("_")]:
            del copy.attr[key]
        # Outside data inputs stay, to be mapped on import; outside control inputs (the
        # metadata op, the cluster pivot) only order TPU execution.
        del copy.input[:]
        for name in node.input:
            if _node(name) in names:
                copy.input.append(name)
            elif not name.startswith("^"):
                copy.input.append(name)
                boundary.append(_tensor(name))
    return body, list(dict.fromkeys(boundary))


def _compile_and_run(
    body: graph_pb2.GraphDef,
    cluster: str,
    arguments: dict[str, tf.Tensor],
    variables: dict[str, tf.Variable],
    fetches: list[str],
) -> list[tf.Tensor]:
    """Run `body` as one XLA computation, with outside tensors mapped to the given values."""

    @tf.function(jit_compile=True)
    def computation(
        arguments: dict[str, tf.Tensor], variables: dict[str, tf.Variable]
    ) -> list[tf.Tensor]:
        # The identity brings each variable's handle into this function's graph.
        handles = {name: tf.identity(v.handle) for name, v in variables.items()}
        return tf.graph_util.import_graph_def(
            body, input_map={**arguments, **handles}, return_elements=fetches, name=cluster
        )

    computation.get_concrete_function(arguments, variables)  # tracing errors are not XLA's
    try:
        # Lowering to HLO is where XLA rejects ops it has no kernel for; doing it apart from
        # the call means only compilation failures are reported as such.
        computation.experimental_get_compiler_ir(arguments, variables)(stage="hlo")
    except (ValueError, tf.errors.OpError) as error:
        message = f"XLA cannot compile TPU computation {cluster!r} for CPU: {error}"
        raise SmpackError(message) from error
    return computation(arguments, variables)


def _cluster_of(node: node_def_pb2.NodeDef) -> str | None:
    # Checked with `in`: indexing a protobuf map would insert the missing key.
    return node.attr[_CLUSTER].s.decode() if _CLUSTER in node.attr else None


def _node(name: str) -> str:
    """The node name in a NodeDef input: "^a" (control), "a" or "a:1" -> "a"."""
    return name.lstrip("^").split(":")[0]


def _tensor(name: str) -> str:
    """A NodeDef data input as a full tensor name: "a" -> "a:0"."""
    return name if ":" in name else f"{name}:0"
