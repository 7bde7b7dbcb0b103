"""Plain records describing a SavedModel on disk, read back from the files themselves.

Summaries are built from what was written, not from what was intended, so they are true
by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smpack.protos import DTYPES, read_saved_model

_HALF_PRECISIONS = {19: "float16", 14: "bfloat16"}  # DataType enum values


@dataclass(frozen=True)
class TensorInfo:
    key: str
    name: str
    dtype: str
    shape: tuple[int | None, ...] | None


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

    @property
    def tag_set(self) -> str:
        return ",".join(self.tags)


@dataclass(frozen=True)
class VariableInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class PackageInfo:
    path: Path
    graphs: tuple[GraphInfo, ...]
    variables: tuple[VariableInfo, ...]
    variables_bytes: int
    assets: tuple[str, ...]
    assets_extra: tuple[str, ...]

    def graph(self, *tags: str) -> GraphInfo:
        return next(g for g in self.graphs if set(g.tags) == set(tags))


def read_package(export_dir: str | Path) -> PackageInfo:
    """Describe the SavedModel at `export_dir` from its saved_model.pb and checkpoint."""
    import tensorflow as tf

    export_dir = Path(export_dir)
    saved_model = read_saved_model(export_dir)
    variables_prefix = export_dir / "variables" / "variables"
    variables: tuple[VariableInfo, ...] = ()
    if Path(f"{variables_prefix}.index").exists():
        reader = tf.train.load_checkpoint(str(variables_prefix))
        dtypes = reader.get_variable_to_dtype_map()
        variables = tuple(
            VariableInfo(name, tuple(shape), dtypes[name].name)
            for name, shape in sorted(reader.get_variable_to_shape_map().items())
        )
    return PackageInfo(
        path=export_dir,
        graphs=tuple(_graph_info(meta_graph) for meta_graph in saved_model.meta_graphs),
        variables=variables,
        variables_bytes=_size(export_dir / "variables"),
        assets=_files(export_dir / "assets"),
        assets_extra=_files(export_dir / "assets.extra"),
    )


def _graph_info(meta_graph: Any) -> GraphInfo:
    nodes = meta_graph.graph_def.node
    half = {
        _HALF_PRECISIONS[value.type]
        for node in nodes
        for value in node.attr.values()
        if value.type in _HALF_PRECISIONS
    }
    return GraphInfo(
        tags=tuple(meta_graph.meta_info_def.tags),
        signatures=tuple(
            _signature_info(key, meta_graph.signature_def[key])
            for key in sorted(meta_graph.signature_def)
            if not key.startswith("__saved_model")
        ),
        devices=tuple(sorted({node.device for node in nodes if node.device})),
        precision=", ".join(sorted(half)) or "float32",
        op_count=len(nodes),
        xla=any(node.attr["_XlaCompile"].b for node in nodes if "_XlaCompile" in node.attr),
        tpu=any(node.op == "TPUReplicateMetadata" for node in nodes),
        has_train_op="__saved_model_train_op" in meta_graph.signature_def
        or "saved_model_train_op" in meta_graph.collection_def,
    )


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
    return TensorInfo(key, info.name, DTYPES.get(info.dtype, f"dtype_{info.dtype}"), shape)


def _files(folder: Path) -> tuple[str, ...]:
    if not folder.is_dir():
        return ()
    return tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
