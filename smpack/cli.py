"""The `smpack` command: parses options, calls the library, renders its records."""

from __future__ import annotations

import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from smpack import __version__
from smpack.errors import SmpackError
from smpack.staging import write_atomically

stdout = Console()
stderr = Console(stderr=True)


class _UserErrorsAsOneLine(TyperGroup):
    """Turns every `SmpackError` into one line on stderr and exit code 2.

    Done here rather than in `main()` so that CliRunner tests see exactly what users see.
    """

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except SmpackError as e:
            if os.environ.get("SMPACK_DEBUG") == "1":
                raise
            stderr.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            stderr.print("interrupted: the package was not written", highlight=False)
            ctx.exit(130)


app = typer.Typer(
    cls=_UserErrorsAsOneLine,
    help="Pack one model's serve / train / GPU / TPU graphs into one SavedModel.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"smpack {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Pack one model's serve / train / GPU / TPU graphs into one SavedModel."""


@app.command()
def build(
    manifest: Annotated[Path, typer.Argument(help="Variant manifest (YAML).")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Base directory; writes OUT/<name>/<version>/.")
    ] = Path("build"),
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing version atomically.")
    ] = False,
    as_text: Annotated[
        bool, typer.Option("--as-text", help="Write saved_model.pbtxt instead of .pb.")
    ] = False,
) -> None:
    """Build the package a manifest describes and print its summary."""
    from smpack.packager import build as build_package
    from smpack.views import print_build_summary

    with stderr.status("reading manifest") as status:
        info = build_package(
            manifest, out, force=force, as_text=as_text, on_step=lambda s: status.update(s)
        )
    print_build_summary(info, stdout)


class CardFormat(StrEnum):
    md = "md"
    html = "html"


@app.command()
def card(
    package: Annotated[Path, typer.Argument(help="SavedModel directory (any, not only smpack's).")],
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", "-m", help="Manifest whose card: block and template to use."),
    ] = None,
    template: Annotated[
        Path | None,
        typer.Option("--template", "-t", help="Jinja2 template (*.md.j2 or *.html.j2)."),
    ] = None,
    fmt: Annotated[
        CardFormat | None,
        typer.Option("--format", "-f", help="Card format [default: the template's, else md]."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the card here instead of stdout.")
    ] = None,
) -> None:
    """Render a package's model card from its own files and an optional manifest."""
    from smpack.card import card_for_package

    text = card_for_package(
        package, manifest=manifest, template=template, fmt=fmt.value if fmt else None
    )
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomically(out, text)


@app.command()
def schema() -> None:
    """Print the manifest's JSON Schema (editors complete and check manifests with it)."""
    import json

    from smpack.manifest import manifest_json_schema

    sys.stdout.write(json.dumps(manifest_json_schema(), indent=2) + "\n")


@app.command()
def init(
    manifest: Annotated[
        Path, typer.Argument(help="Manifest to create, e.g. variants/mymodel.yaml.")
    ],
) -> None:
    """Write a commented starter manifest and model function that build as they are."""
    from smpack.scaffold import write_starter

    for path in write_starter(manifest):
        stdout.print(f"wrote {path}", highlight=False)
    stdout.print(f"next: smpack build {manifest} --out build/", highlight=False)


def main() -> None:
    """Console entry point (`smpack`, `python -m smpack`)."""
    app(prog_name="smpack")
