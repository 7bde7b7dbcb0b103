"""A process smpack ends without Python's teardown leaves none of the files TensorFlow's
autograph writes for a user's `tf.function`: its exit hooks, which would remove them, are
run before `os._exit`. Verify's graph processes here; the CLI in test_cli.py.
"""

from __future__ import annotations

import functools
import os
import sys
import types
from pathlib import Path

from tf_helpers import write_converting_source

from smpack.checks.graph_process import run_in_own_process
from smpack.io.quick_exit import exit_now


def test_a_graph_process_removes_the_autograph_files_it_wrote(tmp_path: Path) -> None:
    model = write_converting_source(tmp_path).parent / "model.py"
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    # `exec` pickles; the model runs as a file, whose source autograph must read.
    run = (
        "import runpy, tempfile, tensorflow as tf\n"
        "tempfile.tempdir = TEMPORARY\n"
        "runpy.run_path(MODEL)['convert'](tf.constant(-1.0))\n"
    )

    run_in_own_process(
        functools.partial(exec, run, {"MODEL": str(model), "TEMPORARY": str(temporary)})
    )

    assert list(temporary.iterdir()) == []


def test_a_forked_process_leaves_the_files_its_parent_wrote(tmp_path: Path) -> None:
    """A graph process is forked from the server: the modules autograph loaded there are in
    its `sys.modules` too, and their files the server's to remove."""
    import tensorflow  # noqa: F401  (autograph's loader, whose removal exit_now calls)

    parents, own = tmp_path / "parents.py", tmp_path / "own.py"
    pid = os.fork()
    if pid == 0:  # the child: both files, as autograph would have loaded them
        for path in (parents, own):
            path.write_text("")
            module = types.ModuleType(f"__autograph_generated_file{path.stem}")
            module.__file__ = str(path)
            sys.modules[module.__name__] = module
        exit_now(0, inherited=frozenset({str(parents)}))
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert list(tmp_path.iterdir()) == [parents]
