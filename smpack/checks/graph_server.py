"""What the server that forks verify's graph processes runs once, when it starts: TensorFlow's
import (quietly, as the CLI does) and verify's code. Imported only there (`graph_process`)."""

import contextlib
import ctypes
import signal
import sys

# The server ends with its caller, at once: not when it next reads its pipe (after
# TensorFlow's import, or after Python's teardown, 2-3 s with TensorFlow loaded) with the
# caller's stdout still open. Ctrl-C is the caller's to handle (multiprocessing's server
# ignores it too, once it has started).
signal.signal(signal.SIGINT, signal.SIG_IGN)
if sys.platform == "linux":
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

from smpack.io.tf_quietly import import_tensorflow_quietly  # noqa: E402

import_tensorflow_quietly()

import smpack.checks.verify  # noqa: E402,F401
