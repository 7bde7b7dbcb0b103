"""What changed between two packages, as plain records (no TensorFlow).

Structure (tag sets, signatures, variables, each graph's precision, placement, compiler marks
and op count) and content: every file's sha256, so two packages that differ only in their
weights' bytes are told apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from smpack.package.digests import file_sha256, tree_files
from smpack.package.info import GraphInfo, PackageInfo, SignatureInfo, TensorInfo, package_at
from smpack.package.layout import ASSETS_EXTRA, PACKAGE_DESCRIPTIONS, SERVING_FOLDER

Kind = Literal["added", "removed", "changed"]
T = TypeVar("T")


@dataclass(frozen=True)
class Change:
    kind: Kind
    subject: str  # "tag set", "graph", "signature", "variable", "size", "file"
    name: str
    detail: str = ""


def diff_locations(old: str | Path, new: str | Path) -> list[Change]:
    """`diff_packages` of the packages at two folders or URLs, their files' contents included."""
    with package_at(old) as old_info, package_at(new) as new_info:
        return diff_packages(
            old_info, new_info, _content_digests(old_info.path), _content_digests(new_info.path)
        )


def diff_packages(
    old: PackageInfo,
    new: PackageInfo,
    old_files: Mapping[str, str] | None = None,
    new_files: Mapping[str, str] | None = None,
) -> list[Change]:
    """Tag sets, graphs, signatures (per tag set), variables, checkpoint size and, given
    each package's file digests (relative path -> sha256), files that differ."""
    changes: list[Change] = []
    old_graphs, new_graphs = _by_tag_set(old, new)
    changes += _keyed("tag set", old_graphs, new_graphs, lambda a, b: "")
    changes += [
        c
        for c in _keyed("graph", old_graphs, new_graphs, _graph_change)
        if c.kind == "changed"  # an added or removed graph is its tag set, listed above
    ]
    for tag_set in [t for t in old_graphs if t in new_graphs]:
        old_signatures = {s.key: s for s in old_graphs[tag_set].signatures}
        new_signatures = {s.key: s for s in new_graphs[tag_set].signatures}
        changes += [
            Change(c.kind, "signature", f"{tag_set}: {c.name}", c.detail)
            for c in _keyed("signature", old_signatures, new_signatures, _signature_change)
        ]
    old_variables = {v.name: v for v in old.variables}
    new_variables = {v.name: v for v in new.variables}
    changes += _keyed(
        "variable",
        old_variables,
        new_variables,
        lambda a, b: (
            f"{a.dtype}{list(a.shape)} -> {b.dtype}{list(b.shape)}"
            if (a.dtype, a.shape) != (b.dtype, b.shape)
            else ""
        ),
    )
    if old.variables_bytes != new.variables_bytes:
        changes.append(
            Change(
                "changed",
                "size",
                "variables/",
                f"{old.variables_bytes:,} -> {new.variables_bytes:,} bytes",
            )
        )
    if old_files is not None and new_files is not None:
        changes += _keyed(
            "file",
            old_files,
            new_files,
            lambda a, b: f"content differs (sha256 {a[:12]}… -> {b[:12]}…)" if a != b else "",
        )
    return changes


def _content_digests(export_dir: Path) -> dict[str, str]:
    # smpack.json, the cards and the serving configs describe the other files: when those
    # differ, so do they. smpack_measured.json holds timings, which differ build to build:
    # two builds that differ only there are the same model.
    descriptions = {f"{ASSETS_EXTRA}/{name}" for name in PACKAGE_DESCRIPTIONS}
    serving = f"{ASSETS_EXTRA}/{SERVING_FOLDER}/"
    return {
        relative: file_sha256(path)
        for relative, path in tree_files(export_dir)
        if relative not in descriptions and not relative.startswith(serving)
    }


def _graph_change(old: GraphInfo, new: GraphInfo) -> str:
    facts = {
        "precision": (old.precision, new.precision),
        "devices": (", ".join(old.devices) or "none", ", ".join(new.devices) or "none"),
        "XLA": (old.xla, new.xla),
        "TPU": (old.tpu, new.tpu),
        "train op": (old.has_train_op, new.has_train_op),
        "ops": (old.op_count, new.op_count),
    }
    details = [f"{name} {a} -> {b}" for name, (a, b) in facts.items() if a != b]
    if old.fingerprint is not None and new.fingerprint is not None:
        # The fingerprint also sees what the facts above summarise away: any other change
        # to the graph, its signatures, or the bytes of a variable it reads.
        parts = old.fingerprint.changed_parts(new.fingerprint)
        if parts:
            details.append(f"fingerprint: {', '.join(parts)} changed")
    return "; ".join(details)


def _by_tag_set(
    old: PackageInfo, new: PackageInfo
) -> tuple[dict[str, GraphInfo], dict[str, GraphInfo]]:
    # Tag sets are sets (`gpu,serve` is `serve,gpu`); each is named as the old package spells it.
    names = {frozenset(g.tags): g.tag_set for g in (*new.graphs, *old.graphs)}
    return (
        {names[frozenset(g.tags)]: g for g in old.graphs},
        {names[frozenset(g.tags)]: g for g in new.graphs},
    )


def _keyed(
    subject: str, old: Mapping[str, T], new: Mapping[str, T], compare: Callable[[T, T], str]
) -> Iterator[Change]:
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            yield Change("removed", subject, name)
        elif name not in old:
            yield Change("added", subject, name)
        elif detail := compare(old[name], new[name]):
            yield Change("changed", subject, name, detail)


def _signature_change(old: SignatureInfo, new: SignatureInfo) -> str:
    details = []
    if old.method != new.method:
        details.append(f"method {old.method} -> {new.method}")
    for side, a, b in (("input", old.inputs, new.inputs), ("output", old.outputs, new.outputs)):
        olds = {t.key: t for t in a}
        news = {t.key: t for t in b}
        for key in sorted(olds.keys() | news.keys()):
            if key not in news:
                details.append(f"{side} {key} removed")
            elif key not in olds:
                details.append(f"{side} {key} added")
            elif _tensor(olds[key]) != _tensor(news[key]):
                details.append(f"{side} {key}: {_tensor(olds[key])} -> {_tensor(news[key])}")
    return "; ".join(details)


def _tensor(tensor: TensorInfo) -> str:
    shape = "[unknown rank]" if tensor.shape is None else tensor.shape_text
    return f"{tensor.name} {tensor.dtype}{shape}"
