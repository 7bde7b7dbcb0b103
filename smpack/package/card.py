"""Model cards: rendering `card_context` with the built-in or the manifest's Jinja2 template.

Everything technical on a card (variants, signatures, parameter count, file hashes, versions)
is read back from the written package, so the card cannot drift from what ships. Rendering
does not import TensorFlow: the facts `PackageInfo` lacks come from `saved_model.pb` parsed
with smpack's own protobuf messages, and from the files themselves.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import re
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import ValidationError

from smpack.errors import ManifestError, PackageError
from smpack.manifest import card_format
from smpack.manifest.card_spec import CardSpec
from smpack.package.card_context import card_context
from smpack.package.card_json import model_card_json
from smpack.package.front_matter import to_yaml
from smpack.package.info import PackageInfo, package_at, read_package
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
    environment: jinja2.Environment
    if template is None:
        environment = _environment(jinja2.Environment, jinja2.FunctionLoader(_builtin), fmt)
        template_name, field, template_file = f"model_card.{fmt}.j2", None, None
    else:
        template_file = Path(template).absolute()
        loader = jinja2.FileSystemLoader(template_file.parent)
        environment = _environment(SandboxedEnvironment, loader, fmt)
        template_name, field = template_file.name, "card.template"
    try:
        return environment.get_template(template_name).render(context)
    except jinja2.TemplateNotFound as e:
        msg = f"template {e.name!r} not found; check the path"
        raise CardTemplateError(msg, file=template_file, field=field) from e
    except jinja2.TemplateSyntaxError as e:
        msg = f"template syntax error: {e.message}"
        raise CardTemplateError(msg, file=e.filename, line=e.lineno, field=field) from e
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as e:
        file, line = _template_location(e)
        msg = str(e)
        if isinstance(e, jinja2.UndefinedError):
            msg += f"; a card template sees {', '.join(sorted(context))} (see card_context)"
        elif isinstance(e, jinja2.exceptions.SecurityError):
            msg += "; card templates run in Jinja2's sandbox, which hides Python internals"
        raise CardTemplateError(msg, file=file or template_file, line=line, field=field) from e


def write_cards(
    export_dir: Path,
    spec: CardSpec | None,
    *,
    template: Path | None = None,
    name: str | None = None,
    version: int | None = None,
) -> list[Path]:
    """Render the cards of the package at `export_dir` into its `assets.extra/`: Markdown,
    HTML, and the Model Card Toolkit's JSON.

    `template` replaces the built-in template of the format its name ends in; the other card
    keeps the built-in one. Returns the files written.
    """
    info = read_package(export_dir)
    (export_dir / ASSETS_EXTRA).mkdir(exist_ok=True)
    written = []
    formats: tuple[Literal["md", "html"], ...] = ("md", "html")
    for fmt in formats:
        chosen = template if template is not None and card_format(template) == fmt else None
        text = render_card(info, spec, fmt=fmt, template=chosen, name=name, version=version)
        target = export_dir / ASSETS_EXTRA / f"model_card.{fmt}"
        target.write_text(text, encoding="utf-8")
        written.append(target)
    context = card_context(info, spec, name=name, version=version)
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
