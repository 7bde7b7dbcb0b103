"""The `smpack` command: parses options, calls the library, renders its records."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import TyperException

import smpack
from smpack import __version__
from smpack.errors import PackageError, SmpackError, first_line
from smpack.io.quick_exit import exit_now
from smpack.io.staging import write_atomically
from smpack.progress import Step, StepCallback

if TYPE_CHECKING:
    from smpack.checks.verify import VerifyReport

stdout = Console()
stderr = Console(stderr=True)


class _UserErrorsAsOneLine(TyperGroup):
    """The one error boundary of every command: each ends in a result, one line, or a bug.

    `SmpackError` (the user's to fix) and `OSError` naming a file (the system refused:
    permissions, a symlink loop, a full disk) become one `error:` line and exit code 2.
    Anything else is a bug in smpack and is reported as one, exit code 70; `SMPACK_DEBUG=1`
    lets every exception through with its traceback. Done here rather than in `main()` so
    that CliRunner tests see exactly what users see.
    """

    def invoke(self, ctx: typer.Context) -> object:  # type: ignore[override]
        debug = os.environ.get("SMPACK_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except SmpackError as e:
            if debug:
                raise
            _one_line(f"error: {e}")
            ctx.exit(2)
        except OSError as e:
            if debug or e.filename is None:
                raise
            _one_line(f"error: {e.filename}: {e.strerror or e}")
            ctx.exit(2)
        except KeyboardInterrupt as e:
            written = ": the package was not written" if ctx.invoked_subcommand == "build" else ""
            _one_line(f"interrupted{written}")
            ctx.exit(128 + getattr(e, "signal", signal.SIGINT))
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as e:
            if debug:
                raise
            _one_line(
                f"smpack bug: {type(e).__name__}: {first_line(e)}; please report it "
                "(SMPACK_DEBUG=1 shows the traceback)"
            )
            ctx.exit(70)  # EX_SOFTWARE


def _one_line(message: str) -> None:
    # soft_wrap: a long line stays one line however narrow the terminal.
    stderr.print(message, markup=False, highlight=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so staging folders are cleaned up on
    the way out exactly as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


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


JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON document.")]
PackageArgument = Annotated[
    str, typer.Argument(help="SavedModel folder or URL (any, not only smpack's).")
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print nothing but errors; the exit code tells.")
]
ForceOption = Annotated[bool, typer.Option("--force", "-f", help="Replace OUT atomically.")]
# Every --json document has this envelope, so scripts read any command's output one way.
JSON_SCHEMA_VERSION = 1


def parse_tags(text: str) -> frozenset[str]:
    """`serve,gpu` -> {"serve", "gpu"}, as TF Serving and saved_model_cli spell tag sets."""
    tags = [tag.strip() for tag in text.split(",")]
    if not all(tags):
        msg = f"tag set {text!r} has an empty tag; write tags like serve,gpu"
        raise PackageError(msg, field="--tags")
    return frozenset(tags)


@app.command()
def build(
    # readable=False: an unreadable manifest is reported by smpack in one line, not by Click.
    manifests: Annotated[
        list[Path], typer.Argument(help="Variant manifests (YAML).", readable=False)
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out", "-o", help="Base folder or URL (gs://...); writes OUT/<name>/<version>/."
        ),
    ] = "build",
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace an existing version atomically.")
    ] = False,
    as_text: Annotated[
        bool, typer.Option("--as-text", help="Write saved_model.pbtxt instead of .pb.")
    ] = False,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Skip `smpack verify` on the written package.")
    ] = False,
    no_measure: Annotated[
        bool,
        typer.Option("--no-measure", help="Skip timing and evaluating the variants for the card."),
    ] = False,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, help="Manifests built at once, one per process.")
    ] = 1,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show every verify check, not only failures.")
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Build the package each manifest describes, print its summary, then verify it.

    With several manifests, each builds in its own process; one failing does not stop the
    others. Exit code 2 if any manifest could not be built, else 1 if any package failed
    verification, else 0.
    """
    if len(manifests) == 1 and not as_json:
        _build_one(manifests[0], out, force, as_text, not no_verify, not no_measure, quiet, verbose)
        return
    first = f"building {len(manifests)} manifests, {jobs} at a time"
    with _progress_bar(quiet or as_json or len(manifests) == 1, first) as show:
        outcomes = smpack.build_many(
            manifests,
            out,
            jobs=jobs,
            force=force,
            as_text=as_text,
            verify=not no_verify,
            measure=not no_measure,
            on_step=show,
        )
    for outcome in outcomes:
        if outcome.error is not None:
            _one_line(f"error: {outcome.error}")
        for failure in outcome.failed_checks:
            message = f"verify failed: {outcome.package}: {failure}"
            _one_line(message)
    if as_json:
        import dataclasses

        _print_json(
            "build",
            [{**dataclasses.asdict(o), "manifest": str(o.manifest)} for o in outcomes],
        )
    elif not quiet:
        from smpack.cli.views import batch_view

        stdout.print(batch_view(outcomes))
    if any(outcome.error is not None for outcome in outcomes):
        raise typer.Exit(2)
    if not all(outcome.passed for outcome in outcomes):
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress_bar(quiet: bool, first: str) -> Iterator[StepCallback]:
    """A bar on stderr that the library's steps move; drawn only on a terminal, and gone
    once the work is done, so logs and pipes see none of it."""
    if quiet or not stderr.is_terminal:
        yield lambda step: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=stderr, transient=True) as progress:
        task = progress.add_task(first, total=None)

        def show(step: Step) -> None:
            # Drawn now, not at the bar's next tick (10 a second): a step shorter than a
            # tick, or one the refreshing thread was not scheduled during, was never seen.
            progress.update(
                task,
                description=step.description,
                completed=step.done,
                total=step.total,
                refresh=True,
            )

        yield show


