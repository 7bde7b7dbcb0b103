"""Plain records describing a SavedModel on disk, read back from the files themselves.

Summaries are built from what was written, not from what was intended, so they are true
by construction.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from smpack.errors import PackageError
from smpack.io.storage import fetched, is_url
from smpack.package.checkpoint_index import CheckpointEntry, read_checkpoint_index
from smpack.package.custom_ops import custom_ops
from smpack.package.dtypes import FLOATS, HALF_PRECISIONS, dtype_name
from smpack.package.fingerprints import VariantFingerprint, variant_fingerprints
from smpack.package.layout import (
    ASSETS_EXTRA,
    FINGERPRINT_FILE,
    TRAIN_FUNCTION_COLLECTION,
    WARMUP_FILE,
)
from smpack.package.protos import FingerprintDef, VariableDef, read_saved_model_sharing_copies
from smpack.package.record import read_record
from smpack.package.requests import tfrecords


@dataclass(frozen=True)
class TensorInfo:
    key: str
    name: str
    dtype: str
    shape: tuple[int | None, ...] | None

    @property
    def shape_text(self) -> str:
        """`[?, 3]` (? for a size known only at run time), or `unknown rank`."""
        if self.shape is None:
            return "unknown rank"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class SignatureInfo:
    key: str
    method: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclass(frozen=True)
class GraphInfo:
    tags: tuple[str, ...]
    signatures: tuple[SignatureInfo, ...]
    devices: tuple[str, ...]
    precision: str
    op_count: int
    xla: bool
    tpu: bool
    has_train_op: bool
    # Floating dtypes the graph's ops compute in (their `T` attributes), widest last.
    compute_dtypes: tuple[str, ...] = ()
    # This graph's own hash (TF's fingerprint.pb covers the first graph only).
    fingerprint: VariantFingerprint | None = None
    # Op types TensorFlow does not define itself: a loader needs the library registering them.
    custom_ops: tuple[str, ...] = ()
    # What an smpack train graph trains (which function, which variables frozen), or "".
    train_function: str = ""

    @property
    def tag_set(self) -> str:
        return ",".join(self.tags)


@dataclass(frozen=True)
class VariableInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    size: int = 0  # bytes in the checkpoint's data files (0 for a partitioned variable)


@dataclass(frozen=True)
class Fingerprint:
    """The hashes of fingerprint.pb (TF >= 2.12 writes it with tf.saved_model.save)."""

    saved_model_checksum: int
    graph_def_program_hash: int
    signature_def_hash: int
    saved_object_graph_hash: int
    checkpoint_hash: int
    uuid: str


@dataclass(frozen=True)
class PackageInfo:
    path: Path
    graphs: tuple[GraphInfo, ...]
    variables: tuple[VariableInfo, ...]
    variables_bytes: int
    assets: tuple[str, ...]
    assets_extra: tuple[str, ...]
    fingerprint: Fingerprint | None = None
    warmup_requests: int | None = None  # records in assets.extra/tf_serving_warmup_requests
    saved_model_file: str = "saved_model.pb"
    # Set for a package read from or written to a URL; `path` is then the temporary local
    # copy it was read from, gone by the time the caller sees it.
    url: str | None = None
    # The Python modules the build imported for custom ops, as smpack.json records them.
    op_libraries: tuple[str, ...] = ()
    # False for a build's package that failed verification and was kept, not published.
    published: bool = True
    # The TensorFlow versions the MetaGraphs say wrote them (none recorded: empty).
    tensorflow_versions: tuple[str, ...] = ()
    # Elements of the variables in the graphs' `trainable_variables` collections; None when
    # no graph has that collection (TF2 object-graph SavedModels) or a trainable variable is
    # missing from `variables`: an unknown count beats a wrong one.
    parameter_count: int | None = None

    @property
    def location(self) -> str:
        """Where the package is, as a user names it: its URL, else its local path."""
        return self.url or str(self.path)

    def graph(self, *tags: str) -> GraphInfo:
        return next(g for g in self.graphs if set(g.tags) == set(tags))


@contextlib.contextmanager
def package_at(location: str | Path) -> Iterator[PackageInfo]:
    """The package at `location`, a folder or a URL, with its files readable inside the block
    (a remote package is fetched into a temporary copy, removed on leaving)."""
    with fetched(location) as export_dir:
        info = read_package(export_dir)
        yield dataclasses.replace(info, url=str(location).rstrip("/")) if is_url(location) else info


def read_package(export_dir: str | Path) -> PackageInfo:
    """Describe the SavedModel at `export_dir` from its own files, without TensorFlow.

    Raises `PackageError` when saved_model.pb(txt), the checkpoint index, fingerprint.pb or
    the warmup file cannot be read.
    """
    export_dir = Path(export_dir)
    with _reading(export_dir):
        return _read_package(export_dir)


def reread_files(info: PackageInfo) -> PackageInfo:
    """`info` after files were added beside its SavedModel (assets.extra, fingerprint.pb):
    what it says of them read again, its graphs and variables kept.

    For a package being written, whose saved_model.pb and variables/ are final: reading
    them again, the costly part of `read_package`, would give the same graphs and
    variables. Raises `PackageError` as `read_package` does.
    """
    with _reading(info.path):
        return dataclasses.replace(info, **_file_facts(info.path))


@contextlib.contextmanager
def _reading(export_dir: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:  # an unreadable folder or file, a symlink loop, a vanished file
        msg = f"cannot read the package: {e.strerror or e}"
        raise PackageError(msg, file=e.filename or export_dir) from e


def _read_package(export_dir: Path) -> PackageInfo:
    saved_model, originals = read_saved_model_sharing_copies(export_dir)
    variables_prefix = export_dir / "variables" / "variables"
    entries: dict[str, CheckpointEntry] = {}
    if Path(f"{variables_prefix}.index").exists():
        entries = {e.name: e for e in read_checkpoint_index(variables_prefix).entries}
    variables = tuple(
        VariableInfo(entry.name, entry.shape, entry.dtype, entry.size) for entry in entries.values()
    )
    versions = {graph.meta_info_def.tensorflow_version for graph in saved_model.meta_graphs}
    return PackageInfo(
        path=export_dir,
        graphs=_graph_infos(saved_model.meta_graphs, originals, entries),
        variables=variables,
        tensorflow_versions=tuple(sorted(versions - {""})),
        parameter_count=_parameter_count(saved_model, variables),
        **_file_facts(export_dir),
    )


def _graph_infos(
    meta_graphs: Any, originals: tuple[int, ...], entries: dict[str, CheckpointEntry]
) -> tuple[GraphInfo, ...]:
    """Each MetaGraph's GraphInfo; a tag-only copy's (parsed as its `meta_info_def` alone,
    see `read_saved_model_sharing_copies`) is its original's with its own tags."""
    distinct = [index for index, original in enumerate(originals) if original == index]
    fingerprints = variant_fingerprints([meta_graphs[index] for index in distinct], entries)
    infos = {
        index: _graph_info(meta_graphs[index], fingerprint)
        for index, fingerprint in zip(distinct, fingerprints, strict=True)
    }
    return tuple(
        dataclasses.replace(infos[original], tags=tuple(meta_graph.meta_info_def.tags))
        for meta_graph, original in zip(meta_graphs, originals, strict=True)
    )


