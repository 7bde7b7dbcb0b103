"""What packaging costs: smpack's multi-variant build against what TF users do today.

A benchmark, not a test. It makes a synthetic TF2 SavedModel (a stack of tanh(x @ W)
layers, about `--weights-mib` of float32 weights), then runs each contender as a fresh
process and measures wall time, peak RSS above the TensorFlow-import baseline (from
wait4's rusage of that process alone) and bytes on disk:

1. `tf.saved_model.save` of the single-variant model (building the model included),
2. copying its `variables/` folder (the floor: writing the weights once),
3. `smpack build --no-verify --no-measure` of four variants (serve, train, serve+gpu,
   serve+tpu) from it (and, in extra rows, the same build timing the variants the host can
   run, then also verifying: the build's default),
4. four separate single-variant exports (the status quo for four targets),
5. `python -c "import tensorflow"` (the fixed cost every TF process pays).

Then a sweep over weight sizes at four variants and over 1..8 variants at fixed weights.

    .venv/bin/python bench/pack.py [--weights-mib 1024] [--sweep-mib 128,512,1024,2048]
                                   [--sweep-variants 1,2,4,8] [--no-sweep]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import NamedTuple

BIN = Path(sys.executable).parent
WIDTH = 2048  # each layer is WIDTH x WIDTH float32: 16 MiB

MAKE_MODEL = """\
import sys
import tensorflow as tf

out, layers, copies, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


class Stack(tf.Module):
    def __init__(self):
        super().__init__()
        self.kernels = [
            tf.Variable(tf.random.stateless_normal([width, width], [i, 0]) * 0.02,
                        name=f"layer_{i}/kernel")
            for i in range(layers)
        ]

    @tf.function(input_signature=[tf.TensorSpec([None, width], tf.float32)])
    def predict(self, x):
        for kernel in self.kernels:
            x = tf.tanh(tf.matmul(x, kernel))
        return {"y": x}


model = Stack()
for copy in range(copies):
    path = out if copies == 1 else f"{out}/target_{copy}"
    tf.saved_model.save(model, path, signatures={"serving_default": model.predict})
"""

# Variants beyond the first four are further serving targets with tag sets of their own.
FOUR = {
    "cpu": "{tags: [serve]}",
    "train": "{tags: [train], optimizer: {name: sgd, learning_rate: 0.01}}",
    "gpu": "{tags: [serve, gpu], device: /device:GPU:0, precision: float16, xla: true}",
    "tpu": "{tags: [serve, tpu], precision: bfloat16, batch_size: 8}",
}


# NamedTuple, not dataclass: dataclasses imports `inspect`, which bench/inspect.py shadows.
class Run(NamedTuple):
    seconds: float
    peak_rss: int  # bytes


class Row(NamedTuple):
    label: str
    run: Run
    disk: int
    new_disk: int


def measure(command: list[str]) -> Run:
    """Wall time and peak RSS of one fresh process (rusage of that child only)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.stderr.write(stderr.decode(errors="replace"))
        msg = f"{command} failed with exit code {process.returncode}"
        raise SystemExit(msg)
    return Run(seconds, usage.ru_maxrss * 1024)


def python(code: str, *args: str) -> list[str]:
    return [str(BIN / "python"), "-c", code, *args]


def make_model(path: Path, mib: int, copies: int = 1) -> Run:
    layers = max(1, round(mib * 2**20 / (WIDTH * WIDTH * 4)))
    return measure(python(MAKE_MODEL, str(path), str(layers), str(copies), str(WIDTH)))


def manifest(folder: Path, model: Path, variants: int) -> Path:
    names = list(FOUR)[:variants] + [f"extra_{i}" for i in range(variants - len(FOUR))]
    lines = [
        "schema: 1",
        "name: bench",
        "version: 1",
        f"source: {{savedmodel: {model.name}, loss: mse}}",
        "variants:",
    ]
    for name in names:
        lines.append(f"  {name}: {FOUR.get(name, '{tags: [serve, ' + name + ']}')}")
    path = folder / f"bench_{variants}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def smpack_build(
    folder: Path,
    model: Path,
    variants: int,
    out: Path,
    verify: bool = False,
    timed: bool = False,
) -> Run:
    # By default `smpack build` also times every variant the host can run, then verifies
    # the package, each loading graphs with their weights: separate costs, in their own rows.
    command = [str(BIN / "smpack"), "build", str(manifest(folder, model, variants)), "--out"]
    flags = ([] if verify else ["--no-verify"]) + ([] if timed else ["--no-measure"])
    return measure([*command, str(out), *flags])


