"""Serving configurations for every serving variant: Triton model repositories and TF Serving.

Picking the right tag set and signature is where deployments of multi-graph SavedModels go
wrong: TF Serving loads the graph tagged exactly `serve` unless `--saved_model_tags` says
otherwise, and Triton's TensorFlow backend falls back to the `serve` tag and, without
`TF_SIGNATURE_DEF`, to whichever signature it meets first. Everything here is read from the
package's own graphs (tag sets, signature keys, dtypes, shapes, device pins, static batch
sizes), so a config cannot disagree with what ships. No TensorFlow is imported.

Triton's TensorFlow backend loads the graph whose tag set is exactly `{TF_GRAPH_TAG}`, one
tag, so it cannot pick `serve,gpu` out of the package. Each Triton model's version folder
therefore holds its variant alone, re-tagged `serve`, as `smpack extract` writes it (weights
hard-linked); `smpack serving-config --target triton` writes that folder too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from google.protobuf import text_encoding

from smpack.package.info import GraphInfo, PackageInfo, SignatureInfo, TensorInfo
from smpack.package.layout import ASSETS_EXTRA, EXAMPLES_FILE
from smpack.package.load_commands import ServingBase, tf_serving_command
from smpack.package.record import variant_records
from smpack.package.requests import (
    LoggedRequest,
    NoRawFormError,
    RawTensor,
    raw_tensor,
    read_logged_requests,
)

Target = Literal["triton", "tfserving"]
TARGETS: tuple[Target, ...] = ("triton", "tfserving")
# Requests Triton may merge into one batch for a variant whose batch size is free; the
# signature sets no limit, so this is a starting point to tune, not a fact of the model.
DYNAMIC_MAX_BATCH = 64
# TF Serving's batching for a graph of static batch size: how long a partial batch waits for
# more requests, and how many batches may queue.
BATCH_TIMEOUT_MICROS = 1000
MAX_ENQUEUED_BATCHES = 100
# Where Triton's TensorFlow backend looks in a version folder (default_model_filename).
TRITON_SAVEDMODEL = "model.savedmodel"
# Where Triton reads a model's warmup input files: a folder beside config.pbtxt.
TRITON_WARMUP_FOLDER = "warmup"
# Triton's DataType names (model_config.proto) for the dtypes a signature may carry.
_TRITON_DTYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "string": "TYPE_STRING",
}


@dataclass(frozen=True)
class ServingFile:
    """One file of a target's configuration: its path under the target's folder, its text
    (or bytes, for Triton's warmup inputs)."""

    path: str
    content: str | bytes

    @property
    def data(self) -> bytes:
        return self.content.encode() if isinstance(self.content, str) else self.content


@dataclass(frozen=True)
class TritonModel:
    """A Triton model of one variant: its folder name and the tags its graph is taken from."""

    name: str
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Skipped:
    """A serving variant a target cannot serve, and why."""

    tag_set: str
    reason: str


@dataclass(frozen=True)
class ServingConfig:
    """Everything one target needs for the package's serving variants."""

    target: Target
    files: tuple[ServingFile, ...]
    skipped: tuple[Skipped, ...] = ()
    triton_models: tuple[TritonModel, ...] = ()


def variant_names(export_dir: Path) -> dict[str, str]:
    """The manifest's variant names by tag set, as `smpack.json` records them ({} if not)."""
    return {
        tag_set: record["name"]
        for tag_set, record in variant_records(export_dir).items()
        if isinstance(record.get("name"), str)
    }


def variant_name(graph: GraphInfo, names: dict[str, str]) -> str:
    """The manifest's name for the variant, else its tag set joined with '-'."""
    return names.get(graph.tag_set) or "-".join(graph.tags)


def serving_config(
    info: PackageInfo,
    target: Target,
    *,
    name: str,
    version: int,
    base_path: str,
    config_dir: str,
    names: dict[str, str] | None = None,
    tags: frozenset[str] | None = None,
) -> ServingConfig:
    """The `target` configuration of every serving variant of `info` (only `tags`, if given).

    `base_path` is the folder holding the package's version folder and `config_dir` the one
    these files will be in, both as the server will see them: TF Serving's command lines
    and models.config name them. `names` are the variants' names (see `variant_names`).
    """
    files: list[ServingFile] = []
    skipped: list[Skipped] = []
    models: list[TritonModel] = []
    examples = read_logged_requests(info.path / ASSETS_EXTRA / EXAMPLES_FILE)
    for graph in info.graphs:
        if graph.has_train_op or (tags is not None and frozenset(graph.tags) != tags):
            continue
        variant = variant_name(graph, names or {})
        signature = serving_signature(graph)
        if signature is None:
            skipped.append(Skipped(graph.tag_set, "it has no signature to serve"))
        elif target == "triton":
            model = f"{name}-{variant}"
            reason = _triton_refusal(graph, signature)
            if reason:
                skipped.append(Skipped(graph.tag_set, reason))
                continue
            warmups = triton_warmups(signature, examples)
            text = triton_config(graph, signature, model=model, version=version, warmups=warmups)
            files.append(ServingFile(f"{model}/config.pbtxt", text))
            files += [
                ServingFile(f"{model}/{TRITON_WARMUP_FOLDER}/{name}", tensor.triton_bytes())
                for warmup in warmups
                for name, tensor in warmup.files().items()
            ]
            models.append(TritonModel(model, graph.tags))
        else:
            files += _tf_serving_files(graph, signature, variant, name, base_path, config_dir)
    return ServingConfig(target, tuple(files), tuple(skipped), tuple(models))


def serving_signature(graph: GraphInfo) -> SignatureInfo | None:
    """The signature a server should run: `serving_default`, else the graph's first."""
    by_key = {signature.key: signature for signature in graph.signatures}
    return by_key.get("serving_default") or next(iter(graph.signatures), None)


def static_batch_size(signature: SignatureInfo) -> int | None:
    """The batch size that every input and output fixes as its first dimension, if any."""
    firsts = {tensor.shape[0] if tensor.shape else None for tensor in _tensors(signature)}
    first = firsts.pop() if len(firsts) == 1 else None
    return first


def _tensors(signature: SignatureInfo) -> tuple[TensorInfo, ...]:
    return (*signature.inputs, *signature.outputs)


def _tf_serving_files(
    graph: GraphInfo,
    signature: SignatureInfo,
    variant: str,
    name: str,
    base_path: str,
    config_dir: str,
) -> list[ServingFile]:
    files = [ServingFile(f"{variant}/models.config", models_config(name, base_path))]
    batching_file = None
    batch = static_batch_size(signature)
    if batch is not None:
        # A graph of static batch size takes exactly `batch` rows: TF Serving's batching
        # pads every request up to it and hands each caller its own rows back.
        files.append(ServingFile(f"{variant}/batching_parameters.txt", batching_parameters(batch)))
        batching_file = str(PurePosixPath(config_dir, variant, "batching_parameters.txt"))
    command = tf_serving_command(
        graph,
        ServingBase(name=name, base_path=base_path),
        model_config_file=str(PurePosixPath(config_dir, variant, "models.config")),
        batching_parameters_file=batching_file,
    )
    files.append(ServingFile(f"{variant}/command.sh", f"#!/bin/sh\nexec {command}\n"))
    return files


def models_config(name: str, base_path: str) -> str:
    """TF Serving's `--model_config_file` (text `ModelServerConfig`): one model, the package."""
    return (
        "model_config_list {\n"
        "  config {\n"
        f"    name: {_text(name)}\n"
        f"    base_path: {_text(base_path)}\n"
        '    model_platform: "tensorflow"\n'
        "  }\n"
        "}\n"
    )


def batching_parameters(batch: int) -> str:
    """TF Serving's `--batching_parameters_file` (text `BatchingParameters`) for a graph that
    takes exactly `batch` rows."""
    return (
        f"max_batch_size {{ value: {batch} }}\n"
        f"batch_timeout_micros {{ value: {BATCH_TIMEOUT_MICROS} }}\n"
        f"max_enqueued_batches {{ value: {MAX_ENQUEUED_BATCHES} }}\n"
        "num_batch_threads { value: 1 }\n"
        f"allowed_batch_sizes: {batch}\n"
    )


def _triton_refusal(graph: GraphInfo, signature: SignatureInfo) -> str:
    if graph.tpu:
        return "Triton has no TPU backend"
    for tensor in _tensors(signature):
        if tensor.shape is None:
            return f"{signature.key}: {tensor.key} has unknown rank, and Triton needs its dims"
        if tensor.dtype not in _TRITON_DTYPES:
            return f"{signature.key}: {tensor.key} is {tensor.dtype}, which Triton cannot carry"
    return ""


@dataclass(frozen=True)
class TritonWarmup:
    """One of a Triton model's warmup requests, made from one of the manifest's examples:
    its batch size and one sample per input. Triton's ModelWarmup repeats the sample to
    fill the batch (model_config.proto), so a batched model gets one of these per row."""

    name: str
    batch_size: int
    inputs: dict[str, RawTensor]

    def files(self) -> dict[str, RawTensor]:
        """The input files' names (in the warmup folder) and contents, by input key order."""
        return {self.file_name(key): tensor for key, tensor in self.inputs.items()}

    def file_name(self, key: str) -> str:
        # Keys hold no '/' or backslash (see the manifest's limits); the prefix keeps a key
        # such as '..' from naming a folder.
        return f"{self.name}.{key}"


def triton_warmups(
    signature: SignatureInfo, examples: list[LoggedRequest]
) -> tuple[TritonWarmup, ...]:
    """The warmup requests of a Triton model serving `signature`, from each stored example
    request of that signature whose inputs have the signature's keys and dtypes: the
    request itself for a model without a batch dimension; for a batched one, a request per
    row at the example's batch size, so that every row is run and the batch size warmed."""
    batched = _batched(signature)
    dtypes = {tensor.key: tensor.dtype for tensor in signature.inputs}
    warmups: list[TritonWarmup] = []
    examples_used = 0
    for request in examples:
        if request.signature != signature.key:
            continue
        try:
            if request.examples is not None:
                values = (request.examples,)
                tensors = {"inputs": RawTensor("string", (len(request.examples),), *values)}
            else:
                tensors = {key: raw_tensor(data) for key, data in request.tensors.items()}
        except NoRawFormError:
            continue  # not a tensor Triton can be handed raw: no warmup from it
        if tensors.keys() != dtypes.keys() or any(
            tensor.dtype != dtypes[key] for key, tensor in tensors.items()
        ):
            continue
        name = f"example{examples_used}"
        rows = {tensor.shape[0] if tensor.shape else 0 for tensor in tensors.values()}
        if not batched:
            warmups.append(TritonWarmup(name, 1, tensors))
        elif len(rows) == 1 and (batch := rows.pop()) > 0:
            size = min(batch, DYNAMIC_MAX_BATCH)
            warmups += [
                TritonWarmup(f"{name}.row{row}", size, {k: t.row(row) for k, t in tensors.items()})
                for row in range(batch)
            ]
        else:
            continue
        examples_used += 1
    return tuple(warmups)


def triton_config(
    graph: GraphInfo,
    signature: SignatureInfo,
    *,
    model: str,
    version: int,
    warmups: tuple[TritonWarmup, ...] = (),
) -> str:
    """`config.pbtxt` (text `inference.ModelConfig`) serving `signature` of `graph`, warmed
    up on `warmups` (on zeros if none)."""
    batched = _batched(signature)
    key = _text(signature.key)
    kind = "KIND_GPU" if any("GPU" in device for device in graph.devices) else "KIND_CPU"
    lines = [
        # Text format comments end at a line break, which a foreign tag set could hold.
        f"# Variant {' '.join(graph.tag_set.split())}, signature {' '.join(signature.key.split())}",
        "# (written by smpack). Triton's TF backend loads one tag, so the version folder",
        "# holds this variant alone, tagged serve; `smpack serving-config PACKAGE --target",
        "# triton --out REPOSITORY` writes it.",
        f"name: {_text(model)}",
        'platform: "tensorflow_savedmodel"',
        f"max_batch_size: {DYNAMIC_MAX_BATCH if batched else 0}",
        f"version_policy {{ specific {{ versions: {version} }} }}",
    ]
    for side, tensors in (("input", signature.inputs), ("output", signature.outputs)):
        for tensor in tensors:
            dims, reshape = _triton_dims(tensor, batched)
            lines += [
                f"{side} {{",
                f"  name: {_text(tensor.key)}",
                f"  data_type: {_TRITON_DTYPES[tensor.dtype]}",
                f"  dims: {_list(dims)}",
                *(["  reshape { shape: [ ] }"] if reshape else []),
                "}",
            ]
    lines += [
        f"instance_group {{ kind: {kind} count: 1 }}",
        *(["dynamic_batching { }"] if batched else []),
        'parameters { key: "TF_GRAPH_TAG" value { string_value: "serve" } }',
        f'parameters {{ key: "TF_SIGNATURE_DEF" value {{ string_value: {key} }} }}',
    ]
    if warmups:
        lines.append(
            f"# Warmup from the manifest's examples, in {TRITON_WARMUP_FOLDER}/: every row of each,"
        )
        lines.append("# which Triton repeats to the example's batch size.")
    else:
        lines.append(
            "# No example in the package (the manifest's examples: block) feeds this signature,"
        )
        lines.append("# so Triton warms up on zeros, which may not be a valid input of this model.")
    for warmup in warmups or (_zeros(signature),):
        lines.append(f"model_warmup {{\n  name: {_text(warmup.name)}")
        lines.append(f"  batch_size: {warmup.batch_size}")
        for tensor in signature.inputs:
            data_type = _TRITON_DTYPES[tensor.dtype]
            value = warmup.inputs[tensor.key]
            sample_dims = _list(list(value.shape[1:] if batched else value.shape) or [1])
            source = (
                f"input_data_file: {_text(warmup.file_name(tensor.key))}"
                if warmups
                else "zero_data: true"
            )
            lines.append(
                f"  inputs {{ key: {_text(tensor.key)} value {{ data_type: {data_type} "
                f"dims: {sample_dims} {source} }} }}"
            )
        lines.append("}")
    return "\n".join(lines) + "\n"


def _zeros(signature: SignatureInfo) -> TritonWarmup:
    """A warmup request of zeros (for lack of examples): one row, free sizes 1."""
    batched = _batched(signature)
    shapes = {
        tensor.key: tuple(1 if size is None else size for size in tensor.shape or ())
        for tensor in signature.inputs
    }
    inputs = {
        key: RawTensor("float32", shape if not batched else (1, *shape[1:]), b"")
        for key, shape in shapes.items()
    }
    return TritonWarmup("zeros", 1, inputs)


def _batched(signature: SignatureInfo) -> bool:
    """Whether Triton owns the batch dimension: every tensor's first dimension is free."""
    return all(tensor.shape and tensor.shape[0] is None for tensor in _tensors(signature))


def _triton_dims(tensor: TensorInfo, batched: bool) -> tuple[list[int], bool]:
    """Triton's dims (without the batch dimension when batched; -1 for a free size), and
    whether they need a reshape to none: a batched tensor of shape [batch] has no dims of
    its own, which Triton spells dims [1] reshaped to []."""
    shape = tensor.shape or ()
    dims = [-1 if size is None else size for size in (shape[1:] if batched else shape)]
    return (dims, False) if dims else ([1], True)


def _text(value: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text_encoding.CEscape(value, as_utf8=True) + '"'


def _list(values: list[int]) -> str:
    return "[ " + ", ".join(str(value) for value in values) + " ]"
