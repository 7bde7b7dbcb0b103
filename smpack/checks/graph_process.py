"""Checking each graph in a process of its own, which returns all its memory when it exits.

In one process, the memory a closed graph leaves behind is not always reused by the next:
at 16 GiB of weights the second graph loaded before the first's memory was back, and the
build died at the 24 GiB the machine has. A process per graph starts on an empty heap and
hands everything back when it exits.

The processes are forked from a server that imported TensorFlow once and has created no
session, thread pool or device (multiprocessing's forkserver), so each costs a fork rather
than TensorFlow's import (6-8 s on a busy 2-core machine). The server starts when first
needed and ends with this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

# Imported in the server, once: TensorFlow and everything verify runs in a graph's process.
_PRELOADED = ["smpack.checks.graph_server"]
_CONTEXT = multiprocessing.get_context("forkserver")

Result = TypeVar("Result")


class GraphProcessDied(Exception):
    """The process checking a graph ended without its result: killed by a signal (the
    kernel's out-of-memory killer, a memory limit, a crash in TensorFlow) or exited."""

    def __init__(self, exit_code: int) -> None:
        self.exit_code = exit_code
        if exit_code < 0:
            name = signal.Signals(-exit_code).name
            how = f"was killed by signal {-exit_code} ({name})"
            if -exit_code == signal.SIGKILL:
                how += ", as the kernel's out-of-memory killer or a memory limit does"
        else:
            how = f"exited with code {exit_code} before reporting"
        super().__init__(f"the process checking it {how}")


class GraphProcessBug(RuntimeError):
    """An exception verify did not expect, raised in a graph's process: a bug in smpack.
    Its message ends with the process's traceback."""


def start_server() -> None:
    """Start the server (it imports TensorFlow) if it is not running, without waiting for it:
    its import overlaps whatever the caller does next."""
    if _in_process():
        return
    _CONTEXT.set_forkserver_preload(_PRELOADED)
    from multiprocessing import forkserver

    forkserver.ensure_running()


def run_in_own_process(
    function: Callable[..., Result], *args: Any, description: str = "smpack"
) -> Result:
    """`function(*args)` in a fresh process forked from the server; its return value.

    Raises `GraphProcessDied` if the process ends without a result, `GraphProcessBug` if
    `function` raised. The process never outlives the call: on any exception here (Ctrl-C
    included) it is terminated, then killed, and reaped.
    """
    if _in_process():
        return function(*args)
    start_server()
    receiver, sender = _CONTEXT.Pipe(duplex=False)
    process = _CONTEXT.Process(
        target=_child,
        args=(sender, function, args, dict(os.environ)),
        name=description,
        daemon=True,
    )
    try:
        process.start()
        sender.close()
        # The result first: a large one fills the pipe, and the process waits for it to
        # be read before it can exit.
        multiprocessing.connection.wait([receiver, process.sentinel])
        try:
            kind, payload = receiver.recv()
        except EOFError:  # ended without sending
            kind, payload = "died", None
        process.join()
    finally:
        receiver.close()
        if process.is_alive():
            process.terminate()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
    if kind == "bug":
        msg = f"{description}: {payload}"
        raise GraphProcessBug(msg)
    if kind == "died":
        raise GraphProcessDied(process.exitcode or 0)
    return payload


def _in_process() -> bool:
    """Whether graphs must be checked in this process: a daemonic process (a worker of a
    multiprocessing.Pool) may not start processes of its own."""
    return bool(multiprocessing.current_process().daemon)


def _child(
    sender: multiprocessing.connection.Connection,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    environment: dict[str, str],
) -> None:
    # Ctrl-C reaches the whole process group: this process just ends, and the caller,
    # interrupted too, reports it once. Nor does it outlive the server, which ends with
    # the caller (Linux's PR_SET_PDEATHSIG; elsewhere it ends at its next write).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    # The caller's environment now, not the server's when it started (XLA_FLAGS, set by
    # verify, is read at the first XLA compilation, which happens here).
    os.environ.clear()
    os.environ.update(environment)
    try:
        result = function(*args)
    except BaseException as e:
        sender.send(("bug", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        return
    sender.send(("result", result))
