"""How much memory this machine can still give the current process, read from /proc and the
memory cgroup's files (no TensorFlow).

A container's limit hides from /proc/meminfo, which shows the host's memory, so the limit of
the process's own memory cgroup, and of each cgroup above it, counts too. Files that are
absent or odd make the answer 0: whoever asks then takes the safe side.
"""

from __future__ import annotations

from pathlib import Path

# cgroup v2 writes "no limit" as "max", v1 as the largest page-aligned signed 64-bit number;
# anything this large is no limit whatever the page size.
_V1_NO_LIMIT = 1 << 60


def available_memory(proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")) -> int:
    """The bytes this process may still allocate: the least of MemAvailable and, for each
    memory cgroup from the process's own up to the root that has a limit, that limit minus
    the cgroup's usage. 0 when a file this needs is absent or not what the kernel writes.
    `proc` and `cgroups` are where /proc and the cgroup file systems are mounted."""
    try:
        available = _mem_available(proc / "meminfo")
        for limit_file, usage_file in _cgroup_limits(proc / "self" / "cgroup", cgroups):
            if not limit_file.exists():  # no memory controller at this level (v2's root)
                continue
            limit = limit_file.read_text().strip()
            if limit == "max" or int(limit) >= _V1_NO_LIMIT:
                continue
            headroom = int(limit) - int(usage_file.read_text())
            available = min(available, max(headroom, 0))
    except (OSError, ValueError):
        return 0
    return available


def within_memory(most: int) -> int:
    """`most`, or a quarter of `available_memory()` if that is less: how much of a file
    read whole (and what is made of it) a reader may hold. `most` when the memory is
    unknown (no /proc: not exhausted, just not said)."""
    available = available_memory()
    return min(most, available // 4) if available else most


def _mem_available(meminfo: Path) -> int:
    for line in meminfo.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "MemAvailable":
            number, unit = value.split()
            if unit != "kB":
                msg = f"{meminfo}: MemAvailable in {unit!r}"
                raise ValueError(msg)
            return int(number) * 1024
    msg = f"{meminfo}: no MemAvailable"
    raise ValueError(msg)


def _cgroup_limits(self_cgroup: Path, cgroups: Path) -> list[tuple[Path, Path]]:
    """(limit file, usage file) of the process's memory cgroup and
    each one above it, own first. v1's memory hierarchy if it has one (a hybrid host's v2
    hierarchy has no memory controller), else v2's."""
    v1_path = v2_path = None
    for line in self_cgroup.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            v1_path = path
        elif controllers == "":
            v2_path = path
    if v1_path is not None:
        root, path, limit, usage = (
            cgroups / "memory",
            v1_path,
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        )
    elif v2_path is not None:
        root, path, limit, usage = cgroups, v2_path, "memory.max", "memory.current"
    else:
        return []
    # In a container without a cgroup namespace the path is the host's and absent here; the
    # mount's root is then the container's own cgroup, which this walk reaches too.
    parts = [p for p in path.split("/") if p]
    directories = [root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [(d / limit, d / usage) for d in directories]
