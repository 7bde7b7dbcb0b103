"""A build that is killed, interrupted or runs out of space never damages the output folder.

Real `smpack build` subprocesses are stopped at known moments: the model in
`tests/faults/faulty_model.py` blocks in a chosen variant, a card template loops forever
once everything else is written, and a large variable makes checkpoint writing long
enough to catch by watching the staging folder.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import finish, project, start_build, tree_state, wait_until

import smpack
from smpack.io.staging import _RENAME_EXCHANGE, _rename

# Real builds in subprocesses, stopped at chosen moments: slow by nature.
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder holding a complete earlier build of the package the faults hit."""
    root = tmp_path_factory.mktemp("previous")
    smpack.build(project(root / "src", "{width: 3}"), root / "out")
    return root / "out"


@pytest.fixture
def out(previous: Path, tmp_path: Path) -> Path:
    target = tmp_path / "out"
    shutil.copytree(previous, target)
    return target


def staging_dirs(out: Path) -> list[Path]:
    return sorted((out / "faulty").glob(".1.smpack-tmp-*"))


def staged(out: Path, relative: str) -> bool:
    return any((folder / relative).exists() for folder in staging_dirs(out))


# Each moment: the params and card block that make the build reach it, when to kill,
# and what the killed build's staging folder must (not) contain, proving where it died.
MOMENTS = {
    "between graphs": (
        "{block_in: cpu, marker: MARKER}",
        "",
        lambda out, marker: marker.exists(),
        [],
        [],
    ),
    "during variable writing": (
        "{width: 12000000}",  # 48 MB of float32: writing takes a good 100 ms
        "",
        lambda out, marker: staged(out, "variables"),
        ["variables"],
        ["saved_model.pb"],
    ),
    "before rename": (
        "{}",
        "card: {template: endless.md.j2}\n",
        lambda out, marker: staged(out, "saved_model.pb") and staged(out, "assets.extra"),
        ["saved_model.pb", "variables/variables.index"],
        ["assets.extra/model_card.md"],
    ),
}


@pytest.mark.parametrize("moment", MOMENTS)
def test_sigkill_leaves_the_previous_package_and_the_next_build_cleans_up(
    moment: str, out: Path, tmp_path: Path
) -> None:
    params, card, reached, present, absent = MOMENTS[moment]
    marker = tmp_path / "marker"
    manifest = project(tmp_path / "src", params.replace("MARKER", str(marker)), card)
    before = tree_state(out)

    # Killed before verify; what is checked is the output folder, not the processes (the
    # Ctrl-C, SIGTERM and SIGHUP tests keep verify's graph server in the tree they stop).
    build = start_build(manifest, out, verify=False)
    wait_until(lambda: reached(out, marker), build)
    if moment == "before rename":
        time.sleep(0.5)  # from copying assets into the endless card template
    build.send_signal(signal.SIGKILL)
    build.communicate()

    leftovers = staging_dirs(out)
    for relative in present:
        assert any((folder / relative).exists() for folder in leftovers), relative
    for relative in absent:
        assert not any((folder / relative).exists() for folder in leftovers), relative
    assert {k: v for k, v in tree_state(out).items() if ".smpack-tmp-" not in k} == before

    smpack.build(project(tmp_path / "fixed"), out, force=True)
    assert sorted(p.name for p in (out / "faulty").iterdir()) == ["1"]


