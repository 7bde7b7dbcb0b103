"""Building several manifests at once, each in its own process.

Every build runs in a fresh, spawned process: TensorFlow must not be forked once imported,
and a model function that crashes or leaks state then takes only its own build with it.
One failure never stops the others; each outcome is a record, not an exception.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
from collections.abc import Iterator
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
    # The pool starts multiprocessing's resource tracker, and a worker per task submitted.
    with (
        _safe_path() as callers_value,
        concurrent.futures.ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=context,
            initializer=_set_safe_path,
            initargs=(callers_value,),
        ) as pool,
    ):
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


# A spawned worker starts as `python -c "from multiprocessing.spawn import ..."`, and
# multiprocessing's resource tracker as `python -c ...`: the working folder comes first on
# sys.path while they import multiprocessing, pickle, socket and the rest, so a
# `multiprocessing/` or `socket.py` there would run instead. Python's -P, as this variable,
# leaves the folder out; a worker then takes this process's own sys.path, as spawn does,
# and the variable as it was.
_SAFE_PATH = "PYTHONSAFEPATH"


@contextlib.contextmanager
def _safe_path() -> Iterator[str | None]:
    """PYTHONSAFEPATH set in this process's environment; gives the value it had."""
    before = os.environ.get(_SAFE_PATH)
    os.environ[_SAFE_PATH] = "1"
    try:
        yield before
    finally:
        _set_safe_path(before)


def _set_safe_path(value: str | None) -> None:
    """PYTHONSAFEPATH as `value`, or unset if None (a worker's start, its caller's value)."""
    if value is None:
        os.environ.pop(_SAFE_PATH, None)
    else:
        os.environ[_SAFE_PATH] = value


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
