"""Checking each graph in a process of its own, which returns all its memory when it exits.

In one process, the memory a closed graph leaves behind is not always reused by the next:
at 16 GiB of weights the second graph loaded before the first's memory was back, and the
build died at the 24 GiB the machine has. A process per graph starts on an empty heap and
hands everything back when it exits.

The processes are forked from a server (`graph_server`) that imported TensorFlow once and
has created no session, thread pool or device, so each costs a fork rather than
TensorFlow's import (6-8 s on a busy 2-core machine). The server starts when first needed,
serves this process's later calls too, and ends with it. smpack's own command forks it from
itself instead, right after its own TensorFlow import (`fork_server_at_import`): one import
for the two. Several processes may run at
once, as many as the caller's memory budget allows (`run_each_in_own_process`). It is not
multiprocessing's forkserver, whose processes first re-run the caller's `__main__` module:
a script calling `smpack.verify` would run again, once per graph.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, TypeVar, cast

import smpack
from smpack.checks.graph_server import read_message, serve_forked, write_request, write_turn
from smpack.errors import SmpackError
from smpack.io.quick_exit import may_fork
from smpack.io.tf_quietly import after_import

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

# Each graph process restores the whole checkpoint into fresh memory, and the kernel handed
# it that memory 4 KiB at a time, a minor fault per page (about 270,000 per GiB): most of a
# restore's system time. With this tunable glibc's malloc asks for transparent huge pages
# (madvise(MADV_HUGEPAGE)) for what it maps, as THP's default `madvise` mode needs. glibc
# reads it as a process starts, so it goes into the server's environment, and every graph
# process forked from the server inherits its malloc so set (a server forked from smpack's
# command inherits the command's: `restart_with_huge_pages`). A glibc before 2.35 skips a
# tunable it does not know, other libcs read no GLIBC_TUNABLES, and THP `never` ignores the
# request.
_HUGE_PAGES_TUNABLE = ("glibc.malloc.hugetlb", "1")


@dataclass(frozen=True)
class Job:
    """A function to run in a process of its own, and the memory that process may need."""

    function: Callable[..., Any]  # module-level, so that it pickles
    args: tuple[Any, ...] = ()
    description: str = "smpack"
    memory: int = 0  # bytes, at its peak
    # If `function` waits for its turn (`graph_server.wait_for_turn`) before it takes its
    # memory, the bytes its process may need until then: it may start that early, beside
    # the jobs before it. None if it does not wait.
    before_turn: int | None = None


class _Call:
    """One job sent to the server: its process's id once forked, then how it ended."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.number = 0  # the server's name for it
        self.pid = 0
        self.ended: tuple[int, bytes] | None = None  # exit code, what it wrote