def _parameter_count(saved_model: Any, variables: tuple[VariableInfo, ...]) -> int | None:
    collections = [
        graph.collection_def["trainable_variables"]
        for graph in saved_model.meta_graphs
        if "trainable_variables" in graph.collection_def
    ]
    if not collections:
        return None
    names = {
        VariableDef.FromString(raw).variable_name.rpartition(":")[0]
        for collection in collections
        for raw in collection.bytes_list.value
    }
    shapes = {variable.name: variable.shape for variable in variables}
    if not names <= shapes.keys():
        return None
    return sum(math.prod(shapes[name]) for name in names)


def _file_facts(export_dir: Path) -> dict[str, Any]:
    """What `PackageInfo` says of the package's files, all but its graphs and variables."""
    warmup = export_dir / ASSETS_EXTRA / WARMUP_FILE
    return {
        "variables_bytes": _size(export_dir / "variables"),
        "assets": _files(export_dir / "assets"),
        "assets_extra": _files(export_dir / ASSETS_EXTRA),
        "fingerprint": _fingerprint(export_dir / FINGERPRINT_FILE),
        "warmup_requests": count_tfrecords(warmup) if warmup.is_file() else None,
        "saved_model_file": "saved_model.pb"
        if (export_dir / "saved_model.pb").is_file()
        else "saved_model.pbtxt",
        "op_libraries": recorded_op_libraries(export_dir),
    }


def recorded_op_libraries(export_dir: Path) -> tuple[str, ...]:
    """The `imports` smpack.json records (none for a package smpack did not build)."""
    record = read_record(export_dir) or {}
    return tuple(str(module) for module in record.get("imports", []))


def count_tfrecords(path: Path) -> int:
    """Records in a TFRecord file, from its framing alone.

    Raises `PackageError` if the file ends inside a record.
    """
    return sum(1 for _ in tfrecords(path))


# A FingerprintDef is five numbers, a version and a UUID; a larger file is no fingerprint,
# and is refused before it is read.
_MAX_FINGERPRINT_BYTES = 64 << 10


