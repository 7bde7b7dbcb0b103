"""Building several manifests at once, each in its own process.

Every build runs in a fresh, spawned process: TensorFlow must not be forked once imported,
and a model function that crashes or leaks state then takes only its own build with it.
One failure never stops the others; each outcome is a record, not an exception.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from smpack.errors import SmpackError
from smpack.progress import Step, StepCallback


@dataclass(frozen=True)
class BuildOutcome:
    """What happened to one manifest: built (and verified) or the one-line reason it failed."""

    manifest: Path
    package: str | None = None  # its path or URL
    tag_sets: tuple[str, ...] = ()
    error: str | None = None
    failed_checks: tuple[str, ...] = ()  # "tag set: check: detail", when verification failed
    verified: bool = False

    @property
    def passed(self) -> bool:
        return self.error is None and not self.failed_checks


def build_many(
    manifests: list[Path],
    out: str | Path,
    *,
    jobs: int = 1,
    force: bool = False,
    as_text: bool = False,
    verify: bool = True,
    measure: bool = True,
    on_step: StepCallback | None = None,
) -> list[BuildOutcome]:
    """Build (and verify) each manifest in its own process, `jobs` at a time.

    Outcomes come back in the order of `manifests`, whatever order the builds finish in;
    `on_step` hears of each as it finishes.
    """
    context = multiprocessing.get_context("spawn")
    outcomes: dict[int, BuildOutcome] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {
            pool.submit(build_and_verify, manifest, out, force, as_text, verify, measure): index
            for index, manifest in enumerate(manifests)
        }
        for future in concurrent.futures.as_completed(futures):
            manifest = manifests[futures[future]]
            try:
                outcome = future.result()
            except BrokenProcessPool as e:  # a worker was killed: that build failed, not all
                outcome = BuildOutcome(manifest, error=f"{type(e).__name__}: {e}")
            outcomes[futures[future]] = outcome
            if on_step is not None:
                on_step(Step(f"{manifest.name} finished", len(outcomes), len(manifests)))
    return [outcomes[index] for index in range(len(manifests))]


def build_and_verify(
    manifest: Path, out: str | Path, force: bool, as_text: bool, verify: bool, measure: bool = True
) -> BuildOutcome:
    """One manifest's build and verification, with user errors turned into the outcome."""
    from smpack.builder.packager import build

    failed: list[str] = []

    def passes(staging: Path) -> bool:
        from smpack.checks.verify import verify_package

        report = verify_package(staging)
        failed.extend(
            f"{label}: {c.name}: {c.detail}" for label, c in report.rows() if not c.passed
        )
        return report.passed

    try:
        info = build(
            manifest,
            out,
            force=force,
            as_text=as_text,
            measure=measure,
            verify=passes if verify else None,
        )
    except SmpackError as e:
        return BuildOutcome(manifest, error=str(e))
    tag_sets = tuple(graph.tag_set for graph in info.graphs)
    if not verify:
        return BuildOutcome(manifest, package=info.location, tag_sets=tag_sets)
    return BuildOutcome(
        manifest, info.location, tag_sets, failed_checks=tuple(failed), verified=True
    )
