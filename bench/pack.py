"""What packaging costs: smpack's multi-variant build against what TF users do today.

A benchmark, not a test. It makes a synthetic TF2 SavedModel (a stack of 64 tanh(x @ W)
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

Then sweeps, each a table of ratios against a baseline measured in the same run:

- weights: build time and memory at four variants, 128 MiB to 2 GiB;
- variants: 1..8 variants of the `--weights-mib` model, `--variant-rounds` interleaved
  rounds, medians compared;
- verify: `smpack build --no-measure` (which verifies) against `build --no-verify
  --no-measure`, 256 MiB to 4 GiB: time ratio and verify's peak memory above the TF import
  as a multiple of the weights: the peak sum of PSS over the build and every process under
  it (verify checks each graph in a process of its own), sampled every 50 ms in a build of
  its own (sampling slows the process sampled, so the times come from unsampled builds),
  and the graphs' own restores and runs summed (`smpack verify --costs`): the least a
  verified build can take once memory allows one graph at a time;
- checks: each of verify's steps at `--weights-mib`, timed in one process, with the
  process's peak RSS during the step;
- variables: 64..2,000 small variables, against `tf.saved_model.save` of the same model,
  a Keras ResNet50 against its own export, and 1..8 variants of the 1,000-variable one;
- huge (only when named in --sections; it wants the machine to itself): a `--huge-gib`
  model made without its weights ever in memory, then `smpack build --no-measure` (verify
  included), each process in a `--huge-limit-gib` cgroup v1 memory group: peak RSS of each,
  the group's peak, and whether it passed.

"after output" is the time from a command's last byte of output to its exit: teardown.

    .venv/bin/python bench/pack.py [--weights-mib 1024] [--sweep-mib 128,512,1024,2048]
        [--sweep-variants 1,2,4,8] [--variant-rounds 3] [--verify-mib 256,1024,2048,4096]
        [--sweep-variables 64,500,1000,2000]
        [--sections main,weights,variants,verify,checks,variables,huge]
        [--huge-gib 16] [--huge-limit-gib 24] [--no-sweep]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

BIN = Path(sys.executable).parent
# The model is LAYERS tanh layers at every size, wider for more weights: a deeper stack's
# output fades (each layer scales it by ~0.9) until float16 cannot resolve it, and verify
# rightly fails the float16 variant (at 128 layers its output is 4e-6, float16's subnormals).
LAYERS = 64

MAKE_MODEL = """\
import sys
import tensorflow as tf

out, layers, copies, width = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
STD = 0.02 * (2048 / width) ** 0.5  # the same gain at every width


