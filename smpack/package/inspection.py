"""`inspect`: what a SavedModel holds, as records and as a stable JSON document (no TensorFlow).

The facts come from `read_package`; this module adds what depends on where the package is
(the commands that load each graph) and the choice of graphs to show.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smpack.errors import PackageError
from smpack.io.storage import is_url
from smpack.package.info import GraphInfo, PackageInfo, package_at

JSON_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class LoadCommands:
    """How to load one tag set; `tf_serving` is None where TF Serving cannot serve it."""

    tf_serving: str | None
    saved_model_cli: str
    python: str


def parse_tags(text: str) -> frozenset[str]:
    """`serve,gpu` -> {"serve", "gpu"}; raises `PackageError` for an empty tag."""
    tags = [tag.strip() for tag in text.split(",")]
    if not all(tags):
        msg = f"tag set {text!r} has an empty tag; write tags like serve,gpu"
        raise PackageError(msg, field="--tags")
    return frozenset(tags)


def inspect_package(location: str | Path, tags: frozenset[str] | None = None) -> PackageInfo:
    """Describe the SavedModel at `location` (a folder or URL), keeping only the graph tagged
    `tags` if given.

    Raises `PackageError` if no graph has exactly that tag set.
    """
    with package_at(location) as info:
        if tags is None:
            return info
        chosen = tuple(g for g in info.graphs if frozenset(g.tags) == tags)
        if not chosen:
            raise no_such_tag_set(info.location, tags, [g.tag_set for g in info.graphs])
        return dataclasses.replace(info, graphs=chosen)


def no_such_tag_set(
    package: str | Path, tags: frozenset[str], available: list[str]
) -> PackageError:
    """The error for a `--tags` that matches none of the package's tag sets."""
    listed = "; ".join(available) or "no graphs"
    msg = f"no MetaGraph has the tag set {','.join(sorted(tags))}; it has: {listed}"
    return PackageError(msg, file=package, field="--tags")


def load_commands(location: str, graph: GraphInfo) -> LoadCommands:
    """The commands that load `graph` from `location`, written as the path was given."""
    tf_serving = None
    base, _, version = location.rstrip("/").rpartition("/")
    # TF Serving wants <base>/<version>/ and never runs a train op.
    if version.isdigit() and base and not graph.has_train_op:
        base_text = shlex.quote(base)
        if not is_url(base) and not Path(base).is_absolute():  # TF Serving wants it absolute
            base_text = f"$PWD/{base_text}"
        name = base.rpartition("/")[2] if is_url(base) else Path(base).resolve().name
        tf_serving = (
            f"tensorflow_model_server --model_name={shlex.quote(name)} "
            f"--model_base_path={base_text} --saved_model_tags={shlex.quote(graph.tag_set)}"
        )
    quoted_tags = ", ".join(json.dumps(tag) for tag in graph.tags)
    return LoadCommands(
        tf_serving=tf_serving,
        saved_model_cli=(
            f"saved_model_cli show --dir {shlex.quote(location)} "
            f"--tag_set {shlex.quote(graph.tag_set)} --all"
        ),
        # A JSON string literal is a valid Python one.
        python=f"tf.saved_model.load({json.dumps(location)}, tags=[{quoted_tags}])",
    )


def inspection_document(info: PackageInfo) -> dict[str, Any]:
    """The facts `smpack inspect` shows, as plain JSON-ready data with a schema version."""
    graphs = []
    for graph in info.graphs:
        record = dataclasses.asdict(graph)
        record["tag_set"] = graph.tag_set
        record["load"] = dataclasses.asdict(load_commands(info.location, graph))
        graphs.append(record)
    return {
        "schema": JSON_SCHEMA_VERSION,
        "path": info.location,
        "saved_model_file": info.saved_model_file,
        "graphs": graphs,
        "variables": [dataclasses.asdict(v) for v in info.variables],
        "variables_total": {
            "count": len(info.variables),
            "tensor_bytes": sum(v.size for v in info.variables),
            "disk_bytes": info.variables_bytes,
        },
        "assets": list(info.assets),
        "assets_extra": list(info.assets_extra),
        "warmup_requests": info.warmup_requests,
        "fingerprint": dataclasses.asdict(info.fingerprint) if info.fingerprint else None,
    }