def _fingerprint(path: Path) -> Fingerprint | None:
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_FINGERPRINT_BYTES:
        msg = f"larger than {_MAX_FINGERPRINT_BYTES >> 10} KiB: not a fingerprint"
        raise PackageError(msg, file=path)
    try:
        message = FingerprintDef.FromString(path.read_bytes())
    except DecodeError as e:
        msg = f"not a readable fingerprint: {e}"
        raise PackageError(msg, file=path) from e
    return Fingerprint(
        saved_model_checksum=message.saved_model_checksum,
        graph_def_program_hash=message.graph_def_program_hash,
        signature_def_hash=message.signature_def_hash,
        saved_object_graph_hash=message.saved_object_graph_hash,
        checkpoint_hash=message.checkpoint_hash,
        uuid=message.uuid,
    )


def _graph_info(meta_graph: Any, fingerprint: VariantFingerprint) -> GraphInfo:
    return GraphInfo(
        tags=tuple(meta_graph.meta_info_def.tags),
        signatures=tuple(
            _signature_info(key, meta_graph.signature_def[key])
            for key in sorted(meta_graph.signature_def)
            if not key.startswith("__saved_model")
        ),
        **_graph_facts(meta_graph, fingerprint.graph),
        has_train_op="__saved_model_train_op" in meta_graph.signature_def
        or "saved_model_train_op" in meta_graph.collection_def,
        fingerprint=fingerprint,
        train_function=_train_function(meta_graph),
    )


# What _graph_facts found, by the digest of the GraphDef it read. A build's verify reads the
# package again, and variants differing only in tags are copies of one MetaGraph, so each
# distinct GraphDef is scanned once per process (a scan costs ~10 us a node).
_FACTS: dict[str, dict[str, Any]] = {}
_FACTS_KEPT = 64


def _graph_facts(meta_graph: Any, graph_digest: str) -> dict[str, Any]:
    """What `meta_graph`'s nodes say about it; `graph_digest` is its GraphDef's sha256."""
    if graph_digest in _FACTS:
        return _FACTS[graph_digest]
    nodes = meta_graph.graph_def.node
    # One pass, each node's attributes and op read once: this scan is most of reading a
    # package.
    types: set[int] = set()  # of any attribute, as DataType numbers
    computed: set[int] = set()  # of `T` attributes, function bodies included
    devices: set[str] = set()
    ops: set[str] = set()  # function bodies included
    xla = False
    for node in nodes:
        attrs = node.attr
        # By key: a map's values() view iterates in Python, ~1.7x the time of this loop.
        for key in attrs:
            types.add(attrs[key].type)
        if "T" in attrs:
            computed.add(attrs["T"].type)
        if node.device:
            devices.add(node.device)
        if "_XlaCompile" in attrs and attrs["_XlaCompile"].b:
            xla = True
        ops.add(node.op)
    tpu = "TPUReplicateMetadata" in ops
    # TF2 graphs keep their computation in the function library, not at top level.
    library = meta_graph.graph_def.library.function
    for function in library:
        for node in function.node_def:
            if "T" in node.attr:
                computed.add(node.attr["T"].type)
            ops.add(node.op)
    half = {dtype_name(number) for number in types if number} & HALF_PRECISIONS
    floats = {dtype_name(number) for number in computed} & FLOATS
    facts = {
        "devices": tuple(sorted(devices)),
        "precision": ", ".join(sorted(half)) or "float32",
        "op_count": len(nodes),
        "xla": xla,
        "tpu": tpu,
        "compute_dtypes": tuple(sorted(floats, key=_width)),
        "custom_ops": custom_ops(ops, {function.signature.name for function in library}),
    }
    if len(_FACTS) >= _FACTS_KEPT:
        del _FACTS[next(iter(_FACTS))]
    _FACTS[graph_digest] = facts
    return facts


def _train_function(meta_graph: Any) -> str:
    if TRAIN_FUNCTION_COLLECTION not in meta_graph.collection_def:
        return ""
    values = meta_graph.collection_def[TRAIN_FUNCTION_COLLECTION].bytes_list.value
    return " ".join(value.decode("utf-8", "replace") for value in values)


def _width(dtype: str) -> tuple[int, str]:
    return int(dtype.removeprefix("bfloat").removeprefix("float")), dtype


def _signature_info(key: str, signature_def: Any) -> SignatureInfo:
    return SignatureInfo(
        key=key,
        method=signature_def.method_name,
        inputs=tuple(
            _tensor_info(k, signature_def.inputs[k]) for k in sorted(signature_def.inputs)
        ),
        outputs=tuple(
            _tensor_info(k, signature_def.outputs[k]) for k in sorted(signature_def.outputs)
        ),
    )


def _tensor_info(key: str, info: Any) -> TensorInfo:
    shape = None
    if not info.tensor_shape.unknown_rank:
        shape = tuple(d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
    return TensorInfo(key, info.name, dtype_name(info.dtype), shape)


def _files(folder: Path) -> tuple[str, ...]:
    if not folder.is_dir():
        return ()
    return tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