@pytest.mark.parametrize("moment", ["between graphs", "before rename"])
def test_ctrl_c_says_the_package_was_not_written(moment: str, out: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    if moment == "between graphs":
        manifest = project(tmp_path / "src", f"{{block_in: cpu, marker: {marker}}}")
    else:
        manifest = project(tmp_path / "src", extra="card: {template: endless.md.j2}\n")
    before = tree_state(out)

    build = start_build(manifest, out)
    if moment == "between graphs":
        wait_until(marker.exists, build)
    else:
        wait_until(lambda: staged(out, "assets.extra"), build)
        time.sleep(0.5)
    build.send_signal(signal.SIGINT)
    stdout, stderr = finish(build, timeout=60)

    assert build.returncode == 130
    assert stderr.splitlines() == ["interrupted: the package was not written"]
    assert tree_state(out) == before


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # Ignored, SIGXFSZ no longer kills the process: the write fails with EFBIG instead,
        # as it would on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("variables", "cannot write the SavedModel: File too large"),
        ("an asset", "cannot write {package}: File too large"),
    ],
)
def test_file_size_limit_is_one_clear_line(what: str, message: str, out: Path, tmp_path) -> None:
    src = tmp_path / "src"
    if what == "variables":
        manifest = project(src, "{width: 1000000}")  # 4 MB of variables
    else:
        manifest = project(src, extra="assets: [big.bin]\n")
        (src / "big.bin").write_bytes(bytes(300_000))
    before = tree_state(out)

    # The write fails before verify would start: no graph server (--no-verify).
    build = start_build(manifest, out, limits=_file_size_limit(200_000), verify=False)
    stdout, stderr = finish(build, timeout=120)

    package = out / "faulty" / "1"
    expected = message.format(package=package) + "; the package was not written"
    assert build.returncode == 2
    assert stderr.splitlines() == [f"error: {expected}"]
    assert tree_state(out) == before


def _digests(folder: Path | int) -> tuple[str, ...]:
    """Hashes of a package's graph and checkpoint files, read through one open directory."""
    names = (
        "saved_model.pb",
        "variables/variables.index",
        "variables/variables.data-00000-of-00001",
    )
    digests = []
    for name in names:
        if isinstance(folder, Path):
            data = (folder / name).read_bytes()
        else:
            descriptor = os.open(name, os.O_RDONLY, dir_fd=folder)
            with os.fdopen(descriptor, "rb") as stream:
                data = stream.read()
        digests.append(hashlib.sha256(data).hexdigest())
    return tuple(digests)


def test_force_swaps_packages_so_readers_never_see_a_mix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    if not _rename(first, second, _RENAME_EXCHANGE):
        pytest.skip("this kernel has no renameat2(RENAME_EXCHANGE)")
    manifests = [project(tmp_path / "one", "{width: 1}"), project(tmp_path / "two", "{width: 2}")]
    references = []
    # Unmeasured: timings differ build to build, and the reader compares whole packages.
    for i, manifest in enumerate(manifests):
        references.append(
            _digests(smpack.build(manifest, tmp_path / f"ref{i}", measure=False).path)
        )
    assert references[0] != references[1]
    out = tmp_path / "out"
    package = smpack.build(manifests[0], out, measure=False).path

    seen: list[tuple[str, ...]] = []
    missing = 0
    done = threading.Event()

    def read_continuously() -> None:
        nonlocal missing
        while not done.is_set():
            if not (package / "saved_model.pb").exists():
                missing += 1
            descriptor = os.open(package, os.O_RDONLY | os.O_DIRECTORY)
            try:
                seen.append(_digests(descriptor))
            except FileNotFoundError:
                pass  # this descriptor holds the replaced package, being deleted
            finally:
                os.close(descriptor)

    reader = threading.Thread(target=read_continuously)
    renames: list[tuple[str, str]] = []
    rename = os.rename

    def recorded_rename(source: str | Path, target: str | Path) -> None:
        renames.append((os.fspath(source), os.fspath(target)))
        rename(source, target)

    monkeypatch.setattr(os, "rename", recorded_rename)
    reader.start()
    try:
        for i in range(6):
            smpack.build(manifests[(i + 1) % 2], out, force=True, measure=False)
    finally:
        done.set()
        reader.join()

    assert missing == 0
    assert set(seen) == set(references)
    # The reader can miss a short gap, so also check how the swap was made: moving the old
    # package away and the new one in (two renames) would leave one; renameat2 does not.
    assert not [pair for pair in renames if str(package) in pair]


