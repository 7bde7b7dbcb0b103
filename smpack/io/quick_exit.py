"""Ending a process at once, without Python's teardown, leaving behind only what the teardown
would have.

After a large build, freeing every object and unloading TensorFlow took 2-3 s that bought
nothing, so the CLI and verify's graph processes end with `os._exit`, which skips the
`atexit` hooks too. TensorFlow registers one for every function autograph converts (a
user's `tf.function`, a Keras model's own), removing the module it wrote for it
(`$TMPDIR/__autograph_generated_file*.py`, tensorflow/python/autograph/pyct/loader.py).
Those hooks are run here; the rest is left undone. A process smpack forks to help also
ends when its parent does (`die_with_parent`), and is forked only while no thread of a
caller's may be inside TensorFlow (`may_fork`). Importing this imports no TensorFlow.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import NoReturn

_AUTOGRAPH_LOADER = "tensorflow.python.autograph.pyct.loader"
_AUTOGRAPH_MODULES = "__autograph_generated_file"


def autograph_files() -> frozenset[str]:
    """The files autograph wrote in this process (and in the one it was forked from): each
    is a module autograph loaded, named after its file and kept in `sys.modules`."""
    files = (
        getattr(module, "__file__", None)
        for name, module in list(sys.modules.items())
        if name.startswith(_AUTOGRAPH_MODULES)
    )
    return frozenset(file for file in files if file)


def exit_now(code: int, inherited: frozenset[str] = frozenset()) -> NoReturn:
    """`os._exit(code)`, once autograph's files are removed as its exit hooks would, but for
    the `inherited` ones (a forked process's: its parent still runs, and removes them)."""
    loader = sys.modules.get(_AUTOGRAPH_LOADER)
    if loader is not None:  # else TensorFlow never converted a function here
        for path in autograph_files() - inherited:
            # Each hook's call, on its file; one that cannot go stays, as it would at exit.
            with contextlib.suppress(OSError):
                loader._remove_file(path)  # noqa: SLF001
    os._exit(code)


def die_with_parent() -> None:
    """Be killed when the parent ends (Linux's PR_SET_PDEATHSIG), at once: a forked helper
    (verify's graph server and its graph processes, a build's graphs assembled aside) would
    otherwise notice only when it next talks to the parent, or run on to its end."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)


def become_forked_helper(default_signals: tuple[signal.Signals, ...]) -> frozenset[str]:
    """Set up a child just forked to help (verify's graph server, a build's graphs assembled
    aside); return the autograph files it inherited, for `exit_now`.

    `default_signals` end it at once: the parent's handlers (the command line's, which
    raise) would raise in the middle of its work and be taken for a bug. A signal the parent
    ignores stays ignored (a shell's background job ignores Ctrl-C). A progress display's
    stream proxies take a lock its refreshing thread, not in the child, may have held at the
    fork, so the child writes to the process's own streams.
    """
    for signum in default_signals:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
    die_with_parent()  # a parent killed outright leaves nothing running
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    return autograph_files()


def may_fork() -> bool:
    """Whether a child forked now may use TensorFlow: every other Python thread is smpack's
    own or the progress display's, none of which calls into TensorFlow. A library caller's
    thread might be inside TensorFlow at the fork, holding a lock the child would then wait
    on forever; with one alive, nothing is forked (a build's graphs are built in turn,
    verify's graph server starts in a fresh interpreter)."""
    current = threading.current_thread()
    return all(
        thread is current
        or thread.name.startswith("smpack-")
        or type(thread).__module__ == "rich.live"  # Progress's refreshing thread
        for thread in threading.enumerate()
    )
