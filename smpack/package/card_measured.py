"""The numbers measured on a package's variants, as a card shows them (no TensorFlow).

Each variant's `measured` record is what smpack.checks.measure wrote into
smpack_measured.json (or measured just now, for `smpack card --measure`): a host and a reason
it was not measured, or its load time, warm latency, agreement with the float32 variant and
evaluation metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def measured_cells(variant: Mapping[str, Any], reference: bool) -> list[str]:
    """The variants table's load, p50, p99 and agreement cells for one variant."""
    measured = variant["measured"]
    if not measured:
        return ["not measured", "", "", ""]
    if measured["reason"]:
        return [measured["reason"], "", "", ""]
    agreement = measured["agreement"]
    if reference:
        compared = "reference"
    elif agreement is None:
        compared = "-"
    else:
        error = agreement["max_relative_error"]
        parts = ["non-finite outputs" if error is None else f"max rel. error {error:.2g}"]
        if agreement["top1_agreement"] is not None:
            parts.append(f"top-1 {agreement['top1_agreement']:.0%}")
        compared = ", ".join(parts)
    return [
        f"{measured['load_seconds']:.3g} s",
        f"{measured['latency_p50_ms']:.3g} ms",
        f"{measured['latency_p99_ms']:.3g} ms",
        compared,
    ]


def measured_summary(variants: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where and how the variants were measured, or None if none was."""
    measured = [v["measured"] for v in variants if v["measured"] and not v["measured"]["reason"]]
    if not measured:
        return None
    batches = sorted({m["batch_size"] for m in measured if m["batch_size"] is not None})
    return {
        "hosts": sorted({m["host"] for m in measured}),
        "warm_runs": max(m["warm_runs"] for m in measured),
        "batch_sizes": batches,
    }


def measured_metrics(measured: Mapping[str, Any] | None) -> list[tuple[str, str, float]]:
    """(type, label, value) of the timing and agreement measured on a variant's request;
    none if it was not measured. Evaluation metrics are in `measured["metrics"]`."""
    if not measured or measured["reason"]:
        return []
    numbers = [
        ("load_time_s", "load time (s)", measured["load_seconds"]),
        ("latency_p50_ms", "warm latency p50 (ms)", measured["latency_p50_ms"]),
        ("latency_p99_ms", "warm latency p99 (ms)", measured["latency_p99_ms"]),
    ]
    agreement = measured["agreement"]
    if agreement is not None:
        reference = agreement["reference"]
        if agreement["max_relative_error"] is not None:
            label = f"max relative error vs {reference}"
            numbers.append(("max_relative_error", label, agreement["max_relative_error"]))
        if agreement["top1_agreement"] is not None:
            label = f"top-1 agreement with {reference}"
            numbers.append(("top1_agreement", label, agreement["top1_agreement"]))
    return numbers


def measured_hub_results(variant: Mapping[str, Any], task: str | None) -> list[dict[str, Any]]:
    """The hub results of one measured variant, each metric labelled with the variant and
    the host it was measured on: timing and agreement on one request, then the metrics
    on the evaluation data."""
    measured = variant["measured"]
    numbers = measured_metrics(measured)
    if not numbers:
        return []
    where = f"{variant['tag_set']} on {measured['host']}"
    batch = measured["batch_size"]
    request = f"one request of {batch} rows" if batch is not None else "one request"
    datasets = [("smpack-measurement", f"{request}, {where}", numbers)]
    if measured["metrics"]:
        evaluated = [(name, name, value) for name, value in measured["metrics"].items()]
        datasets.append(("smpack-evaluation", f"{measured['evaluation_data']}", evaluated))
    return [
        {
            "task": {"type": task or "other"},
            "dataset": {"type": kind, "name": dataset},
            "metrics": [
                {
                    "type": metric,
                    "value": value,
                    "name": f"{label}, {where}",
                    "config": variant["tag_set"],
                }
                for metric, label, value in values
            ],
        }
        for kind, dataset, values in datasets
    ]
