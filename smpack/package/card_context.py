"""What a model card says: plain data read back from the written package.

Everything technical on a card (variants, signatures, parameter count, file hashes, versions)
comes from the package's own files, so the card cannot drift from what ships. Nothing here
imports TensorFlow: the facts come from `PackageInfo` (`read_package`) and from the files
themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from smpack import __version__
from smpack.manifest.card_spec import CardSpec
from smpack.package.card_measured import (
    measured_cells,
    measured_hub_results,
    measured_summary,
)
from smpack.package.digests import file_sha256, tree_files
from smpack.package.info import GraphInfo, PackageInfo, TensorInfo, count_tfrecords
from smpack.package.layout import ASSETS_EXTRA, CARD_FILES, EXAMPLES_FILE, PACKAGE_DESCRIPTIONS
from smpack.package.load_commands import ServingBase, load_commands
from smpack.package.record import measured_records


def card_context(
    info: PackageInfo,
    spec: CardSpec | None,
    *,
    name: str | None = None,
    version: int | None = None,
    measurements: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """The plain data (dicts, lists, strings, numbers) a card template renders.

    - `card`: the `card:` block as MCT-shaped dicts, every field present (None or empty).
    - `package`: name, version, directory (`name/version`, as the load commands use it),
      smpack and TensorFlow versions, parameter count (None when unknown), checkpoint bytes,
      variables, assets, every file with its size and sha256, and how many example requests
      verify runs the graphs on. No absolute path: the card travels with the package, and
      where it was built says nothing true about where it is.
    - `variants`: one per MetaGraph, in file order: tag set, device, precision, XLA, TPU,
      signatures with their tensors, the commands that load it, `measured` (what was
      measured on a host, see smpack.checks.measure.Measurement, or None) and
      `measured_cells` (the variants table's load, p50, p99 and agreement cells).
      `measurements` gives the records by tag set; without it they come from
      smpack_measured.json.
    - `measured`: the hosts, warm runs and batch sizes of the measurements, or None.
    - `metrics`: the card's metrics, each with the name of the dataset it was measured on.
    - `hub`: the Hugging Face hub metadata for the Markdown front matter.
    """
    spec = spec or CardSpec()
    # PurePosixPath only to take the URL's last two parts.
    folder = PurePosixPath(info.url) if info.url else info.path.resolve()
    if version is None and folder.name.isdigit():
        version = int(folder.name)
    if name is None:
        name = folder.parent.name if folder.name.isdigit() else folder.name
    directory = f"{name}/{version}" if version is not None else name
    # Where TF Serving's documentation mounts models; the card travels with the package.
    serving = ServingBase(name=name, base_path=f"/models/{name}")
    if measurements is None:
        measurements = measured_records(info.path)
    variants = [
        {**_variant(graph, directory, serving), "measured": measurements.get(graph.tag_set)}
        for graph in info.graphs
    ]
    references = {
        v["measured"]["agreement"]["reference"]
        for v in variants
        if v["measured"] and v["measured"].get("agreement")
    }
    for variant in variants:
        variant["measured_cells"] = measured_cells(variant, variant["tag_set"] in references)
    metrics = [
        {
            **metric.model_dump(mode="json", exclude={"dataset"}),
            "dataset": dataset.name if (dataset := spec.metric_dataset(metric)) else None,
        }
        for metric in spec.quantitative_analysis.performance_metrics
    ]
    return {
        "card": spec.model_dump(mode="json"),
        "package": {
            "name": name,
            "version": version,
            "directory": directory,
            "smpack_version": __version__,
            "tensorflow_version": ", ".join(info.tensorflow_versions) or None,
            "parameter_count": info.parameter_count,
            "checkpoint_bytes": info.variables_bytes,
            "variables": [
                {"name": v.name, "dtype": v.dtype, "shape": list(v.shape)} for v in info.variables
            ],
            "assets": list(info.assets),
            "op_libraries": list(info.op_libraries),
            "custom_ops": sorted({op for graph in info.graphs for op in graph.custom_ops}),
            # No card lists the cards: it cannot hold its own hash, and a card rendered
            # before or after they are written must come out the same.
            "assets_extra": [a for a in info.assets_extra if a not in CARD_FILES],
            "files": _files(info.path),
            # Requests in assets.extra/smpack_examples: the inputs verify checks the graphs on.
            "examples": count_tfrecords(examples)
            if (examples := info.path / ASSETS_EXTRA / EXAMPLES_FILE).is_file()
            else 0,
        },
        "variants": variants,
        "metrics": metrics,
        "hub": _hub_metadata(spec, name, variants, metrics),
        "measured": measured_summary(variants),
    }


def _variant(graph: GraphInfo, directory: str, serving: ServingBase) -> dict[str, Any]:
    return {
        "tag_set": graph.tag_set,
        "tags": list(graph.tags),
        "device": _device(graph),
        "devices": list(graph.devices),
        "precision": graph.precision,
        "xla": graph.xla,
        "tpu": graph.tpu,
        "training": graph.has_train_op,
        "custom_ops": list(graph.custom_ops),
        "train_function": graph.train_function,
        "signatures": [
            {
                "key": signature.key,
                "method": signature.method,
                "inputs": [_tensor(tensor) for tensor in signature.inputs],
                "outputs": [_tensor(tensor) for tensor in signature.outputs],
            }
            for signature in graph.signatures
        ],
        "load": dataclasses.asdict(load_commands(graph, directory, serving)),
    }


def _device(graph: GraphInfo) -> str:
    """One word for the variant's placement: TPU, its accelerator, its pinned CPU, or none."""
    if graph.tpu:
        return "TPU"
    pinned = [device for device in graph.devices if not device.endswith(":*")]
    accelerators = [device for device in pinned if "CPU:" not in device]
    return ", ".join(accelerators or pinned) or "unpinned"


def _tensor(tensor: TensorInfo) -> dict[str, Any]:
    return {
        "key": tensor.key,
        "name": tensor.name,
        "dtype": tensor.dtype,
        "shape": None if tensor.shape is None else list(tensor.shape),
        "shape_text": "scalar" if tensor.shape == () else tensor.shape_text,
    }


def _files(root: Path) -> list[dict[str, Any]]:
    # smpack.json and smpack_measured.json are left out too, as before: the latter records
    # the cards' hashes, so it is sealed after them.
    cards = {f"{ASSETS_EXTRA}/{card}" for card in PACKAGE_DESCRIPTIONS}
    return [
        {"path": relative, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for relative, path in tree_files(root)
        if relative not in cards
    ]


def _hub_metadata(
    spec: CardSpec, name: str, variants: list[dict[str, Any]], metrics: list[dict[str, Any]]
) -> dict[str, Any]:
    """Hugging Face model card metadata (huggingface.co/docs/hub/model-cards)."""
    hub: dict[str, Any] = {}
    if spec.model_details.licenses:
        # The hub takes one license, as a lowercase id; anything it does not list is "other".
        first = spec.model_details.licenses[0]
        identifier = (first.identifier or "").lower()
        if identifier and identifier != "proprietary":
            hub["license"] = identifier
        else:
            hub["license"] = "other"
            hub["license_name"] = identifier or "custom"
    hub["library_name"] = "tensorflow"
    hub["tags"] = ["savedmodel", "smpack", *(variant["tag_set"] for variant in variants)]
    task = spec.model_parameters.task
    if task is not None:
        hub["pipeline_tag"] = task
    # The hub groups metrics by task and dataset; smpack's cards have one task.
    results: dict[str | None, dict[str, Any]] = {}
    for metric in metrics:
        dataset = metric["dataset"]
        if dataset not in results:
            # The hub requires a dataset for every result.
            named = dataset or "not stated in the card"
            results[dataset] = {
                "task": {"type": task or "other"},
                "dataset": {"type": named, "name": named},
                "metrics": [],
            }
        label = metric["type"] + (f" ({metric['slice']})" if metric["slice"] else "")
        results[dataset]["metrics"].append(
            {"type": metric["type"], "value": metric["value"], "name": label}
        )
    measured = [result for variant in variants for result in measured_hub_results(variant, task)]
    if results or measured:
        hub["model-index"] = [{"name": name, "results": [*results.values(), *measured]}]
    return hub
