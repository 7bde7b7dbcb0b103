"""Measuring every variant the host can run: load time, warm latency, agreement, metrics.

A card's "speeds, sizes, times" are otherwise typed by hand or left empty. Each variant is
loaded as TF Serving loads it (a Session and the SavedModel loader), its serving signature
run on one request (the caller's examples, else the package's first warmup request, else
inputs made from the signature's specs), and its outputs compared with the float32
variant's on that request. A variant the host cannot run as it is meant to run (TPU;
GPU-pinned on a host without a GPU) is marked "not measured here" and gets no number: a
guess would pass for a measurement.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from smpack.builder.warmup import read_requests
from smpack.checks.feeds import MadeUpInputs, feed_dict
from smpack.errors import (
    LOADER_REFUSALS,
    RUN_REFUSALS,
    GraphRefused,
    ManifestError,
    first_line,
    refused_by_tensorflow,
)
from smpack.io.storage import fetched
from smpack.manifest import LoadedManifest
from smpack.manifest.evaluation_data import (
    EvaluationDataError,
    check_columns,
    read_evaluation_data,
)
from smpack.package.dtypes import numpy_dtype
from smpack.package.info import GraphInfo, PackageInfo, read_package
from smpack.package.layout import EXAMPLES_FILE
from smpack.package.protos import read_saved_model
from smpack.progress import StepCallback, Steps

NOT_MEASURED_HERE = "not measured here"
WARM_RUNS = 30  # timed runs, after one untimed run that pays for lazy initialisation
# Rows of evaluation data fed at once to a signature of any batch size: the graph's
# activations grow with them, and the whole file at once could need many times its size.
EVALUATION_BATCH = 256
_TINY = float(np.finfo(np.float32).tiny)

Request = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Agreement:
    """How far a variant's outputs are from the float32 variant's on the same request."""

    reference: str  # the float32 variant's tag set
    # The largest, over the float outputs, of max |out - ref| / max |ref|: relative to the
    # output's scale, since an elementwise relative error explodes near zero. None when
    # the variant's outputs hold inf or NaN where the reference's are finite.
    max_relative_error: float | None
    # Share of rows whose top class (argmax of a [batch, classes] float output) or integer
    # output (class ids) is the reference's; None when no output is either.
    top1_agreement: float | None = None


@dataclass(frozen=True)
class Measurement:
    """One variant measured on `host`, or why it was not (`reason`, and no numbers)."""

    tag_set: str
    host: str
    reason: str = ""
    signature: str | None = None
    batch_size: int | None = None
    load_seconds: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    warm_runs: int | None = None
    agreement: Agreement | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # on `evaluation_data`
    evaluation_data: str | None = None  # the evaluation file's name

    @property
    def measured(self) -> bool:
        return not self.reason

    def record(self) -> dict[str, Any]:
        """What smpack_measured.json keeps for the variant (the cards read it)."""
        record = dataclasses.asdict(self)
        del record["tag_set"]
        return record


@dataclass(frozen=True)
class Evaluation:
    """The manifest's `evaluate:` block with its data file resolved."""

    data: Path
    metrics: tuple[str, ...]
    signature: str
    output: str | None
    manifest: Path
    label: str = "labels"

    @classmethod
    def from_manifest(cls, loaded: LoadedManifest) -> Evaluation | None:
        block = loaded.spec.evaluate
        if block is None or loaded.evaluate_data is None:
            return None
        return cls(
            loaded.evaluate_data,
            tuple(block.metrics),
            block.signature,
            block.output,
            loaded.path,
            block.label,
        )

    def _error(self, message: str, field: str) -> ManifestError:
        return ManifestError(message, file=self.manifest, field=f"evaluate.{field}")

    def run(self, session: tf.compat.v1.Session, meta_graph: Any) -> dict[str, float]:
        """The metrics of the loaded graph on the evaluation data."""
        if self.signature not in meta_graph.signature_def:
            msg = f"the graph has no signature {self.signature!r}"
            raise self._error(msg, "signature")
        signature = meta_graph.signature_def[self.signature]
        output = self.output
        if output is None and len(signature.outputs) == 1:
            output = next(iter(signature.outputs))
        if output is None or output not in signature.outputs:
            msg = f"name the output compared with the labels: one of {sorted(signature.outputs)}"
            raise self._error(msg, "output")
        try:
            arrays = read_evaluation_data(self.data)
            check_columns(arrays, self.data.name, set(signature.inputs), self.label)
            labels = arrays.pop(self.label)
            arrays = {
                key: self._typed(key, column, signature.inputs[key].dtype)
                for key, column in arrays.items()
            }
        except EvaluationDataError as e:
            raise self._error(str(e), "data") from e
        # Each chunk's predictions are cut to what the metrics compare with its labels as
        # they come (class ids, not class scores), so what is held grows with the labels,
        # not the output (a language model's scores are rows x vocabulary).
        compared: dict[str, list[np.ndarray]] = {name: [] for name in self.metrics}
        done = 0
        try:
            with refused_by_tensorflow(*RUN_REFUSALS):
                for feeds in _batches(signature, arrays):
                    rows = min(len(next(iter(feeds.values()))), len(labels) - done)
                    predictions = session.run(signature.outputs[output].name, feeds)[:rows]
                    for name, parts in compared.items():
                        parts.append(_compared(name, predictions, labels[done : done + rows]))
                    done += rows
        except (tf.errors.OpError, GraphRefused) as e:
            msg = f"{self.data.name} does not fit signature {self.signature!r}: {first_line(e)}"
            raise self._error(msg, "data") from e
        return {name: _metric(name, np.concatenate(compared[name]), labels) for name in compared}

    def _typed(self, key: str, column: np.ndarray, dtype_enum: int) -> np.ndarray:
        """`column` as the signature input's dtype, if its values are of that kind."""
        dtype = tf.dtypes.as_dtype(dtype_enum)
        kinds = {"string": "OSU", "bool": "b"}.get(dtype.name)
        if kinds is None:
            # Integers feed floats too (a tf.Example's YAML-typed 0 or 1); nothing else mixes.
            integer = dtype.is_integer or dtype.is_quantized
            kinds = "fiub" if dtype.is_floating else "iub" if integer else ""
        if column.dtype.kind not in kinds:
            held = {"O": "bytes", "S": "bytes", "U": "string", "f": "float", "b": "bool"}
            msg = (
                f"{self.data.name}: {key!r} holds {held.get(column.dtype.kind, 'integer')} "
                f"values, but signature {self.signature!r} takes {dtype.name}"
            )
            raise EvaluationDataError(msg)
        if dtype == tf.string:
            return column
        if column.dtype.kind in "iuf":
            # astype wraps an integer (300 as int8 is 44) and overflows a float to inf.
            low, high = _value_range(dtype)
            outside = np.isfinite(column) & ((column < low) | (column > high))
            if outside.any():
                value = column[outside].flat[0].item()
                msg = (
                    f"{self.data.name}: {key!r} holds {value}, outside {dtype.name}'s range "
                    f"[{low}, {high}] that signature {self.signature!r} takes"
                )
                raise EvaluationDataError(msg)
        return column.astype(numpy_dtype(dtype.name))