class _Server:
    """The running server: its process, the pipes to it, and the calls it is running."""

    def __init__(
        self,
        process: subprocess.Popen[bytes] | _ForkedServer,
        requests: IO[bytes],
        replies: IO[bytes],
    ) -> None:
        self.process = process
        self.requests = requests
        self._replies = replies
        self._calls: dict[int, _Call] = {}
        self._numbers = itertools.count()
        self._changed = threading.Condition()  # a call forked or ended, or the server did
        self._gone = False
        # The replies are read on a thread of their own, so the caller can wait for
        # whichever of its processes ends first (and be interrupted while it waits).
        threading.Thread(target=self._read_replies, name="smpack-graph-server", daemon=True).start()

    @classmethod
    def started(cls) -> _Server:
        """A server in a fresh interpreter, which imports TensorFlow itself."""
        # Not the caller's sys.path: a script's folder first on it may hold modules named
        # like the standard library's (bench/inspect.py), which it imported before.
        # The interpreter this process runs, through /proc/self/exe, with sys.executable as
        # argv[0] so Python still finds its venv: a process that dropped privileges (setpriv,
        # gosu) may run an interpreter whose folders its user cannot search, and could not
        # start it again by path.
        process = subprocess.Popen(
            [sys.executable, "-P", "-c", _BOOTSTRAP, os.path.dirname(smpack.__file__)],
            executable=_RUNNING_INTERPRETER if os.path.exists(_RUNNING_INTERPRETER) else None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=server_environment(os.environ),
        )
        assert process.stdin is not None and process.stdout is not None
        return cls(process, process.stdin, process.stdout)

    @classmethod
    def forked(cls) -> _Server:
        """A server forked from this process, which has imported TensorFlow and not run it."""
        requests, requests_end = os.pipe()
        replies_end, replies = os.pipe()
        # What the streams hold now is this process's to write, not the server's too.
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(requests_end)
            os.close(replies_end)
            serve_forked(requests, replies)
        os.close(requests)
        os.close(replies)
        return cls(_ForkedServer(pid), os.fdopen(requests_end, "wb"), os.fdopen(replies_end, "rb"))

    def start(self, job: Job, turn: bool = True) -> _Call:
        """Start `job`'s process; with its turn, or to wait for it (`give_turn`) if not."""
        call = _Call(job)
        with self._changed:
            call.number = next(self._numbers)
            self._calls[call.number] = call
        # Not under the condition: the server may be importing TensorFlow, not yet reading.
        request = (job.function, job.args, dict(os.environ), os.getcwd())
        write_request(self.requests, call.number, request, waits=not turn)
        return call

    def give_turn(self, call: _Call) -> None:
        write_turn(self.requests, call.number)

    def first_ended(self, calls: Collection[_Call]) -> _Call:
        """Wait for one of `calls` to end; EOFError if the server ended first."""
        with self._changed:
            while True:
                ended = next((c for c in calls if c.ended is not None), None)
                if ended is not None:
                    return ended
                if self._gone:
                    raise EOFError
                self._changed.wait()

    def end(self, calls: Collection[_Call]) -> None:
        """Kill `calls`' processes and wait until they have ended; the server keeps running."""
        with self._changed:
            while not self._gone and any(c.pid == 0 and c.ended is None for c in calls):
                self._changed.wait()  # a request not forked yet: it is about to be
            for call in calls:
                if call.ended is None and call.pid:
                    _kill(call.pid)
            while not self._gone and any(c.ended is None for c in calls):
                self._changed.wait()

    def _read_replies(self) -> None:
        try:
            with self._replies as replies:
                while True:
                    try:
                        number, reply = read_message(replies)
                    except EOFError:  # the server ended (or was stopped)
                        return
                    with self._changed:
                        if isinstance(reply, int):
                            self._calls[number].pid = reply
                        else:
                            self._calls.pop(number).ended = reply
                        self._changed.notify_all()
        finally:  # also if this thread fails: a waiting caller must not wait forever
            with self._changed:
                self._gone = True
                self._changed.notify_all()

    def stop(self, calls: Iterable[_Call] = ()) -> None:
        """Kill the server, and `calls`' processes (which die with it anyway)."""
        for call in calls:
            if call.pid:
                _kill(call.pid)
        self.process.kill()
        self.process.wait()
        self.requests.close()


