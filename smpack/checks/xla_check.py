"""Run a package's TPU MetaGraph on a CPU-only host, compiling its TPU computation with XLA.

`tf.compat.v1.tpu.rewrite` leaves the device computation in the graph as ordinary ops tagged
`_tpu_replicate`, bracketed by TPU-only ops (TPUReplicateMetadata, TPUReplicatedInput/Output)
that have no CPU kernels. Rather than rebuilding the model, this module cuts those ops out:
the host part is loaded by TF's own loader into a Session, and the tagged ops, exactly as
stored, are imported into a `tf.function(jit_compile=True)` added to that same Session's
graph. The computation reads the variables the loader restored, in place (a copy of the
weights would double what verifying a large model costs), and runs on XLA:CPU, where an op
XLA cannot compile is an error instead of a silent fallback to TensorFlow kernels.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.python.saved_model import loader_impl

from smpack.checks.feeds import feed_dict
from smpack.checks.loading import LoadSeconds, load_in_turn
from smpack.errors import (
    LOADER_REFUSALS,
    NAME_REFUSALS,
    RUN_REFUSALS,
    GraphRefused,
    SmpackError,
    refused_by_tensorflow,
    telling_line,
)

_CLUSTER = "_tpu_replicate"


class TpuGraphOnCpu:
    """One loaded TPU MetaGraph whose signatures can be run, TPU computations on XLA:CPU."""

    def __init__(
        self, session: tf.compat.v1.Session, meta_graph: Any, tpu_graph: graph_pb2.GraphDef
    ) -> None:
        self.session = session  # the loader's: it holds the restored variables
        self._meta_graph = meta_graph
        self._tpu_graph = tpu_graph
        self._calls: dict[str, _ClusterCall] = {}
        self.load_seconds = LoadSeconds(0.0, 0.0)  # once loaded

    def run(self, signature_key: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one signature on `inputs`; returns its outputs by output key.

        Raises `SmpackError` if XLA cannot compile or run a computation the signature needs,
        `GraphRefused` for what TensorFlow refuses in the graph or the inputs.
        """
        signature = self._meta_graph.signature_def[signature_key]
        feeds = feed_dict(signature, inputs)
        fetches = {key: info.name for key, info in signature.outputs.items()}
        # Clusters are in creation order, so one that consumes another's output comes after it.
        for cluster in _clusters_reached(self._tpu_graph, fetches.values()):
            feeds.update(self._call(cluster).run(self.session, feeds))
        with refused_by_tensorflow(*RUN_REFUSALS):
            return self.session.run(fetches, feeds)

    def add_computations(self) -> None:
        """Add every signature's TPU computations to the session's graph now, as `run` would
        at their first use. Called before the variables are restored, while the process waits
        for its turn. One that cannot be added is left to `run`, which fails that signature
        with the same error."""
        for signature in self._meta_graph.signature_def.values():
            fetches = [info.name for info in signature.outputs.values()]
            with contextlib.suppress(SmpackError):
                for cluster in _clusters_reached(self._tpu_graph, fetches):
                    self._call(cluster)

    def _call(self, cluster: str) -> _ClusterCall:
        if cluster not in self._calls:
            self._calls[cluster] = _ClusterCall(self.session.graph, self._tpu_graph, cluster)
        return self._calls[cluster]


