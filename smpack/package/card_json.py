"""The Model Card Toolkit's JSON form of the card (`model_card.json`, MCT schema v0.0.2).

Tools built on the Model Card Toolkit read this file; the Markdown and HTML cards are for
people. It carries the manifest's `card:` block in MCT's own shape (smpack's extensions,
which MCT has no field for, are left out) and the numbers measured on the build host as
performance metrics, each sliced by the variant and host they were measured on.
"""

from __future__ import annotations

import json
from typing import Any

from smpack.package.card_measured import measured_metrics

MCT_SCHEMA_VERSION = "0.0.2"
# smpack extensions of MCT's fields (see manifest/card_spec.py), absent from MCT's schema.
_EXTENSIONS = {
    "model_parameters": {"task"},
    "dataset": {"split"},
    "performance_metric": {"dataset", "threshold"},
    "considerations": {"out_of_scope_uses"},
}


def model_card_json(context: dict[str, Any]) -> str:
    """`model_card.json` for the card whose template context is `context` (`card_context`)."""
    card = context["card"]
    details = _pruned(card["model_details"])
    details.setdefault("name", context["package"]["name"])
    if context["package"]["directory"]:
        details["path"] = context["package"]["directory"]
    parameters = {
        key: value
        for key, value in card["model_parameters"].items()
        if key not in _EXTENSIONS["model_parameters"]
    }
    parameters["data"] = [
        {k: v for k, v in dataset.items() if k not in _EXTENSIONS["dataset"]}
        for dataset in parameters.get("data", [])
    ]
    metrics = [
        {
            **{k: v for k, v in metric.items() if k not in _EXTENSIONS["performance_metric"]},
            "value": str(metric["value"]),
        }
        for metric in card["quantitative_analysis"]["performance_metrics"]
    ]
    for variant in context["variants"]:
        measured = variant["measured"]
        where = f"{variant['tag_set']} on {measured['host']}" if measured else ""
        for kind, _, value in measured_metrics(measured):
            metrics.append({"type": kind, "value": f"{value:.6g}", "slice": where})
        for name, value in (measured or {}).get("metrics", {}).items():
            metrics.append(
                {
                    "type": name,
                    "value": f"{value:.6g}",
                    "slice": f"{where}, {measured['evaluation_data']}",
                }
            )
    considerations = {
        key: value
        for key, value in card["considerations"].items()
        if key not in _EXTENSIONS["considerations"]
    }
    document = {
        "schema_version": MCT_SCHEMA_VERSION,
        "model_details": details,
        "model_parameters": _pruned(parameters),
        "quantitative_analysis": _pruned({"performance_metrics": metrics}),
        "considerations": _pruned(considerations),
    }
    return json.dumps(_pruned(document), indent=2, sort_keys=True) + "\n"


def _pruned(value: Any) -> Any:
    """`value` without None and empty containers: MCT's schema types every field, and null
    or {} is no string or object it accepts."""
    if isinstance(value, dict):
        pruned = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_pruned(item) for item in value if item not in (None, {}, [])]
    return value