def _print_json(command: str, result: object) -> None:
    import json

    document = {
        "schema": JSON_SCHEMA_VERSION,
        "smpack": __version__,
        "command": command,
        "result": result,
    }
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def _build_one(
    manifest: Path,
    out: str,
    force: bool,
    as_text: bool,
    verify: bool,
    measure: bool,
    quiet: bool,
    verbose: bool,
) -> None:
    from smpack.cli.views import build_summary

    reports: list[VerifyReport] = []
    if verify:  # its TensorFlow import and the build's are one, or overlap
        _prepare_verify()
    with _progress_bar(quiet, "reading the manifest") as show:

        def passes(staging: Path) -> bool:
            reports.append(smpack.verify(staging, on_step=show))
            return reports[-1].passed

        info = smpack.build(
            manifest,
            out,
            force=force,
            as_text=as_text,
            measure=measure,
            on_step=show,
            verify=passes if verify else None,
        )
    if not quiet:
        stdout.print(build_summary(info))
    for report in reports:
        # Checked in its staging folder; named where it now is.
        report.path, report.url = info.path, info.url
        _show_report(report, quiet=quiet, as_json=False, verbose=verbose)
    if not info.published:
        _one_line(
            f"verify failed: the package did not pass its checks and was not published; "
            f"it is kept in {info.location}"
        )
        raise typer.Exit(1)


