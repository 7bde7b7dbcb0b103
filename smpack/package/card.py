"""Model cards: rendering `card_context` with the built-in or the manifest's Jinja2 template.

Everything technical on a card (variants, signatures, parameter count, file hashes, versions)
is read back from the written package, so the card cannot drift from what ships. Rendering
does not import TensorFlow: the facts `PackageInfo` lacks come from `saved_model.pb` parsed
with smpack's own protobuf messages, and from the files themselves.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.resources
import json
import os
import re
import resource
import select
import signal
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from smpack.errors import ManifestError, PackageError, first_line
from smpack.manifest import card_format
from smpack.manifest.card_spec import CardSpec
from smpack.package.card_context import card_context
from smpack.package.card_json import model_card_json
from smpack.package.front_matter import to_yaml
from smpack.package.info import PackageInfo, package_at
from smpack.package.layout import ASSETS_EXTRA, RECORD_PATH
from smpack.package.record import read_record

# Jinja2 names the frames it fakes for template code like this; other frames are Python.
_TEMPLATE_FRAMES = re.compile(r"^(top-level template code|template|block '.*')$")



class CardTemplateError(ManifestError):
    """A card template cannot be found, parsed or rendered: a syntax error, a misspelt
    variable, or an operation Jinja2's sandbox forbids. `file` and `line` point into the
    template."""


def render_card(
    info: PackageInfo,
    spec: CardSpec | None,
    *,
    fmt: Literal["md", "html"] = "md",
    template: Path | None = None,
    name: str | None = None,
    version: int | None = None,
    measurements: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> str:
    """Render the model card of the package `info` describes, as Markdown or HTML.

    `spec` is the manifest's `card:` block; without it the card holds only what was read
    from the package. `template` replaces the built-in `model_card.{fmt}.j2` and runs in
    Jinja2's sandbox; it sees the variables `card_context` returns, and is HTML-escaped when
    `fmt` is "html". `name` and `version` default to the package's `NAME/VERSION` folders.
    Raises `CardTemplateError` naming the template file and line, and `PackageError` when
    `info.path` holds no readable saved_model.pb.
    """
    context = card_context(info, spec, name=name, version=version, measurements=measurements)
    return _rendered(context, fmt, template)


def _rendered(context: dict[str, Any], fmt: Literal["md", "html"], template: Path | None) -> str:
    """`context` rendered by `template`, else by the built-in template of `fmt`."""
    if template is None:
        environment = _environment(jinja2.Environment, jinja2.FunctionLoader(_builtin), fmt)
        return _render(environment, f"model_card.{fmt}.j2", context, None, None)
    template_file = Path(template).absolute()
    environment = _environment(_BudgetedSandbox, _FolderLoader(template_file.parent), fmt)
    return _render_isolated(environment, template_file.name, context, template_file)


def _render(
    environment: jinja2.Environment,
    template_name: str,
    context: dict[str, Any],
    template_file: Path | None,
    field: str | None,
) -> str:
    try:
        parts, size = [], 0
        for chunk in environment.get_template(template_name).generate(context):
            size += len(chunk)
            if size > MAX_CARD_CHARS:
                msg = f"the card would be longer than {MAX_CARD_CHARS:,} characters"
                raise CardTemplateError(msg, file=template_file, field=field)
            parts.append(chunk)
        return "".join(parts)
    except jinja2.TemplateNotFound as e:
        msg = f"template {e.name!r} not found; check the path"
        raise CardTemplateError(msg, file=template_file, field=field) from e
    except OSError as e:  # a template or include the system will not let smpack read
        msg = f"cannot read the template: {e.strerror or e}"
        raise CardTemplateError(msg, file=e.filename or template_file, field=field) from e
    except jinja2.TemplateSyntaxError as e:
        msg = f"template syntax error: {e.message}"
        raise CardTemplateError(msg, file=e.filename, line=e.lineno, field=field) from e
    except (
        jinja2.TemplateError,
        TypeError,
        ValueError,
        ArithmeticError,
        RecursionError,
        MemoryError,
    ) as e:
        file, line = _template_location(e)
        msg = first_line(e) or type(e).__name__
        if isinstance(e, jinja2.UndefinedError):
            msg += f"; a card template sees {', '.join(sorted(context))} (see card_context)"
        elif type(e) is jinja2.exceptions.SecurityError:  # not one of smpack's own refusals
            msg += "; card templates run in Jinja2's sandbox, which hides Python internals"
        elif isinstance(e, RecursionError):
            msg = "the template recurses too deeply"
        elif isinstance(e, MemoryError):
            msg = f"the template needs more than {_CARD_MEMORY >> 20} MiB of memory"
        raise CardTemplateError(msg, file=file or template_file, line=line, field=field) from e


# A user template's budget: its output, CPU seconds and memory beyond the process's own.
# Jinja2's sandbox caps each range() but not the work (two nested loops are 10^10 steps),
# and one `'x' * 10**10` allocates 10 GB before any check could run.
MAX_CARD_CHARS = 16 << 20
_CARD_SECONDS = 10
_CARD_MEMORY = 1 << 30


class _Refused(jinja2.exceptions.SecurityError):
    """Refused by smpack's own limits rather than by Jinja2's sandbox rules."""


class _BudgetedSandbox(SandboxedEnvironment):
    """Refuses, before Python allocates them, repetitions and powers whose result would blow
    the output budget; the child process's limits catch what slips past."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        sized = [v for v in (left, right) if isinstance(v, str | bytes | list | tuple)]
        counts = [v for v in (left, right) if isinstance(v, int)]
        if operator == "*" and sized and counts and len(sized[0]) * counts[0] > MAX_CARD_CHARS:
            msg = f"a repetition longer than the card's budget of {MAX_CARD_CHARS:,} characters"
            raise _Refused(msg)
        if operator == "**" and len(counts) == 2 and abs(right) > 4096:
            msg = f"a power with exponent {right}, beyond what a card needs"
            raise _Refused(msg)
        return super().call_binop(context, operator, left, right)


