"""The public Python API: what `import smpack` offers, and all that the CLI calls.

Each function imports what it needs when called, so `import smpack` stays cheap and
`smpack.inspect` never imports TensorFlow. Every problem the caller can fix is raised as an
`SmpackError` naming the file and field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from smpack.progress import StepCallback

if TYPE_CHECKING:
    from smpack.builder.batch import BuildOutcome
    from smpack.builder.serving import WrittenServingConfig
    from smpack.checks.verify import VerifyReport
    from smpack.manifest import LoadedManifest
    from smpack.package.diff import Change
    from smpack.package.info import PackageInfo


def build(
    manifest: str | Path,
    out: str | Path = "build",
    *,
    force: bool = False,
    as_text: bool = False,
    measure: bool = True,
    on_step: StepCallback | None = None,
    verify: Callable[[Path], bool] | None = None,
) -> PackageInfo:
    """Build the manifest's package at `<out>/<name>/<version>/` and describe what was written.

    `out` may be a URL (gs://, ram://, ...). The destination is untouched unless the whole
    package was written. `measure` times (and evaluates) every variant this host can run,
    for the cards and smpack_measured.json. `verify`, if given, is called with the finished
    package's folder before it is published (e.g. `lambda p: smpack.verify(p).passed`);
    when it returns False the package is kept as `<version>.failed-verify` beside the
    destination instead, and the result's `published` is False.
    """
    from smpack.builder.packager import build as build_package

    return build_package(
        manifest,
        out,
        force=force,
        as_text=as_text,
        measure=measure,
        on_step=on_step,
        verify=verify,
    )


def build_many(
    manifests: Sequence[Path],
    out: str | Path = "build",
    *,
    jobs: int = 1,
    force: bool = False,
    as_text: bool = False,
    verify: bool = True,
    measure: bool = True,
    on_step: StepCallback | None = None,
) -> list[BuildOutcome]:
    """Build (and verify) several manifests, `jobs` at a time, each in its own process.

    One failing does not stop the others: each outcome holds its error or failed checks.
    """
    from smpack.builder.batch import build_and_verify
    from smpack.builder.batch import build_many as build_in_processes

    if len(manifests) == 1:
        return [build_and_verify(manifests[0], out, force, as_text, verify, measure)]
    return build_in_processes(
        list(manifests),
        out,
        jobs=jobs,
        force=force,
        as_text=as_text,
        verify=verify,
        measure=measure,
        on_step=on_step,
    )


def inspect(location: str | Path, tags: Iterable[str] | None = None) -> PackageInfo:
    """Describe the SavedModel at `location` (any, not only smpack's), without TensorFlow.

    With `tags`, only the graph with exactly that tag set is kept; none is an error.
    """
    from smpack.package.inspection import inspect_package

    return inspect_package(location, frozenset(tags) if tags is not None else None)


def verify(location: str | Path, on_step: StepCallback | None = None) -> VerifyReport:
    """Load every graph of the SavedModel at `location` through TensorFlow and check it.

    Never raises for a failed check: the report says which failed.
    """
    from smpack.io.tf_quietly import import_tensorflow_quietly

    import_tensorflow_quietly()
    from smpack.checks.verify import verify_package

    return verify_package(location, on_step=on_step)


def prepare_verify() -> None:
    """Start what `verify` needs first, in the background: the process its graph processes
    are forked from, which imports TensorFlow (6-8 s). A `verify` later in this process (of
    the package a build is writing, say) then starts at once. Returns at once."""
    from smpack.checks.graph_process import start_server

    start_server()


def extract(
    location: str | Path,
    tags: Iterable[str],
    out: str | Path,
    *,
    clear_devices: bool = False,
    force: bool = False,
) -> str | Path:
    """Write the graph tagged exactly `tags` as a standalone SavedModel tagged `serve`."""
    from smpack.io.tf_quietly import import_tensorflow_quietly

    import_tensorflow_quietly()
    from smpack.checks.extract import extract_graph

    return extract_graph(location, frozenset(tags), out, clear_devices=clear_devices, force=force)


def serving_config(
    location: str | Path,
    target: Literal["triton", "tfserving"],
    out: str | Path,
    *,
    tags: Iterable[str] | None = None,
    force: bool = False,
) -> WrittenServingConfig:
    """Write `target`'s config of every serving variant of the package at `location` into
    `out`, naming the package where it is.

    triton: a model repository, each model's config.pbtxt and version folder (the variant
    alone, tagged serve, weights hard-linked). tfserving: per variant its models.config, the
    tensorflow_model_server command line and, for a static batch size, batching parameters.
    """
    from smpack.builder.serving import write_serving_config

    chosen = frozenset(tags) if tags is not None else None
    return write_serving_config(location, target, out, tags=chosen, force=force)


def diff(old: str | Path, new: str | Path) -> list[Change]:
    """What differs between two packages: graphs, signatures, variables and file contents."""
    from smpack.package.diff import diff_locations

    return diff_locations(old, new)


def render_card(
    location: str | Path,
    *,
    manifest: str | Path | None = None,
    template: str | Path | None = None,
    fmt: Literal["md", "html"] | None = None,
    measurements: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> str:
    """The model card of any SavedModel, from its own files.

    The `card:` block comes from `manifest` if given, else from the package's smpack.json;
    the measured numbers from its smpack_measured.json, unless `measurements` (from
    `measure`) are given.
    """
    from smpack.package.card import card_for_package

    return card_for_package(
        location, manifest=manifest, template=template, fmt=fmt, measurements=measurements
    )


def measure(
    location: str | Path,
    *,
    manifest: str | Path | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, dict[str, Any]]:
    """Measure every variant of the package at `location` that this host can run: load
    time, warm latency p50/p99 and agreement with the float32 variant, plus the metrics of
    `manifest`'s `evaluate:` block. By tag set; a variant it cannot run says why instead.
    """
    from smpack.io.tf_quietly import import_tensorflow_quietly

    import_tensorflow_quietly()
    from smpack.checks.measure import Evaluation, measure_location

    evaluation = Evaluation.from_manifest(load_manifest(manifest)) if manifest else None
    return measure_location(location, evaluation=evaluation, on_step=on_step)


def load_manifest(path: str | Path) -> LoadedManifest:
    """Read, validate and resolve a manifest."""
    from smpack.manifest import load_manifest as load

    return load(path)


def manifest_schema() -> str:
    """The manifest format as a JSON Schema document."""
    from smpack.manifest import manifest_json_schema

    return manifest_json_schema()


def init(manifest: str | Path) -> list[Path]:
    """Write a starter manifest and model function that build as they are; returns them."""
    from smpack.manifest.scaffold import write_starter

    return write_starter(Path(manifest))