class _ForkedServer:
    """The server forked from this process: what `_Server` uses of a `subprocess.Popen`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            _kill(self.pid)

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def server_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """`environment` with glibc's malloc asking for huge pages: added to the user's own
    GLIBC_TUNABLES, unless they set that tunable themselves (theirs is kept as it is)."""
    name, value = _HUGE_PAGES_TUNABLE
    tunables = environment.get("GLIBC_TUNABLES", "")
    if any(t.partition("=")[0] == name for t in tunables.split(":")):
        return dict(environment)
    return {**environment, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, f"{name}={value}"]))}


_server: _Server | None = None
_server_lock = threading.Lock()
# One caller's processes at a time, so that what one call runs at once is all that runs.
_calls_lock = threading.Lock()


def start_server() -> None:
    """Start the server (it imports TensorFlow) if it is not running, without waiting for it:
    its import overlaps whatever the caller does next."""
    global _server
    with _server_lock:
        if _server is None or _server.process.poll() is not None:
            _server = _Server.started()


def fork_server_at_import() -> None:
    """Have the server forked from this process as soon as it imports TensorFlow
    (`import_tensorflow_quietly`), sharing that import rather than making a second one
    beside it. Where that is not safe, or would lose the graph processes' huge pages, the
    server starts at once as `start_server` starts it.

    For a process that holds nothing the server need not share once TensorFlow is imported
    (smpack's command, not a library caller's program, whose memory a forked server would
    keep alive). Its malloc must already ask for huge pages (`restart_with_huge_pages`):
    glibc reads the tunable only as a process starts, and the graph processes restore into
    memory of the malloc they inherit.
    """
    if "tensorflow" in sys.modules or not _malloc_as_the_servers():
        start_server()  # TensorFlow may have run here: its threads' locks would be forked
    else:
        after_import(_fork_server)


def _fork_server() -> None:
    global _server
    with _server_lock:
        if _server is None or _server.process.poll() is not None:
            _server = _Server.forked() if may_fork() else _Server.started()


def restart_with_huge_pages() -> None:
    """Start this program again, with its arguments, in a process whose malloc asks for huge
    pages as the graph processes' does (`server_environment`); return if this one's does.

    For a program's own process, before it does anything (`exec` replaces it): smpack's
    command, whose graph server is then forked from it (`fork_server_at_import`).
    """
    # Once: glibc drops the tunable for an interpreter it runs in secure mode (setuid, file
    # capabilities), and the process started again would start again, forever.
    if os.environ.pop(_RESTARTED, None) is not None:
        return
    if not _malloc_as_the_servers() and os.path.exists(_RUNNING_INTERPRETER):
        sys.stdout.flush()
        sys.stderr.flush()
        arguments = [sys.executable, *sys.orig_argv[1:]]
        environment = {**server_environment(os.environ), _RESTARTED: "1"}
        # Not started again (an odd interpreter, a full process table), the command runs
        # on in this process, and its server starts apart.
        with contextlib.suppress(OSError):
            os.execve(_RUNNING_INTERPRETER, arguments, environment)


_RESTARTED = "SMPACK_RESTARTED_WITH_HUGE_PAGES"


def _malloc_as_the_servers() -> bool:
    """Whether this process's GLIBC_TUNABLES is already what a server started from it gets
    (the huge-pages tunable, or the user's own setting of it)."""
    return server_environment(os.environ).get("GLIBC_TUNABLES") == os.getenv("GLIBC_TUNABLES")


def _stop_server(server: _Server, calls: Iterable[_Call]) -> None:
    global _server
    server.stop(calls)
    with _server_lock:
        if _server is server:
            _server = None


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
    (outcome,) = run_each_in_own_process([Job(function, args, description)], memory_budget=0)
    if isinstance(outcome, GraphProcessDied):
        raise outcome
    return cast(Result, outcome)


def run_each_in_own_process(
    jobs: Sequence[Job],
    memory_budget: int,
    at_once: int = 2,
    on_start: Callable[[int], None] | None = None,
    room: int = 0,
) -> list[Any]:
    """Each job's return value, or the `GraphProcessDied` its process ended with, in order.

    The jobs get their turns in order, each in a fresh process forked from the server; a job
    gets its turn alongside those that have theirs while fewer than `at_once` have and their
    `memory` and its own add up to no more than `memory_budget` (a job always gets it when
    none has). One job that waits for its turn (`Job.before_turn`) may start ahead of it,
    while the memory of the jobs that have theirs and its `before_turn` fit in `room` (what
    the machine can give): what it does first then overlaps their work. Raises the
    `SmpackError` or `GraphProcessBug` (see `run_in_own_process`) of the first job, in
    order, that ends with one, as running them one at a time would; later jobs still
    running are killed then. No process outlives the call: on any other exception (Ctrl-C
    included) the running ones are killed, and the server with them (the next call starts
    another). `on_start` hears each job's index as it gets its turn.
    """
    start_server()
    outcomes: dict[int, Any] = {}
    failures: dict[int, Exception] = {}  # a job's SmpackError or GraphProcessBug
    with _calls_lock:
        with _server_lock:
            server = _server
        assert server is not None
        waiting = list(enumerate(jobs))
        running: dict[_Call, int] = {}  # every started job's call: its index
        ahead: list[_Call] = []  # started, not given its turn yet (at most one)
        try:
            # Until every job has ended, or one failed and no job before it still runs
            # (whose failure would come first, as it would one job at a time).
            while running or (waiting and not failures):
                if not failures:
                    _give_turns(server, waiting, running, ahead, memory_budget, at_once, on_start)
                    _start_ahead(server, waiting, running, ahead, room)
                ended = server.first_ended(running)
                index = running.pop(ended)
                if ended in ahead:  # it ended before its turn
                    ahead.remove(ended)
                try:
                    outcomes[index] = _outcome(ended)
                except (SmpackError, GraphProcessBug) as e:
                    failures[index] = e
                if failures and all(i > min(failures) for i in running.values()):
                    break
            server.end(running)  # later jobs, whose outcome no longer matters
            running.clear()
        except BaseException as e:
            _stop_server(server, running)
            if isinstance(e, (EOFError, BrokenPipeError)):
                description = next(iter(running)).job.description if running else "smpack"
                msg = (
                    f"{description}: verify's graph server ended with exit code "
                    f"{server.process.returncode} (its error, if any, is above)"
                )
                raise GraphProcessBug(msg) from e
            raise
        if failures:
            raise failures[min(failures)]
    return [outcomes[index] for index in range(len(jobs))]


def _give_turns(
    server: _Server,
    waiting: list[tuple[int, Job]],
    running: dict[_Call, int],
    ahead: list[_Call],
    memory_budget: int,
    at_once: int,
    on_start: Callable[[int], None] | None,
) -> None:
    """Give turns in order, to the job started ahead first, while they fit."""
    with_turns = [call.job for call in running if call not in ahead]
    while ahead or waiting:
        job = ahead[0].job if ahead else waiting[0][1]
        if not _fits(job, with_turns, memory_budget, at_once):
            return
        if ahead:
            call = ahead.pop(0)
            server.give_turn(call)
        else:
            index, job = waiting.pop(0)
            call = server.start(job)
            running[call] = index
        if on_start is not None:
            on_start(running[call])
        with_turns.append(job)


def _start_ahead(
    server: _Server,
    waiting: list[tuple[int, Job]],
    running: dict[_Call, int],
    ahead: list[_Call],
    room: int,
) -> None:
    """Start the next job ahead of its turn, if it waits for it and nothing else does."""
    if ahead or not waiting or waiting[0][1].before_turn is None:
        return
    index, job = waiting[0]
    if sum(call.job.memory for call in running) + (job.before_turn or 0) > room:
        return
    waiting.pop(0)
    call = server.start(job, turn=False)
    running[call] = index
    ahead.append(call)


def _fits(job: Job, with_turns: Sequence[Job], memory_budget: int, at_once: int) -> bool:
    if not with_turns:
        return True
    taken = sum(other.memory for other in with_turns)
    return len(with_turns) < at_once and taken + job.memory <= memory_budget


def _outcome(call: _Call) -> Any:
    assert call.ended is not None
    exit_code, result = call.ended
    if exit_code != 0 or not result:
        return GraphProcessDied(exit_code)
    kind, payload = pickle.loads(result)
    if kind == "error":
        raise payload
    if kind == "bug":
        msg = f"{call.job.description}: {payload}"
        raise GraphProcessBug(msg)
    return payload


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it had ended
        pass
