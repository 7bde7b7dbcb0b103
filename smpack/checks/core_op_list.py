"""Write smpack/package/core_ops.txt: the op types TensorFlow itself registers.

`smpack inspect` never imports TensorFlow, so it tells a graph's custom ops (those TF
Serving needs a build with) from core ones by this list. Run it in a fresh process, with
nothing imported but TensorFlow, after upgrading TensorFlow:

    .venv/bin/python -m smpack.checks.core_op_list            # rewrite the list
    .venv/bin/python -m smpack.checks.core_op_list --check    # exit 1 if not current
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CORE_OPS = Path(__file__).resolve().parents[1] / "package" / "core_ops.txt"


def core_ops_text() -> str:
    import tensorflow as tf
    from tensorflow.core.framework import op_def_pb2
    from tensorflow.python.client import pywrap_tf_session

    ops = op_def_pb2.OpList.FromString(
        pywrap_tf_session.TF_GetBuffer(pywrap_tf_session.TF_GetAllOpList())
    )
    names = sorted(op.name for op in ops.op)
    generator = "smpack.checks.core_op_list"
    header = f"# Op types registered by TensorFlow {tf.__version__} alone ({generator}).\n"
    return header + "".join(f"{name}\n" for name in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    text = core_ops_text()
    if parser.parse_args().check:
        current = CORE_OPS.is_file() and CORE_OPS.read_text() == text
        print(f"{CORE_OPS} is {'current' if current else 'out of date'}")
        return 0 if current else 1
    CORE_OPS.write_text(text)
    print(f"wrote {CORE_OPS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
