"""What several test files share: the bundled examples built once per session with real
TensorFlow, the C loader, running the CLI like golden files see it, JSON envelopes, tree and
card helpers. (TF models and manifests the tests build from live in tf_helpers.py.)"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData
from rich.console import Console
from typer.testing import CliRunner, Result

import smpack
from smpack.cli import commands as cli
from smpack.package.card_context import card_context
from smpack.package.info import PackageInfo

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ROOT / "variants"


_RUN_TEMPORARY: list[str] = []  # this process's folder for the run's temporary files


def pytest_configure(config: pytest.Config) -> None:
    """Temporary files in a folder of the run's own, removed when the run ends: TensorFlow's
    autograph writes a file for each function it converts and removes it at exit, which a
    process the tests kill never reaches.

    Through TMPDIR, the processes the tests start (and xdist's workers, each with a folder
    of its own inside the first) use it too. Open to all, as /tmp is: the hostile cases run
    `smpack` as `nobody`. pytest's own folders stay where they were, kept for a look after
    the run.
    """
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    folder = tempfile.mkdtemp(prefix="smpack-tests-")
    os.chmod(folder, 0o1777)
    _RUN_TEMPORARY.append(folder)
    os.environ["TMPDIR"] = tempfile.tempdir = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _RUN_TEMPORARY:
        shutil.rmtree(folder, ignore_errors=True)


# Most of the suite's CPU time: they start first, on a worker of their own, so that they
# never end alone on one worker while the other idles.
HEAVY_FIRST = ("tests/test_real_training.py", "tests/test_real_transformers.py")


@pytest.hookimpl(trylast=True)  # after pytest's own ordering by fixture params
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The order xdist hands modules out in (`--dist loadscope --no-loadscope-reorder`):
    heavy modules first, then the modules of slow tests, then the rest. Each module runs
    whole on one worker, so what a module-scoped fixture builds is built once per run."""

    def start(item: pytest.Item) -> tuple[bool, bool]:
        module = item.nodeid.split("::")[0]
        return module not in HEAVY_FIRST, item.get_closest_marker("slow") is None

    items.sort(key=start)  # stable: a module's own order, which groups its fixtures, is kept


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whole-module scheduling, except that a heavy module's tests of one model (its fixture
    parameter) are a unit of their own: one module holds both big CNNs, which would otherwise
    run one after the other on one worker while the other idles."""
    from xdist.scheduler import LoadScopeScheduling

    class ModelScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            if module in HEAVY_FIRST and nodeid.endswith("]"):
                return f"{module}[{nodeid.rsplit('[', 1)[1]}"
            return super()._split_scope(nodeid)

    return ModelScheduling(config, log)


@pytest.fixture(scope="session")
def linear_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    # Not measured: the golden cards must not hold this run's timings (test_measure.py).
    return smpack.build(VARIANTS / "linear.yaml", tmp_path_factory.mktemp("linear"), measure=False)


@pytest.fixture(scope="session")
def text_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    return smpack.build(
        VARIANTS / "text_classifier.yaml", tmp_path_factory.mktemp("text"), measure=False
    )


@pytest.fixture(scope="session")
def unknown_rank_package(tmp_path_factory: pytest.TempPathFactory) -> PackageInfo:
    """`make_unknown_rank_module` (an input of unknown rank, one output) served on CPU and
    GPU (float16, XLA) and trained with SGD, verified."""
    from tf_helpers import SERVING, make_unknown_rank_module, write_manifest

    folder = tmp_path_factory.mktemp("unknown_rank")
    source = make_unknown_rank_module(folder, text=False)
    variants = {
        "cpu": SERVING["cpu"],
        "gpu": SERVING["gpu"],
        "train": {"tags": ["train"], "optimizer": {"name": "sgd", "learning_rate": 0.1}},
    }
    manifest = write_manifest(folder, {"savedmodel": source.name, "loss": "mse"}, variants=variants)
    verified = lambda path: smpack.verify(path).passed  # noqa: E731
    return smpack.build(manifest, folder / "out", measure=False, verify=verified)


@pytest.fixture
def variants_copy(tmp_path: Path) -> Path:
    """A private copy of variants/, for tests that edit manifests or delete sources."""
    target = tmp_path / "variants"
    shutil.copytree(VARIANTS, target)
    return target


def json_result(stdout: str, command: str) -> Any:
    """The `result` of a `--json` document, after checking the envelope every command shares."""
    document = json.loads(stdout)
    assert document.keys() == {"schema", "smpack", "command", "result"}
    assert (document["schema"], document["smpack"], document["command"]) == (
        1,
        smpack.__version__,
        command,
    )
    return document["result"]


GOLDEN = Path(__file__).resolve().parent / "golden"
# SMPACK_UPDATE_GOLDEN=1 rewrites the golden files instead of comparing; read the diff after.
UPDATE_GOLDEN = os.environ.get("SMPACK_UPDATE_GOLDEN") == "1"


def invoke(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> Result:
    """Invoke `smpack ARGS` with a fixed-width, colourless console on stdout."""
    monkeypatch.setattr(cli, "stdout", Console(width=100, color_system=None))
    return CliRunner().invoke(cli.app, args)


def check_golden(name: str, text: str) -> None:
    """`text` must equal tests/golden/NAME (SMPACK_UPDATE_GOLDEN=1 rewrites it instead)."""
    golden = GOLDEN / name
    if UPDATE_GOLDEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def tree_state(folder: Path) -> dict[str, str]:
    """Every path under `folder` mapped to its kind, mode and content (or link) hash.

    Directory timestamps are left out: creating and removing a staging folder must
    change a parent's mtime, and readers never look at it.
    """
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        mode = stat.S_IMODE(info.st_mode)
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            state[relative] = f"link {path.readlink()}"
        elif path.is_dir():
            state[relative] = f"dir {mode:o}"
        elif not stat.S_ISREG(info.st_mode):  # a FIFO would block a read for ever
            state[relative] = f"special {stat.S_IFMT(info.st_mode):o} {mode:o}"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[relative] = f"file {mode:o} {digest}"
    return state


def file_digests(package: Path) -> dict[str, str]:
    return {
        str(path.relative_to(package)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(package.rglob("*"))
        if path.is_file()
    }


C_LOADER_SOURCE = Path(__file__).parent / "c_api" / "run_saved_model.c"


@pytest.fixture(scope="session")
def c_loader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A C program that loads a SavedModel with TF_LoadSessionFromSavedModel (see run_c)."""
    import tensorflow as tf

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler on this machine")
    wheel = Path(tf.__file__).parent
    # Compiling against TensorFlow's headers takes a core for ~10 s: once per run, in the
    # folder every xdist worker of the run shares, not once per worker.
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent
    binary = root / "c_api" / "run_saved_model"
    with (root / "c_api.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits for the first compile
        if not binary.exists():
            binary.parent.mkdir(exist_ok=True)
            compiling = binary.with_suffix(".compiling")
            subprocess.run(
                [
                    compiler,
                    str(C_LOADER_SOURCE),
                    f"-I{wheel / 'include'}",
                    f"-L{wheel}",
                    "-l:libtensorflow_cc.so.2",
                    "-l:libtensorflow_framework.so.2",
                    f"-Wl,-rpath,{wheel}",
                    "-o",
                    str(compiling),
                ],
                check=True,
                capture_output=True,
            )
            compiling.rename(binary)
    return binary


def run_c(
    loader: Path, export_dir: Path, tag_set: str, *args: str, op_libraries: Sequence[Path] = ()
) -> subprocess.CompletedProcess:
    """Run the C loader; `op_libraries` are custom op .so files it loads first."""
    return subprocess.run(
        [str(loader), str(export_dir), tag_set, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "OP_LIBRARIES": ":".join(map(str, op_libraries))},
    )


def normalise_card(text: str, info: PackageInfo) -> str:
    """Blank out what depends on the installed TensorFlow and smpack, not on smpack's code."""
    package = card_context(info, None)["package"]
    text = text.replace(f"TensorFlow {package['tensorflow_version']}", "TensorFlow TF_VERSION")
    text = text.replace(f"smpack {package['smpack_version']}", "smpack SMPACK_VERSION")
    text = re.sub(r"\b[0-9a-f]{64}\b", "SHA256", text)
    # saved_model.pb and smpack.json record the versions, and fingerprint.pb holds varint
    # hashes of the rest, so their sizes move with them.
    lines = text.split("\n")
    for name, placeholder in (
        ("saved_model.pb", "PB_BYTES"),
        ("assets.extra/smpack.json", "JSON_BYTES"),
        ("fingerprint.pb", "FINGERPRINT_BYTES"),
    ):
        if (info.path / name).is_file():
            size = str((info.path / name).stat().st_size)
            lines = [line.replace(size, placeholder) if name in line else line for line in lines]
    return "\n".join(lines)


def front_matter(card: str) -> Any:
    assert card.startswith("---\n")
    front, separator, _ = card[4:].partition("\n---\n")
    assert separator, "the front matter is never closed"
    return yaml.safe_load(front)


class HtmlTables(HTMLParser):
    """Each table's rows as lists of cell texts, keyed by the table's id, plus the tags seen."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.tags: list[str] = []
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self.feed(page)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table":
            key = dict(attrs).get("id") or f"table {len(self.tables)}"
            self._rows = self.tables.setdefault(key, [])
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in {"td", "th"}:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in {"td", "th"} and self._cell is not None and self._rows:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._rows = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


# The Model Card Toolkit's published schema, vendored (see tests/schemas/README.md).
MCT_SCHEMA = Path(__file__).resolve().parent / "schemas" / "model_card_toolkit_v0.0.2.schema.json"


def hub_card_data(card: str) -> ModelCardData:
    """The card's front matter as the Hugging Face hub's own classes read it, offline;
    raises ValueError where the hub would refuse it (a model-index it cannot parse)."""
    parsed = ModelCard(card, ignore_metadata_errors=False)
    # ModelCardData validates the model-index into evaluation results, strictly.
    ModelCardData(**front_matter(card), ignore_metadata_errors=False)
    return parsed.data


def mct_problems(document: str) -> list[str]:
    """Where `document` breaks the Model Card Toolkit's schema (v0.0.2), formats included."""
    schema = json.loads(MCT_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    data: Any = json.loads(document)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]


# Real `smpack build` processes stopped at known moments (test_faults, test_hostile_processes).
FAULTS = Path(__file__).resolve().parent / "faults"
# Nested loops in Jinja2's sandbox (range is capped at 100000): 10^10 iterations.
ENDLESS_TEMPLATE = (
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
)


def project(folder: Path, params: str = "{}", extra: str = "") -> Path:
    """A manifest (train + serve variants of the faulty model) in `folder`; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FAULTS / "faulty_model.py", folder)
    (folder / "endless.md.j2").write_text(ENDLESS_TEMPLATE)
    manifest = folder / "manifest.yaml"
    manifest.write_text(
        "schema: 1\nname: faulty\nversion: 1\n"
        f"source: {{python: faulty_model.py:model_fn, params: {params}}}\n"
        "variants:\n"
        "  train: {tags: [train], optimizer: {name: sgd, learning_rate: 0.1}}\n"
        "  cpu: {tags: [serve]}\n" + extra
    )
    return manifest


def start_build(
    manifest: Path, out: Path, limits: Callable[[], None] | None = None, verify: bool = True
) -> subprocess.Popen[str]:
    """`smpack build --force` as a user starts it. `verify=False` (--no-verify) for a test
    whose build never reaches verify: its graph server would only add a TensorFlow import."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what users see, TF's C++ logging included
    command = [sys.executable, "-m", "smpack", "build", str(manifest), "--out", str(out)]

    def as_a_user_starts_it() -> None:
        # A test runner's workers may ignore SIGINT, and children inherit that: a Ctrl-C
        # test would then test nothing.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if limits is not None:
            limits()

    return subprocess.Popen(
        [*command, "--force"] + ([] if verify else ["--no-verify"]),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_a_user_starts_it,
    )


def finish(build: subprocess.Popen[str], timeout: float) -> tuple[str, str]:
    """The build's stdout and stderr once it ends; killed, and the test failed, if it hangs."""
    try:
        return build.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        build.kill()
        build.communicate()
        pytest.fail(f"the build did not end within {timeout} s")


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the build ended first: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the build never reached the moment to interrupt")
        time.sleep(0.001)
