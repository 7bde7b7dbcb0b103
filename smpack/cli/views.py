"""Rich rendering of package records (no TensorFlow, no I/O beyond the console)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from smpack.package.info import GraphInfo, PackageInfo, TensorInfo
from smpack.package.layout import SERVING_FOLDER
from smpack.package.load_commands import load_commands, serving_base_at

if TYPE_CHECKING:  # verification imports TensorFlow; its records are only annotations here
    from smpack.builder.batch import BuildOutcome
    from smpack.checks.verify import Check, VerifyReport
    from smpack.package.diff import Change


def build_summary(info: PackageInfo) -> Group:
    """One row per MetaGraph, then the shared variables and the assets."""
    table = Table(title=info.location, title_justify="left", show_lines=False)
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
        f"assets.extra: {_extra_files(info)}"
    )
    return Group(table, variables, assets)


def inspect_view(info: PackageInfo) -> tuple[Group, Group]:
    """Tag sets -> signatures -> tensors, variables, files and fingerprint; load commands."""
    graphs = _count(len(info.graphs), "graph")
    tree = Tree(Text(f"{info.location} ({info.saved_model_file}, {graphs})"))
    for graph in info.graphs:
        branch = tree.add(Text(f"{graph.tag_set}  ", style="bold") + Text(_graph_facts(graph)))
        if graph.custom_ops:
            branch.add(Text(f"custom ops (not in TensorFlow): {', '.join(graph.custom_ops)}"))
        if graph.train_function:
            branch.add(Text(f"trains  {graph.train_function}"))
        for signature in graph.signatures:
            node = branch.add(Text(f"{signature.key}  {signature.method}"))
            for tensor in signature.inputs:
                node.add(Text(f"in   {_tensor_text(tensor)}"))
            for tensor in signature.outputs:
                node.add(Text(f"out  {_tensor_text(tensor)}"))
    variables = Table(title="shared variables", title_justify="left")
    for column in ("name", "shape", "dtype", "bytes"):
        variables.add_column(column, justify="right" if column == "bytes" else "left")
    for variable in info.variables:
        shape = "[" + ", ".join(str(d) for d in variable.shape) + "]"
        variables.add_row(variable.name, shape, variable.dtype, f"{variable.size:,}")
    tensor_bytes = sum(v.size for v in info.variables)
    totals = Text(
        f"{_count(len(info.variables), 'variable')}, {_bytes(tensor_bytes)} of tensors, "
        f"{_bytes(info.variables_bytes)} on disk"
    )
    warmup = (
        f" ({info.warmup_requests} warmup requests)" if info.warmup_requests is not None else ""
    )
    libraries = (
        f"op libraries imported by the build: {', '.join(info.op_libraries)}\n"
        if info.op_libraries
        else ""
    )
    files = Text(
        libraries + f"assets: {', '.join(info.assets) or 'none'}\n"
        f"assets.extra: {_extra_files(info)}{warmup}\n"
        f"fingerprint: {_fingerprint_text(info)}\n"
        f"variant fingerprints: {_variant_fingerprints(info)}"
    )
    commands = [Text("load commands:")]
    for graph in info.graphs:
        load = load_commands(graph, info.location, serving_base_at(info.location))
        commands.append(Text(f"  {graph.tag_set}"))
        for command in (
            load.tf_serving or "(TF Serving: not servable, train op or no version folder)",
            load.saved_model_cli,
            load.python,
        ):
            commands.append(Text(f"    {command}"))
    return Group(tree, variables, totals, files), Group(*commands)


def print_inspect(info: PackageInfo, console: Console) -> None:
    """Print `inspect_view`; load commands are printed unwrapped, to survive copy and paste."""
    facts, commands = inspect_view(info)
    console.print(facts)
    console.print(commands, soft_wrap=True)


def verify_view(report: VerifyReport) -> Group:
    """One row per check, grouped by tag set, then the verdict."""
    table = Table(title=report.location, title_justify="left")
    for column in ("tag set", "check", "result"):
        table.add_column(column, overflow="fold")
    failed: list[str] = []
    for label, check in report.rows():
        table.add_row(label, check.name, _verdict(check))
        if not check.passed and label not in failed:
            failed.append(label)
    verdict = (
        Text(f"pass: all checks of {_count(len(report.graphs), 'graph')}{_warnings(report)}")
        if report.passed
        else Text(f"FAILED: {'; '.join(failed)}")
    )
    return Group(table, verdict)


def verify_costs_view(report: VerifyReport) -> Group:
    """What checking each graph cost its process (seconds of wall time importing, restoring
    and running it, CPU seconds, peak memory), then the CPU of all of them."""
    table = Table(title="what checking each graph cost", title_justify="left")
    table.add_column("tag set")
    for column in ("import", "restore", "runs", "CPU", "peak RSS"):
        table.add_column(column, justify="right")
    for graph in report.graphs:
        cost = graph.cost
        if cost is None:
            table.add_row(graph.tag_set, "-", "-", "-", "-", "its process died")
            continue
        seconds = (cost.importing, cost.restoring, cost.running, cost.cpu)
        table.add_row(graph.tag_set, *(f"{s:.2f} s" for s in seconds), _bytes(cost.peak_rss))
    cpu = sum(g.cost.cpu for g in report.graphs if g.cost is not None)
    note = Text(
        f"{cpu:.1f} s of CPU in the graphs' processes; peak RSS counts the TensorFlow "
        "runtime each shares with the process it was forked from"
    )
    return Group(table, note)


def verify_verdict(report: VerifyReport) -> Text:
    """The verdict alone: what a build prints when every check passed."""
    if report.passed:
        graphs = _count(len(report.graphs), "graph")
        return Text(f"verified: all checks of {graphs} pass{_warnings(report)}")
    return Text("FAILED")


def _warnings(report: VerifyReport) -> str:
    """", with N warnings (...)" naming the checks that passed but prove nothing."""
    warned = [f"{label}: {check.name}" for label, check in report.rows() if check.warning]
    if not warned:
        return ""
    return f", with {_count(len(warned), 'warning')} ({'; '.join(warned)}; see smpack verify)"


def diff_view(changes: list[Change]) -> Group:
    """One row per change, or a line saying there is none."""
    if not changes:
        return Group(Text("no differences"))
    table = Table()
    for column in ("change", "what", "name", "detail"):
        table.add_column(column, overflow="fold")
    for change in changes:
        table.add_row(change.kind, change.subject, change.name, change.detail)
    return Group(table, Text(_count(len(changes), "difference")))


def _extra_files(info: PackageInfo) -> str:
    """assets.extra's files, the serving configs counted as one folder (inspect lists them
    all with --json)."""
    folder = f"{SERVING_FOLDER}/"
    serving = [name for name in info.assets_extra if name.startswith(folder)]
    shown = [name for name in info.assets_extra if not name.startswith(folder)]
    if serving:
        shown = sorted([*shown, f"{folder} ({_count(len(serving), 'file')})"])
    return ", ".join(shown) or "none"


def _variant_fingerprints(info: PackageInfo) -> str:
    """Each graph's fingerprint, shortened: 12 hex digits tell packages apart by eye."""
    shown = [
        f"{graph.tag_set} {graph.fingerprint.digest[:12]}"
        for graph in info.graphs
        if graph.fingerprint is not None
    ]
    return ", ".join(shown) or "none"


