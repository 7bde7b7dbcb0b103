"""`build`: the library entry point that turns a manifest into a package on disk."""

from __future__ import annotations

import dataclasses
import gc
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from smpack.errors import PackageError, SmpackError
from smpack.io.staging import REJECTED_SUFFIX, keep_rejected
from smpack.io.storage import exists, fetched, fetched_checkpoint, is_url, join, published_directory
from smpack.io.tf_quietly import import_tensorflow_quietly
from smpack.manifest import LoadedManifest, Variant, load_manifest
from smpack.package.digests import hashing_ahead
from smpack.package.info import PackageInfo, read_package, reread_files
from smpack.package.layout import EXAMPLES_FILE
from smpack.progress import Step, StepCallback, Steps

if TYPE_CHECKING:  # (both import TensorFlow)
    from smpack.builder.graphs import VariantGraph
    from smpack.sources.model_source import ModelSource


def build(
    manifest: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    as_text: bool = False,
    measure: bool = True,
    on_step: StepCallback | None = None,
    verify: Callable[[Path], bool] | None = None,
) -> PackageInfo:
    """Build the manifest's package at `<out>/<name>/<version>/` and describe what was written.

    `out` may be a URL (gs://, ram://, s3:// with tensorflow-io): the package is then built
    in a local temporary folder and uploaded. Raises `SmpackError` (with file and field) for
    anything the user can fix; the destination is untouched unless the whole package was
    written. `measure` times every variant the host can run and evaluates it (see
    smpack.checks.measure) for the cards and smpack.json.

    `verify` is called with the finished package's folder before it is published; if it
    returns False the package is not published but kept beside the destination as
    `<version>.failed-verify` (for a URL destination, in a local temporary folder), and the
    returned record has `published` False and that folder as its path.
    """
    loaded = load_manifest(manifest)
    destination = join(out, loaded.spec.name, str(loaded.spec.version))
    remote_source, remote_destination = loaded.model_url or loaded.checkpoint_url, is_url(out)
    # TF import, each variant, writing, hashing, cards, and fetching / uploading for URLs.
    total = 4 + len(loaded.spec.variants) + bool(remote_source) + remote_destination
    total += len(loaded.spec.variants) if measure else 0
    step = Steps(total, on_step)
    if exists(destination) and not force:
        msg = (
            f"{destination} already exists; pass --force to replace it, or raise the "
            "manifest's version"
        )
        raise PackageError(msg)

    step("importing TensorFlow")
    import_tensorflow_quietly()
    # The builder modules are imported after this: validating a manifest must not cost a
    # TF import.
    try:
        with _collected_apart():
            return _build(loaded, destination, force, as_text, measure, step, verify, remote_source)
    except _Rejected as rejected:
        return dataclasses.replace(rejected.info, published=False)


@contextmanager
def _collected_apart() -> Iterator[None]:
    """Keep the objects alive before the block out of Python's full collections in it.

    A full collection walks every live object, and TensorFlow's import alone leaves some
    270,000 that a build never frees: the collections a build's graphs set off walked them
    each time (0.5 s of a one-variant build, 1-1.4 s of eight). Frozen, they are left out;
    unfrozen after, what they hold is collected as before. A caller's own freeze, or
    disabled collection, is left as it is.
    """
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _build(
    loaded: LoadedManifest,
    destination: str | Path,
    force: bool,
    as_text: bool,
    measure: bool,
    step: Steps,
    verify: Callable[[Path], bool] | None,
    remote_source: str | None,
) -> PackageInfo:
    remote_destination = is_url(destination)
    from smpack.builder.assets import copy_assets
    from smpack.builder.provenance import (
        recorded_source_files,
        seal_provenance,
        write_measurements,
        write_provenance,
    )
    from smpack.builder.serving import write_package_serving_configs
    from smpack.builder.warmup import example_records, warmup_records, write_requests
    from smpack.builder.writer import SavedModelWriter
    from smpack.package.card import write_cards
    from smpack.sources.model_source import open_source

    if remote_source:
        step(f"fetching {remote_source}")
    with (
        fetched_sources(loaded) as loaded,
        # smpack.json hashes them, and they are most of the bytes: on another core, while
        # the source loads and the graphs are built, not after.
        hashing_ahead(recorded_source_files(loaded)),
        open_source(loaded) as source,
        published_directory(destination, force) as staging,
    ):
        writer = SavedModelWriter(staging, loaded, source)
        graphs = _variant_graphs(loaded, source, step, writer.write_ahead)
        # Checked against every graph they are for before any file is written.
        serving = {g.name: g.signature_defs for g in graphs if not g.variant.is_training}
        training = {g.name: g.signature_defs for g in graphs if g.variant.is_training}
        warmup = warmup_records(loaded, serving)
        examples = example_records(loaded, serving, training)
        step("writing variables and graphs")
        writer.write(graphs, as_text)
        copy_assets(loaded, staging, source.assets)
        if warmup:
            write_requests(staging, warmup)
        if examples:
            write_requests(staging, examples, EXAMPLES_FILE)
        # Read once: nothing after this point writes saved_model.pb or variables/, so the
        # later descriptions only read again the files added beside them.
        written = read_package(staging)
        names = {
            graph.tag_set: name
            for name, variant in loaded.spec.variants.items()
            for graph in written.graphs
            if frozenset(graph.tags) == variant.tag_set
        }
        write_package_serving_configs(
            staging, written, name=loaded.spec.name, version=loaded.spec.version, names=names
        )
        measured = {}
        if measure:
            from smpack.checks.measure import Evaluation, measure_package

            evaluation = Evaluation.from_manifest(loaded)

            def progress(measuring: Step) -> None:
                step(measuring.description)

            measurements = measure_package(
                staging, evaluation=evaluation, on_step=progress, package=written
            )
            for measurement in measurements:
                measured[measurement.tag_set] = measurement.record()
        variants = {
            graph.tag_set: {
                "name": names.get(graph.tag_set),
                "fingerprint": dataclasses.asdict(graph.fingerprint) if graph.fingerprint else None,
                # Read back from the graph: which function of the source it trains.
                "train_function": graph.train_function or None,
            }
            for graph in written.graphs
        }
        step("hashing every file for smpack.json")
        write_provenance(staging, loaded, variants)
        # Apart from smpack.json: timings differ run to run, the rest of a build does not.
        write_measurements(staging, {g.tag_set: measured.get(g.tag_set) for g in written.graphs})
        # Last, so the cards describe (and hash) every other file of the finished package.
        step("writing model cards")
        write_cards(
            reread_files(written),
            loaded.card,
            template=loaded.card_template,
            name=loaded.spec.name,
            version=loaded.spec.version,
        )
        seal_provenance(staging)
        # Read now: a remote package's local copy is gone once it has been uploaded.
        info = reread_files(written)
        if verify is not None and not verify(staging):
            # Raised to leave the block without publishing; a good package at the
            # destination, even with --force, is never replaced by a failing one.
            raise _Rejected(dataclasses.replace(info, path=_keep(staging, destination)))
        if remote_destination:
            step(f"uploading to {destination}")
    if remote_destination:
        return dataclasses.replace(info, url=str(destination))
    return dataclasses.replace(info, path=Path(destination))


