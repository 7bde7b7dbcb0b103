"""Per-variant fingerprints: one stable hash per MetaGraph, read without TensorFlow.

TF's `fingerprint.pb` hashes the first MetaGraph only, so two packages whose GPU graph
differs can share it. Here each MetaGraph gets a sha256 over three parts, each also kept on
its own so a difference can be named: its GraphDef, its SignatureDefs, and the variables it
reads (name, dtype, shape and the checkpoint's crc32c of their bytes). The same package
bytes give the same hashes; a retrained weight changes the `variables` part of exactly the
variants that read it.

The GraphDef is hashed as smpack's protobuf messages hold it: all of it from saved_model.pb
(fields smpack does not declare are kept as they were read), but only the declared fields
from saved_model.pbtxt, whose parser has to skip the others. So one package stored in the
two forms fingerprints its graphs differently; compare packages stored alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from smpack.package.checkpoint_index import CheckpointEntry
from smpack.package.restore_keys import restored_variables

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
PARTS = ("graph", "signatures", "variables")


@dataclass(frozen=True)
class VariantFingerprint:
    """Hex sha256 digests of one MetaGraph: the whole (`digest`), and each part."""

    digest: str
    graph: str
    signatures: str
    variables: str

    def changed_parts(self, other: VariantFingerprint) -> list[str]:
        """The parts (graph, signatures, variables) that differ from `other`'s."""
        return [part for part in PARTS if getattr(self, part) != getattr(other, part)]


def variant_fingerprints(
    meta_graphs: Iterable[Any], checkpoint: Mapping[str, CheckpointEntry]
) -> list[VariantFingerprint]:
    """The fingerprint of each of `meta_graphs` (parsed MetaGraphDefs) over `checkpoint`'s
    entries.

    The variables a graph reads depend on its GraphDef alone, and variants differing only in
    tags are copies of one GraphDef: each distinct one's are looked up once (a 1,000-variable
    graph's restore ops cost ~40 ms to follow).
    """
    variables_read: dict[str, str] = {}  # GraphDef digest -> its variables part
    fingerprints = []
    for meta_graph in meta_graphs:
        graph = _sha256(meta_graph.graph_def.SerializeToString(deterministic=True))
        if graph not in variables_read:
            variables_read[graph] = _variables_digest(meta_graph, checkpoint)
        parts = (graph, _signatures_digest(meta_graph), variables_read[graph])
        fingerprints.append(VariantFingerprint(_sha256("\n".join(parts).encode()), *parts))
    return fingerprints


def _signatures_digest(meta_graph: Any) -> str:
    signatures = hashlib.sha256()
    for key in sorted(meta_graph.signature_def):
        signature = meta_graph.signature_def[key].SerializeToString(deterministic=True)
        signatures.update(f"{key}\0{len(signature)}\0".encode() + signature)
    return signatures.hexdigest()


def _variables_digest(meta_graph: Any, checkpoint: Mapping[str, CheckpointEntry]) -> str:
    variables = hashlib.sha256()
    for name in sorted(_variables_read(meta_graph, checkpoint)):
        entry = checkpoint.get(name)
        described = "missing" if entry is None else f"{entry.dtype}{list(entry.shape)}"
        # The checkpoint's crc32c of the tensor's bytes: weights change it, and it is read
        # from the index, so no weight is read.
        described += f" crc32c={entry.crc32c}" if entry is not None else ""
        variables.update(f"{name}\0{described}\n".encode())
    return variables.hexdigest()


def _variables_read(meta_graph: Any, checkpoint: Mapping[str, CheckpointEntry]) -> set[str]:
    """The checkpoint keys `meta_graph` restores."""
    if _OBJECT_GRAPH_KEY in checkpoint:
        # A TF2 SavedModel restores through its object graph, which only the loader matches
        # to keys; every tensor of the checkpoint counts.
        return set(checkpoint)
    # A TF1 graph restores each variable under its op's name, or as its restore ops say.
    return {key for _, key, _ in restored_variables(meta_graph.graph_def)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
