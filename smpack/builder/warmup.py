"""TF Serving warmup: `assets.extra/tf_serving_warmup_requests`, made from the manifest.

TF Serving replays this file when it loads a model, so the first real request does not pay
for lazy initialisation. It holds one file per SavedModel and replays it against whichever
tag set it loaded, and a request that fails makes the whole model fail to load. So every
request is checked against the signature of every serving variant before anything is
written.

The file is a TFRecord of `tensorflow.serving.PredictionLog` messages. TensorFlow provides
TensorProto and Example; the few wrapper messages around them are encoded here from their
public field numbers (tensorflow_serving/apis/*.proto) rather than adding tensorflow-serving-api,
which pins TensorFlow's exact minor version, as a dependency.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2

from smpack.builder.graphs import TRAIN_SIGNATURE_KEY
from smpack.errors import ManifestError, PackageError, eager_line, first_line
from smpack.io.npy import npy_header
from smpack.manifest import EXAMPLE_METHODS, METHODS, LoadedManifest, WarmupRequest
from smpack.package.dtypes import HANDLE_DTYPES, dtype_name
from smpack.package.layout import ASSETS_EXTRA, WARMUP_FILE
from smpack.package.requests import CLASSIFY_LOG, PREDICT_LOG, REGRESS_LOG, logged_request
from smpack.package.wire import WireFormatError, length_delimited

# A warmup request is replayed on every model load; one that needs more is a mistake.
MAX_WARMUP_FILE_BYTES = 64 << 20
# All the requests are held until written, and TF Serving replays every one on each load
# (verify runs every example on every graph): their values together, at most this much,
# for the warmup requests, for the examples, and for either read back from a package.
MAX_REQUEST_VALUES_BYTES = 64 << 20
# A JSON file's values are Python objects before they are an array: up to 34 times the
# file ("[[],[],...]": 64 MiB of it took 2.1 GiB).
MAX_JSON_FILE_BYTES = 8 << 20


class _Budget:
    """What the values of the requests read so far still leave of `MAX_REQUEST_VALUES_BYTES`."""

    def __init__(self, what: str, why: str) -> None:
        self.left, self.what, self.why = MAX_REQUEST_VALUES_BYTES, what, why

    def take(self, size: int, manifest: Path, field: str) -> None:
        self.left -= size
        if self.left < 0:
            msg = (
                f"the {self.what} hold more than {MAX_REQUEST_VALUES_BYTES >> 20} MiB of values "
                f"by here ({self.why})"
            )
            raise ManifestError(msg, file=manifest, field=field)


def warmup_records(
    loaded: LoadedManifest, signature_defs: Mapping[str, Mapping[str, Any]]
) -> list[bytes]:
    """Serialized PredictionLogs for the manifest's `warmup:` requests.

    `signature_defs` maps each serving variant's name to its SignatureDefs; every request
    must fit each of them. Raises `ManifestError` naming the request that does not.
    """
    budget = _Budget("warmup requests", "each load of the model replays them all")
    return [
        _record(loaded, request, f"warmup.{index}", request.signature, signature_defs, {}, budget)
        for index, request in enumerate(loaded.spec.warmup)
    ]


def example_records(
    loaded: LoadedManifest,
    serving: Mapping[str, Mapping[str, Any]],
    training: Mapping[str, Mapping[str, Any]],
) -> list[bytes]:
    """The manifest's `examples:` as PredictionLogs, checked like warmup requests: each
    example's inputs as a request to its signature on every serving variant, and inputs
    plus labels as a request to the `train` signature of every train variant."""
    budget = _Budget("examples", "verify runs each on every graph")
    records = []
    for index, example in enumerate(loaded.spec.examples):
        field = f"examples.{index}"
        if not example.has_labels:
            records.append(_record(loaded, example, field, example.signature, serving, {}, budget))
            continue
        names = ("labels", "label_files")
        labels = _values(loaded, example.labels, example.label_files, field, names, budget)
        records.append(
            _record(loaded, example, field, TRAIN_SIGNATURE_KEY, training, labels, budget)
        )
        if serving:
            records.append(_record(loaded, example, field, example.signature, serving, {}, budget))
    return records


def _record(
    loaded: LoadedManifest,
    request: WarmupRequest,
    field: str,
    signature_key: str,
    signature_defs: Mapping[str, Mapping[str, Any]],
    labels: dict[str, Any],
    budget: _Budget,
) -> bytes:
    """One request, fitted to `signature_key` of every variant in `signature_defs`."""
    where: dict[str, Any] = {"file": loaded.path, "field": field}
    values = {**_request_values(loaded, request, field, budget), **labels}
    method = None
    for variant, signatures in signature_defs.items():
        if signature_key not in signatures:
            msg = f"variant {variant!r} has no signature {signature_key!r}"
            raise ManifestError(msg, **where)
        signature = signatures[signature_key]
        if method not in (None, signature.method_name):
            msg = f"signature {signature_key!r} has different methods across variants"
            raise ManifestError(msg, **where)
        method = signature.method_name
        values = _fitted(signature, values, variant, where, request.examples is not None)
    assert method is not None  # the manifest schema requires a variant of the needed kind
    return _prediction_log(loaded.spec.name, signature_key, method, values)


def write_requests(export_dir: Path, records: Iterable[bytes], name: str = WARMUP_FILE) -> None:
    """Write the records as assets.extra/`name` (TF Serving's warmup file by default)."""
    folder = export_dir / ASSETS_EXTRA
    folder.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(folder / name)) as writer:
        for record in records:
            writer.write(record)


