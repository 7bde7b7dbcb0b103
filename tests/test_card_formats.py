"""Cards other tools accept: the Markdown card's front matter as the Hugging Face hub reads it,
and model_card.json against the Model Card Toolkit's schema."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import hub_card_data, mct_problems

from smpack.manifest.card_spec import CardSpec
from smpack.package.card import card_context, render_card
from smpack.package.card_json import model_card_json
from smpack.package.info import PackageInfo


def test_front_matter_passes_the_hubs_metadata_classes(linear_package: PackageInfo) -> None:
    card = (linear_package.path / "assets.extra" / "model_card.md").read_text()
    data = hub_card_data(card)
    assert data.license == "apache-2.0"
    assert data.library_name == "tensorflow"
    assert data.pipeline_tag == "tabular-regression"
    assert data.model_name == "linear"
    assert [(r.metric_type, r.metric_value, r.dataset_name) for r in data.eval_results] == [
        ("mse", 0.0001, "synthetic-test"),
        ("mae", 0.01, "synthetic-test"),
    ]


def test_metrics_without_a_dataset_still_give_the_hub_one(linear_package: PackageInfo) -> None:
    # The hub refuses a model-index result without a dataset.
    spec = CardSpec.model_validate(
        {"quantitative_analysis": {"performance_metrics": [{"type": "accuracy", "value": 0.9}]}}
    )
    data = hub_card_data(render_card(linear_package, spec))
    [result] = data.eval_results
    assert (result.metric_type, result.dataset_name) == ("accuracy", "not stated in the card")


def test_model_card_json_follows_the_model_card_toolkit_schema(
    linear_package: PackageInfo,
) -> None:
    document = (linear_package.path / "assets.extra" / "model_card.json").read_text()
    assert mct_problems(document) == []
    card = json.loads(document)
    assert card["schema_version"] == "0.0.2"
    assert card["model_details"]["name"] == "Half plus two"
    assert card["model_details"]["path"] == "linear/1"
    assert card["model_details"]["licenses"] == [{"identifier": "Apache-2.0"}]
    # MCT has no field for smpack's extensions (task, split, metric dataset, out of scope).
    assert "task" not in card["model_parameters"]
    assert "out_of_scope_uses" not in card["considerations"]
    assert {"type": "mae", "value": "0.01", "slice": "x < 0"} in card["quantitative_analysis"][
        "performance_metrics"
    ]


def test_schema_check_is_not_a_formality(linear_package: PackageInfo) -> None:
    context = card_context(linear_package, None)
    broken = json.loads(model_card_json(context))
    broken["model_details"]["version"] = {"date": "not a date"}
    broken["surprise"] = True
    problems = mct_problems(json.dumps(broken))
    assert any("surprise" in problem for problem in problems)
    assert any("not a date" in problem for problem in problems)


def test_the_cards_are_not_listed_in_smpack_json(linear_package: PackageInfo) -> None:
    record = json.loads((linear_package.path / "assets.extra" / "smpack.json").read_text())
    assert not [f for f in record["files"] if Path(f).name.startswith("model_card.")]