def _graph_facts(graph: GraphInfo) -> str:
    accelerators = [d for d in graph.devices if "CPU" not in d]
    facts = [
        "device " + (", ".join(accelerators or graph.devices) or "any"),
        "computes " + (", ".join(graph.compute_dtypes) or "-"),
        f"{graph.op_count} ops",
    ]
    facts += [name for name, on in (("XLA", graph.xla), ("TPU", graph.tpu)) if on]
    facts += ["train op"] if graph.has_train_op else []
    return " · ".join(facts)


def _tensor_text(tensor: TensorInfo) -> str:
    return f"{tensor.key}: {tensor.name} {tensor.dtype} {tensor.shape_text}"


def _fingerprint_text(info: PackageInfo) -> str:
    if info.fingerprint is None:
        return "none (no fingerprint.pb)"
    return (
        f"saved_model_checksum {info.fingerprint.saved_model_checksum}, "
        f"checkpoint_hash {info.fingerprint.checkpoint_hash}"
    )


def _verdict(check: Check) -> Text:
    if check.warning:
        text = Text("warn", style="yellow")
    elif check.passed:
        text = Text("pass", style="green")
    else:
        text = Text("FAIL", style="bold red")
    return text + Text(f": {check.detail}") if check.detail else text


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    msg = "unreachable"
    raise AssertionError(msg)


def batch_view(outcomes: list[BuildOutcome]) -> Table:
    """One row per manifest of a multi-manifest build: where it went and how it ended."""
    table = Table(title="builds", title_justify="left")
    for column in ("manifest", "package", "tag sets", "result"):
        table.add_column(column, overflow="fold")  # a cut-off path is no use
    for outcome in outcomes:
        if outcome.error is not None:
            result = Text("FAILED: not built", style="red")
        elif outcome.failed_checks:
            result = Text(f"FAILED: {len(outcome.failed_checks)} checks", style="red")
        else:
            result = Text("verified" if outcome.verified else "built", style="green")
        table.add_row(
            str(outcome.manifest),
            str(outcome.package or "-"),
            ", ".join(outcome.tag_sets) or "-",
            result,
        )
    return table


def inspection_document(info: PackageInfo) -> dict[str, Any]:
    """The facts `smpack inspect` shows, as plain JSON-ready data."""
    graphs = []
    for graph in info.graphs:
        record = dataclasses.asdict(graph)
        record["tag_set"] = graph.tag_set
        commands = load_commands(graph, info.location, serving_base_at(info.location))
        record["load"] = dataclasses.asdict(commands)
        graphs.append(record)
    return {
        "path": info.location,
        "saved_model_file": info.saved_model_file,
        "graphs": graphs,
        "variables": [dataclasses.asdict(v) for v in info.variables],
        "variables_total": {
            "count": len(info.variables),
            "tensor_bytes": sum(v.size for v in info.variables),
            "disk_bytes": info.variables_bytes,
        },
        "op_libraries": list(info.op_libraries),
        "assets": list(info.assets),
        "assets_extra": list(info.assets_extra),
        "warmup_requests": info.warmup_requests,
        "fingerprint": dataclasses.asdict(info.fingerprint) if info.fingerprint else None,
    }