def read_requests(
    export_dir: Path, name: str = WARMUP_FILE
) -> dict[str, list[dict[str, np.ndarray]]]:
    """The requests in assets.extra/`name` (the warmup file by default) as feeds, by
    signature key, in file order.

    Predict requests give their input tensors; classify and regress requests give their
    tf.Examples serialized into the signature's one `inputs` key, as TF Serving feeds them.
    No file means no requests. Raises `PackageError` naming the record that is not one.
    """
    path = export_dir / ASSETS_EXTRA / name
    requests: dict[str, list[dict[str, np.ndarray]]] = {}
    if not path.is_file():
        return requests
    held = 0
    for number, raw in enumerate(_records(path), 1):
        signature, feeds = _request_feeds(raw, path, number)
        # A tensor may hold one value for all its elements (TensorFlow repeats the last):
        # a small file can decode to any size, one tensor (checked above) after another.
        held += sum(feed.nbytes for feed in feeds.values())
        if held > MAX_REQUEST_VALUES_BYTES:
            msg = (
                f"its requests hold more than {MAX_REQUEST_VALUES_BYTES >> 20} MiB of values "
                f"by record {number}, more than a build writes"
            )
            raise PackageError(msg, file=path)
        requests.setdefault(signature, []).append(feeds)
    return requests


def _records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file, read by TensorFlow as TF Serving reads them."""
    records = tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
    for number in itertools.count(1):
        try:
            raw = next(records)
        except StopIteration:
            return
        # Framing or a checksum that does not hold.
        except tf.errors.OpError as e:
            raise _not_replayable(path, number, eager_line(e)) from e
        yield raw


def _request_feeds(raw: bytes, path: Path, number: int) -> tuple[str, dict[str, np.ndarray]]:
    """Record `number`'s signature key and feeds."""
    try:
        request = logged_request(raw)
    except WireFormatError as e:
        raise _not_replayable(path, number, str(e)) from e
    if request.examples is not None:
        return request.signature, {"inputs": np.array(request.examples, dtype=object)}
    feeds = {}
    for key, serialized in request.tensors.items():
        try:
            tensor = tensor_pb2.TensorProto.FromString(serialized)
        except DecodeError as e:
            raise _not_replayable(path, number, f"input {key!r}: {first_line(e)}") from e
        # A shape is a promise the bytes need not keep; check it before numpy allocates it
        # (in floats: sizes near 2^63 overflow integers).
        if math.prod(float(d.size) for d in tensor.tensor_shape.dim) > MAX_WARMUP_FILE_BYTES:
            problem = f"input {key!r}: its shape claims over {MAX_WARMUP_FILE_BYTES} elements"
            raise _not_replayable(path, number, problem)
        if dtype_name(tensor.dtype) in HANDLE_DTYPES:  # TF's decoder meets these with KeyError
            problem = f"input {key!r}: a {dtype_name(tensor.dtype)} tensor has no values to send"
            raise _not_replayable(path, number, problem)
        try:
            feeds[key] = tf.make_ndarray(tensor)
        # TypeError: a dtype TF does not know or decode; ValueError: values that do not fill
        # the shape.
        except (TypeError, ValueError) as e:
            raise _not_replayable(path, number, f"input {key!r}: {first_line(e)}") from e
    return request.signature, feeds


