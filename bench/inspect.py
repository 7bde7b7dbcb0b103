"""How much faster `smpack inspect` is than `saved_model_cli show --all`, on the same packages.

A benchmark, not a test: both commands run as fresh processes (what a user pays), each
several times, and the table reports medians and their ratio measured in the same run.

    .venv/bin/python bench/inspect.py [--gib 1.0] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

BIG_MODEL = """\
import tensorflow as tf
from smpack import ModelContext, ModelSpec

def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="input")

    def compute(x):
        weights = tf.compat.v1.get_variable(
            "weights", [ctx.params["size"]], ctx.dtype, initializer=tf.compat.v1.ones_initializer()
        )
        return x * tf.reduce_mean(weights[:16])

    return ModelSpec(inputs={"input": x}, outputs={"output": ctx.compute(compute, x)})
"""

BIG_MANIFEST = """\
schema: 1
name: big
version: 1
source: {{python: model.py:model_fn, params: {{size: {size}}}}}
variants:
  cpu: {{tags: [serve]}}
  gpu: {{tags: [serve, gpu], device: /device:GPU:0, precision: float16}}
  tpu: {{tags: [serve, tpu], precision: bfloat16, batch_size: 8}}
"""


def median_seconds(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_big_package(folder: Path, gib: float) -> Path:
    (folder / "model.py").write_text(BIG_MODEL)
    size = int(gib * 2**30 / 4)
    (folder / "big.yaml").write_text(BIG_MANIFEST.format(size=size))
    subprocess.run(
        [
            str(BIN / "smpack"),
            "build",
            str(folder / "big.yaml"),
            "--out",
            str(folder / "out"),
            "--no-verify",
        ],
        check=True,
        capture_output=True,
    )
    return folder / "out" / "big" / "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="checkpoint size of the big package")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run(
            [
                str(BIN / "smpack"),
                "build",
                str(ROOT / "variants" / "text_classifier.yaml"),
                "--out",
                str(folder / "small"),
                "--no-verify",
            ],
            check=True,
            capture_output=True,
        )
        big = build_big_package(folder, args.gib)
        # The size on disk, measured, not the size asked for.
        gib = sum(p.stat().st_size for p in (big / "variables").iterdir()) / 2**30
        packages = {
            "text_classifier (4 graphs)": folder / "small" / "text_classifier" / "1",
            f"big ({gib:.2f} GiB checkpoint, 3 graphs)": big,
        }
        python = median_seconds([sys.executable, "-P", "-c", "pass"], args.repeat)
        rows = []
        for label, package in packages.items():
            inspect = median_seconds([str(BIN / "smpack"), "inspect", str(package)], args.repeat)
            cli = median_seconds(
                [
                    sys.executable,
                    "-P",  # not the working folder first on sys.path
                    "-m",
                    "tensorflow.python.tools.saved_model_cli",
                    "show",
                    "--dir",
                    str(package),
                    "--all",
                ],
                args.repeat,
            )
            rows.append((label, inspect, cli, cli / inspect))

    print(f"median of {args.repeat} runs each; bare `python -c pass` takes {python:.3f} s")
    print(f"{'package':<36} {'smpack inspect':>15} {'saved_model_cli':>16} {'ratio':>8}")
    for label, inspect, cli, ratio in rows:
        print(f"{label:<36} {inspect:>13.3f} s {cli:>14.3f} s {ratio:>7.1f}x")
    print(
        textwrap.dedent("""\
        ratio = saved_model_cli time / smpack inspect time (target: >= 10x);
        target for the big package: smpack inspect under 1 s.""")
    )


if __name__ == "__main__":
    main()