def _variant_graphs(
    loaded: LoadedManifest,
    source: ModelSource,
    step: Steps,
    while_waiting: Callable[[list[VariantGraph]], None],
) -> list[VariantGraph]:
    """Each variant's graph, in manifest order; the later distinct serving graphs of an
    imported source assembled in a forked child meanwhile (see builder/ahead.py), and
    `while_waiting` given the build's own graphs, in manifest order, once they are built
    and before the child's are waited for."""
    from smpack.builder.ahead import BuiltAhead, variants_ahead
    from smpack.builder.assembled import assembled_graph
    from smpack.builder.assembled_training import assembled_train_graph
    from smpack.builder.graphs import build_variant_graph, built_before, computes_as
    from smpack.io.quick_exit import may_fork
    from smpack.io.tf_quietly import register_xla_kernels

    def assembled(name: str, variant: Variant) -> VariantGraph | None:
        if source.serving_import is None:
            return None
        return assembled_graph(loaded, source.serving_import(variant), name, variant)

    def built(name: str, variant: Variant, before: list[VariantGraph]) -> VariantGraph:
        return (
            built_before(loaded, before, name, variant)
            or assembled(name, variant)
            or assembled_train_graph(loaded, source, name, variant)
            or build_variant_graph(
                loaded, source.model_fn, name, variant, source.assets, source.train_function
            )
        )

    variants = list(loaded.spec.variants.items())
    graphs: dict[str, VariantGraph] = {}
    ahead: BuiltAhead | None = None
    try:
        for index, (name, variant) in enumerate(variants):
            step(f"building variant {name} ({','.join(variant.tags)})")
            if ahead is not None and computes_as(variant) in ahead.computing:
                continue  # built there, or (a tag-only copy) made from what is built there
            graphs[name] = built(name, variant, list(graphs.values()))
            if ahead is None and graphs[name].assembled is not None and not variant.is_training:
                chosen = variants_ahead(variants[index + 1 :], graphs.values())
                if chosen and may_fork():
                    if any(v.xla or v.on_tpu for _, v in chosen):
                        register_xla_kernels()  # here: the child must not compile with XLA
                    ahead = BuiltAhead(assembled, chosen)
        from_ahead = {}
        if ahead is not None:
            while_waiting(list(graphs.values()))
            from_ahead = ahead.outcomes()
    except SmpackError:
        if ahead is None:
            raise
        # Built in turn, the variants reported the first error in manifest order.
        outcomes = ahead.outcomes()
        for earlier, _ in variants[:index]:
            outcome = outcomes.get(earlier)
            if isinstance(outcome, SmpackError):
                raise outcome from None
        raise
    except BaseException:
        if ahead is not None:
            ahead.cancel()
        raise
    ordered: list[VariantGraph] = []
    for name, variant in variants:
        outcome = graphs.get(name) or from_ahead.get(name)
        if isinstance(outcome, SmpackError):
            raise outcome
        ordered.append(outcome or built(name, variant, ordered))
    return ordered


class _Rejected(Exception):  # noqa: N818 -- control flow, not an error
    def __init__(self, info: PackageInfo) -> None:
        super().__init__(str(info.path))
        self.info = info


def _keep(staging: Path, destination: str | Path) -> Path:
    """Move a package that failed verification out of the staging folder, to be kept."""
    if is_url(destination):
        kept = Path(tempfile.mkdtemp(prefix=f"smpack-{REJECTED_SUFFIX}-")) / "package"
        shutil.move(staging, kept)
        return kept
    return keep_rejected(staging, Path(destination))


@contextmanager
def fetched_sources(loaded: LoadedManifest) -> Iterator[LoadedManifest]:
    """`loaded` with its remote source and checkpoint replaced by local temporary copies."""
    with ExitStack() as stack:
        local: dict[str, Path] = {}
        if loaded.model_url is not None:
            local["model_path"] = stack.enter_context(fetched(loaded.model_url))
        if loaded.checkpoint_url is not None:
            local["checkpoint"] = stack.enter_context(fetched_checkpoint(loaded.checkpoint_url))
        yield loaded.model_copy(update=local)
