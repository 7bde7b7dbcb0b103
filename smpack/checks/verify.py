"""`verify`: load every MetaGraph of a package through TensorFlow and check it would serve.

Each check is a record with a reason; nothing is printed here. TF's builder accepts
packages that only fail at serving time (a variable missing from the checkpoint, two
graphs with one tag set, an asset that is not there), so these are checked explicitly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl

from smpack.builder.provenance import check_provenance, claims_smpack
from smpack.builder.training import TRAIN_METHOD
from smpack.builder.warmup import read_requests
from smpack.checks.feeds import MadeUpInputs, feed_dict
from smpack.checks.graph_process import (
    GraphProcessDied,
    Job,
    run_each_in_own_process,
    start_server,
)
from smpack.checks.loading import LoadSeconds, load_in_turn
from smpack.checks.placement import pins_this_host_lacks
from smpack.checks.xla_check import tpu_graph_on_cpu
from smpack.errors import (
    LOADER_REFUSALS,
    NAME_REFUSALS,
    RUN_REFUSALS,
    GraphRefused,
    ManifestError,
    SmpackError,
    refused_by_tensorflow,
    telling_line,
)
from smpack.io.memory import available_memory
from smpack.io.storage import fetched, is_url
from smpack.io.tf_quietly import schedule_xla_cpu_for_memory
from smpack.manifest import METHODS
from smpack.package.dtypes import HALF_PRECISIONS, dtype_name
from smpack.package.info import GraphInfo, PackageInfo, read_package
from smpack.package.layout import EXAMPLES_FILE, RECORD_PATH
from smpack.package.protos import read_saved_model
from smpack.package.record import checked_records
from smpack.package.restore_keys import full_shape, restored_variables
from smpack.progress import StepCallback, Steps
from smpack.sources.op_libraries import graph_ops_unregistered, import_op_libraries

# What a broken graph raises: TF's runtime errors, and SmpackError, which is how smpack
# reports what TF refuses before running anything (a tensor name the graph lacks, a feed its
# placeholder rejects: `refused_by_tensorflow`) and the XLA check's verdict. Anything else,
# KeyError and ValueError from smpack's own code included, is a bug and surfaces as one.
_GRAPH_FAILURES = (tf.errors.OpError, SmpackError)

# How far a variant's outputs may stray from the float32 graph's, as a fraction of each
# output's scale (its largest magnitude in the float32 graph): about 20 units of float16's
# rounding (2**-11) and 10 of bfloat16's (2**-8), as a few layers accumulate them. A
# graph computing something else is off by far more, whatever the size of its outputs.
TOLERANCES = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 4e-2}
# How many tolerances an output may stray on made-up inputs before verify calls the graph
# wrong rather than the inputs uninformative (see _compare_with_float32): a Keras tabular
# model's correct float16 graph was off by 1.02 tolerances there (0.035 on real inputs);
# a graph returning 1.1 times the output is off by 10 (float16) and 2.5 (bfloat16).
_MADE_UP_SLACK = 2
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"

# Two graph processes at once keep both cores of a small machine busy (a restore and an
# XLA compilation each use one), but only while what both may need (`_memory_needed`) fits
# in _MEMORY_BUDGET and in what the machine (or the container's memory cgroup) can still give
# when verify starts. Two graphs need 2.2x the weights and more, so from about 0.7 GiB of
# weights up they run one at a time, and verify stays within issue 14's target of 2.25x the
# weights; below, the runtimes' fixed cost is most of verify's memory anyway. Whatever the
# size, the next graph's process starts early and does what needs only its runtime (reading
# the package, importing the graph) while the last one runs, and waits for its turn to
# restore (`load_in_turn`).
_GRAPHS_AT_ONCE = 2
_MEMORY_BUDGET = 2 << 30
_GRAPH_RUNTIME = 256 << 20  # a graph process's own TensorFlow runtime, about 0.2 GiB measured


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str = ""
    # Passed, but proves nothing: a signature failed on inputs verify made up, which may be
    # outside what the model accepts (a token id past its vocabulary, say).
    warning: bool = False


@dataclass(frozen=True)
class GraphCost:
    """What checking one graph cost the process it ran in: the loader's two steps and the
    runs (seconds of wall time; its wait for the turn to restore is not counted), and the
    process's CPU seconds (every thread) and peak resident memory (bytes), which includes
    the TensorFlow runtime it shares with the process it was forked from."""

    importing: float
    restoring: float
    running: float  # every signature and the train step, XLA's compilations included
    cpu: float
    peak_rss: int


@dataclass
class GraphReport:
    tag_set: str
    checks: list[Check] = field(default_factory=list)
    cost: GraphCost | None = None  # None if its process died before reporting

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class VerifyReport:
    path: Path
    checks: list[Check]
    graphs: list[GraphReport]
    url: str | None = None  # for a remote package, whose local copy `path` is gone

    @property
    def location(self) -> str:
        return self.url or str(self.path)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and all(g.passed for g in self.graphs)

    def rows(self) -> Iterator[tuple[str, Check]]:
        """Every check with what it is about: "(package)", then each graph's tag set."""
        for check in self.checks:
            yield "(package)", check
        for graph in self.graphs:
            for check in graph.checks:
                yield graph.tag_set, check


