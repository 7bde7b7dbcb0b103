"""The later serving graphs of an imported source, assembled in a forked child while the
build goes on: the same package as building them in turn, errors as building them in turn
reported them, and a child that ends with its build."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import file_digests
from tf_helpers import SOURCE_VARIANTS, make_tf_module, write_manifest

import smpack
import smpack.builder.ahead
import smpack.builder.assembled
import smpack.builder.assembled_training
import smpack.builder.writer
from smpack.builder.ahead import BuiltAhead, variants_ahead
from smpack.errors import GraphError, PackageError, SmpackError
from smpack.manifest import Variant, load_manifest

# serve, serve,gpu, a tag-only copy of it, serve,tpu and train (yaml.safe_dump writes the
# manifest's variants in the order of their names).
VARIANTS = {
    "cpu": SOURCE_VARIANTS["cpu"],
    "train": SOURCE_VARIANTS["train"],
    "gpu": SOURCE_VARIANTS["gpu"],
    "tpu": SOURCE_VARIANTS["tpu"],
    "gpu_copy": {**SOURCE_VARIANTS["gpu"], "tags": ["serve", "gpu", "copy"]},
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("two_layers")
    make_tf_module(folder)
    return write_manifest(folder, {"savedmodel": "two_layers", "loss": "mse"}, variants=VARIANTS)


def loaded_variants(manifest: Path) -> dict[str, Variant]:
    return dict(load_manifest(manifest).spec.variants)


ASSEMBLED_GRAPH = smpack.builder.assembled.assembled_graph


def wait_for(started: Path) -> None:
    """Until the child has written its process id in `started`."""
    deadline = time.monotonic() + 60
    while not (started.exists() and started.read_text()):
        assert time.monotonic() < deadline
        time.sleep(0.01)


def built_in_turn(monkeypatch: pytest.MonkeyPatch, manifest: Path, out: Path) -> Path:
    """The package `manifest` builds with nothing forked: every graph in the build's process."""
    monkeypatch.setattr(smpack.builder.ahead, "variants_ahead", lambda rest, built: [])
    return smpack.build(manifest, out, measure=False).path


def recording_builders(monkeypatch: pytest.MonkeyPatch, log: Path) -> None:
    """Each assembled serving graph's variant and the process that assembled it, in `log`."""

    def recorded(loaded: Any, imported: Any, name: str, variant: Variant) -> Any:
        with log.open("a") as out:
            out.write(f"{name} {os.getpid()}\n")
        return ASSEMBLED_GRAPH(loaded, imported, name, variant)

    monkeypatch.setattr(smpack.builder.assembled, "assembled_graph", recorded)