def _value_range(dtype: tf.DType) -> tuple[Any, Any]:
    """The least and greatest finite values of `dtype` (a quantized one's: its storage's)."""
    if dtype.is_quantized:
        record = numpy_dtype(dtype.name)
        assert record is not None  # dtypes.py has a record for every quantized dtype
        storage = np.iinfo(record[0])
        return storage.min, storage.max
    return dtype.min, dtype.max


def host_description() -> str:
    """The host as a card names it: CPU model and count, GPUs, TensorFlow version."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = " ".join(line.partition(":")[2].split())
                break
    gpus = len(tf.config.list_physical_devices("GPU"))
    accelerators = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {accelerators}, TensorFlow {tf.__version__}"


def why_not_measured(graph: GraphInfo, gpus: int) -> str:
    """Why this host cannot run `graph` as it is meant to run, or "" if it can."""
    if graph.tpu:
        return f"{NOT_MEASURED_HERE}: needs a TPU"
    if any("GPU" in device for device in graph.devices) and not gpus:
        return f"{NOT_MEASURED_HERE}: needs a GPU"
    return ""


def measure_location(
    location: str | Path,
    *,
    evaluation: Evaluation | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, dict[str, Any]]:
    """`measure_package` of the package at `location` (a folder or URL), as the records
    smpack_measured.json keeps, by tag set."""
    with fetched(location) as export_dir:
        measured = measure_package(export_dir, evaluation=evaluation, on_step=on_step)
    return {m.tag_set: m.record() for m in measured}


def measure_package(
    export_dir: Path,
    *,
    examples: Mapping[str, Request] | None = None,
    evaluation: Evaluation | None = None,
    runs: int = WARM_RUNS,
    on_step: StepCallback | None = None,
    package: PackageInfo | None = None,
) -> list[Measurement]:
    """Measure every MetaGraph of the local package at `export_dir`, in file order.

    `examples` maps a signature key to one request (input key -> array): the hook for the
    manifest's examples. Each variant runs its `serving_default` signature, else its first.
    `package` is the package as read already (a build's), else it is read here.
    Raises `ManifestError` for evaluation data that does not fit the graphs.
    """
    info = package or read_package(export_dir)
    saved_model = read_saved_model(export_dir)
    step = Steps(len(info.graphs), on_step)
    host = host_description()
    gpus = len(tf.config.list_physical_devices("GPU"))
    # Valid inputs first: the manifest's examples stored with the package, then warmup.
    stored = {**read_requests(export_dir), **read_requests(export_dir, EXAMPLES_FILE)}
    measurements: list[Measurement] = []
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for graph, meta_graph in zip(info.graphs, saved_model.meta_graphs, strict=True):
        step(f"measuring {graph.tag_set}")
        reason = why_not_measured(graph, gpus)
        chosen = _serving_signature(meta_graph)
        if chosen is None:
            reason = reason or "no signature to run"
        if reason or chosen is None:
            measurements.append(Measurement(graph.tag_set, host, reason))
            continue
        key, signature = chosen
        request = (examples or {}).get(key) or next(iter(stored.get(key, [])), None)
        if request is None:
            feeds = MadeUpInputs.of_graph(meta_graph, export_dir).inputs(key, signature)
        else:
            feeds = dict(request)
        try:
            timing, metrics, outputs[graph.tag_set] = _run(
                export_dir, graph.tags, signature, feeds, runs, evaluation
            )
        except (tf.errors.OpError, GraphRefused) as e:
            # A graph that fails on its own request is verify's to report; no number here.
            reason = f"could not run {key}: {first_line(e)}"
            measurements.append(Measurement(graph.tag_set, host, reason))
            continue
        measurements.append(
            Measurement(
                graph.tag_set,
                host,
                signature=key,
                batch_size=_batch_size(feeds),
                load_seconds=timing.load_seconds,
                latency_p50_ms=timing.latency_p50_ms,
                latency_p99_ms=timing.latency_p99_ms,
                warm_runs=runs,
                metrics=metrics,
                evaluation_data=evaluation.data.name if evaluation else None,
            )
        )
    return _with_agreement(measurements, info.graphs, outputs)


@dataclass(frozen=True)
class _Timing:
    load_seconds: float
    latency_p50_ms: float
    latency_p99_ms: float


def _serving_signature(meta_graph: Any) -> tuple[str, Any] | None:
    keys = [k for k in sorted(meta_graph.signature_def) if not k.startswith("__saved_model")]
    key = "serving_default" if "serving_default" in keys else next(iter(keys), None)
    return None if key is None else (key, meta_graph.signature_def[key])


def _run(
    export_dir: Path,
    tags: tuple[str, ...],
    signature: Any,
    feeds: Request,
    runs: int,
    evaluation: Evaluation | None,
) -> tuple[_Timing, dict[str, float], dict[str, np.ndarray]]:
    """Load time and p50/p99 of `runs` warm runs; the evaluation metrics; the outputs."""
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        start = time.perf_counter()
        with refused_by_tensorflow(*LOADER_REFUSALS):
            meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), str(export_dir))
        load_seconds = time.perf_counter() - start
        fetches = {key: info.name for key, info in signature.outputs.items()}
        named_feeds = feed_dict(signature, feeds)
        with refused_by_tensorflow(*RUN_REFUSALS):
            outputs = session.run(fetches, named_feeds)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(fetches, named_feeds)
            times.append(time.perf_counter() - start)
        metrics = evaluation.run(session, meta_graph) if evaluation is not None else {}
    p50, p99 = np.percentile(np.array(times) * 1000, [50, 99])
    return _Timing(load_seconds, float(p50), float(p99)), metrics, outputs


def _batches(signature: Any, arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """Feeds covering `arrays` row by row, in chunks of a static batch size (the last chunk
    padded by repeating its final row, its padding cut off by the caller), else of at most
    `EVALUATION_BATCH` rows."""
    rows = len(next(iter(arrays.values())))
    first_dims = {
        info.tensor_shape.dim[0].size for info in signature.inputs.values() if info.tensor_shape.dim
    }
    static = len(first_dims) == 1 and -1 not in first_dims
    size = first_dims.pop() if static else EVALUATION_BATCH
    for start in range(0, rows, size):
        feeds = {}
        for key, array in arrays.items():
            chunk = array[start : start + size]
            if static and len(chunk) < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
            feeds[signature.inputs[key].name] = chunk
        yield feeds


def _compared(name: str, predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """What metric `name` compares with `labels`, from the predictions of their rows."""
    if name == "accuracy":
        if predictions.dtype.kind == "f" and predictions.ndim == labels.ndim + 1:
            predictions = np.argmax(predictions, axis=-1)  # class scores -> class ids
        return predictions.reshape(labels.shape)
    return predictions.astype(np.float64).reshape(labels.shape)


def _metric(name: str, compared: np.ndarray, labels: np.ndarray) -> float:
    if name == "accuracy":
        return float(np.mean(compared == labels))
    error = compared - labels
    return float(np.mean(np.square(error)) if name == "mse" else np.mean(np.abs(error)))


def _batch_size(feeds: Request) -> int | None:
    sizes = {np.shape(value)[0] for value in feeds.values() if np.ndim(value) > 0}
    return sizes.pop() if len(sizes) == 1 else None


def _with_agreement(
    measurements: list[Measurement],
    graphs: tuple[GraphInfo, ...],
    outputs: Mapping[str, Mapping[str, np.ndarray]],
) -> list[Measurement]:
    """`measurements`, each compared with the first measured float32 serving variant."""
    reference = next(
        (
            graph.tag_set
            for graph in graphs
            if graph.precision == "float32" and not graph.has_train_op and graph.tag_set in outputs
        ),
        None,
    )
    if reference is None:
        return measurements
    compared = []
    for measurement in measurements:
        if measurement.measured and measurement.tag_set != reference:
            agreement = compare_outputs(outputs[measurement.tag_set], outputs[reference], reference)
            measurement = dataclasses.replace(measurement, agreement=agreement)
        compared.append(measurement)
    return compared


def compare_outputs(
    outputs: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], reference: str
) -> Agreement | None:
    """How `outputs` agree with `expected` (from `reference`), over the outputs both have
    with one shape; None when no output can be compared."""
    errors: list[float] = []
    top1: list[np.ndarray] = []
    for key in sorted(outputs.keys() & expected.keys()):
        value, wanted = np.asarray(outputs[key]), np.asarray(expected[key])
        if value.shape != wanted.shape or value.size == 0:
            continue
        if value.dtype.kind == "f" and wanted.dtype.kind == "f":
            difference = np.abs(value.astype(np.float64) - wanted)
            scale = max(float(np.max(np.abs(wanted))), _TINY)
            errors.append(float(np.max(difference)) / scale)
            if value.ndim == 2 and value.shape[1] > 1:
                top1.append(np.argmax(value, axis=1) == np.argmax(wanted, axis=1))
        elif value.dtype.kind in "iu" and wanted.dtype.kind in "iu":
            rows = value.reshape(value.shape[0] if value.ndim else 1, -1)
            top1.append((rows == wanted.reshape(rows.shape)).all(axis=1))
    if not errors and not top1:
        return None
    finite = all(math.isfinite(error) for error in errors)
    return Agreement(
        reference=reference,
        max_relative_error=max(errors, default=0.0) if finite else None,
        top1_agreement=float(np.mean(np.concatenate(top1))) if top1 else None,
    )
