"""`verify`: load every MetaGraph of a package through TensorFlow and check it would serve.

Each check is a record with a reason; nothing is printed here. TF's builder accepts
packages that only fail at serving time (a variable missing from the checkpoint, two
graphs with one tag set, an asset that is not there), so these are checked explicitly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import gc
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from smpack.builder.provenance import check_provenance, claims_smpack
from smpack.builder.warmup import read_warmup_requests
from smpack.checks.xla_check import tpu_graph_on_cpu
from smpack.errors import ManifestError, SmpackError, telling_line
from smpack.io.storage import fetched, is_url
from smpack.manifest import EXAMPLE_METHODS, METHODS
from smpack.package.dtypes import dtype_name
from smpack.package.info import PackageInfo, read_package
from smpack.package.layout import RECORD_PATH
from smpack.package.protos import read_saved_model
from smpack.progress import StepCallback, Steps
from smpack.sources.op_libraries import import_op_libraries

# What a broken graph raises: TF's runtime errors, a tensor name the graph lacks
# (KeyError, ValueError), a feed its dtype refuses (TypeError), the XLA check's verdict.
# Anything else is a bug in verify and surfaces as one.
_GRAPH_FAILURES = (tf.errors.OpError, KeyError, ValueError, TypeError, SmpackError)

# How far a lower-precision variant's outputs may stray from the float32 graph's.
TOLERANCES = {"float32": (1e-5, 1e-6), "float16": (1e-2, 1e-2), "bfloat16": (2e-2, 2e-2)}
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class GraphReport:
    tag_set: str
    checks: list[Check] = field(default_factory=list)

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
        libraries = _op_libraries_check(package, export_dir)
        reports, outputs = _verify_graphs(export_dir, saved_model, package, step)
        if provenance is not None:
            problems = provenance.result()
            package_checks.append(
                Check(f"files match {RECORD_PATH}", not problems, "; ".join(problems[:3]))
            )
    if libraries is not None:
        package_checks.append(libraries)
    _compare_with_float32(outputs, reports)
    return VerifyReport(export_dir, package_checks, reports)


def _op_libraries_check(package: PackageInfo, export_dir: Path) -> Check | None:
    """Import the modules the build imported, before any graph loads: the graphs' custom
    ops exist only once they are. None for a package that needs none."""
    if not package.op_libraries:
        return None
    try:
        import_op_libraries(package.op_libraries, export_dir / RECORD_PATH, "imports")
    except ManifestError as e:
        return Check("op libraries import", False, str(e))
    return Check("op libraries import", True, ", ".join(package.op_libraries))


def _verify_graphs(
    export_dir: Path, saved_model: Any, package: PackageInfo, step: Steps
) -> tuple[list[GraphReport], dict[str, tuple[str, dict[str, Any]]]]:
    """Each graph's report and outputs, loading one graph at a time.

    Each graph holds the weights while it is checked (a float16 or XLA graph about twice
    over); its session is gone, and its memory free, before the next one loads, so verify's
    peak is the heaviest graph's rather than the sum of them.
    """
    checkpoint = {v.name: (v.dtype, v.shape) for v in package.variables}
    warmup = read_warmup_requests(export_dir)
    reports, outputs = [], {}
    for meta_graph, info in zip(saved_model.meta_graphs, package.graphs, strict=True):
        report = GraphReport(info.tag_set)
        step(f"loading and running {info.tag_set}")
        report.checks.append(_variables_check(meta_graph, checkpoint))
        report.checks.append(_assets_check(meta_graph, export_dir))
        graph_outputs = _run_graph(export_dir, meta_graph, report, warmup)
        outputs[report.tag_set] = (info.precision, graph_outputs)
        reports.append(report)
        _return_freed_memory()
    return reports, outputs


def _return_freed_memory() -> None:
    """Collect the closed session (and its variables), then hand freed heap pages back.

    glibc keeps freed blocks below its mmap threshold, and TensorFlow without oneDNN frees
    weights into them: 1 GiB of them stayed resident after a graph was closed. (oneDNN's
    allocator keeps its own pool, which the next graph reuses.)
    """
    gc.collect()
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl): nothing to trim
            ctypes.CDLL(None).malloc_trim(0)


def _variables_check(meta_graph: Any, checkpoint: dict[str, tuple[str, tuple[int, ...]]]) -> Check:
    # TF1 graphs restore each variable under its op name; TF2 graphs restore through the
    # object graph, whose keys only the loader can match (the "loads" check).
    if _OBJECT_GRAPH_KEY in checkpoint:
        return Check("variables in checkpoint", True, "object-based checkpoint: checked by loading")
    problems = []
    for node in meta_graph.graph_def.node:
        if node.op not in ("VarHandleOp", "VariableV2", "Variable"):
            continue
        dtype = dtype_name(node.attr["dtype"].type)
        shape = tuple(d.size for d in node.attr["shape"].shape.dim)
        if node.name not in checkpoint:
            problems.append(f"{node.name} missing from the checkpoint")
        elif checkpoint[node.name] != (dtype, shape):
            found = checkpoint[node.name]
            problems.append(
                f"{node.name} is {dtype}{list(shape)} in the graph but "
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
    export_dir: Path,
    meta_graph: Any,
    report: GraphReport,
    warmup: Mapping[str, list[dict[str, np.ndarray]]],
) -> dict[str, Any]:
    """Load the graph and run its serving signatures on the package's warmup requests where
    it has some (TF Serving will replay exactly those), else on inputs made from the specs.

    Returns each signature's outputs for its first input set, for comparing variants.
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
                load_error: Exception | None = None
            except _GRAPH_FAILURES as e:
                load_error = e
            for key, signature in sorted(signatures.items()):
                name = f"signature {key} runs{_replaying(warmup, key)} (TPU computation on XLA:CPU)"
                with _check(report, name):
                    if load_error is not None:
                        raise load_error
                    for inputs in warmup.get(key) or [spec_inputs(signature)]:
                        results.setdefault(key, graph.run(key, inputs))
        return results
    config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
    with tf.compat.v1.Session(graph=tf.Graph(), config=config) as session:
        with _check(report, "loads"):
            tf.compat.v1.saved_model.loader.load(session, tags, str(export_dir))
        if not report.checks[-1].passed:
            return results
        with _check(report, "signature tensors resolve"):
            for _, name in _signature_tensors(meta_graph):
                session.graph.get_tensor_by_name(name)
        for key, signature in sorted(signatures.items()):
            with _check(report, f"signature {key} runs{_replaying(warmup, key)}"):
                fetches = {k: v.name for k, v in signature.outputs.items()}
                for inputs in warmup.get(key) or [spec_inputs(signature)]:
                    feeds = {signature.inputs[k].name: v for k, v in inputs.items()}
                    results.setdefault(key, session.run(fetches, feeds))
    return results


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