def test_later_serving_graphs_are_assembled_aside_into_the_same_package(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    aside, in_turn = tmp_path / "aside.log", tmp_path / "in_turn.log"
    recording_builders(monkeypatch, aside)
    built_aside = smpack.build(manifest, tmp_path / "aside", measure=False).path
    recording_builders(monkeypatch, in_turn)
    in_turn_package = built_in_turn(monkeypatch, manifest, tmp_path / "in_turn")

    here = str(os.getpid())
    processes = dict(line.split() for line in aside.read_text().splitlines())
    # (asked of train too, which it leaves to assembled_training); the copy is gpu's graph.
    assert processes.keys() == {"cpu", "train", "gpu", "tpu"}
    assert processes["cpu"] == processes["train"] == here
    assert processes["gpu"] == processes["tpu"] != here
    assert {line.split()[1] for line in in_turn.read_text().splitlines()} == {here}
    assert file_digests(built_aside) == file_digests(in_turn_package)


def test_the_build_writes_its_own_graphs_while_the_child_assembles(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The child's last graph waits until the build has exported its train graph (after
    # the checkpoint it is written from): a build that waited for the child first never
    # would, and fails.
    here, exported = os.getpid(), tmp_path / "exported"
    export = smpack.builder.writer.exported_meta_graph

    def recorded_export(variant_graph: Any, *args: Any) -> Any:
        with exported.open("a") as out:
            out.write(f"{variant_graph.name}\n")
        return export(variant_graph, *args)

    def waiting_tpu(loaded: Any, imported: Any, name: str, variant: Variant) -> Any:
        if name == "tpu" and os.getpid() != here:
            deadline = time.monotonic() + 30
            while not (exported.exists() and "train" in exported.read_text().split()):
                if time.monotonic() > deadline:
                    msg = "the build never exported train"
                    raise GraphError(msg, file=loaded.path, field=f"variants.{name}")
                time.sleep(0.01)
            staged = tmp_path / "out" / "imported"
            assert list(staged.glob(".1.smpack-tmp-*/variables/variables.index"))
        return ASSEMBLED_GRAPH(loaded, imported, name, variant)

    monkeypatch.setattr(smpack.builder.writer, "exported_meta_graph", recorded_export)
    monkeypatch.setattr(smpack.builder.assembled, "assembled_graph", waiting_tpu)
    built = smpack.build(manifest, tmp_path / "out", measure=False).path
    # Each distinct graph exported once: cpu's and train's ahead (in manifest order, which
    # puts train last), gpu's and tpu's once they came back.
    assert exported.read_text().split() == ["cpu", "train", "gpu", "tpu"]
    in_turn = built_in_turn(monkeypatch, manifest, tmp_path / "in_turn")
    assert file_digests(built) == file_digests(in_turn)


def test_a_checkpoint_written_ahead_from_another_graph_is_written_again(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No train graph: the build keeps tpu (the first) and cpu (the last), the child
    # assembles gpu. Ahead, cpu is the graph that writes the checkpoint (tpu's
    # initialisers may need a TPU); of all three, gpu, the first in manifest order.
    shutil.copytree(manifest.parent / "two_layers", tmp_path / "two_layers")
    order = {"a_tpu": "tpu", "b_gpu": "gpu", "c_cpu": "cpu"}
    variants = {name: VARIANTS[kind] for name, kind in order.items()}
    source = {"savedmodel": "two_layers", "loss": "mse"}
    ordered = write_manifest(tmp_path, source, variants=variants)
    written = []
    write_variables = smpack.builder.writer._write_variables

    def recorded(export_dir: Path, variant_graph: Any, *args: Any) -> Any:
        written.append(variant_graph.name)
        return write_variables(export_dir, variant_graph, *args)

    monkeypatch.setattr(smpack.builder.writer, "_write_variables", recorded)
    built = smpack.build(ordered, tmp_path / "aside", measure=False).path
    assert written == ["c_cpu", "b_gpu"]
    in_turn = built_in_turn(monkeypatch, ordered, tmp_path / "in_turn")
    assert written == ["c_cpu", "b_gpu", "b_gpu"]
    assert file_digests(built) == file_digests(in_turn)


@pytest.mark.parametrize("first_error", ["gpu", "warmup", "write"])
def test_an_error_writing_ahead_comes_in_its_turn(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_error: str
) -> None:
    # Writing the checkpoint fails (a full disk) while the child assembles. Built and
    # written in turn, a variant failing in the child, or a warmup request fitting no
    # graph (checked once every graph is built, before anything is written), came first.
    shutil.copytree(manifest.parent / "two_layers", tmp_path / "two_layers")
    source = {"savedmodel": "two_layers", "loss": "mse"}
    warmup = [{"signature": "nope", "inputs": {"input": [1.0]}}]
    extra = {"warmup": warmup} if first_error == "warmup" else {}
    written = write_manifest(tmp_path, source, variants=VARIANTS, **extra)
    here = os.getpid()

    def full_disk(*args: Any) -> None:
        msg = "cannot write the SavedModel: No space left on device"
        raise PackageError(msg)

    def failing_gpu(loaded: Any, imported: Any, name: str, variant: Variant) -> Any:
        if first_error == "gpu" and name == "gpu" and os.getpid() != here:
            time.sleep(1)  # (the build writes ahead meanwhile)
            msg = "gpu cannot be built"
            raise GraphError(msg, file=written, field="variants.gpu")
        return ASSEMBLED_GRAPH(loaded, imported, name, variant)

    monkeypatch.setattr(smpack.builder.writer, "_write_variables", full_disk)
    monkeypatch.setattr(smpack.builder.assembled, "assembled_graph", failing_gpu)
    with pytest.raises(SmpackError) as raised:
        smpack.build(written, tmp_path / "out", measure=False)
    expected = {
        "gpu": f"{written}: variants.gpu: gpu cannot be built",
        "warmup": f"{written}: warmup.0: variant 'cpu' has no signature 'nope'",
        "write": "cannot write the SavedModel: No space left on device",
    }
    assert str(raised.value) == expected[first_error]
    assert not (tmp_path / "out" / "imported" / "1").exists()


def test_a_callers_own_thread_keeps_every_graph_in_the_build(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It might be inside TensorFlow, holding a lock, when a child would be forked.
    log = tmp_path / "log"
    recording_builders(monkeypatch, log)
    running = threading.Event()
    callers = threading.Thread(target=running.wait, name="callers-own")
    callers.start()
    try:
        smpack.build(manifest, tmp_path / "out", measure=False)
    finally:
        running.set()
        callers.join()
    assert {line.split()[1] for line in log.read_text().splitlines()} == {str(os.getpid())}


def test_a_program_that_compiled_with_xla_before_builds_without_hanging(
    manifest: Path, tmp_path: Path
) -> None:
    """A notebook that trained with jit_compile, then packages: XLA:CPU's compiler started
    its thread pool in that process, which a forked child has without its threads, and the
    child's first XLA compilation (registering XLA's kernels for a half-precision variant)
    waited for them forever."""
    script = f"""
import tensorflow as tf
tf.function(lambda x: x * 2, jit_compile=True)(tf.constant([1.0]))
import smpack
print(smpack.build({str(manifest)!r}, {str(tmp_path / "out")!r}, measure=False, verify=None).path)
"""
    try:
        built = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the build hung")
    assert built.returncode == 0, built.stderr[-2000:]
    assert built.stdout.strip().endswith("/1")


@pytest.mark.parametrize("train_first", [True, False])
def test_the_first_error_in_manifest_order_is_reported(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, train_first: bool
) -> None:
    # gpu fails in the child, train in the build itself; either may come first (the
    # manifest's variants are in the order of their names: yaml.safe_dump sorts them).
    order = ["cpu", "train", "gpu", "tpu"] if train_first else ["cpu", "gpu", "tpu", "train"]
    variants = {f"{'abcd'[i]}_{name}": VARIANTS[name] for i, name in enumerate(order)}
    shutil.copytree(manifest.parent / "two_layers", tmp_path / "two_layers")
    source = {"savedmodel": "two_layers", "loss": "mse"}
    ordered = write_manifest(tmp_path, source, variants=variants)

    def failing(name: str) -> GraphError:
        return GraphError(f"{name} cannot be built", file=ordered, field=f"variants.{name}")

    def failing_gpu(loaded: Any, imported: Any, name: str, variant: Variant) -> Any:
        if name.endswith("gpu"):
            raise failing(name)
        return ASSEMBLED_GRAPH(loaded, imported, name, variant)

    def failing_train(loaded: Any, source: Any, name: str, variant: Variant) -> Any:
        raise failing(name)

    monkeypatch.setattr(smpack.builder.assembled, "assembled_graph", failing_gpu)
    monkeypatch.setattr(smpack.builder.assembled_training, "assembled_train_graph", failing_train)
    with pytest.raises(GraphError) as raised:
        smpack.build(ordered, tmp_path / "out", measure=False)
    first = "b_train" if train_first else "b_gpu"
    assert str(raised.value) == f"{ordered}: variants.{first}: {first} cannot be built"
    assert not (tmp_path / "out" / "imported" / "1").exists()


def test_the_child_stops_at_a_user_error_and_reports_it_as_raised(manifest: Path) -> None:
    chosen = loaded_variants(manifest)

    def build(name: str, variant: Variant) -> None:
        if name == "gpu":
            msg = "no kernel"
            raise GraphError(msg, file=manifest, field="variants.gpu")

    ahead = BuiltAhead(build, [(n, chosen[n]) for n in ("cpu", "gpu", "tpu")])
    outcomes = ahead.outcomes()
    assert list(outcomes) == ["cpu", "gpu"]
    assert outcomes["cpu"] is None
    error = outcomes["gpu"]
    assert isinstance(error, SmpackError)
    assert (error.file, error.field) == (manifest, "variants.gpu")
    assert str(error) == f"{manifest}: variants.gpu: no kernel"


def test_a_bug_in_the_child_is_raised_with_its_traceback(manifest: Path) -> None:
    chosen = loaded_variants(manifest)

    def build(name: str, variant: Variant) -> None:
        msg = "a bug"
        raise KeyError(msg)

    ahead = BuiltAhead(build, [("gpu", chosen["gpu"])])
    with pytest.raises(RuntimeError, match=r"(?s)KeyError: 'a bug'.*Traceback.*in build"):
        ahead.outcomes()


def sleeping_child(manifest: Path, started: Path) -> tuple[BuiltAhead, int]:
    """A child building gpu for a minute, and its process id once it has started."""

    def build(name: str, variant: Variant) -> None:
        started.write_text(str(os.getpid()))
        time.sleep(60)

    ahead = BuiltAhead(build, [("gpu", loaded_variants(manifest)["gpu"])])
    wait_for(started)
    return ahead, int(started.read_text())


def test_a_cancelled_child_is_gone(manifest: Path, tmp_path: Path) -> None:
    ahead, child = sleeping_child(manifest, tmp_path / "started")
    ahead.cancel()
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(child, 0)


def test_each_distinct_serving_graph_goes_ahead_and_the_build_keeps_its_share(
    manifest: Path,
) -> None:
    chosen = loaded_variants(manifest)
    rest = [(name, chosen[name]) for name in ("train", "gpu", "tpu", "gpu_copy")]
    assert [name for name, _ in variants_ahead(rest, [])] == ["gpu", "tpu"]
    # Without a train graph, the build assembles the last serving graph itself.
    serving = [pair for pair in rest if pair[0] != "train"]
    assert [name for name, _ in variants_ahead(serving, [])] == ["gpu"]


def test_a_killed_child_leaves_its_variants_to_the_build(
    manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the kernel's OOM killer would: the build goes on and builds them in turn.
    here, log = os.getpid(), tmp_path / "log"

    def killed_aside(loaded: Any, imported: Any, name: str, variant: Variant) -> Any:
        if os.getpid() != here:
            os.kill(os.getpid(), signal.SIGKILL)
        with log.open("a") as out:
            out.write(f"{name}\n")
        return ASSEMBLED_GRAPH(loaded, imported, name, variant)

    monkeypatch.setattr(smpack.builder.assembled, "assembled_graph", killed_aside)
    built = smpack.build(manifest, tmp_path / "out", measure=False).path
    assert log.read_text().split() == ["cpu", "train", "gpu", "tpu"]
    in_turn = built_in_turn(monkeypatch, manifest, tmp_path / "in_turn")
    assert file_digests(built) == file_digests(in_turn)


def test_the_child_ends_with_a_build_killed_outright(manifest: Path, tmp_path: Path) -> None:
    started = tmp_path / "started"
    script = f"""
import os, signal, time
from smpack.builder.ahead import BuiltAhead
from smpack.manifest import load_manifest
gpu = load_manifest({str(manifest)!r}).spec.variants["gpu"]
def build(name, variant):
    open({str(started)!r}, "w").write(str(os.getpid()))
    time.sleep(60)
BuiltAhead(build, [("gpu", gpu)])
while not os.path.exists({str(started)!r}):
    time.sleep(0.01)
time.sleep(0.2)
os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", script], timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL
    child = int(started.read_text())
    deadline = time.monotonic() + 10
    while True:  # gone, or a zombie about to be reaped by init
        try:
            state = Path(f"/proc/{child}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        assert time.monotonic() < deadline, "the child outlived its build"
        time.sleep(0.05)


def test_ctrl_c_ends_the_child_and_interrupts_the_build(manifest: Path, tmp_path: Path) -> None:
    ahead, child = sleeping_child(manifest, tmp_path / "started")
    os.kill(child, signal.SIGINT)  # what Ctrl-C sends the whole group
    with pytest.raises(KeyboardInterrupt):
        ahead.outcomes()
