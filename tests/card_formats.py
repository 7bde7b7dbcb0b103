"""Reading the cards back with other tools' own rules: the Hugging Face hub's model-card
metadata classes (offline) and the Model Card Toolkit's published JSON schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from huggingface_hub import ModelCard, ModelCardData

MCT_SCHEMA = Path(__file__).resolve().parent / "schemas" / "model_card_toolkit_v0.0.2.schema.json"


def hub_card_data(card: str) -> ModelCardData:
    """The card's front matter as the hub reads it; raises ValueError where the hub would
    refuse it (a model-index it cannot parse into evaluation results, for one)."""
    parsed = ModelCard(card, ignore_metadata_errors=False)
    front = yaml.safe_load(card.removeprefix("---\n").partition("\n---\n")[0])
    # ModelCard keeps unknown keys; ModelCardData validates the model-index strictly.
    ModelCardData(**front, ignore_metadata_errors=False)
    return parsed.data


def mct_problems(document: str) -> list[str]:
    """Where `document` breaks the Model Card Toolkit's schema (v0.0.2), with formats."""
    schema = json.loads(MCT_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    data: Any = json.loads(document)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]
