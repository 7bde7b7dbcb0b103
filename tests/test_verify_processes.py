"""verify checks each graph in a process of its own: its result, its death and Ctrl-C."""

from __future__ import annotations

import contextlib
import operator
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import invoke, json_result

from smpack.checks.graph_process import (
    GraphProcessBug,
    GraphProcessDied,
    Job,
    run_each_in_own_process,
    run_in_own_process,
    server_environment,
)
from smpack.errors import PackageError
from smpack.package.info import PackageInfo
from smpack.package.protos import read_saved_model


def _children(pid: int) -> list[int]:
    children = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:  # it has ended
        pass
    return children


def _descendants(pid: int) -> list[int]:
    return [d for child in _children(pid) for d in [child, *_descendants(child)]]


def _command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _graph_processes(pid: int) -> list[int]:
    """What the server of graph processes under `pid` has forked (not what a TensorFlow
    import runs, `uname -p`): processes two levels below with their parent's command line
    (the server's own, or the caller's when the server was forked from it)."""
    found = []
    for child in _children(pid):
        for grandchild in _children(child):
            with contextlib.suppress(OSError):
                if _command_line(grandchild) == _command_line(child):
                    found.append(grandchild)
    return found


def _running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie waiting to be reaped (by init, in a container
    that may never do so)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_graph_process_returns_its_result_with_the_callers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # XLA reads XLA_FLAGS at its first compilation, in the graph's process: what the caller
    # set after the server started must be what the process sees.
    monkeypatch.setenv("SMPACK_PROBE", "set after the server started")
    assert run_in_own_process(os.getenv, "SMPACK_PROBE") == "set after the server started"
    assert run_in_own_process(os.getpid) != os.getpid()


def test_a_graph_process_that_dies_or_raises_is_reported() -> None:
    with pytest.raises(GraphProcessDied, match=r"killed by signal 6 \(SIGABRT\)$"):
        run_in_own_process(os.abort)
    with pytest.raises(GraphProcessDied, match="exited with code 3 before reporting"):
        run_in_own_process(os._exit, 3)
    # An exception verify did not expect is a bug, with the process's traceback.
    with pytest.raises(GraphProcessBug, match="^checking: ZeroDivisionError") as raised:
        run_in_own_process(operator.truediv, 1, 0, description="checking")
    assert "Traceback" in str(raised.value)
    # A user error stays one, file and field included.
    raising = (
        "from smpack.errors import PackageError\nraise PackageError('gone', file='p', field='f')"
    )
    with pytest.raises(PackageError) as user_error:
        run_in_own_process(exec, raising)
    assert str(user_error.value) == "p: f: gone"