def run_tpu_graph_on_cpu(
    export_dir: str | os.PathLike[str],
    tags: Sequence[str],
    signature_key: str,
    inputs: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Load the MetaGraph tagged exactly `tags` and run one signature on one set of inputs.

    Raises `SmpackError` if XLA cannot compile or run a computation the signature needs.
    To run several, load once with `tpu_graph_on_cpu`.
    """
    with tpu_graph_on_cpu(export_dir, tags) as graph:
        return graph.run(signature_key, inputs)


@contextlib.contextmanager
def tpu_graph_on_cpu(
    export_dir: str | os.PathLike[str], tags: Sequence[str]
) -> Iterator[TpuGraphOnCpu]:
    """The MetaGraph tagged exactly `tags`, loaded for running with its TPU parts on XLA:CPU.

    Variables are restored from the package's checkpoint and the init op runs with asset paths
    pointing into `<export_dir>/assets`, as any SavedModel loader does. The session is closed
    when the block ends; the restored variables go with it once it is collected. Raises
    `GraphRefused` for a package TF's loader refuses.
    """
    with refused_by_tensorflow(*LOADER_REFUSALS):
        loader = loader_impl.SavedModelLoader(os.fspath(export_dir))
        meta_graph = loader.get_meta_graph_def_from_tags(tags)
    tpu_graph = graph_pb2.GraphDef()
    tpu_graph.CopyFrom(meta_graph.graph_def)
    # A Session places every node of its graph, and the TPU ops have no CPU kernel. Swapping
    # the host part into the loader's parsed copy (the file is untouched) lets the stock
    # loader do the restore, asset rewiring and init op exactly as serving would.
    meta_graph.graph_def.CopyFrom(_host_graph(tpu_graph))
    # closing(), not `with session`: the graph is made default only while ops are added.
    with contextlib.closing(tf.compat.v1.Session(graph=tf.Graph())) as session:
        graph = TpuGraphOnCpu(session, meta_graph, tpu_graph)
        with refused_by_tensorflow(*LOADER_REFUSALS):
            graph.load_seconds = load_in_turn(
                loader, session, tags, before_turn=graph.add_computations
            )
        yield graph


class _ClusterCall:
    """One TPU computation as an XLA function call added to the loaded host graph."""

    def __init__(self, graph: tf.Graph, tpu_graph: graph_pb2.GraphDef, cluster: str) -> None:
        self._cluster = cluster
        body, boundary = _extract(tpu_graph, cluster)
        members = {n.name for n in body.node}
        # host placeholder standing for a TPUReplicatedOutput -> computation tensor
        outputs = {
            f"{n.name}:0": _tensor(n.input[0])
            for n in tpu_graph.node
            if n.op == "TPUReplicatedOutput" and _node(n.input[0]) in members
        }
        self._placeholders = list(outputs)
        # What crosses into the computation: host tensors, entering through
        # TPUReplicatedInput (whose first input is replica 0's value), and variables' resource
        # handles, which the computation reads in place.
        producers = {n.name: n for n in tpu_graph.node}
        arguments = {}
        self._host_tensors: list[str] = []  # by name, the way feeds name them
        for name in boundary:
            producer = producers.get(_node(name))
            if producer is None:
                msg = f"TPU computation {cluster!r} reads {name!r}, which no node makes"
                raise GraphRefused(msg)
            source = _tensor(producer.input[0] if producer.op == "TPUReplicatedInput" else name)
            with refused_by_tensorflow(*NAME_REFUSALS):
                arguments[name] = graph.get_tensor_by_name(source)
            if producer.op != "VarHandleOp":
                self._host_tensors.append(source)
        fetches = list(outputs.values())

        # No autograph (nothing to convert): it would write the function to a temporary file
        # for nothing.
        @tf.function(jit_compile=True, autograph=False)
        def computation(arguments: dict[str, tf.Tensor]) -> list[tf.Tensor]:
            return tf.graph_util.import_graph_def(
                body, input_map=arguments, return_elements=fetches, name=cluster
            )

        # What TF's graph import raises for a GraphDef it refuses (an input of another dtype).
        with graph.as_default(), refused_by_tensorflow(ValueError):
            self._results = computation(arguments)

    def run(self, session: tf.compat.v1.Session, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run the computation; returns feeds for the host placeholders it fills.

        Raises `SmpackError` if XLA cannot compile or run it: marked jit_compile, it has no
        fallback to TensorFlow kernels.
        """
        # The host part first, on its own: its failures are not XLA's.
        with refused_by_tensorflow(*RUN_REFUSALS):
            host_values = session.run(self._host_tensors, feeds)
        # Fed back, so the host part is not run twice.
        computation_feeds = {**feeds, **dict(zip(self._host_tensors, host_values, strict=True))}
        try:
            results = session.run(self._results, computation_feeds)
        except tf.errors.OpError as error:
            message = (
                f"XLA cannot compile or run TPU computation {self._cluster!r} on CPU: "
                f"{telling_line(error)}"
            )
            raise SmpackError(message) from error
        return dict(zip(self._placeholders, results, strict=True))


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
            if name not in nodes:
                msg = f"the graph has no node {name!r}"
                raise GraphRefused(msg)
            seen.add(name)
            pending.extend(_node(i) for i in nodes[name].input)
    order = [_cluster_of(n) for n in graph.node if n.name in seen]
    return list(dict.fromkeys(c for c in order if c is not None))


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


def _cluster_of(node: node_def_pb2.NodeDef) -> str | None:
    # Checked with `in`: indexing a protobuf map would insert the missing key.
    return node.attr[_CLUSTER].s.decode() if _CLUSTER in node.attr else None


def _node(name: str) -> str:
    """The node name in a NodeDef input: "^a" (control), "a" or "a:1" -> "a"."""
    return name.lstrip("^").split(":")[0]


def _tensor(name: str) -> str:
    """A NodeDef data input as a full tensor name: "a" -> "a:0"."""
    return name if ":" in name else f"{name}:0"