class _FolderLoader(jinja2.FileSystemLoader):
    """Templates only from inside one folder, symlinks resolved before the check: an
    `{% include %}` of a link to a file elsewhere is refused."""

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        root = Path(self.searchpath[0]).resolve()
        if not Path(filename).resolve().is_relative_to(root):
            msg = f"{template!r} leads outside the template's folder {root}"
            raise _Refused(msg)
        return source, filename, uptodate


def _render_isolated(
    environment: jinja2.Environment, template_name: str, context: dict[str, Any], file: Path
) -> str:
    """Render a user's template in a forked child under CPU and memory limits, so a template
    that loops for ever or allocates gigabytes fails the build with one line."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: render, send the text or the error, and leave at once
        os.close(read_end)
        try:
            _limit_child()
            result: tuple[Any, ...] = (
                "text",
                _render(environment, template_name, context, file, "card.template"),
            )
        except CardTemplateError as e:
            result = ("error", e.message, e.file and str(e.file), e.line)
        except BaseException as e:  # noqa: BLE001 -- the parent reports it
            result = ("error", f"{type(e).__name__}: {first_line(e)}", str(file), None)
        with os.fdopen(write_end, "wb") as stream:
            stream.write(json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    try:
        # Wall time: CPU seconds on a busy machine, and margin for the child's start.
        data = _read_within(read_end, _CARD_SECONDS * 2 + 5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if not data:
        msg = f"the template ran longer than {_CARD_SECONDS} s of CPU time; make it do less"
        raise CardTemplateError(msg, file=file, field="card.template")
    kind, *rest = json.loads(data)
    if kind == "text":
        return str(rest[0])
    message, where, line = rest
    raise CardTemplateError(message, file=where or file, line=line, field="card.template")


def _limit_child() -> None:
    with open("/proc/self/statm", encoding="ascii") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + _CARD_MEMORY, resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_CPU, (_CARD_SECONDS, _CARD_SECONDS + 1))


def _read_within(descriptor: int, seconds: float) -> bytes:
    """Everything from `descriptor` until it closes; b"" if that takes longer than `seconds`."""
    deadline, chunks = time.monotonic() + seconds, list[bytes]()
    with os.fdopen(descriptor, "rb", buffering=0) as stream:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stream], [], [], left)[0]:
                return b""
            chunk = stream.read(1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def write_cards(
    info: PackageInfo,
    spec: CardSpec | None,
    *,
    template: Path | None = None,
    name: str | None = None,
    version: int | None = None,
) -> list[Path]:
    """Render the cards of the package `info` describes (as read after every file the cards
    list was written) into its `assets.extra/`: Markdown, HTML, and the Model Card
    Toolkit's JSON.

    `template` replaces the built-in template of the format its name ends in; the other card
    keeps the built-in one. Returns the files written.
    """
    export_dir = info.path
    (export_dir / ASSETS_EXTRA).mkdir(exist_ok=True)
    written = []
    formats: tuple[Literal["md", "html"], ...] = ("md", "html")
    # One context for the three cards (each would parse saved_model.pb again); a custom
    # template renders it in a child process, so no card sees another's changes.
    context = card_context(info, spec, name=name, version=version)
    for fmt in formats:
        chosen = template if template is not None and card_format(template) == fmt else None
        target = export_dir / ASSETS_EXTRA / f"model_card.{fmt}"
        target.write_text(_rendered(context, fmt, chosen), encoding="utf-8")
        written.append(target)
    target = export_dir / ASSETS_EXTRA / "model_card.json"
    target.write_text(model_card_json(context), encoding="utf-8")
    return [*written, target]


def card_for_package(
    export_dir: str | Path,
    *,
    manifest: str | Path | None = None,
    template: str | Path | None = None,
    fmt: Literal["md", "html"] | None = None,
    measurements: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> str:
    """The card of any SavedModel, smpack's or not, as `smpack card` prints it.

    `manifest` supplies the `card:` block, its template, and the package name and version;
    `template` overrides the manifest's. The format is `fmt`, else the template's (from its
    name), else Markdown. A manifest template of the other format is not used.
    `measurements` (see `card_context`) replace what smpack.json recorded at build time.
    """
    spec, name, version, chosen = None, None, None, None
    if manifest is not None:
        from smpack.manifest import load_manifest

        loaded = load_manifest(manifest)
        spec, name, version = loaded.card, loaded.spec.name, loaded.spec.version
        chosen = loaded.card_template
    if template is not None:
        chosen = Path(template)
    chosen_format = card_format(chosen) if chosen is not None else None
    rendered: Literal["md", "html"] = fmt or chosen_format or "md"
    if template is None and chosen_format != rendered:
        chosen = None
    with package_at(export_dir) as info:
        if spec is None:
            spec = _recorded_card(info)
        return render_card(
            info,
            spec,
            fmt=rendered,
            template=chosen,
            name=name,
            version=version,
            measurements=measurements,
        )


def _recorded_card(info: PackageInfo) -> CardSpec | None:
    """The card: block smpack.json recorded at build time, if the package has one."""
    record = read_record(info.path)
    if record is None or "card" not in record:
        return None
    try:
        return CardSpec.model_validate(record["card"])
    except ValidationError as e:
        msg = f"its card block is not valid: {e.errors()[0]['msg']}"
        raise PackageError(msg, file=info.path / RECORD_PATH, field="card") from e


def _environment(
    kind: type[jinja2.Environment], loader: jinja2.BaseLoader, fmt: str
) -> jinja2.Environment:
    environment = kind(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=fmt == "html",
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["yaml"] = to_yaml
    environment.filters["cell"] = _markdown_cell
    environment.tests["weburl"] = _is_web_url
    return environment


def _builtin(name: str) -> tuple[str, str, Any] | None:
    resource = importlib.resources.files("smpack.templates").joinpath(name)
    if not resource.is_file():
        return None
    return resource.read_text(encoding="utf-8"), str(resource), lambda: True


def _template_location(error: BaseException) -> tuple[str | None, int | None]:
    """The template file and line Jinja2 rewrote the traceback to, innermost first."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        if _TEMPLATE_FRAMES.match(frame.name):
            return frame.filename, frame.lineno
    return None, None


def _markdown_cell(value: Any) -> str:
    """`value` as text that stays inside one Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _is_web_url(value: Any) -> bool:
    """Whether `value` may become a link: http(s) only, so no `javascript:` URL is clickable."""
    return isinstance(value, str) and value.lower().startswith(("https://", "http://"))
