"""`build`: the library entry point that turns a manifest into a package on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from smpack.errors import PackageError
from smpack.manifest import load_manifest
from smpack.package_info import PackageInfo
from smpack.tf_quietly import import_tensorflow_quietly


def build(
    manifest: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    as_text: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> PackageInfo:
    """Build the manifest's package at `<out>/<name>/<version>/` and describe what was written.

    Raises `SmpackError` (with file and field) for anything the user can fix; the
    destination is untouched unless the whole package was written.
    """
    step = on_step or (lambda _: None)
    loaded = load_manifest(manifest)
    destination = Path(out).absolute() / loaded.spec.name / str(loaded.spec.version)
    if destination.exists() and not force:
        msg = (
            f"{destination} already exists; pass --force to replace it, or raise the "
            "manifest's version"
        )
        raise PackageError(msg)

    step("importing TensorFlow")
    import_tensorflow_quietly()
    # Imported here, not at module level: validating a manifest must not cost a TF import.
    from smpack.assets import copy_assets
    from smpack.card import write_cards
    from smpack.graphs import build_variant_graph
    from smpack.model_source import open_source
    from smpack.package_info import read_package
    from smpack.provenance import write_provenance
    from smpack.staging import staged_directory
    from smpack.warmup import warmup_records, write_warmup_file
    from smpack.writer import write_saved_model

    with open_source(loaded) as source, staged_directory(destination, force) as staging:
        graphs = []
        for name, variant in loaded.spec.variants.items():
            step(f"building variant {name} ({','.join(variant.tags)})")
            graphs.append(build_variant_graph(loaded, source.model_fn, name, variant))
        # Checked against every serving graph before any file is written.
        warmup = warmup_records(
            loaded, {g.name: g.signature_defs for g in graphs if not g.variant.is_training}
        )
        step("writing variables and graphs")
        write_saved_model(staging, graphs, loaded, as_text, source)
        copy_assets(loaded, staging)
        if warmup:
            write_warmup_file(staging, warmup)
        write_provenance(staging, loaded)
        # Last, so the cards describe (and hash) every other file of the finished package.
        step("writing model cards")
        write_cards(
            staging,
            loaded.card,
            template=loaded.card_template,
            name=loaded.spec.name,
            version=loaded.spec.version,
        )
    return read_package(destination)