class Stack(tf.Module):
    def __init__(self):
        super().__init__()
        self.kernels = [
            tf.Variable(tf.random.stateless_normal([width, width], [i, 0]) * STD,
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

# A ResNet50-sized source (25.6 M parameters in 320 variables, random weights) exported the
# way Keras 3 writes a SavedModel; the time is making the model and that one save.
MAKE_RESNET50 = """\
import sys
import keras
keras.utils.set_random_seed(0)
keras.applications.ResNet50(weights=None).export(sys.argv[1], verbose=False)
"""


# MAKE_MODEL's model, made without its weights ever in memory: the graph is saved with
# uninitialised variables and no checkpoint, and the checkpoint is written `group` kernels at
# a time, each group a data shard of the one checkpoint (as a sharded save writes it).
MAKE_STREAMED_MODEL = """\
import sys
import tempfile

import tensorflow as tf
from tensorflow.python.ops.resource_variable_ops import UninitializedVariable
from tensorflow.python.saved_model.save import save_and_return_nodes

out, layers, width, group = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
STD = 0.02 * (2048 / width) ** 0.5
OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"


class Stack(tf.Module):
    def __init__(self, make, width):
        super().__init__()
        self.kernels = [make(i) for i in range(layers)]
        self.width = width

    @tf.function
    def predict(self, x):
        for kernel in self.kernels:
            x = tf.tanh(tf.matmul(x, kernel))
        return {"y": x}


def save(model, path, **kwargs):
    spec = tf.TensorSpec([None, model.width], tf.float32)
    signatures = {"serving_default": model.predict.get_concrete_function(spec)}
    save_and_return_nodes(model, path, signatures=signatures, **kwargs)


model = Stack(lambda i: UninitializedVariable(shape=[width, width], dtype=tf.float32), width)
save(model, out, experimental_skip_checkpoint=True)
with tempfile.TemporaryDirectory() as tmp:
    # A checkpoint's object graph names no shapes: a 1x1 model of the same structure, saved
    # the ordinary way, holds the one TF's loaders expect.
    tiny = Stack(lambda i: tf.Variable(tf.zeros([1, 1])), 1)
    save(tiny, f"{tmp}/tiny")
    reader = tf.train.load_checkpoint(f"{tmp}/tiny/variables/variables")
    keys = [f"kernels/{i}/.ATTRIBUTES/VARIABLE_VALUE" for i in range(layers)]
    assert set(reader.get_variable_to_shape_map()) == {*keys, OBJECT_GRAPH}
    prefixes = []
    for start in range(0, layers, group):
        names = keys[start : start + group]
        tensors = [
            tf.random.stateless_normal([width, width], [start + i, 0]) * STD
            for i in range(len(names))
        ]
        if start == 0:
            names.append(OBJECT_GRAPH)
            tensors.append(tf.constant(reader.get_tensor(OBJECT_GRAPH)))
        prefixes.append(f"{tmp}/part_{start}")
        tf.raw_ops.SaveV2(
            prefix=prefixes[-1], tensor_names=names, shape_and_slices=[""] * len(names),
            tensors=tensors,
        )
        del tensors
    # Renames the parts' data files into shards and writes one index: no weight is copied.
    tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=prefixes, destination_prefix=f"{out}/variables/variables",
        delete_old_dirs=True,
    )
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
    peak_rss: int  # bytes, of the process alone
    after_output: float  # seconds from the last byte written to stdout to the exit
    exit_code: int = 0
    # bytes: the peak of the process's and all its descendants' proportional set sizes
    # (shared pages split between the processes sharing them), sampled every 50 ms: what
    # the machine needs for the whole tree (verify checks each graph in a child process).
    tree_peak: int = 0


class Row(NamedTuple):
    label: str
    run: Run
    disk: int
    new_disk: int


def measure(
    command: list[str], cgroup: Path | None = None, check: bool = True, sampled: bool = False
) -> Run:
    """Wall time and peak RSS of one fresh process (rusage of that child only), and how long
    it took to exit after its last output; `sampled`, also the peak PSS of it and every process
    under it (`tree_peak`). In `cgroup` (a cgroup v1 memory group) if given; a failure ends
    the bench unless `check` is false (a process the limit killed).

    Sampling slows what it times: each read of a process's smaps_rollup walks its page
    tables (262,144 entries per GiB in 4 KiB pages) under its memory map's lock, which the
    process's own mmap calls then wait for. `smpack verify` of 1 GiB took 3.4 and 9.5 s
    longer sampled than not, so a time that is compared is measured unsampled."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        joined = None if cgroup is None else lambda: join_cgroup(cgroup)
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, preexec_fn=joined
        )
        assert process.stdout is not None
        tree_peak = [0]
        done = threading.Event()
        sampler = None
        if sampled:
            sampler = threading.Thread(target=sample_tree, args=(process.pid, tree_peak, done))
            sampler.start()
        last_output = start
        while os.read(process.stdout.fileno(), 1 << 16):
            last_output = time.perf_counter()
        done.set()  # before the wait: the process's /proc entries go with it
        if sampler is not None:
            sampler.join()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            sys.stderr.write(errors.read().decode(errors="replace")[-4000:])
            msg = f"{command} failed with exit code {process.returncode}"
            if check:
                raise SystemExit(msg)
            print(msg)
    # The pipe closes at exit; the last read that returned bytes is the last output.
    after = max(0.0, start + seconds - last_output) if last_output > start else 0.0
    return Run(seconds, usage.ru_maxrss * 1024, after, process.returncode, tree_peak[0])


def sample_tree(pid: int, peak: list[int], done: threading.Event) -> None:
    """Keep `peak[0]` at the largest sum of PSS over `pid` and its descendants until `done`."""
    while not done.wait(0.05):
        peak[0] = max(peak[0], sum(pss(p) for p in descendants(pid)))


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (those alive now)."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                queue.extend(int(c) for c in (task / "children").read_text().split())
    return found


def pss(pid: int) -> int:
    """A process's proportional set size in bytes (0 once it is gone)."""
    with contextlib.suppress(OSError, StopIteration):
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        return int(next(line for line in rollup if line.startswith("Pss:")).split()[1]) * 1024
    return 0


def join_cgroup(group: Path) -> None:
    """Move the calling process (a child between fork and exec) into `group`."""
    (group / "cgroup.procs").write_text(str(os.getpid()))


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """A cgroup v1 memory group limited to `limit` bytes, under this process's own group.

    Page cache the processes in it fill is charged to it too, but is reclaimed at the limit
    before anything is killed; RSS is not. The group is removed afterwards.
    """
    line = next(
        entry
        for entry in Path("/proc/self/cgroup").read_text().splitlines()
        if entry.split(":")[1] == "memory"
    )
    group = (
        Path("/sys/fs/cgroup/memory")
        / line.split(":")[2].lstrip("/")
        / f"smpack-bench-{os.getpid()}"
    )
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        # No swap to hide behind (where the kernel accounts it).
        with contextlib.suppress(OSError):
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))
        yield group
    finally:
        # A process the last one left (verify's graph server, killed as its caller exits)
        # may still be leaving the group: removing it fails until it has.
        for _ in range(100):
            try:
                group.rmdir()
                break
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.1)
        else:
            group.rmdir()