def _not_replayable(path: Path, number: int, problem: str) -> PackageError:
    msg = f"not a warmup file TF Serving can replay: record {number}: {problem}"
    return PackageError(msg, file=path)


def _request_values(
    loaded: LoadedManifest, request: WarmupRequest, field: str, budget: _Budget
) -> dict[str, Any]:
    """Inline values and files merged into one numpy array (or Example list) per input."""
    if request.examples is not None:  # inline, bounded by the manifest's own limits
        return {"inputs": request.examples}
    return _values(loaded, request.inputs, request.files, field, ("inputs", "files"), budget)


def _values(
    loaded: LoadedManifest,
    inline: Mapping[str, Any],
    files: Mapping[str, str],
    field: str,
    names: tuple[str, str],
    budget: _Budget,
) -> dict[str, Any]:
    """Inline values and the `.npy`/`.json` files of others, as numpy arrays by key, each
    taken from `budget`; `names` are the manifest's fields holding them, for errors."""
    values = {}
    for key, value in inline.items():
        where = f"{field}.{names[0]}.{key}"
        values[key] = _array(value, loaded.path, where)
        budget.take(values[key].nbytes, loaded.path, where)
    for key, relative in files.items():
        path, where = loaded.folder / relative, f"{field}.{names[1]}.{key}"
        try:
            size = path.stat().st_size
            most = MAX_WARMUP_FILE_BYTES if path.suffix == ".npy" else MAX_JSON_FILE_BYTES
            if size > most:
                msg = f"{relative!r} is larger than {most >> 20} MiB"
                raise ManifestError(msg, file=loaded.path, field=where)
            if path.suffix == ".npy":
                budget.take(size, loaded.path, where)  # before it is read: its header and data
                values[key] = _load_npy(path, size)
                continue
            document = json.loads(path.read_bytes())
        # ValueError: numpy's .npy reader and json (UnicodeDecodeError too) refusing a file;
        # RecursionError: JSON nested deeper than the parser's stack.
        except (OSError, ValueError, RecursionError) as e:
            msg = f"cannot read {relative!r}: {first_line(e)}"
            raise ManifestError(msg, file=loaded.path, field=where) from e
        values[key] = _array(document, loaded.path, where)
        budget.take(values[key].nbytes, loaded.path, where)
    return values


def _array(value: Any, manifest: Path, field: str) -> np.ndarray:
    """`value` (nested lists) as one array; refused if ragged or mixing kinds of value."""
    try:
        array = np.asarray(value)
    # ValueError: ragged lists; RecursionError: a list holding itself (a YAML alias).
    except (ValueError, RecursionError) as e:
        msg = f"not a rectangular array of one type: {first_line(e)}"
        raise ManifestError(msg, file=manifest, field=field) from e
    if array.dtype == object:
        msg = "not a rectangular array of numbers or strings"
        raise ManifestError(msg, file=manifest, field=field)
    return array


def _load_npy(path: Path, size: int) -> np.ndarray:
    """A .npy file, its header checked against the file's size before any data is read."""
    with path.open("rb") as stream:
        npy_header(stream, size)
    return np.load(path, allow_pickle=False)