def test_the_server_asks_for_huge_pages_keeping_the_users_own_tunables() -> None:
    huge = "glibc.malloc.hugetlb=1"
    assert server_environment({"HOME": "/h"}) == {"HOME": "/h", "GLIBC_TUNABLES": huge}
    mine = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    assert server_environment(mine)["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{huge}"
    # A user who set the tunable (0 to refuse huge pages, 2 for hugetlbfs) keeps theirs.
    mine = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2"}
    assert server_environment(mine) == mine


def _transparent_huge_pages() -> str:
    """THP's mode on this kernel (`always`, `madvise`, `never`), or "" if it has none."""
    try:
        modes = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""
    return modes.partition("[")[2].partition("]")[0]


# In a graph process: a 16 MiB tensor saved, then restored by TensorFlow's RestoreV2 (as a
# graph's restore op does) into memory that must be in huge pages, mostly.
RESTORE_INTO_HUGE_PAGES = """\
import tensorflow as tf

def huge_pages():
    with open("/proc/self/smaps_rollup") as rollup:
        line = next(line for line in rollup if line.startswith("AnonHugePages:"))
    return int(line.split()[1]) << 10

weights = tf.ones([4 << 20])  # kept, so that the restore cannot reuse its memory
tf.raw_ops.SaveV2(
    prefix=prefix, tensor_names=["w"], shape_and_slices=[""], tensors=[weights]
)
before = huge_pages()
(restored,) = tf.raw_ops.RestoreV2(
    prefix=prefix, tensor_names=["w"], shape_and_slices=[""], dtypes=[tf.float32]
)
grown = huge_pages() - before
assert grown >= 8 << 20, f"{grown} bytes of the 16 MiB restored in huge pages"
"""


@pytest.mark.skipif(
    _transparent_huge_pages() in ("", "never"), reason="this kernel gives no transparent huge pages"
)
def test_a_graph_process_restores_into_huge_pages(tmp_path: Path) -> None:
    run_in_own_process(exec, RESTORE_INTO_HUGE_PAGES, {"prefix": str(tmp_path / "checkpoint")})


# When it starts and ends (CLOCK_MONOTONIC, one clock for every process), sleeping between.
NOW = "__import__('time').monotonic()"
WINDOW = f"({NOW}, __import__('time').sleep(0.3), {NOW})"


def test_processes_run_two_at_once_only_while_their_memory_fits_the_budget() -> None:
    jobs = [Job(eval, (WINDOW,), f"job {i}", memory=100) for i in range(3)]
    started: list[int] = []
    first, second, third = run_each_in_own_process(jobs, 300, on_start=started.append)
    assert started == [0, 1, 2]
    assert second[0] < first[2]  # the first two at once, and never three
    assert third[0] >= min(first[2], second[2])

    first, second, third = run_each_in_own_process(jobs, 199)  # no room for two
    assert first[2] <= second[0] and second[2] <= third[0]

    # A process that dies is its job's outcome; the others' results are unchanged.
    outcomes = run_each_in_own_process([jobs[0], Job(os._exit, (3,), memory=100)], 200)
    assert isinstance(outcomes[1], GraphProcessDied) and outcomes[0][2] > outcomes[0][0]


# Sleeps before its turn, and longer after: when it started, was ready, got its turn, and
# ended.
TURN = "__import__('smpack.checks.graph_server', fromlist=['_']).wait_for_turn()"
SLEEP = "__import__('time').sleep"
AHEAD = f"({NOW}, {SLEEP}(0.1), {NOW}, {TURN}, {NOW}, {SLEEP}(0.6), {NOW})"


def test_the_next_job_starts_ahead_and_waits_for_its_turn_to_take_its_memory() -> None:
    jobs = [Job(eval, (AHEAD,), f"job {i}", memory=100, before_turn=10) for i in range(3)]
    started: list[int] = []
    first, second, third = run_each_in_own_process(jobs, 199, on_start=started.append, room=120)
    assert started == [0, 1, 2]  # as each gets its turn
    # No room for two jobs' memory: each turn comes once the job before has ended.
    assert first[6] <= second[4] and second[6] <= third[4]
    # But each job's work before its turn overlaps the job before it, one job ahead only.
    assert second[2] < first[6] and third[2] < second[6]
    assert third[0] >= first[6]

    # Without room for the runtime of one more, none starts ahead.
    first, second, _ = run_each_in_own_process(jobs, 199, room=109)
    assert second[0] >= first[6]

    # One that ends before its turn is its job's outcome; the next job still gets its turn.
    dying = Job(os._exit, (3,), "job 1", memory=100, before_turn=10)
    outcomes = run_each_in_own_process([jobs[0], dying, jobs[2]], 199, room=120)
    assert isinstance(outcomes[1], GraphProcessDied)
    assert outcomes[0][6] <= outcomes[2][4]


def test_of_two_failing_at_once_the_first_in_order_is_raised() -> None:
    slow, fast = "(__import__('time').sleep(0.5), 1 / 0)", "1 / 0"
    jobs = [Job(eval, (slow,), "job 0"), Job(eval, (fast,), "job 1"), Job(eval, ("0",), "job 2")]
    started: list[int] = []
    with pytest.raises(GraphProcessBug, match="^job 0: ZeroDivisionError"):
        run_each_in_own_process(jobs, 0, on_start=started.append)
    assert started == [0, 1]  # none starts once one has failed

    # A later job still running is killed, not waited for; the server keeps serving.
    server = run_in_own_process(os.getppid)
    begun = time.monotonic()
    with pytest.raises(GraphProcessBug, match="^job 1: ZeroDivisionError"):
        run_each_in_own_process([jobs[1], Job(time.sleep, (60,))], 0)
    assert time.monotonic() - begun < 30
    assert run_in_own_process(os.getppid) == server


# Run in a graph process instead of verify's `_check_graph`: the same, with one smpack
# function patched to raise KeyError there (as a bug in smpack's own code would).
INJECTED_BUG = """\
import smpack.checks.verify as verify

def pins_this_host_lacks(meta_graph):
    raise KeyError("injected")

verify.pins_this_host_lacks = pins_this_host_lacks
verify._check_graph(*arguments)
"""


def test_a_bug_in_a_graph_process_is_an_smpack_bug_not_a_failed_check(
    linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    def with_the_bug(jobs: list[Job], *args: Any, **kwargs: Any) -> list[Any]:
        jobs = [replace(j, function=exec, args=(INJECTED_BUG, {"arguments": j.args})) for j in jobs]
        return run_each_in_own_process(jobs, *args, **kwargs)

    monkeypatch.setattr("smpack.checks.verify.run_each_in_own_process", with_the_bug)
    monkeypatch.delenv("SMPACK_DEBUG", raising=False)
    result = invoke(monkeypatch, ["verify", str(linear_package.path)])
    assert result.exit_code == 70, result.output
    assert result.stderr.splitlines() == [
        "smpack bug: GraphProcessBug: smpack verify train: KeyError: 'injected'; please report "
        "it (SMPACK_DEBUG=1 shows the traceback)"
    ]
    # SMPACK_DEBUG=1: the exception itself, ending with the graph process's traceback.
    monkeypatch.setenv("SMPACK_DEBUG", "1")
    result = invoke(monkeypatch, ["verify", str(linear_package.path)])
    assert isinstance(result.exception, GraphProcessBug)
    child_traceback = str(result.exception).partition("\n")[2]
    assert child_traceback.startswith("Traceback (most recent call last):")
    assert "in _run_graph" in child_traceback
    assert child_traceback.rstrip().endswith("KeyError: 'injected'")


# Verify's checks of the TPU graph (an XLA computation) in a graph process whose temporary
# files go to `folder`.
CHECK_THE_TPU_GRAPH = """\
import tempfile
from smpack.checks.verify import _check_graph, _Requests

tempfile.tempdir = folder
checks, _, _ = _check_graph(package, index, _Requests({}, {}), ())
assert [check.passed for check in checks] == [True, True], checks
"""


def test_a_graph_process_leaves_no_temporary_file(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    """A graph process ends without Python's teardown, which is what removes the files
    TensorFlow's autograph writes for each function it converts."""
    tags = [sorted(m.meta_info_def.tags) for m in read_saved_model(linear_package.path).meta_graphs]
    arguments = {
        "folder": str(tmp_path),
        "package": linear_package.path,
        "index": tags.index(["serve", "tpu"]),
    }
    run_in_own_process(exec, CHECK_THE_TPU_GRAPH, arguments)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_graph_process_fails_that_graph_naming_the_signal(
    linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the kernel's out-of-memory killer does, done to the first graph's process."""
    killed: list[int] = []
    done = threading.Event()

    def kill_the_first_graph_process() -> None:
        while not done.wait(0.01):
            for pid in _graph_processes(os.getpid()):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return

    killer = threading.Thread(target=kill_the_first_graph_process)
    killer.start()
    try:
        result = invoke(monkeypatch, ["verify", str(linear_package.path), "--json"])
    finally:
        done.set()
        killer.join()

    assert killed
    # Not a user error in the package, nor a bug: the graph was not checked, so verify fails.
    assert result.exit_code == 1, result.output
    report = json_result(result.stdout, "verify")
    failed = [
        (graph["tag_set"], check["name"], check["detail"])
        for graph in report["graphs"]
        for check in graph["checks"]
        if not check["passed"]
    ]
    detail = (
        "the process checking it was killed by signal 9 (SIGKILL), as the kernel's "
        "out-of-memory killer or a memory limit does: not checked"
    )
    assert failed == [(report["graphs"][0]["tag_set"], "loads and runs", detail)]
    assert report["graphs"][0]["tag_set"] == "train"
    # What a graph cost is its process's to report: the killed one has nothing to say.
    assert [graph["cost"] is None for graph in report["graphs"]] == [True, False, False, False]


@pytest.mark.slow
def test_smpack_verify_forks_its_graph_server_after_its_own_tensorflow_import(
    linear_package: PackageInfo,
) -> None:
    """One TensorFlow import, not two: the server is the command's own child with its command
    line (forked, not a fresh interpreter importing TensorFlow again), and the command was
    started again with the huge-pages tunable that the graph processes' malloc needs."""
    environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    smpack_command = str(Path(sys.executable).with_name("smpack"))
    verify = subprocess.Popen(
        [smpack_command, "verify", str(linear_package.path)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (graph_processes := _graph_processes(verify.pid)):
            assert verify.poll() is None, verify.communicate()
            assert time.monotonic() < deadline, "no graph process started"
            time.sleep(0.01)
        stat = Path(f"/proc/{graph_processes[0]}/stat").read_text()
        server = int(stat.rpartition(")")[2].split()[1])  # its parent
        assert server in _children(verify.pid)
        assert _command_line(server) == _command_line(verify.pid)
        started_with = Path(f"/proc/{verify.pid}/environ").read_bytes().split(b"\0")
        assert b"GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in started_with
    finally:
        stdout, stderr = verify.communicate(timeout=120)
    assert verify.returncode == 0, stderr
    assert stdout.endswith("pass: all checks of 4 graphs\n")


# A program that asks for its server to be forked at its TensorFlow import: where is the
# server its graph process was forked from?
FORKED_AT_IMPORT = """\
import os, sys, threading
from smpack.checks import graph_process
from smpack.io.tf_quietly import import_tensorflow_quietly
if sys.argv[1] == "with a thread of its own":
    threading.Thread(target=threading.Event().wait, daemon=True).start()
graph_process.fork_server_at_import()
import_tensorflow_quietly()
server = graph_process.run_in_own_process(os.getppid)
with open(f"/proc/{server}/cmdline", "rb") as its, open("/proc/self/cmdline", "rb") as mine:
    print(its.read() == mine.read())
"""


@pytest.mark.slow
@pytest.mark.parametrize("threads", ["alone", "with a thread of its own"])
def test_the_server_is_forked_at_import_only_where_no_other_thread_may_be_inside_tensorflow(
    threads: str,
) -> None:
    """A caller's thread might hold a lock inside TensorFlow at the fork, which the server's
    graph processes would wait on forever: then the server is started apart, as before."""
    environment = {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    command = [sys.executable, "-c", FORKED_AT_IMPORT, threads]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("True\n" if threads == "alone" else "False\n")


# A program started again for huge pages, under a glibc that drops the tunable as it starts
# it (as for a setuid interpreter): stand-in, an environment that loses it.
RESTARTED_WITHOUT_THE_TUNABLE = """\
import os
from smpack.checks import graph_process
environment = graph_process.server_environment
graph_process.server_environment = lambda e: {**environment(e), "GLIBC_TUNABLES": ""}
os.environ.pop("GLIBC_TUNABLES", None)
print("started", flush=True)
graph_process.restart_with_huge_pages()
print("ran on", flush=True)
"""


def test_a_program_is_started_again_for_huge_pages_once_at_most() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    command = [sys.executable, "-c", RESTARTED_WITHOUT_THE_TUNABLE]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "started\nstarted\nran on\n"


# A script calling the library, with no `if __name__ == "__main__":`: the graph processes
# must not run it again (multiprocessing's would, once per graph).
SCRIPT = """\
import sys
import smpack
print("the script ran", flush=True)
smpack.verify(sys.argv[1])
"""


# Real `smpack verify` processes, each importing TensorFlow twice (itself and its server).
@pytest.mark.slow
@pytest.mark.parametrize("interrupted", ["smpack verify, Ctrl-C", "a script, SIGINT to it alone"])
def test_interrupting_verify_leaves_no_process_behind(
    linear_package: PackageInfo, interrupted: str, tmp_path: Path
) -> None:
    """Ctrl-C reaches the terminal's whole process group; `kill -INT` only the caller, who
    must end its graph process and server itself. Both run from a folder holding another
    `smpack/` (a checkout, a user's own package of that name), which `python -m` would put
    first on sys.path: the graph processes must run the caller's smpack, not that one."""

    def as_a_user_starts_it() -> None:
        # A test runner's workers may ignore SIGINT, and children inherit that.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setpgrp()  # a terminal's foreground process group of its own

    working_folder = tmp_path / "cwd"
    (working_folder / "smpack").mkdir(parents=True)
    (working_folder / "smpack" / "__init__.py").write_text(
        'raise SystemExit("the smpack in the working folder ran")\n'
    )
    if interrupted.startswith("a script"):
        (tmp_path / "check.py").write_text(SCRIPT)
        command = [sys.executable, str(tmp_path / "check.py")]
    else:
        command = [str(Path(sys.executable).with_name("smpack")), "verify"]
    verify = subprocess.Popen(
        [*command, str(linear_package.path)],
        cwd=working_folder,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_a_user_starts_it,
    )
    deadline = time.monotonic() + 120
    while not _graph_processes(verify.pid):
        assert verify.poll() is None, verify.communicate()
        assert time.monotonic() < deadline, "no graph process started"
        time.sleep(0.01)
    started = _descendants(verify.pid)  # the server and its graph process
    if interrupted.startswith("a script"):
        verify.send_signal(signal.SIGINT)
    else:
        os.killpg(verify.pid, signal.SIGINT)
    try:
        stdout, stderr = verify.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        verify.kill()
        raise

    if interrupted.startswith("a script"):
        assert verify.returncode == -signal.SIGINT  # Python's way out of a KeyboardInterrupt
        assert stdout == "the script ran\n"
    else:
        assert verify.returncode == 130
        assert stderr.splitlines() == ["interrupted"], stderr
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in started if _running(pid)] == []
