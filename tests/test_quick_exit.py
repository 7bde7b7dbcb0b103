"""A process smpack ends without Python's teardown (the CLI, verify's graph processes) leaves
none of the files TensorFlow's autograph writes for a user's `tf.function`: its exit hooks,
which would remove them, are run before `os._exit`.

Each source below checks that autograph did write its file, so that a run leaving none
proves the files were removed, not that none were written.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import types
from pathlib import Path

from smpack.checks.graph_process import run_in_own_process
from smpack.io.quick_exit import exit_now

# A tensor-dependent `if` in a tf.function: autograph converts it, writing a module for it.
CONVERTED = """\
import pathlib
import tempfile

import tensorflow as tf


@tf.function
def absolute(x):
    if x > 0:
        return x
    return -x


def convert(x):
    y = absolute(x)
    written = list(pathlib.Path(tempfile.gettempdir()).glob("__autograph_generated_file*"))
    assert written, "autograph wrote no file"
    return y
"""

MODEL = (
    CONVERTED
    + """
from smpack import ModelSpec


def model_fn(ctx):
    x = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="x")
    y = tf.identity(ctx.compute(convert, x), name="y")
    return ModelSpec(inputs={"x": x}, outputs={"y": y})
"""
)

MANIFEST = """\
schema: 1
name: converted
version: 1
source: {python: model.py:model_fn}
variants:
  cpu: {tags: [serve]}
signatures:
  serving_default: {inputs: [x], outputs: [y]}
"""


def test_a_cli_build_leaves_no_autograph_file(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "m.yaml").write_text(MANIFEST)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    command = ["build", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "out")]

    built = subprocess.run(
        [sys.executable, "-m", "smpack", *command, "--no-verify", "--no-measure"],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(temporary)},
        timeout=300,
    )

    assert built.returncode == 0, built.stderr
    assert list(temporary.iterdir()) == []


def test_a_graph_process_removes_the_autograph_files_it_wrote(tmp_path: Path) -> None:
    script = tmp_path / "converted.py"
    script.write_text(CONVERTED + "\ntempfile.tempdir = TEMPORARY\nconvert(tf.constant(-1.0))\n")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    # `exec` pickles, and runs the script as a file, whose source autograph must read.
    run = "import runpy; runpy.run_path(SCRIPT, {'TEMPORARY': TEMPORARY})"

    run_in_own_process(
        functools.partial(exec, run, {"SCRIPT": str(script), "TEMPORARY": str(temporary)})
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