def disk_bytes(path: Path, shared_with: Path | None = None) -> tuple[int, int]:
    """Bytes of every file under `path`, and of those not hard links into `shared_with`."""
    shared = set()
    if shared_with is not None:
        shared = {(p.stat().st_dev, p.stat().st_ino) for p in shared_with.rglob("*") if p.is_file()}
    total = new = 0
    for file in (p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        total += stat.st_size
        if (stat.st_dev, stat.st_ino) not in shared:
            new += stat.st_size
    return total, new


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-mib", type=int, default=1024)
    parser.add_argument("--sweep-mib", default="128,512,1024,2048")
    parser.add_argument("--sweep-variants", default="1,2,4,8")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="smpack-bench-") as tmp:
        root = Path(tmp)
        weights = args.weights_mib * 2**20
        baseline = measure(python("import tensorflow"))
        saved = make_model(root / "model", args.weights_mib)
        copy = measure(["cp", "-r", str(root / "model" / "variables"), str(root / "copy")])
        build = smpack_build(root, root / "model", 4, root / "out")
        four = make_model(root / "four", args.weights_mib, copies=4)
        timed = smpack_build(root, root / "model", 4, root / "timed", timed=True)
        verified = smpack_build(
            root, root / "model", 4, root / "verified", verify=True, timed=True
        )

        def extra(run: Run) -> int:
            return max(0, run.peak_rss - baseline.peak_rss)

        rows = [
            Row("1 tf.saved_model.save, one variant", saved, *disk_bytes(root / "model")),
            Row("2 copy variables/ (the floor)", copy, *disk_bytes(root / "copy")),
            Row(
                "3 smpack build, four variants",
                build,
                *disk_bytes(root / "out", shared_with=root / "model"),
            ),
            Row("4 four single-variant exports", four, *disk_bytes(root / "four")),
            Row("5 python -c 'import tensorflow'", baseline, 0, 0),
            Row(
                "3 + measure",
                timed,
                *disk_bytes(root / "timed", shared_with=root / "model"),
            ),
            Row(
                "3 + measure + verify (build's default)",
                verified,
                *disk_bytes(root / "verified", shared_with=root / "model"),
            ),
        ]
        print(f"\nweights: {mib(weights)} float32 in {root / 'model'}\n")
        print(f"{'step':38} {'time':>8} {'extra RSS':>12} {'on disk':>12} {'new bytes':>12}")
        for row in rows:
            rss = mib(extra(row.run)) if row.label[0] != "2" else mib(row.run.peak_rss)
            print(
                f"{row.label:38} {row.run.seconds:7.2f}s {rss:>12} "
                f"{mib(row.disk):>12} {mib(row.new_disk):>12}"
            )
        t1, t2, t3, t4, t5 = (r.run.seconds for r in rows[:5])
        d1, d3, d4 = rows[0].disk, rows[2].disk, rows[3].disk
        print(
            textwrap.dedent(f"""
            (time(3) - time(5)) / time(2) = {(t3 - t5) / t2:5.2f}   target <= 1.5
            time(3) / time(1)             = {t3 / t1:5.2f}
            time(3) / time(4)             = {t3 / t4:5.2f}   target < 1
            disk(3) / disk(1)             = {d3 / d1:5.3f}  target <= 1.05
            disk(4) / disk(3)             = {d4 / d3:5.2f}
            extra RSS(3) / weights        = {extra(build) / weights:5.3f}  target <= 0.25
            extra RSS(3 + measure) / weights = {extra(timed) / weights:5.3f}""")
        )
        if args.no_sweep:
            return

        print("\nsweep: weights at four variants")
        print(f"{'weights':>10} {'build':>8} {'extra RSS':>12} {'new bytes':>12}")
        for size in (int(s) for s in args.sweep_mib.split(",")):
            folder = root / f"sweep_{size}"
            folder.mkdir()
            make_model(folder / "model", size)
            run = smpack_build(folder, folder / "model", 4, folder / "out")
            _, new = disk_bytes(folder / "out", shared_with=folder / "model")
            size_text = mib(size * 2**20)
            print(f"{size_text:>10} {run.seconds:7.2f}s {mib(extra(run)):>12} {mib(new):>12}")
            subprocess.run(["rm", "-rf", str(folder)], check=True)

        print(f"\nsweep: variants at {mib(weights)}")
        print(f"{'variants':>10} {'build':>8} {'extra RSS':>12}")
        times = []
        for count in (int(v) for v in args.sweep_variants.split(",")):
            run = smpack_build(root, root / "model", count, root / f"variants_{count}")
            times.append(run.seconds)
            print(f"{count:>10} {run.seconds:7.2f}s {mib(extra(run)):>12}")
        print(f"\nbuild time, most / fewest variants = {times[-1] / times[0]:4.2f}   target <= 1.2")


if __name__ == "__main__":
    main()
