"""The server verify's graph processes are forked from (`graph_process` starts and uses it).

Run as `python -m smpack.checks.graph_server`: it imports TensorFlow once, then for each
request on its stdin (a call number, a byte saying whether the call waits for its turn,
then a pickled function, its arguments, the caller's environment and working folder) forks
a process that runs it, and answers on its stdout, under the call's number, with the
process's id, then, when it has ended, its exit code and what it returned or raised: a
SmpackError as it is, anything else (a bug) as its traceback's text. Several calls may run
at once: requests are read while earlier processes run. A process that waits for its turn
blocks in `wait_for_turn` until a later message, the call's number alone, gives it: what it
does before needs no memory beyond its runtime, so it can run while earlier processes hold
theirs. It ends when its stdin closes, or when its caller dies. The same server may instead
be forked from a caller that has just imported TensorFlow (`serve_forked`), sharing that
import.
Importing this module imports nothing heavy: the caller uses its framing.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import struct
import sys
import traceback
from typing import IO, Any, NoReturn

from smpack.errors import SmpackError
from smpack.io.quick_exit import autograph_files, become_forked_helper, die_with_parent, exit_now

_LENGTH = struct.Struct("<Q")
_CALL = struct.Struct("<Q")


def write_request(stream: IO[bytes], call: int, request: Any, waits: bool = False) -> None:
    """Ask for `request` (function, arguments, environment, folder) to run as call `call`,
    its process waiting for its turn if `waits` (see `wait_for_turn`)."""
    _write_frame(stream, _CALL.pack(call) + bytes([waits]) + pickle.dumps(request))


def write_turn(stream: IO[bytes], call: int) -> None:
    """Give call `call`'s process its turn (see `wait_for_turn`)."""
    _write_frame(stream, _CALL.pack(call))


# In a process forked for a call that waits for its turn: the pipe its turn arrives on.
_turn: int | None = None


def wait_for_turn() -> None:
    """Block until this process's caller gives it its turn to take its memory; at once in a
    process not started to wait (or not forked by the server at all)."""
    global _turn
    if _turn is not None:
        # A byte, or nothing if the server ended (and this process is being killed with it).
        os.read(_turn, 1)
        os.close(_turn)
        _turn = None


def write_message(stream: IO[bytes], message: Any) -> None:
    _write_frame(stream, pickle.dumps(message))


def read_message(stream: IO[bytes]) -> Any:
    """The next message on `stream`; EOFError if it ended."""
    return pickle.loads(_read_frame(stream))


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError
    return data