def cgroup_peak(group: Path) -> int:
    """The group's peak usage (RSS and page cache) since the last call, which resets it."""
    peak = int((group / "memory.max_usage_in_bytes").read_text())
    (group / "memory.max_usage_in_bytes").write_text("0")
    return peak


def python(code: str, *args: str) -> list[str]:
    # -P: not the working folder first on sys.path (a `smpack/` there would be timed instead).
    return [str(BIN / "python"), "-P", "-c", code, *args]


def width_for(mib: float) -> int:
    """The width of LAYERS square float32 kernels holding about `mib` MiB (2,048 at 1 GiB)."""
    return max(8, round((mib * 2**20 / 4 / LAYERS) ** 0.5 / 8) * 8)


def make_model(path: Path, mib: int, copies: int = 1) -> Run:
    return make_layers(path, LAYERS, width_for(mib), copies)


def make_layers(path: Path, layers: int, width: int, copies: int = 1) -> Run:
    """`tf.saved_model.save` of `layers` width x width float32 kernels, timed."""
    return measure(python(MAKE_MODEL, str(path), str(layers), str(copies), str(width)))


def make_streamed_model(path: Path, mib: int, cgroup: Path | None = None) -> Run:
    """`make_model`'s model, written 256 MiB of kernels at a time, timed (in `cgroup`)."""
    width = width_for(mib)
    group = max(1, 2**28 // (width * width * 4))  # kernels in about 256 MiB
    command = python(MAKE_STREAMED_MODEL, str(path), str(LAYERS), str(width), str(group))
    return measure(command, cgroup, check=False, sampled=True)


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
    cgroup: Path | None = None,
    sampled: bool = False,
) -> Run:
    # By default `smpack build` also times every variant the host can run, then verifies
    # the package, each loading graphs with their weights: separate costs, in their own rows.
    command = [str(BIN / "smpack"), "build", str(manifest(folder, model, variants)), "--out"]
    flags = ([] if verify else ["--no-verify"]) + ([] if timed else ["--no-measure"])
    return measure([*command, str(out), *flags], cgroup, check=cgroup is None, sampled=sampled)