def verify_package(location: str | Path, on_step: StepCallback | None = None) -> VerifyReport:
    """Check every MetaGraph of the SavedModel at `location` (a folder or URL).

    Never raises for a bad graph. A remote package is fetched whole and checked locally.
    """
    schedule_xla_cpu_for_memory()  # for a caller that imported TensorFlow itself
    start_server()  # it imports TensorFlow while the package is fetched and read
    step = Steps(int(is_url(location)), on_step)
    if is_url(location):
        step(f"fetching {location}")
    with fetched(location) as export_dir:
        report = _verify_local(export_dir, step)
    if is_url(location):
        report.url = str(location).rstrip("/")
    return report


def _verify_local(export_dir: Path, step: Steps) -> VerifyReport:
    saved_model = read_saved_model(export_dir)
    step.total += 1 + len(saved_model.meta_graphs)
    step("checking the package's files")
    tag_sets = [frozenset(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    duplicates = sorted({",".join(sorted(t)) for t in tag_sets if tag_sets.count(t) > 1})
    package_checks = [
        Check(
            "tag sets unique",
            not duplicates,
            f"repeated: {'; '.join(duplicates)}" if duplicates else "",
        ),
    ]
    # Only smpack's packages carry the record and cards; any other SavedModel has nothing to
    # match, but one whose cards say smpack built it must have its record. Hashing every file
    # reads the weights once more (0.75 s a GiB): it runs on a thread of its own (hashlib
    # lets go of the GIL) while the graphs load.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="smpack-verify") as pool:
        record = claims_smpack(export_dir)
        provenance = pool.submit(check_provenance, export_dir) if record else None
        package = read_package(export_dir)
        libraries = _op_libraries_check(package, export_dir, saved_model)
        reports, outputs = _verify_graphs(export_dir, saved_model, package, step)
        if provenance is not None:
            problems = provenance.result()
            name = f"files match {checked_records(export_dir)}"
            package_checks.append(Check(name, not problems, "; ".join(problems[:3])))
    if libraries is not None:
        package_checks.append(libraries)
    methods = {
        key: signature.method_name
        for meta_graph in saved_model.meta_graphs
        for key, signature in meta_graph.signature_def.items()
    }
    requests = _Requests(read_requests(export_dir, EXAMPLES_FILE), read_requests(export_dir))
    synthetic = {key for key in methods if requests.feeds_synthetic(key)}
    _compare_with_float32(outputs, reports, methods, synthetic)
    return VerifyReport(export_dir, package_checks, reports)


def _op_libraries_check(package: PackageInfo, export_dir: Path, saved_model: Any) -> Check | None:
    """Import the modules the build imported, before any graph loads: the graphs' custom
    ops exist only once they are. None for a package that needs none.

    A module that cannot be imported here fails the check only if a graph uses an op this
    TensorFlow lacks: the build may have imported it for the source alone (a Keras model's
    custom layers, beside the manifest), and the package's graphs need only its ops.
    """
    if not package.op_libraries:
        return None
    try:
        import_op_libraries(package.op_libraries, export_dir / RECORD_PATH, "imports")
    except ManifestError as e:
        missing = sorted({op for m in saved_model.meta_graphs for op in graph_ops_unregistered(m)})
        if missing:
            return Check("op libraries import", False, f"{e} (graphs use {', '.join(missing)})")
        return Check("op libraries import", True, f"{e}; no graph needs an op from it")
    return Check("op libraries import", True, ", ".join(package.op_libraries))


def _verify_graphs(
    export_dir: Path,
    saved_model: Any,
    package: PackageInfo,
    step: Steps,
) -> tuple[list[GraphReport], dict[str, tuple[str, dict[str, Any]]]]:
    """Each graph's report and outputs, loading each graph in a process of its own.

    A graph's process holds the weights while it is checked and returns all its memory when
    it exits. Two run at once only while the memory both may need fits in _MEMORY_BUDGET and
    in what the machine can still give (read once, now); otherwise one at a time, so that
    verify's peak is the heaviest graph's rather than the sum of them, plus the runtime of
    the next graph's process, which starts ahead and waits for its turn to restore.
    """
    room = available_memory()
    checkpoint = {v.name: (v.dtype, v.shape) for v in package.variables}
    requests = _Requests(read_requests(export_dir, EXAMPLES_FILE), read_requests(export_dir))
    reports, jobs = [], []
    for index, (meta_graph, info) in enumerate(
        zip(saved_model.meta_graphs, package.graphs, strict=True)
    ):
        report = GraphReport(info.tag_set)
        report.checks.append(_variables_check(meta_graph, checkpoint))
        report.checks.append(_assets_check(meta_graph, export_dir))
        made_up = MadeUpInputs.of_graph(meta_graph, export_dir)
        arguments = (
            export_dir,
            index,
            dataclasses.replace(requests, made_up=made_up),
            package.op_libraries,
        )
        description = f"smpack verify {info.tag_set}"
        memory = _memory_needed(info, package.variables_bytes)
        jobs.append(Job(_check_graph, arguments, description, memory, _GRAPH_RUNTIME))
        reports.append(report)
    results = run_each_in_own_process(
        jobs,
        min(_MEMORY_BUDGET, room),
        at_once=_GRAPHS_AT_ONCE,
        on_start=lambda index: step(f"loading and running {reports[index].tag_set}"),
        room=room,
    )
    outputs = {}
    for report, info, result in zip(reports, package.graphs, results, strict=True):
        if isinstance(result, GraphProcessDied):
            checks, graph_outputs = [Check("loads and runs", False, f"{result}: not checked")], {}
        else:
            checks, graph_outputs, report.cost = result
        report.checks.extend(checks)
        outputs[report.tag_set] = (info.precision, graph_outputs)
    return reports, outputs


def _memory_needed(graph: GraphInfo, weights: int) -> int:
    """What a graph's process may need at its peak, above the server it is forked from: the
    weights it restores, with what a half-precision or XLA graph computes beside them (at
    most 1.22x the weights measured, README "What verify costs"), and its own runtime."""
    half = any(p in HALF_PRECISIONS for p in graph.precision.split(", "))
    factor = 1.25 if half or graph.xla or graph.tpu else 1.1
    return int(weights * factor) + _GRAPH_RUNTIME


def _check_graph(
    export_dir: Path, index: int, requests: _Requests, op_libraries: Sequence[str]
) -> tuple[list[Check], dict[str, Any], GraphCost]:
    """The checks of MetaGraph `index` run through TensorFlow, its outputs (see
    `_run_graph`) and what they cost. Run in the graph's own process, which imports the op
    libraries too, since the graph's custom ops exist only once they are. One that does not
    import is the caller's "op libraries import" check; the graph loads without it, as it
    would in the caller (and fails to, if it needs its ops)."""
    if op_libraries:
        with contextlib.suppress(ManifestError):
            import_op_libraries(op_libraries, export_dir / RECORD_PATH, "imports")
    report = GraphReport("")
    meta_graph = read_saved_model(export_dir).meta_graphs[index]
    seconds = _Seconds()
    outputs = _run_graph(export_dir, meta_graph, report, requests, seconds)
    usage = resource.getrusage(resource.RUSAGE_SELF)  # Linux counts ru_maxrss in KiB
    loaded = seconds.loaded
    cost = GraphCost(
        loaded.importing,
        loaded.restoring,
        seconds.running,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss * 1024,
    )
    return report.checks, outputs, cost


@dataclass
class _Seconds:
    """Where `_run_graph` spent its time: the load's two steps, then the runs."""

    loaded: LoadSeconds = LoadSeconds(0.0, 0.0)
    running: float = 0.0

    @contextlib.contextmanager
    def runs(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.running += time.perf_counter() - start


def _variables_check(meta_graph: Any, checkpoint: dict[str, tuple[str, tuple[int, ...]]]) -> Check:
    # TF1 graphs restore each variable under its op name; TF2 graphs restore through the
    # object graph, whose keys only the loader can match (the "loads" check).
    if _OBJECT_GRAPH_KEY in checkpoint:
        return Check("variables in checkpoint", True, "object-based checkpoint: checked by loading")
    problems = []
    for node, key, spec in restored_variables(meta_graph.graph_def):
        named = node.name if key == node.name else f"{node.name} (checkpoint key {key})"
        dtype = dtype_name(node.attr["dtype"].type)
        # A partitioned variable's part restores a slice of the whole tensor.
        shape = full_shape(spec) if spec else tuple(d.size for d in node.attr["shape"].shape.dim)
        if key not in checkpoint:
            problems.append(f"{named} missing from the checkpoint")
        elif checkpoint[key] != (dtype, shape):
            found = checkpoint[key]
            problems.append(
                f"{named} is {dtype}{list(shape)} in the graph but "
                f"{found[0]}{list(found[1])} in the checkpoint"
            )
    return Check("variables in checkpoint", not problems, "; ".join(problems[:3]))


def _assets_check(meta_graph: Any, export_dir: Path) -> Check:
    missing = [
        a.filename
        for a in meta_graph.asset_file_def
        if not (export_dir / "assets" / a.filename).is_file()
    ]
    return Check("assets present", not missing, f"missing: {', '.join(missing)}" if missing else "")


def _run_graph(
    export_dir: Path, meta_graph: Any, report: GraphReport, requests: _Requests, seconds: _Seconds
) -> dict[str, Any]:
    """Load the graph and run its serving signatures on the package's examples, else its
    warmup requests (TF Serving will replay exactly those), else on synthetic inputs; and
    a train signature for one step. What loading and running took goes into `seconds`.

    Returns each serving signature's outputs for its first input set, for comparing variants.
    """
    tags = list(meta_graph.meta_info_def.tags)
    signatures = {
        k: s for k, s in meta_graph.signature_def.items() if s.method_name in METHODS.values()
    }
    results: dict[str, Any] = {}
    if any(n.op == "TPUReplicateMetadata" for n in meta_graph.graph_def.node):
        # No TPU kernels here, so no Session can hold this graph: check the tensor names
        # against the GraphDef, and run the stored computation with XLA on CPU instead.
        report.checks.append(_signature_nodes_check(meta_graph))
        with contextlib.ExitStack() as stack:
            # Loaded once for all signatures and requests; a failure to load is each
            # signature's failure, as it would be for each request TF Serving gets.
            try:
                graph = stack.enter_context(tpu_graph_on_cpu(export_dir, tags))
                seconds.loaded = graph.load_seconds
                load_error: Exception | None = None
            except _GRAPH_FAILURES as e:
                load_error = e
            stack.enter_context(seconds.runs())
            for key, signature in sorted(signatures.items()):
                feeds = requests.feeds(key, signature)
                name = f"signature {key} runs {feeds.description} (TPU computation on XLA:CPU)"
                if load_error is not None:  # the graph's failure, whatever the inputs
                    report.checks.append(Check(name, False, telling_line(load_error)[:300]))
                    continue
                again = feeds.again(functools.partial(graph.run, key))
                with _check(report, name, feeds.synthetic, again):
                    for inputs in feeds.values:
                        results.setdefault(key, graph.run(key, inputs))
        return results
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    with tf.compat.v1.Session(graph=tf.Graph(), config=config) as session:
        with _check(report, "loads"):
            # Without the pins this host cannot honour: soft placement would move them to
            # the same devices, logging every moved variable's colocation group.
            clear_devices = pins_this_host_lacks(meta_graph)
            with refused_by_tensorflow(*LOADER_REFUSALS):
                loader = loader_impl.SavedModelLoader(str(export_dir))
                seconds.loaded = load_in_turn(loader, session, tags, clear_devices=clear_devices)
        if not report.checks[-1].passed:
            return results
        with seconds.runs():
            _run_signatures(session, meta_graph, signatures, report, requests, results)
    return results


def _run_signatures(
    session: tf.compat.v1.Session,
    meta_graph: Any,
    signatures: Mapping[str, Any],
    report: GraphReport,
    requests: _Requests,
    results: dict[str, Any],
) -> None:
    """`_run_graph`'s checks of a graph loaded into `session`; serving outputs into `results`."""
    with _check(report, "signature tensors resolve"):
        for _, name in _signature_tensors(meta_graph):
            with refused_by_tensorflow(*NAME_REFUSALS):
                session.graph.get_tensor_by_name(name)
    for key, signature in sorted(signatures.items()):
        feeds = requests.feeds(key, signature)
        name = f"signature {key} runs {feeds.description}"
        again = feeds.again(functools.partial(_run, session, signature))
        with _check(report, name, feeds.synthetic, again):
            for inputs in feeds.values:
                results.setdefault(key, _run(session, signature, inputs))
    for key, signature in sorted(meta_graph.signature_def.items()):
        if signature.method_name != TRAIN_METHOD:
            continue
        # Last: the step changes the session's variables (never the package's).
        feeds = requests.feeds(key, signature)
        name = f"signature {key} takes a step {feeds.description}"
        again = feeds.again(functools.partial(_run, session, signature))
        with _check(report, name, feeds.synthetic, again):
            for output, value in _run(session, signature, feeds.values[0]).items():
                # A loss is a number; an output of another kind (a string) has no inf.
                value = np.asarray(value)
                if value.dtype.kind in "fc" and not np.isfinite(value).all():
                    msg = f"{output} is {value} after one step"
                    raise GraphRefused(msg)


def _run(session: Any, signature: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    fetches = {k: v.name for k, v in signature.outputs.items()}
    feeds = feed_dict(signature, inputs)
    with refused_by_tensorflow(*RUN_REFUSALS):
        return dict(session.run(fetches, feeds))


@dataclass(frozen=True)
class _Requests:
    """The package's stored input sets by signature key: its examples and warmup requests."""

    examples: Mapping[str, list[dict[str, np.ndarray]]]
    warmup: Mapping[str, list[dict[str, np.ndarray]]]
    made_up: MadeUpInputs = MadeUpInputs()  # how the graph's inputs are made up without them

    def feeds_synthetic(self, key: str) -> bool:
        """Whether signature `key` runs on inputs verify makes up (no example or request)."""
        return not (self.examples.get(key) or self.warmup.get(key))

    def feeds(self, key: str, signature: Any) -> _Feeds:
        for found, kind in ((self.examples, "example"), (self.warmup, "warmup request")):
            if found.get(key):
                count = len(found[key])
                return _Feeds(found[key], f"on its {count} {kind}{'s' if count > 1 else ''}", False)
        described = "on synthetic inputs" + self.made_up.text_kind(key, signature)
        second = self.made_up.inputs(key, signature, second=True)
        return _Feeds([self.made_up.inputs(key, signature)], described, True, second)


@dataclass(frozen=True)
class _Feeds:
    """The input sets a signature is run on, and where they come from."""

    values: list[dict[str, np.ndarray]]
    description: str
    synthetic: bool
    second: dict[str, np.ndarray] | None = None  # made up: another set, to tell whose fault

    def again(self, run: Callable[[dict[str, np.ndarray]], object]) -> Callable[[], object] | None:
        """`run` on the second made-up set, if these inputs are made up."""
        second = self.second
        return None if second is None else lambda: run(second)


def _signature_tensors(meta_graph: Any) -> Iterator[tuple[str, str]]:
    """(signature key, tensor name) of every signature input and output."""
    for key, signature in meta_graph.signature_def.items():
        # __saved_model_init_op and __saved_model_train_op name operations, not tensors.
        if key.startswith("__saved_model"):
            continue
        for info in [*signature.inputs.values(), *signature.outputs.values()]:
            yield key, info.name


def _signature_nodes_check(meta_graph: Any) -> Check:
    nodes = {node.name for node in meta_graph.graph_def.node}
    missing = sorted(
        f"{key}: {name}"
        for key, name in _signature_tensors(meta_graph)
        if name.rpartition(":")[0] not in nodes
    )
    return Check(
        "signature tensors resolve (in the GraphDef)",
        not missing,
        f"no such node: {', '.join(missing[:3])}" if missing else "",
    )


@contextlib.contextmanager
def _check(
    report: GraphReport,
    name: str,
    synthetic: bool = False,
    again: Callable[[], object] | None = None,
) -> Iterator[None]:
    """Record the block's failure as `name`'s; on made-up inputs, only a warning, unless
    `again` (the block on a second made-up input set) fails with the same error: one that
    no input changes (a kernel rejecting the graph's own attributes or variables' shapes).
    An error naming a value or a size differs between the two sets, and stays a warning."""
    try:
        yield
    except _GRAPH_FAILURES as e:
        reason = telling_line(e)[:300]
        if synthetic and again is not None and _fails_alike(again, reason):
            detail = f"failed alike on two sets of made-up inputs, whatever their values: {reason}"
            report.checks.append(Check(name, False, detail))
            return
        if not synthetic:
            report.checks.append(Check(name, False, reason))
            return
        detail = (
            f"failed on inputs verify made up, which may be outside the model's range ({reason}); "
            "give the manifest examples: to check the graph on valid inputs"
        )
        report.checks.append(Check(name, True, detail, warning=True))
    else:
        report.checks.append(Check(name, True))


def _fails_alike(again: Callable[[], object], reason: str) -> bool:
    try:
        again()
    except _GRAPH_FAILURES as e:
        return telling_line(e)[:300] == reason
    return False


def _compare_with_float32(
    outputs: dict[str, tuple[str, dict[str, Any]]],
    reports: list[GraphReport],
    methods: Mapping[str, str],
    synthetic: Set[str] = frozenset(),
) -> None:
    """Check each half-precision graph's outputs against the float32 serving graph's.

    On inputs verify made up (the keys in `synthetic`), an output may be far smaller than
    the values it is computed from (a regression head on constant features: 0.03 from terms
    near 1), so correct float16 rounding can exceed the tolerance of its scale. There a
    finite difference within `_MADE_UP_SLACK` tolerances passes with a warning asking for
    examples; beyond that, or not finite, or a different top class, it fails.
    """
    reference_tag_set = next(
        (
            t
            for t, (precision, results) in outputs.items()
            if precision == "float32" and results and "train" not in t.split(",")
        ),
        None,
    )
    if reference_tag_set is None:
        return
    reference = outputs[reference_tag_set][1]
    for report in reports:
        precision, results = outputs[report.tag_set]
        if report.tag_set == reference_tag_set or "train" in report.tag_set.split(","):
            continue
        # A graph mixing precisions gets the loosest tolerance of them.
        tolerance = max(TOLERANCES.get(p, TOLERANCES["bfloat16"]) for p in precision.split(", "))
        for key in sorted(results.keys() & reference.keys()):
            problems, notes = [], []
            for name in sorted(results[key].keys() & reference[key].keys()):
                value, expected = np.asarray(results[key][name]), np.asarray(reference[key][name])
                if value.dtype.kind != "f" or value.shape != expected.shape:
                    continue
                error, scale = _relative_error(value, expected)
                if error == float("inf"):
                    problems.append(f"{name} is inf or NaN where {reference_tag_set} is finite")
                elif error > tolerance * (_MADE_UP_SLACK if key in synthetic else 1):
                    problems.append(f"{name} differs by {error:.2%} of its scale {scale:.3g}")
                elif error > tolerance:
                    notes.append(f"{name} differs by {error:.2%} of its scale {scale:.3g}")
                if _is_distribution(expected) or (
                    methods.get(key) == METHODS["classify"] and name == "scores"
                ):
                    top1 = _top1_disagreement(value, expected, tolerance * scale)
                    if top1:
                        problems.append(f"{name}: top-1 differs on {top1}")
            check = (
                f"{key} agrees with {reference_tag_set} "
                f"({precision}: within {tolerance:.0%} of scale)"
            )
            if problems or not notes:
                report.checks.append(Check(check, not problems, "; ".join(problems)))
                continue
            detail = (
                f"{'; '.join(notes)} on inputs verify made up, which may make an output far "
                "smaller than the values computing it; give the manifest examples: to check "
                "the graph on valid inputs"
            )
            report.checks.append(Check(check, True, detail, warning=True))


def _relative_error(value: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """The largest difference as a fraction of the output's scale (its largest finite
    magnitude), and that scale; infinite where `value` is not finite but `expected` is."""
    value64, expected64 = value.astype(np.float64), expected.astype(np.float64)
    finite = np.isfinite(expected64)
    scale = float(np.abs(expected64[finite]).max(initial=0.0)) or 1.0
    if not np.isfinite(value64[finite]).all():
        return float("inf"), scale
    difference = np.abs(value64[finite] - expected64[finite])
    return float(difference.max(initial=0.0)) / scale, scale


def _is_distribution(value: np.ndarray) -> bool:
    """Whether `value` holds rows of class probabilities (a softmax classifier's output)."""
    rows = value.astype(np.float64)
    return bool(
        rows.ndim >= 2
        and rows.shape[-1] >= 2
        and rows.size
        and rows.min() >= 0
        and np.allclose(rows.sum(axis=-1), 1.0, atol=1e-3)
    )


def _top1_disagreement(value: np.ndarray, expected: np.ndarray, margin: float) -> str:
    """Rows whose top class differs, among rows whose float32 top two classes are more than
    2 x `margin` apart (closer ones may swap within the tolerance), as "k of n rows"."""
    rows = expected.reshape(-1, expected.shape[-1]).astype(np.float64)
    values = value.reshape(rows.shape)
    top2 = np.sort(rows, axis=-1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) > 2 * margin
    differ = decided & (rows.argmax(axis=-1) != values.argmax(axis=-1))
    return f"{int(differ.sum())} of {int(decided.sum())} rows" if differ.any() else ""