def _read_exactly(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def main() -> NoReturn:
    # Ctrl-C reaches the whole process group: the caller handles it, once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    # The pipes to the caller on descriptors of their own; anything else printed (by
    # TensorFlow, by a model's op library) goes to stderr instead of into the replies. The
    # requests are read unbuffered, so `select` sees every byte not yet read.
    requests = os.dup(0)
    replies = os.fdopen(os.dup(1), "wb")
    _stdout_to_stderr()

    from smpack.io.tf_quietly import import_tensorflow_quietly

    import_tensorflow_quietly()
    _serve(requests, replies)


def serve_forked(requests: int, replies: int) -> NoReturn:
    """Serve requests on descriptor `requests`, replying on `replies`, in a process just
    forked from the caller right after its TensorFlow import; never return to the caller's
    code (an exception ends this process, its traceback on stderr)."""
    inherited: frozenset[str] = frozenset()
    try:
        # Ctrl-C reaches the whole process group: the caller handles it, once. A SIGTERM to
        # the group ends this process at once, as it ends an exec'd server.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        inherited = become_forked_helper((signal.SIGTERM, signal.SIGHUP))
        _stdout_to_stderr()  # and the caller's stdout (a pipe read to its end) not held
        _serve(requests, os.fdopen(replies, "wb"), inherited)
    except BaseException:
        traceback.print_exc()
    exit_now(1, inherited)


def _stdout_to_stderr() -> None:
    os.dup2(2, 1)
    with open(os.devnull, "rb") as nothing:
        os.dup2(nothing.fileno(), 0)


def _serve(requests: int, replies: IO[bytes], inherited: frozenset[str] = frozenset()) -> NoReturn:
    """The server's loop; `inherited`: autograph's files of the process it was forked from."""
    import smpack.checks.verify  # noqa: F401  (what the graph processes run)

    running: dict[int, tuple[int, int, list[bytes]]] = {}  # results fd -> call, pid, read
    turns: dict[int, int] = {}  # call -> the pipe its turn goes down, until given
    while True:
        ready, _, _ = select.select([requests, *running], [], [])
        for fd in ready:
            if fd != requests:
                _collect(fd, running, turns, replies)
                continue
            try:
                (length,) = _LENGTH.unpack(_read_exactly(requests, _LENGTH.size))
                frame = _read_exactly(requests, length)
            except EOFError:  # the caller is done
                exit_now(0, inherited)  # without Python's teardown of TensorFlow (2-3 s)
            (call,) = _CALL.unpack_from(frame)
            if len(frame) == _CALL.size:  # a turn, for a call that may have ended since
                if call in turns:
                    _give_turn(turns.pop(call))
                continue
            turn_pipe = os.pipe() if frame[_CALL.size] else None
            results, results_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(requests)
                replies.close()
                for other in [results, *running, *turns.values()]:
                    os.close(other)
                if turn_pipe is not None:
                    os.close(turn_pipe[1])
                _run(frame[_CALL.size + 1 :], results_end, turn_pipe and turn_pipe[0])
            os.close(results_end)
            if turn_pipe is not None:
                os.close(turn_pipe[0])
                turns[call] = turn_pipe[1]
            running[results] = (call, pid, [])
            write_message(replies, (call, pid))


def _give_turn(turn_end: int) -> None:
    with contextlib.suppress(BrokenPipeError):  # the process ended without waiting for it
        os.write(turn_end, b"\0")
    os.close(turn_end)


def _collect(
    fd: int,
    running: dict[int, tuple[int, int, list[bytes]]],
    turns: dict[int, int],
    replies: IO[bytes],
) -> None:
    """Read what a graph process wrote; once it has ended, reply with its exit code and that."""
    call, pid, chunks = running[fd]
    chunk = os.read(fd, 1 << 20)
    if chunk:
        chunks.append(chunk)
        return
    os.close(fd)
    del running[fd]
    if call in turns:  # it ended before its turn (failing to load its graph, say)
        os.close(turns.pop(call))
    _, status = os.waitpid(pid, 0)
    write_message(replies, (call, (os.waitstatus_to_exitcode(status), b"".join(chunks))))


def _run(request: bytes, results_end: int, turn: int | None) -> NoReturn:
    """In the forked process: run the request, write what it returned or raised, and exit."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()
    # Set where the graph's code finds it: in this module imported by name, not in the
    # `__main__` the server runs this file as.
    import smpack.checks.graph_server as imported

    imported._turn = turn  # noqa: SLF001
    inherited = autograph_files()
    try:
        function, args, environment, folder = pickle.loads(request)
        # The caller's environment and folder now, not the server's when it started
        # (XLA_FLAGS, set by verify, is read at the first XLA compilation, which happens
        # here; a package's path may be relative).
        os.environ.clear()
        os.environ.update(environment)
        os.chdir(folder)
        outcome = pickle.dumps(("result", function(*args)))
    except SmpackError as e:  # the user's to fix: raised again in the caller, as it is
        outcome = pickle.dumps(("error", e))
    except BaseException as e:
        outcome = pickle.dumps(("bug", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    with os.fdopen(results_end, "wb") as results:
        results.write(outcome)
    sys.stderr.flush()
    exit_now(0, inherited)


if __name__ == "__main__":
    main()
