"""Keeping TensorFlow's C++ chatter off the user's terminal unless something fails.

TensorFlow's C++ side writes to file descriptor 2 directly (CUDA probing at import, absl's
"before InitializeLog" warnings), before or outside Python logging, so only redirecting the
descriptor silences it. What was held back is replayed if the block fails.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def stderr_kept_unless_failing() -> Iterator[None]:
    """Hold back what is written to file descriptor 2 in the block; replay it on failure."""
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.buffer.write(captured.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


# XLA:CPU's default scheduler orders a computation for concurrency: every conversion of a
# weight (a float16 variant's cast, which XLA:CPU widens back to float32 for its matmuls)
# runs before the first matmul, so a half-precision XLA graph held a converted copy of all
# its weights at once, 1.1x the weights on top of them. The memory-minimising order converts
# each weight where it is used. smpack runs XLA on the CPU only to check and time graphs
# meant for GPUs and TPUs, whose own compilers are untouched.
_XLA_CPU_MEMORY_ORDER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
# XLA exits on a flag in XLA_FLAGS it does not know; this one was checked with TF 2.21.
_XLA_CPU_MEMORY_ORDER_SINCE = (2, 21)


def schedule_xla_cpu_for_memory() -> None:
    """Make XLA:CPU schedule for memory in this process, unless XLA_FLAGS already sets it.

    XLA reads XLA_FLAGS once, at its first compilation, so this works after TensorFlow's
    import but not after a first XLA computation.
    """
    import tensorflow as tf

    version = tuple(int(part) for part in tf.__version__.split(".")[:2])
    flags = os.environ.get("XLA_FLAGS", "")
    if (
        version >= _XLA_CPU_MEMORY_ORDER_SINCE
        and _XLA_CPU_MEMORY_ORDER.partition("=")[0] not in flags
    ):
        os.environ["XLA_FLAGS"] = f"{flags} {_XLA_CPU_MEMORY_ORDER}".strip()


_xla_kernels_registered = False


def register_xla_kernels() -> None:
    """Make TensorFlow register XLA's kernels, which it does the first time something is
    compiled: by compiling a one-op function, once per process.

    A process forked after its parent compiled with XLA must not compile itself: XLA:CPU's
    compiler keeps a thread pool its first compilation starts, and in the child that pool
    has no threads, so the child's first compilation waits for them forever. Registered
    before a fork, the kernels are the child's too, and it never compiles for them.
    """
    global _xla_kernels_registered
    if _xla_kernels_registered:
        return
    import tensorflow as tf
    from tensorflow.python.eager import context

    # Eagerly, outside whatever graph is being built: tf.init_scope would add the call to
    # that graph when it is a plain tf.Graph (and the first build of a process would differ).
    # No autograph (nothing to convert): it would write the lambda to a temporary file.
    with context.eager_mode():
        tf.function(lambda x: x + 1, jit_compile=True, autograph=False)(tf.constant(0.0))
    _xla_kernels_registered = True


# Called once TensorFlow is imported here, before anything here runs it.
_after_import: list[Callable[[], None]] = []


def after_import(callback: Callable[[], None]) -> None:
    """Call `callback` as soon as `import_tensorflow_quietly` has imported TensorFlow in this
    process (verify's graph server, forked then), once; never if something else imports it."""
    if callback not in _after_import:
        _after_import.append(callback)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up chatter (CUDA probing) kept off the terminal,
    and XLA:CPU scheduling for memory."""
    if "tensorflow" in sys.modules:
        schedule_xla_cpu_for_memory()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with stderr_kept_unless_failing():
        import tensorflow as tf

        # The first session would otherwise log a failed cuInit on hosts without a GPU
        # (at ERROR level, so TF_CPP_MIN_LOG_LEVEL=2 keeps it): probe devices here.
        tf.config.list_physical_devices()
    tf.get_logger().setLevel("ERROR")
    schedule_xla_cpu_for_memory()
    while _after_import:
        _after_import.pop(0)()