@app.command()
def inspect(
    package: PackageArgument,
    tags: Annotated[
        str | None, typer.Option("--tags", help="Show only this tag set, e.g. serve,gpu.")
    ] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Show what a SavedModel holds, without importing TensorFlow.

    With --quiet, only the exit code says whether it is a readable SavedModel (holding
    the --tags graph, if given).
    """
    from smpack.cli.views import inspection_document, print_inspect

    info = smpack.inspect(package, parse_tags(tags) if tags is not None else None)
    if as_json:
        _print_json("inspect", inspection_document(info))
    elif not quiet:
        print_inspect(info, stdout)


@app.command()
def verify(
    package: PackageArgument,
    costs: Annotated[
        bool,
        typer.Option(
            "--costs",
            help="Also show what checking each graph cost: seconds, CPU and peak memory.",
        ),
    ] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Load every graph through TensorFlow and check it; exit 1 if any check fails."""
    _verify_or_exit(package, quiet=quiet, as_json=as_json, costs=costs)


def _verify_or_exit(
    package: str, *, quiet: bool = False, as_json: bool = False, costs: bool = False
) -> None:
    _prepare_verify()
    with _progress_bar(quiet or as_json, "importing TensorFlow") as show:
        report = smpack.verify(package, on_step=show)
    _show_report(report, quiet=quiet, as_json=as_json)
    if costs and not (quiet or as_json):
        from smpack.cli.views import verify_costs_view

        stdout.print(verify_costs_view(report))
    if not report.passed:
        raise typer.Exit(1)


# Whether this process is the `smpack` command's own (`main`), not a program running the app
# (a test's CliRunner), whose memory a forked server would keep alive.
_own_process = False


def _prepare_verify() -> None:
    """Start verify's graph server ahead of verify. In the command's own process it is forked
    from this one right after its TensorFlow import, sharing it, rather than importing
    TensorFlow again beside it (`smpack.entry_point` started this process with huge pages)."""
    if _own_process:
        from smpack.checks.graph_process import fork_server_at_import

        fork_server_at_import()
    else:
        smpack.prepare_verify()


def _show_report(report: VerifyReport, *, quiet: bool, as_json: bool, verbose: bool = True) -> None:
    from smpack.cli.views import verify_verdict, verify_view

    if as_json:
        import dataclasses

        _print_json(
            "verify",
            {**dataclasses.asdict(report), "path": report.location, "passed": report.passed},
        )
    elif not quiet:
        # After a build the summary was the package; its checks matter only when one failed.
        shown = verify_view(report) if verbose or not report.passed else verify_verdict(report)
        stdout.print(shown)


@app.command()
def extract(
    package: Annotated[str, typer.Argument(help="SavedModel folder or URL to take a graph from.")],
    tags: Annotated[str, typer.Option("--tags", help="The graph's tag set, e.g. serve,gpu.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder or URL to write.")],
    clear_devices: Annotated[
        bool, typer.Option("--clear-devices", help="Drop device placements from the graph.")
    ] = False,
    force: ForceOption = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write one graph as a standalone SavedModel tagged `serve`, weights hard-linked."""
    tag_set = parse_tags(tags)
    written = smpack.extract(package, tag_set, out, clear_devices=clear_devices, force=force)
    if as_json:
        _print_json("extract", {"path": str(written), "tags": ["serve"], "from": sorted(tag_set)})
    elif not quiet:
        stdout.print(f"wrote {written} (tag set serve, from {tags})", highlight=False)


class ServingTarget(StrEnum):
    triton = "triton"
    tfserving = "tfserving"


@app.command("serving-config")
def serving_config(
    package: PackageArgument,
    target: Annotated[
        ServingTarget, typer.Option("--target", help="Triton model repository or TF Serving.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the config into.")],
    tags: Annotated[
        str | None, typer.Option("--tags", help="Only this variant's tag set, e.g. serve,gpu.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace files that exist.")] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write serving configs for every serving variant, naming the package where it is.

    triton: OUT becomes a model repository, one model per variant (config.pbtxt, and the
    variant alone in its version folder, weights hard-linked). tfserving: per variant, its
    models.config, the tensorflow_model_server command, and batching parameters for a
    static batch size.
    """
    written = smpack.serving_config(
        package,
        target.value,
        out,
        tags=parse_tags(tags) if tags is not None else None,
        force=force,
    )
    skipped = [{"tag_set": s.tag_set, "reason": s.reason} for s in written.config.skipped]
    if as_json:
        files = [str(path) for path in written.written]
        document = {"target": target.value, "out": str(written.out), "files": files}
        _print_json("serving-config", {**document, "skipped": skipped})
        return
    for skip in skipped:
        stderr.print(f"skipped {skip['tag_set']}: {skip['reason']}", highlight=False)
    if not quiet:
        for path in written.written:
            stdout.print(f"wrote {path}", highlight=False)


@app.command()
def diff(
    old: Annotated[str, typer.Argument(help="First SavedModel folder or URL.")],
    new: Annotated[str, typer.Argument(help="Second SavedModel folder or URL.")],
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """What changed between two packages; exit 1 when they differ, like `diff`."""
    import dataclasses

    from smpack.cli.views import diff_view

    changes = smpack.diff(old, new)
    if as_json:
        _print_json("diff", [dataclasses.asdict(change) for change in changes])
    elif not quiet:
        stdout.print(diff_view(changes))
    if changes:
        raise typer.Exit(1)


class CardFormat(StrEnum):
    md = "md"
    html = "html"


@app.command()
def card(
    package: PackageArgument,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            "-m",
            help="Manifest whose card: block and template to use.",
            readable=False,
        ),
    ] = None,
    template: Annotated[
        Path | None,
        typer.Option(
            "--template", "-t", help="Jinja2 template (*.md.j2 or *.html.j2).", readable=False
        ),
    ] = None,
    fmt: Annotated[
        CardFormat | None,
        # Said in words: Rich would take "[default: ...]" for markup and drop it from --help.
        typer.Option("--format", help="Card format; by default the template's, else md."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the card here instead of stdout.")
    ] = None,
    measure: Annotated[
        bool,
        typer.Option(
            "--measure",
            help="Time (and, with --manifest, evaluate) every variant this host can run now.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"card": text}, or {"path": OUT} with --out.')
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Render a package's model card from its own files; the card: block comes from the
    manifest if given, else from the one the package recorded when it was built.

    Its numbers are those measured at build time (smpack_measured.json), or with --measure,
    now.
    """
    measurements = None
    if measure:
        with _progress_bar(quiet or as_json, "importing TensorFlow") as show:
            measurements = smpack.measure(package, manifest=manifest, on_step=show)
    text = smpack.render_card(
        package,
        manifest=manifest,
        template=template,
        fmt=fmt.value if fmt else None,
        measurements=measurements,
    )
    if out is not None:
        write_atomically(out, text)
    if as_json:
        _print_json("card", {"card": text} if out is None else {"path": str(out.absolute())})
    elif out is None and not quiet:
        sys.stdout.write(text)


@app.command()
def schema(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the schema here instead of stdout.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='With --out, print {"path": OUT}.')
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Print the manifest's JSON Schema (editors complete and check manifests with it)."""
    text = smpack.manifest_schema()
    if out is not None:
        write_atomically(out, text)
        if as_json:
            _print_json("schema", {"path": str(out.absolute())})
    elif as_json:
        import json

        _print_json("schema", json.loads(text))
    elif not quiet:
        sys.stdout.write(text)


@app.command()
def init(
    manifest: Annotated[
        Path, typer.Argument(help="Manifest to create, e.g. variants/mymodel.yaml.")
    ],
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Write a commented starter manifest and model function that build as they are."""
    written = smpack.init(manifest)
    if as_json:
        _print_json("init", [str(path) for path in written])
    elif not quiet:
        for path in written:
            stdout.print(f"wrote {path}", highlight=False)
        stdout.print(f"next: smpack build {manifest} --out build/", highlight=False)


def main() -> None:
    """Console entry point (`smpack`, `python -m smpack`).

    Once the command has returned and its output is flushed, the process ends without
    Python's teardown: after a large build, freeing every object and unloading TensorFlow
    took 2-3 s that bought nothing, every file being closed by then; only the files autograph
    wrote for the user's functions are removed first (`exit_now`). Only here, never in
    the library: a caller of `smpack.build` keeps its interpreter. An exception that is not
    an exit (a bug, shown with SMPACK_DEBUG=1) takes the ordinary way out, traceback and all.
    """
    global _own_process
    _own_process = True
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_terminated)
    try:
        app(prog_name="smpack")
        code = 0
    except SystemExit as done:
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)  # what sys.exit("message") would do
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    exit_now(code)
