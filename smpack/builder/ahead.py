"""Serving graphs assembled in a forked process while the build goes on with the others.

Once an imported source is open, its variants' graphs are independent of one another, and
on a two-core machine the second core idled while they were built one after the other. So
after the first assembled serving graph (whose variables template's shapes the others
reuse, `assembled._TEMPLATE_SHAPES`), the later distinct serving graphs are assembled in a
child forked from the build, while the build itself goes on with its train graph (without
one, with the last serving graph); the child sends back the finished `VariantGraph`s,
pickled (their protos serialized, the same messages once parsed). Its own graphs done, the
build writes what they decide while the child finishes (`SavedModelWriter.write_ahead`).

Forking after TensorFlow has started threads is safe for what the child does. At the fork,
the build's other threads are idle pool threads (Grappler's graph runner's, from loading
the source) and the thread hashing the source's files, none of which the child uses; the
child imports GraphDefs with the C++ importer, reads op definitions and builds small
Python graphs, as the build would have; and it ends with `os._exit` however its work ends,
so nothing after the fork runs twice. That holds while no other thread can be inside
TensorFlow: with a thread of a library caller's alive (`may_fork`), nothing is forked.
The child's `sys.stdout` and `sys.stderr` are the process's own streams: a progress
display's proxies take a lock its refreshing thread, gone in the child, may have held at
the fork.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Iterable

from smpack.builder.graphs import VariantGraph, computes_as
from smpack.errors import SmpackError
from smpack.io.quick_exit import become_forked_helper, exit_now
from smpack.manifest import Variant

# A variant's graph, None to build it the Python way, or the user error building it raised.
Outcome = VariantGraph | SmpackError | None
Build = Callable[[str, Variant], VariantGraph | None]


def variants_ahead(
    rest: Iterable[tuple[str, Variant]], built: Iterable[VariantGraph]
) -> list[tuple[str, Variant]]:
    """The variants of `rest` (those after the first assembled serving graph, in manifest
    order) to assemble in a child: each serving variant computing unlike any other before
    it, and the build's own share left to it, its train graphs or else the last of them."""
    seen = {computes_as(graph.variant) for graph in built}
    serving, others = [], False
    for name, variant in rest:
        key = computes_as(variant)
        if key in seen:
            continue  # a tag-only copy, made from the graph it copies
        seen.add(key)
        if variant.is_training:
            others = True
        else:
            serving.append((name, variant))
    return serving if others else serving[:-1]


class BuiltAhead:
    """`build(name, variant)` of each of `variants`, in a child forked now, in order; the
    child stops at the first `SmpackError`."""

    def __init__(self, build: Build, variants: list[tuple[str, Variant]]) -> None:
        self.variants = dict(variants)
        self.computing = {computes_as(variant) for _, variant in variants}
        # What the streams hold now is this process's to write, not the child's too.
        sys.stdout.flush()
        sys.stderr.flush()
        readable, writable = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(readable)
            _build_and_exit(build, variants, writable)
        os.close(writable)
        self._pid: int | None = pid
        self._readable = readable

    def outcomes(self) -> dict[str, Outcome]:
        """Each variant's outcome, as far as the child went; waits for it to end.

        None at all if the child was killed (the kernel's OOM killer, a stray kill): the
        build then builds those variants itself, in turn, as it would without a child."""
        assert self._pid is not None
        chunks = []
        try:
            while chunk := os.read(self._readable, 1 << 20):
                chunks.append(chunk)
        except BaseException:
            self.cancel()
            raise
        os.close(self._readable)
        _, status = os.waitpid(self._pid, 0)
        self._pid = None
        code = os.waitstatus_to_exitcode(status)
        if code == -signal.SIGINT:
            raise KeyboardInterrupt  # (the build's own may not have been raised yet)
        if code < 0:
            return {}
        if code != 0 or not chunks:
            msg = f"the process assembling variants {', '.join(self.variants)} ended ({code})"
            raise RuntimeError(msg)
        kind, value = pickle.loads(b"".join(chunks))
        if kind == "bug":
            raise RuntimeError(value)
        return value

    def cancel(self) -> None:
        """End the child now, its work abandoned (the build failed or was interrupted)."""
        if self._pid is None:
            return
        os.kill(self._pid, signal.SIGKILL)
        os.waitpid(self._pid, 0)
        os.close(self._readable)
        self._pid = None


def _build_and_exit(build: Build, variants: list[tuple[str, Variant]], writable: int) -> None:
    """In the child: build, send what came of it, and exit, whatever happens."""
    inherited: frozenset[str] = frozenset()
    try:
        # Ctrl-C, or a SIGTERM or SIGHUP sent to the build's whole process group: this one
        # ends at once, and the build is interrupted by its own.
        inherited = become_forked_helper((signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
        outcomes: dict[str, Outcome] = {}
        try:
            for name, variant in variants:
                try:
                    outcomes[name] = build(name, variant)
                except SmpackError as e:  # the user's to fix: raised again in the build
                    outcomes[name] = e
                    break
            reply = pickle.dumps(("done", outcomes), protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as e:  # smpack's bug: its traceback, loud in the build
            reply = pickle.dumps(("bug", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        with os.fdopen(writable, "wb") as pipe:
            pipe.write(reply)
    finally:
        exit_now(0, inherited)
