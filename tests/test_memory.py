"""What the machine can still give, read from crafted /proc and cgroup files (verify runs a
second graph process only within it): the least of MemAvailable and each memory cgroup's
limit minus its usage; anything absent or odd gives 0, so graphs run one at a time."""

from __future__ import annotations

from pathlib import Path

import pytest

from smpack.io.memory import available_memory

GIB = 1 << 30
V1_NO_LIMIT = "9223372036854771712"
GIB_IN_KB = 1024 * 1024  # MemAvailable is in kB


def machine(root: Path, mem_available_kb: int | None, self_cgroup: str | None) -> tuple[Path, Path]:
    """A /proc with the given MemAvailable (no line if None) and /proc/self/cgroup (no file if
    None), and an empty cgroup mount; returns (proc, cgroups)."""
    proc, cgroups = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True)
    cgroups.mkdir()
    lines = ["MemTotal:       24000000 kB", "MemFree:         1000000 kB"]
    if mem_available_kb is not None:
        lines.append(f"MemAvailable:   {mem_available_kb} kB")
    (proc / "meminfo").write_text("\n".join(lines) + "\n")
    if self_cgroup is not None:
        (proc / "self" / "cgroup").write_text(self_cgroup)
    return proc, cgroups


def v2(directory: Path, limit: str | int, usage: int | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "memory.max").write_text(f"{limit}\n")
    if usage is not None:
        (directory / "memory.current").write_text(f"{usage}\n")


def v1(directory: Path, limit: str | int, usage: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (directory / "memory.usage_in_bytes").write_text(f"{usage}\n")


def test_v2_limit_minus_usage_below_mem_available(tmp_path: Path) -> None:
    proc, cgroups = machine(tmp_path, 8 * GIB_IN_KB, "0::/app.slice/smpack.scope\n")
    v2(cgroups / "app.slice" / "smpack.scope", 3 * GIB, usage=GIB)
    assert available_memory(proc, cgroups) == 2 * GIB


def test_v2_a_parent_cgroup_limit_counts(tmp_path: Path) -> None:
    proc, cgroups = machine(tmp_path, 8 * GIB_IN_KB, "0::/app.slice/smpack.scope\n")
    v2(cgroups / "app.slice" / "smpack.scope", "max", usage=GIB)
    v2(cgroups / "app.slice", GIB + GIB // 2, usage=GIB)
    assert available_memory(proc, cgroups) == GIB // 2


def test_v2_max_is_no_limit(tmp_path: Path) -> None:
    proc, cgroups = machine(tmp_path, 8 * GIB_IN_KB, "0::/user.slice\n")
    v2(cgroups / "user.slice", "max", usage=20 * GIB)
    assert available_memory(proc, cgroups) == 8 * GIB


def test_v1_limit_on_a_hybrid_host(tmp_path: Path) -> None:
    self_cgroup = "5:devices:/\n4:memory:/docker/abc\n1:cpu,cpuacct:/\n0::/\n"
    proc, cgroups = machine(tmp_path, 8 * GIB_IN_KB, self_cgroup)
    v1(cgroups / "memory" / "docker" / "abc", 4 * GIB, usage=3 * GIB)
    v1(cgroups / "memory", V1_NO_LIMIT, usage=9 * GIB)
    assert available_memory(proc, cgroups) == GIB


def test_v1_container_sees_its_own_cgroup_at_the_mount_root(tmp_path: Path) -> None:
    proc, cgroups = machine(tmp_path, 8 * GIB_IN_KB, "4:memory:/docker/abc\n")
    v1(cgroups / "memory", 2 * GIB, usage=GIB // 4)
    assert available_memory(proc, cgroups) == 2 * GIB - GIB // 4


def test_v1_huge_limit_is_no_limit(tmp_path: Path) -> None:
    proc, cgroups = machine(tmp_path, 6 * GIB_IN_KB, "4:memory:/\n")
    v1(cgroups / "memory", V1_NO_LIMIT, usage=9 * GIB)
    assert available_memory(proc, cgroups) == 6 * GIB


def test_no_memory_cgroup_leaves_mem_available(tmp_path: Path) -> None:
    proc, cgroups = machine(tmp_path, 5 * GIB_IN_KB, "0::/\n")
    assert available_memory(proc, cgroups) == 5 * GIB


def test_usage_above_the_limit_leaves_nothing(tmp_path: Path) -> None:
    proc, cgroups = machine(tmp_path, 5 * GIB_IN_KB, "0::/a\n")
    v2(cgroups / "a", GIB, usage=2 * GIB)
    assert available_memory(proc, cgroups) == 0


@pytest.mark.parametrize(
    "case",
    ["no meminfo", "no MemAvailable", "no /proc/self/cgroup", "odd limit", "no usage file"],
)
def test_absent_or_odd_files_give_nothing(tmp_path: Path, case: str) -> None:
    proc, cgroups = machine(
        tmp_path,
        None if case == "no MemAvailable" else 5 * GIB_IN_KB,
        None if case == "no /proc/self/cgroup" else "0::/a\n",
    )
    if case == "no meminfo":
        (proc / "meminfo").unlink()
    usage = None if case == "no usage file" else 0
    v2(cgroups / "a", "lots" if case == "odd limit" else GIB, usage=usage)
    assert available_memory(proc, cgroups) == 0
