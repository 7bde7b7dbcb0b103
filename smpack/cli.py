"""The `smpack` command: parses options, calls the library, renders its records."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from smpack import __version__
from smpack.errors import SmpackError

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


def main() -> None:
    """Console entry point (`smpack`, `python -m smpack`)."""
    app(prog_name="smpack")
