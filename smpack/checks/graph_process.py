"""Checking each graph in a process of its own, which returns all its memory when it exits.

In one process, the memory a closed graph leaves behind is not always reused by the next:
at 16 GiB of weights the second graph loaded before the first's memory was back, and the
build died at the 24 GiB the machine has. A process per graph starts on an empty heap and
hands everything back when it exits.

The processes are forked from a server (`graph_server`) that imported TensorFlow once and
has created no session, thread pool or device, so each costs a fork rather than
TensorFlow's import (6-8 s on a busy 2-core machine). The server starts when first needed,
serves this process's later calls too, and ends with it. It is not multiprocessing's
forkserver, whose processes first re-run the caller's `__main__` module: a script calling
`smpack.verify` would run again, once per graph.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, TypeVar

import smpack
from smpack.checks.graph_server import read_message, write_message

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
    """An exception verify did not expect, raised in a graph's process (a bug in smpack; its
    message ends with the process's traceback), or the server's own failure."""


_RUNNING_INTERPRETER = "/proc/self/exe"

# Runs the server from the smpack package this process imported (its folder is argv[1]),
# under -P: `python -m` would put the working folder first on sys.path, and a `smpack/`
# there (a checkout, a user's own package of that name) would be what the graph processes
# ran, or a `numpy/` what they imported.
_BOOTSTRAP = """\
import importlib.util, runpy, sys
folder = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location(
    "smpack", folder + "/__init__.py", submodule_search_locations=[folder]
)
sys.modules["smpack"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
runpy.run_module("smpack.checks.graph_server", run_name="__main__", alter_sys=True)
"""


class _Server:
    """The running server: its process and the pipes to it."""

    def __init__(self) -> None:
        # Not the caller's sys.path: a script's folder first on it may hold modules named
        # like the standard library's (bench/inspect.py), which it imported before.
        # The interpreter this process runs, through /proc/self/exe, with sys.executable as
        # argv[0] so Python still finds its venv: a process that dropped privileges (setpriv,
        # gosu) may run an interpreter whose folders its user cannot search, and could not
        # start it again by path.
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-c", _BOOTSTRAP, os.path.dirname(smpack.__file__)],
            executable=_RUNNING_INTERPRETER if os.path.exists(_RUNNING_INTERPRETER) else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    @property
    def requests(self) -> IO[bytes]:
        assert self.process.stdin is not None
        return self.process.stdin

    @property
    def replies(self) -> IO[bytes]:
        assert self.process.stdout is not None
        return self.process.stdout

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.requests.close()
        self.replies.close()


_server: _Server | None = None
_lock = threading.Lock()  # one graph process at a time, and one server


def start_server() -> None:
    """Start the server (it imports TensorFlow) if it is not running, without waiting for it:
    its import overlaps whatever the caller does next."""
    global _server
    with _lock:
        if _server is None or _server.process.poll() is not None:
            _server = _Server()


def run_in_own_process(
    function: Callable[..., Result], *args: Any, description: str = "smpack"
) -> Result:
    """`function(*args)` in a fresh process forked from the server; its return value.

    `function` and `args` must pickle (a module-level function). Raises `GraphProcessDied`
    if the process ends without a result, the `SmpackError` `function` raised, and
    `GraphProcessBug` (with the process's traceback) if it raised anything else. The
    process never outlives the call: on any exception here (Ctrl-C included) it is killed,
    and the server with it (the next call starts another).
    """
    global _server
    start_server()
    with _lock:
        assert _server is not None
        server, child = _server, 0
        try:
            write_message(server.requests, (function, args, dict(os.environ), os.getcwd()))
            child = read_message(server.replies)
            exit_code, result = read_message(server.replies)
        except BaseException as e:
            if child:
                _kill(child)
            server.stop()
            _server = None
            if isinstance(e, (EOFError, BrokenPipeError)):
                msg = (
                    f"{description}: verify's graph server ended with exit code "
                    f"{server.process.returncode} (its error, if any, is above)"
                )
                raise GraphProcessBug(msg) from e
            raise
    if exit_code != 0 or not result:
        raise GraphProcessDied(exit_code)
    kind, payload = pickle.loads(result)
    if kind == "error":
        raise payload
    if kind == "bug":
        msg = f"{description}: {payload}"
        raise GraphProcessBug(msg)
    return payload


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it had ended
        pass