def graphs_own_seconds(package: Path) -> float:
    """Seconds `smpack verify` of `package` spent in its graphs' restores and runs, summed: the
    checks' own work, which no change to verify's orchestration takes away."""
    command = [str(BIN / "smpack"), "verify", str(package), "--json"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    graphs = json.loads(output)["result"]["graphs"]
    return sum(g["cost"]["restoring"] + g["cost"]["running"] for g in graphs)


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


SECTIONS = ("main", "weights", "variants", "verify", "checks", "variables")
# Not in the default run: it needs the machine to itself.
SECTIONS_ON_REQUEST = ("huge",)

# What each of verify's steps costs: its seconds, and the peak sum of PSS over this process
# and those under it (each graph is checked in a process of its own) during the step, above
# this process's RSS once TF is imported. Sampled every 50 ms, by the bench's own sampler.
VERIFY_STEPS = """\
import json, os, sys, threading, time
sys.path.append(sys.argv[2])  # last: bench/inspect.py is not the standard library's
from pack import descendants, pss
from smpack.io.tf_quietly import import_tensorflow_quietly
import_tensorflow_quietly()
from smpack.builder.provenance import check_provenance
from smpack.checks.verify import verify_package

base = pss(os.getpid())
peak = [0]


def sample():
    while True:
        # Summed first: a reset while the (slow) sum runs must not be undone by a stale peak.
        now = sum(pss(p) for p in descendants(os.getpid()))
        peak[0] = max(peak[0], now)
        time.sleep(0.05)


threading.Thread(target=sample, daemon=True).start()
rows, last = [], [time.perf_counter(), "(start)"]


def finish(now):
    rows.append((last[1], now - last[0], peak[0] - base))


def on_step(step):
    now = time.perf_counter()
    finish(now)
    peak[0] = 0
    last[:] = [time.perf_counter(), step.description]


report = verify_package(sys.argv[1], on_step=on_step)
finish(time.perf_counter())
peak[0] = 0
start = time.perf_counter()
check_provenance(sys.argv[1])
rows.append(("(sha256 of every file, alone)", time.perf_counter() - start, peak[0] - base))
print(json.dumps({"passed": report.passed, "rows": rows[1:]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-mib", type=int, default=1024)
    parser.add_argument("--sweep-mib", default="128,512,1024,2048")
    parser.add_argument("--sweep-variants", default="1,2,4,8")
    parser.add_argument("--variant-rounds", type=int, default=3, help="builds per variant count")
    parser.add_argument("--verify-mib", default="256,1024,2048,4096")
    parser.add_argument("--sweep-variables", default="64,500,1000,2000")
    parser.add_argument("--huge-gib", type=float, default=16)
    parser.add_argument("--huge-limit-gib", type=float, default=24)
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=", ".join(SECTIONS + SECTIONS_ON_REQUEST),
    )
    parser.add_argument("--no-sweep", action="store_true", help="the main table only")
    args = parser.parse_args()
    sections = ["main"] if args.no_sweep else args.sections.split(",")

    with tempfile.TemporaryDirectory(prefix="smpack-bench-") as tmp:
        root = Path(tmp)
        # Medians of three: the import's RSS is the baseline every "extra" is above.
        imports = [measure(python("import tensorflow")) for _ in range(3)]
        seconds = sorted(r.seconds for r in imports)[1]
        rss = sorted(r.peak_rss for r in imports)[1]
        bench = Bench(root, Run(seconds, int(rss), 0.0), args)
        print(f"python -c 'import tensorflow': {seconds:.2f}s, {mib(rss)}")
        if "main" in sections or "variants" in sections:
            bench.saved = make_model(root / "model", args.weights_mib)
        for section in sections:
            getattr(bench, f"{section}_section")()


class Bench:
    def __init__(self, root: Path, baseline: Run, args: argparse.Namespace) -> None:
        self.root, self.baseline, self.args = root, baseline, args
        self.weights = args.weights_mib * 2**20
        self.saved = Run(0.0, 0, 0.0)

    def extra(self, run: Run) -> int:
        return max(0, run.peak_rss - self.baseline.peak_rss)

    def tree_extra(self, run: Run) -> int:
        return max(0, run.tree_peak - self.baseline.peak_rss)

    def main_section(self) -> None:
        root, weights, extra = self.root, self.weights, self.extra
        copy = measure(["cp", "-r", str(root / "model" / "variables"), str(root / "copy")])
        build = smpack_build(root, root / "model", 4, root / "out")
        four = make_model(root / "four", self.args.weights_mib, copies=4)
        timed = smpack_build(root, root / "model", 4, root / "timed", timed=True)
        verified = smpack_build(root, root / "model", 4, root / "verified", verify=True, timed=True)
        rows = [
            Row("1 tf.saved_model.save, one variant", self.saved, *disk_bytes(root / "model")),
            Row("2 copy variables/ (the floor)", copy, *disk_bytes(root / "copy")),
            Row(
                "3 smpack build, four variants",
                build,
                *disk_bytes(root / "out", shared_with=root / "model"),
            ),
            Row("4 four single-variant exports", four, *disk_bytes(root / "four")),
            Row("5 python -c 'import tensorflow'", self.baseline, 0, 0),
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
        for path in ("copy", "out", "four", "timed", "verified"):
            subprocess.run(["rm", "-rf", str(root / path)], check=True)

    def weights_section(self) -> None:
        print("\nsweep: weights at four variants")
        print(f"{'weights':>10} {'build':>8} {'extra RSS':>12} {'new bytes':>12}")
        for size in (int(s) for s in self.args.sweep_mib.split(",")):
            folder = self.root / f"sweep_{size}"
            folder.mkdir()
            make_model(folder / "model", size)
            run = smpack_build(folder, folder / "model", 4, folder / "out")
            _, new = disk_bytes(folder / "out", shared_with=folder / "model")
            size_text = mib(size * 2**20)
            print(f"{size_text:>10} {run.seconds:7.2f}s {mib(self.extra(run)):>12} {mib(new):>12}")
            subprocess.run(["rm", "-rf", str(folder)], check=True)

    def variants_section(self) -> None:
        print(f"\nsweep: variants at {mib(self.weights)}")
        self._variants(self.root, self.root / "model", target=1.2)

    def _variants(self, folder: Path, model: Path, target: float) -> None:
        # One build per count varied by 1.4-2.1x in the ratio between quiet runs: the counts
        # are built in interleaved rounds, so a slow minute falls on every count alike, and
        # each count's median is what the ratio compares.
        counts = [int(v) for v in self.args.sweep_variants.split(",")]
        rounds = self.args.variant_rounds
        header = f"{'variants':>10} {'build (each round)':>30} {'median':>8} {'extra RSS':>12}"
        print(f"{header} {'/ fewest':>9}")
        runs: dict[int, list[Run]] = {count: [] for count in counts}
        for _ in range(rounds):
            for count in counts:
                out = folder / f"variants_{count}"
                runs[count].append(smpack_build(folder, model, count, out))
                subprocess.run(["rm", "-rf", str(out)], check=True)
        medians = {count: sorted(r.seconds for r in runs[count])[rounds // 2] for count in counts}
        for count in counts:
            each = " ".join(f"{r.seconds:6.2f}" for r in runs[count])
            extra = mib(sorted(self.extra(r) for r in runs[count])[rounds // 2])
            ratio = medians[count] / medians[counts[0]]
            print(f"{count:>10} {each:>30} {medians[count]:7.2f}s {extra:>12} {ratio:9.2f}")
        per_round = " ".join(
            f"{most.seconds / fewest.seconds:4.2f}"
            for most, fewest in zip(runs[counts[-1]], runs[counts[0]], strict=True)
        )
        most_fewest = medians[counts[-1]] / medians[counts[0]]
        print(
            f"build time, most / fewest variants = {most_fewest:4.2f} (medians; rounds "
            f"{per_round})   target <= {target}"
        )

    def verify_section(self) -> None:
        print("\nsweep: verify, four variants (`smpack build` against `build --no-verify`)")
        header = (
            f"{'weights':>10} {'no-verify':>10} {'build':>8} {'time ×':>7} "
            f"{'extra RSS':>10} {'+ verify':>10} {'all procs':>10} {'× weights':>10} "
            f"{'after output':>13} {'checks':>7} {'floor ×':>8}"
        )
        print(header)
        worst_time = worst_memory = 0.0
        for size in (int(s) for s in self.args.verify_mib.split(",")):
            folder = self.root / f"verify_{size}"
            folder.mkdir()
            # Made a shard at a time: `tf.saved_model.save` of 4 GiB would hold it twice.
            make_streamed_model(folder / "model", size)
            plain = smpack_build(folder, folder / "model", 4, folder / "plain")
            verified = smpack_build(folder, folder / "model", 4, folder / "verified", verify=True)
            subprocess.run(["rm", "-rf", str(folder / "verified")], check=True)
            sampled = smpack_build(
                folder, folder / "model", 4, folder / "verified", verify=True, sampled=True
            )
            ratio = verified.seconds / plain.seconds
            memory = self.tree_extra(sampled) / (size * 2**20)
            worst_time, worst_memory = max(worst_time, ratio), max(worst_memory, memory)
            checks = graphs_own_seconds(folder / "verified" / "bench" / "1")
            print(
                f"{mib(size * 2**20):>10} {plain.seconds:9.2f}s {verified.seconds:7.2f}s "
                f"{ratio:7.2f} {mib(self.extra(plain)):>10} {mib(self.extra(verified)):>10} "
                f"{mib(self.tree_extra(sampled)):>10} {memory:10.2f} "
                f"{verified.after_output:12.2f}s {checks:6.2f}s "
                f"{(plain.seconds + checks) / plain.seconds:8.2f}"
            )
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        print(f"build / build --no-verify, worst = {worst_time:4.2f}   target <= 2")
        print(f"verify's extra memory / weights, worst = {worst_memory:4.2f}   target <= 2.25")
        print(
            "extra RSS: the build process's own peak above the TF import (wait4); all procs: "
            "the peak sum of PSS of the build and every process under it (verify's graph "
            "processes and their server), sampled every 50 ms, above the TF import, in a third "
            "build of its own (sampling slows the process it samples; the times are unsampled)"
        )
        print(
            "checks: the graphs' own restores and runs, summed (`smpack verify --costs` of the "
            "package, a fourth run): from 1 GiB up verify's memory allows one graph at a time, "
            "so a verified build takes at least the --no-verify build and these; floor × is "
            "that least over the --no-verify build"
        )

    def checks_section(self) -> None:
        size = self.args.weights_mib
        print(f"\nverify's steps at {mib(size * 2**20)}, four variants, one process")
        folder = self.root / "checks"
        folder.mkdir()
        make_model(folder / "model", size)
        smpack_build(folder, folder / "model", 4, folder / "out")
        package = folder / "out" / "bench" / "1"
        output = subprocess.run(
            python(VERIFY_STEPS, str(package), str(Path(__file__).parent)),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(output.splitlines()[-1])
        print(f"{'step':42} {'time':>8} {'peak RSS':>10} {'× weights':>10}")
        for name, seconds, peak in result["rows"]:
            ratio = peak / (size * 2**20)
            print(f"{name:42} {seconds:7.2f}s {mib(peak):>10} {ratio:10.2f}")
        print(
            f"passed: {result['passed']}. Peak RSS is the peak sum of PSS of the process and "
            "its graph processes during the step, above its RSS after importing TF; the sha256 "
            "pass (timed alone last) runs alongside the graphs' steps in verify"
        )
        subprocess.run(["rm", "-rf", str(folder)], check=True)

    def _resnet50(self) -> None:
        folder = self.root / "resnet50"
        folder.mkdir()
        saved = measure(python(MAKE_RESNET50, str(folder / "model")))
        run = smpack_build(folder, folder / "model", 4, folder / "out")
        print("\nResNet50 (keras.applications, random weights), four variants")
        print(f"{'save':>8} {'build':>8} {'build / save':>13}")
        print(f"{saved.seconds:7.2f}s {run.seconds:7.2f}s {run.seconds / saved.seconds:13.2f}")
        print("target: build / save <= 1.0")
        subprocess.run(["rm", "-rf", str(folder)], check=True)

    def huge_section(self) -> None:
        """Make, build and verify a `--huge-gib` model in a `--huge-limit-gib` memory cgroup."""
        size, limit = self.args.huge_gib, self.args.huge_limit_gib
        weights = int(size * 2**30)
        print(
            f"\nhuge: {mib(weights)} of weights, four variants, each process in a "
            f"{mib(limit * 2**30)} memory cgroup (v1: RSS and page cache; cache is reclaimed)"
        )
        folder = self.root / "huge"
        folder.mkdir()
        print(
            f"{'step':46} {'time':>8} {'exit':>5} {'peak RSS':>10} {'all procs':>10} "
            f"{'extra':>10} {'× weights':>10} {'group peak':>11}"
        )
        with memory_cgroup(int(limit * 2**30)) as group:
            steps = [
                (
                    "make the source (256 MiB of kernels at a time)",
                    lambda: make_streamed_model(folder / "model", int(size * 1024), group),
                ),
                (
                    "smpack build --no-measure (verify included)",
                    lambda: smpack_build(
                        folder,
                        folder / "model",
                        4,
                        folder / "out",
                        verify=True,
                        cgroup=group,
                        sampled=True,
                    ),
                ),
            ]
            cgroup_peak(group)
            for label, step in steps:
                run = step()
                peak = cgroup_peak(group)
                print(
                    f"{label:46} {run.seconds:7.1f}s {run.exit_code:>5} "
                    f"{mib(run.peak_rss):>10} {mib(run.tree_peak):>10} "
                    f"{mib(self.tree_extra(run)):>10} "
                    f"{self.tree_extra(run) / weights:10.2f} {mib(peak):>11}"
                )
                if run.exit_code != 0:
                    break
        print(
            f"passed: {run.exit_code == 0}. Peak RSS is the process's own (wait4); all procs "
            "the peak sum of PSS of it and every process under it (verify's graph processes), "
            "extra that above the TF import's RSS; the group's peak adds the page cache they "
            "filled (reclaimed at the limit)"
        )
        subprocess.run(["rm", "-rf", str(folder)], check=True)

    def variables_section(self) -> None:
        width = 128  # 64 KiB a variable: the count, not the bytes, is what varies
        print(f"\nsweep: variables ({width}x{width} float32 each), four variants")
        print(
            f"{'variables':>10} {'save':>8} {'build':>8} {'build / save':>13} {'ms / variable':>14}"
        )
        sources = {}
        for count in (int(v) for v in self.args.sweep_variables.split(",")):
            folder = self.root / f"variables_{count}"
            folder.mkdir()
            saved = make_layers(folder / "model", count, width)
            run = smpack_build(folder, folder / "model", 4, folder / "out")
            per_variable = (run.seconds - self.baseline.seconds) / count * 1000
            print(
                f"{count:>10} {saved.seconds:7.2f}s {run.seconds:7.2f}s "
                f"{run.seconds / saved.seconds:13.2f} {per_variable:14.2f}"
            )
            subprocess.run(["rm", "-rf", str(folder / "out")], check=True)
            sources[count] = folder
        print("target: build / save <= 1.0")
        if 1000 in sources:
            print("\nsweep: variants of the 1,000-variable source")
            self._variants(sources[1000], sources[1000] / "model", target=1.5)
        self._resnet50()


if __name__ == "__main__":
    main()
