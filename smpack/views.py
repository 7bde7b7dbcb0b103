"""Rich rendering of package records (no TensorFlow, no I/O beyond the console)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from smpack.package_info import PackageInfo


def build_summary(info: PackageInfo) -> Group:
    """One row per MetaGraph, then the shared variables and the assets."""
    table = Table(title=f"{info.path}", title_justify="left", show_lines=False)
    for column in ("tag set", "signatures", "device", "precision", "compiler", "ops"):
        table.add_column(column, justify="right" if column == "ops" else "left")
    for graph in info.graphs:
        compiler = ", ".join(name for name, on in (("XLA", graph.xla), ("TPU", graph.tpu)) if on)
        accelerators = [d for d in graph.devices if "CPU" not in d]
        table.add_row(
            graph.tag_set,
            ", ".join(s.key for s in graph.signatures)
            + (" +train op" if graph.has_train_op else ""),
            ", ".join(accelerators) or "any",
            graph.precision,
            compiler or "-",
            str(graph.op_count),
        )
    variables = Text(
        f"shared variables: {len(info.variables)} in one checkpoint, "
        f"{_bytes(info.variables_bytes)} on disk"
    )
    assets = Text(
        f"assets: {', '.join(info.assets) or 'none'}; "
        f"assets.extra: {', '.join(info.assets_extra) or 'none'}"
    )
    return Group(table, variables, assets)


def print_build_summary(info: PackageInfo, console: Console) -> None:
    console.print(build_summary(info))


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    msg = "unreachable"
    raise AssertionError(msg)