def _replaying(warmup: Mapping[str, list[Any]], key: str) -> str:
    count = len(warmup.get(key, []))
    return f" on its {count} warmup request{'s' if count != 1 else ''}" if count else ""


@contextlib.contextmanager
def _check(report: GraphReport, name: str) -> Iterator[None]:
    try:
        yield
    except _GRAPH_FAILURES as e:
        report.checks.append(Check(name, False, telling_line(e)[:300]))
    else:
        report.checks.append(Check(name, True))


def spec_inputs(signature: Any) -> dict[str, np.ndarray]:
    """Deterministic inputs matching each input's dtype and shape (unknown sizes become 8)."""
    rng = np.random.default_rng(0)
    inputs = {}
    for key in sorted(signature.inputs):
        info = signature.inputs[key]
        shape = tuple(d.size if d.size >= 0 else 8 for d in info.tensor_shape.dim)
        dtype = dtype_name(info.dtype)
        if dtype == "string" and signature.method_name in EXAMPLE_METHODS:
            # Serialized tf.Examples; the empty string is a valid empty one.
            inputs[key] = np.full(shape, b"", dtype=object)
        elif dtype == "string":
            words = np.array([b"good", b"bad", b"smpack", b"verify"], dtype=object)
            inputs[key] = rng.choice(words, size=shape)
        elif dtype in ("float16", "bfloat16", "float32", "float64"):
            inputs[key] = rng.uniform(-1, 1, size=shape).astype(
                np.float32 if dtype != "float64" else np.float64
            )
        elif dtype == "bool":
            inputs[key] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            inputs[key] = rng.integers(0, 4, size=shape).astype(dtype)
    return inputs


def _compare_with_float32(
    outputs: dict[str, tuple[str, dict[str, Any]]], reports: list[GraphReport]
) -> None:
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
        rtol, atol = max(TOLERANCES.get(p, TOLERANCES["bfloat16"]) for p in precision.split(", "))
        for key in sorted(results.keys() & reference.keys()):
            mismatched = [
                name
                for name, value in results[key].items()
                if np.asarray(value).dtype.kind == "f"
                and name in reference[key]
                and np.shape(value) == np.shape(reference[key][name])
                and not np.allclose(value, reference[key][name], rtol=rtol, atol=atol)
            ]
            report.checks.append(
                Check(
                    f"{key} agrees with {reference_tag_set} ({precision} tolerance)",
                    not mismatched,
                    f"outputs differ: {', '.join(mismatched)}" if mismatched else "",
                )
            )
