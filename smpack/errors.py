"""The one family of exceptions smpack raises for problems the user can fix.

The CLI catches `SmpackError` once and prints `str(error)`: a single line that says
where the problem is (file, line, field) and what to do about it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path


class SmpackError(Exception):
    """Base class of every user-facing error; carries where the problem is."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file: str | Path | None = None
        if file is not None:
            # A URL stays a string: Path would fold its "//".
            self.file = file if isinstance(file, str) and "://" in file else Path(file)
        self.field = field
        self.line = line

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = str(self.file) + (f":{self.line}" if self.line else "") + ": "
        if self.field:
            where += f"{self.field}: "
        return where + self.message


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message: TF and Keras errors run on over several lines
    (NodeDef, op signature, stack), and the first says what failed."""
    return next(iter(str(error).strip().splitlines()), "")


# How eager TensorFlow wraps an op's error: "{{function_node ...}} what [Op:Name] name: ".
_EAGER_WRAPPING = re.compile(r"^\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\].*$")


def eager_line(error: BaseException) -> str:
    """The first line of an eager op's error, without the function and op TF wraps it in."""
    return _EAGER_WRAPPING.sub("", first_line(error))


# Lines of a TF runtime error that say where, not what ("Graph execution error:", ...).
_ERROR_PREAMBLE = ("Graph execution error", "Detected at node", "Node:", "Original stack trace")


def telling_line(error: BaseException) -> str:
    """The line of a TF runtime error that says what went wrong, past its preamble ("Graph
    execution error:") and indented stacks."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith((" ", "\t", *_ERROR_PREAMBLE))]
    return (telling or lines or [type(error).__name__])[0]


class ManifestError(SmpackError):
    """The manifest cannot be read or says something invalid (YAML, schema, paths)."""


class ModelError(SmpackError):
    """The user's model function could not be imported, raised, or returned something unusable."""


class GraphError(SmpackError):
    """A variant's graph contradicts the manifest: unknown tensor, bad signature, variable clash."""


class PackageError(SmpackError):
    """The output package cannot be written: destination exists, disk full, interrupted."""


class GraphRefused(SmpackError):
    """TensorFlow refused a package's graph, a tensor name it holds or an input set fed to it:
    that graph's failure in verify and measure, not smpack's."""


# What TensorFlow documents raising, besides its OpError, for what a package holds:
# its v1 loader for a SavedModel it cannot load (a missing or unparsable file, no MetaGraph
# with the tags, variables without a saver) and its graph import for a GraphDef it refuses;
LOADER_REFUSALS: tuple[type[Exception], ...] = (OSError, RuntimeError, ValueError)
# Graph.get_tensor_by_name for a name the graph does not hold;
NAME_REFUSALS: tuple[type[Exception], ...] = (KeyError, ValueError)
# Session.run for a fetch or feed it refuses (a name the graph lacks, a value of another
# shape or dtype).
RUN_REFUSALS: tuple[type[Exception], ...] = (TypeError, ValueError)


@contextlib.contextmanager
def refused_by_tensorflow(*documented: type[Exception]) -> Iterator[None]:
    """Raise the exceptions of the `documented` types, which the TensorFlow call in the block
    documents raising for a graph, name or value it refuses (KeyError, ValueError, ...), as
    `GraphRefused` with their telling line. Only around that call: the same types raised by
    smpack's own code are its bugs, and must not read as a broken package."""
    try:
        yield
    except documented as e:
        # A KeyError's str() is its message's repr, in quotes.
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise GraphRefused(telling_line(Exception(message))) from e