def _fitted(
    signature: Any, values: Mapping[str, Any], variant: str, where: dict[str, Any], examples: bool
) -> dict[str, Any]:
    """`values` converted to the signature's dtypes; raises if they do not fit it."""
    if examples:
        if signature.method_name not in EXAMPLE_METHODS:
            msg = f"examples are for classify and regress signatures, not {signature.method_name}"
            raise ManifestError(msg, **where)
        return dict(values)
    if signature.method_name in EXAMPLE_METHODS:
        msg = "a classify or regress signature takes examples: [{feature: value}, ...]"
        raise ManifestError(msg, **where)
    missing = sorted(signature.inputs.keys() - values.keys())
    unknown = sorted(values.keys() - signature.inputs.keys())
    if missing or unknown:
        msg = f"inputs must be {sorted(signature.inputs)} (missing {missing}, unknown {unknown})"
        raise ManifestError(msg, **where)
    fitted = {}
    for key, value in values.items():
        info = signature.inputs[key]
        dtype = tf.dtypes.as_dtype(info.dtype)
        try:
            # Through a TensorProto, as TF Serving will read it: "1" is no float, 1.5 no int.
            fitted[key] = tf.make_ndarray(tf.make_tensor_proto(value, dtype=dtype))
        except (TypeError, ValueError) as e:
            msg = f"input {key!r} is not {dtype.name}: {e}"
            raise ManifestError(msg, **where) from e
        expected = tf.TensorShape(info.tensor_shape)
        if not expected.is_compatible_with(value.shape):
            msg = (
                f"input {key!r} has shape {list(value.shape)}, but variant {variant!r} takes "
                f"{expected} (unknown sizes are free)"
            )
            raise ManifestError(msg, **where)
    return fitted


def _prediction_log(name: str, signature: str, method: str, values: Mapping[str, Any]) -> bytes:
    model_spec = length_delimited(1, name.encode()) + length_delimited(3, signature.encode())
    if method in EXAMPLE_METHODS:
        examples = b"".join(length_delimited(1, example) for example in _examples(values["inputs"]))
        body = length_delimited(1, model_spec) + length_delimited(
            2, length_delimited(1, examples)
        )  # Input.example_list
        log = CLASSIFY_LOG if method == METHODS["classify"] else REGRESS_LOG
    else:
        entries = b"".join(
            length_delimited(
                2, length_delimited(1, key.encode()) + length_delimited(2, _tensor(value))
            )
            for key, value in sorted(values.items())
        )
        body = length_delimited(1, model_spec) + entries
        log = PREDICT_LOG
    return length_delimited(log, length_delimited(1, body))  # XLog.request


def _tensor(value: np.ndarray) -> bytes:
    return bytes(tf.make_tensor_proto(value).SerializeToString())


def _examples(rows: list[Mapping[str, Any]]) -> list[bytes]:
    """Serialized tf.Examples; a feature's list type is decided across all rows, so `[0, 1]`
    beside `[0.5, 2.0]` is a float feature, as YAML's integers usually mean there."""
    kinds: dict[str, str] = {}
    for row in rows:
        for key, raw in row.items():
            numpy_kind = np.atleast_1d(np.asarray(raw)).dtype.kind
            kind = "bytes" if numpy_kind in "SUO" else "float" if numpy_kind == "f" else "int"
            kinds[key] = max(kinds.get(key, "int"), kind, key=("int", "float", "bytes").index)
    serialized = []
    for row in rows:
        feature = {}
        for key, raw in row.items():
            values = np.atleast_1d(np.asarray(raw)).tolist()
            if kinds[key] == "bytes":
                bytes_list = tf.train.BytesList(value=[str(v).encode() for v in values])
                feature[key] = tf.train.Feature(bytes_list=bytes_list)
            elif kinds[key] == "float":
                feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=values))
            else:
                feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        serialized.append(bytes(example.SerializeToString()))
    return serialized
