"""The commands that load one graph of a package: TF Serving, saved_model_cli, Python, C.

`inspect` writes them for the package where it lies; the card writes them for where the
package is deployed (`/models/NAME`), since where it was built says nothing true about where
it is read. Both go through `load_commands`, so they cannot drift apart.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from smpack.io.storage import is_url
from smpack.package.info import GraphInfo


@dataclass(frozen=True)
class LoadCommands:
    """How to load one tag set; `tf_serving` is None where TF Serving cannot serve it."""

    tf_serving: str | None
    saved_model_cli: str
    python: str
    c_api: str


@dataclass(frozen=True)
class ServingBase:
    """TF Serving's view of a package: `--model_name` and `--model_base_path` (the folder
    holding the numbered version folders)."""

    name: str
    base_path: str


def load_commands(graph: GraphInfo, directory: str, serving: ServingBase | None) -> LoadCommands:
    """The commands that load `graph` from the package folder `directory`, as written.

    `serving` is None where TF Serving cannot find the package (no numbered version folder);
    a graph with a train op gets no TF Serving command either, since TF Serving never runs it.
    """
    tf_serving = None if serving is None else tf_serving_command(graph, serving)
    # JSON string literals are valid Python and C string literals.
    quoted_tags = ", ".join(json.dumps(tag) for tag in graph.tags)
    return LoadCommands(
        tf_serving=tf_serving,
        saved_model_cli=(
            f"saved_model_cli show --dir {shlex.quote(directory)} "
            f"--tag_set {shlex.quote(graph.tag_set)} --all"
        ),
        python=f"tf.saved_model.load({json.dumps(directory)}, tags=[{quoted_tags}])",
        c_api=(
            f"const char* tags[] = {{{quoted_tags}}};\n"
            "TF_Session* session = TF_LoadSessionFromSavedModel(\n"
            f"    session_options, NULL, {json.dumps(directory)}, tags, {len(graph.tags)}, "
            "graph, NULL, status);"
        ),
    )


def tf_serving_command(
    graph: GraphInfo,
    serving: ServingBase,
    *,
    model_config_file: str | None = None,
    batching_parameters_file: str | None = None,
) -> str | None:
    """The `tensorflow_model_server` command line serving `graph`; None for a graph with a
    train op, which TF Serving never runs.

    With `model_config_file` the model is named there (models.config) instead of by flags.
    The tag set is a server flag either way: without it TF Serving loads the `serve` graph.
    """
    if graph.has_train_op:
        return None
    words = ["tensorflow_model_server"]
    if model_config_file is not None:
        words.append(f"--model_config_file={_shell_path(model_config_file)}")
    else:
        words.append(f"--model_name={shlex.quote(serving.name)}")
        words.append(f"--model_base_path={_shell_path(serving.base_path)}")
    words.append(f"--saved_model_tags={shlex.quote(graph.tag_set)}")
    if batching_parameters_file is not None:
        words.append("--enable_batching=true")
        words.append(f"--batching_parameters_file={_shell_path(batching_parameters_file)}")
    return " ".join(words)


def serving_base_at(location: str) -> ServingBase | None:
    """TF Serving's name and base path for a package at `location` (`<base>/<version>`)."""
    base, _, version = location.rstrip("/").rpartition("/")
    if not (version.isdigit() and base):
        return None
    name = base.rpartition("/")[2] if is_url(base) else Path(base).resolve().name
    return ServingBase(name=name, base_path=base)


def _shell_path(path: str) -> str:
    quoted = shlex.quote(path)
    # TF Serving wants an absolute base path; a relative one is made absolute by the shell.
    if is_url(path) or Path(path).is_absolute():
        return quoted
    return f"$PWD/{quoted}"
