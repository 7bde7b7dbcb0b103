"""The variant manifest: its schema (`schema`), loading and resolving it (`loading`), the card
block (`card_spec`) and the starter manifest `smpack init` writes (`scaffold`)."""

from smpack.manifest.loading import LoadedManifest, load_manifest
from smpack.manifest.schema import (
    EXAMPLE_METHODS,
    LOSSES,
    METHODS,
    Example,
    Manifest,
    Optimizer,
    Signature,
    Variant,
    WarmupRequest,
    card_format,
    manifest_json_schema,
)

__all__ = [
    "EXAMPLE_METHODS",
    "LOSSES",
    "METHODS",
    "Example",
    "LoadedManifest",
    "Manifest",
    "Optimizer",
    "Signature",
    "Variant",
    "WarmupRequest",
    "card_format",
    "load_manifest",
    "manifest_json_schema",
]
