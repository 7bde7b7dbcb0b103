"""The `evaluate:` block's data: a .npz of arrays, or a TFRecord file of tf.Examples, read as
one array per input key plus the labels (no TensorFlow).

A TFRecord file holds one tf.Example per row; each feature is one input of the evaluated
signature, named by its key, or the labels, named by `evaluate.label`. A feature with one
value per record is a column of shape [rows]; with n values in every record, [rows, n].
Int64 lists read as int64, float lists as float32, bytes lists as strings (numpy objects).
The field numbers are the public ones of tensorflow/core/example/{example,feature}.proto.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np

from smpack.errors import PackageError
from smpack.io.memory import within_memory
from smpack.io.npy import ArraysTooLarge, load_npz
from smpack.manifest.schema import TFRECORD_SUFFIXES
from smpack.package.requests import RecordTooLarge, tfrecords
from smpack.package.wire import WireFormatError, decode_varint, message_fields

# Feature's oneof fields: what each holds.
_KINDS = {1: "bytes", 2: "float", 3: "int64"}


# Evaluation data is held in memory whole while each variant is evaluated on it (the metrics
# cover every row), beside the graph and its weights. A file may claim far more than its
# size (a deflated .npz member grows up to 1032 times, an int64 in a tf.Example eight), so
# the arrays are counted as they are decoded, and refused past this or a quarter of the
# memory the machine still has, whichever is less.
MAX_EVALUATION_BYTES = 1 << 30
# A tf.Example is decoded into Python objects before its values are packed: up to ~41 bytes
# per byte of the record (an empty string: 2 bytes on the wire, a bytes object and its
# pointer), so one record may take at most this share of the limit.
_RECORD_SHARE = 48


class EvaluationDataError(ValueError):
    """The evaluation file cannot be read as evaluation data; the message says why."""


def evaluation_data_limit() -> int:
    """The bytes evaluation data may take once decoded, on this machine now."""
    return within_memory(MAX_EVALUATION_BYTES)


def read_evaluation_data(path: Path, limit: int | None = None) -> dict[str, np.ndarray]:
    """Every column of the evaluation file at `path`, by key (labels included), refused if
    its arrays would take more than `limit` bytes (`evaluation_data_limit()` if None)."""
    limit = evaluation_data_limit() if limit is None else limit
    if path.suffix in TFRECORD_SUFFIXES:
        return _tfrecord_columns(path, limit)
    try:
        return load_npz(path, limit)
    except ArraysTooLarge as e:
        msg = f"{path.name} holds {_mib(e.size)} of arrays, {_more_than(limit)}"
        raise EvaluationDataError(msg) from e
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        msg = f"cannot read {path.name} as a .npz file: {e}"
        raise EvaluationDataError(msg) from e


def _more_than(limit: int) -> str:
    """Why `limit`, for a message saying the data needs more."""
    if limit >= MAX_EVALUATION_BYTES:
        return f"more than evaluation holds in memory ({_mib(MAX_EVALUATION_BYTES)})"
    return (
        "more than evaluation holds in memory here "
        f"(a quarter of the memory available: {_mib(limit)})"
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB" if size >= 2**20 else f"{size:,} bytes"


def check_columns(columns: dict[str, np.ndarray], name: str, keys: set[str], label: str) -> None:
    """Refuse columns that are not exactly the input `keys` and `label`, or differ in rows."""
    wanted = keys | {label}
    if columns.keys() != wanted:
        missing = sorted(wanted - columns.keys())
        extra = sorted(columns.keys() - wanted)
        noun = "feature" if name.endswith(TFRECORD_SUFFIXES) else "array"
        problem = (
            f"has no {_named(noun, missing)}" if missing else f"has unknown {_named(noun, extra)}"
        )
        msg = f"{name} {problem}; it must hold the inputs {sorted(keys)} and the labels {label!r}"
        raise EvaluationDataError(msg)
    rows = {key: len(column) if column.ndim else 0 for key, column in columns.items()}
    if len(set(rows.values())) != 1 or not rows[label]:
        msg = f"{name} must hold one row or more of every column, the same number: {rows}"
        raise EvaluationDataError(msg)


def _named(noun: str, keys: list[str]) -> str:
    return f"{noun}{'s' if len(keys) > 1 else ''} " + ", ".join(repr(k) for k in keys)


class _Column:
    """One feature's values over the records read so far: packed numbers, or strings."""

    def __init__(self, kind: str, size: int) -> None:
        self.kind, self.size = kind, size
        self.dtype = {"bytes": object, "float": np.float32, "int64": np.int64}[kind]
        self.numbers = bytearray()
        self.strings: list[bytes] = []

    def add(self, values: list[object]) -> int:
        """Append one record's values; the bytes they take."""
        if self.kind == "bytes":
            self.strings += values  # type: ignore[arg-type]  # _feature's bytes values
            # A bytes object and the pointer to it, as numpy's object array holds them.
            return sum(sys.getsizeof(v) + 8 for v in values)
        packed = np.asarray(values, self.dtype).tobytes()
        self.numbers += packed
        return len(packed)

    def array(self, rows: int) -> np.ndarray:
        if self.kind == "bytes":
            values = np.empty(len(self.strings), object)
            values[:] = self.strings
        else:
            values = np.frombuffer(self.numbers, self.dtype)
        column = values.reshape(rows, self.size)
        return column[:, 0] if self.size == 1 else column


def _tfrecord_columns(path: Path, limit: int) -> dict[str, np.ndarray]:
    """The file's features as columns, read one record at a time and refused as soon as
    they take more than `limit` bytes."""
    columns: dict[str, _Column] = {}
    rows = held = 0
    try:
        for raw in tfrecords(path, limit // _RECORD_SHARE):
            rows += 1
            features = _example(raw, rows)
            if rows == 1:
                columns = {key: _Column(kind, len(v)) for key, (kind, v) in features.items()}
            elif features.keys() != columns.keys():
                differ = sorted(features.keys() ^ columns.keys())[0]
                where = "record 1" if differ in columns else f"record {rows}"
                msg = f"{path.name}: feature {differ!r} is in {where} but not in every record"
                raise EvaluationDataError(msg)
            for key, (kind, values) in features.items():
                column = columns[key]
                if kind != column.kind or len(values) != column.size:
                    msg = (
                        f"{path.name}: feature {key!r} is {column.size} {column.kind} value(s) "
                        f"in record 1 but {len(values)} {kind} value(s) in record {rows}"
                    )
                    raise EvaluationDataError(msg)
                held += column.add(values)
            if held > limit:
                msg = f"{path.name}'s first {rows:,} records hold values {_more_than(limit)}"
                raise EvaluationDataError(msg)
    except RecordTooLarge as e:
        msg = (
            f"{path.name}: {e.message}: one row may take a {_RECORD_SHARE}th of the "
            f"{_mib(limit)} evaluation holds in memory"
        )
        raise EvaluationDataError(msg) from e
    except PackageError as e:
        msg = f"{path.name} is not a TFRecord file: {e.message}"
        raise EvaluationDataError(msg) from e
    except OSError as e:
        msg = f"cannot read {path.name}: {e.strerror or e}"
        raise EvaluationDataError(msg) from e
    if not rows:
        msg = f"{path.name} holds no records"
        raise EvaluationDataError(msg)
    return {key: column.array(rows) for key, column in columns.items()}


def _example(raw: bytes, number: int) -> dict[str, tuple[str, list[object]]]:
    """One serialized tf.Example's features: (kind, values) by name."""
    features: dict[str, tuple[str, list[object]]] = {}
    try:
        for field, body in message_fields(raw):
            if field != 1 or not isinstance(body, bytes):
                continue
            for entry_field, entry in message_fields(body):  # Features.feature map entries
                if entry_field != 1 or not isinstance(entry, bytes):
                    continue
                parts = {n: v for n, v in message_fields(entry)}
                key, feature = parts.get(1, b""), parts.get(2, b"")
                if not isinstance(key, bytes) or not isinstance(feature, bytes):
                    msg = "a feature entry is not a name and a feature"
                    raise WireFormatError(msg)
                features[key.decode()] = _feature(feature)
    except (WireFormatError, UnicodeDecodeError) as e:
        msg = f"record {number} is not a tf.Example: {e}"
        raise EvaluationDataError(msg) from e
    return features


def _feature(feature: bytes) -> tuple[str, list[object]]:
    kind, values = "float", []  # an empty feature: no values of any kind
    for field, body in message_fields(feature):
        if field not in _KINDS or not isinstance(body, bytes):
            continue
        kind = _KINDS[field]
        for _, value in message_fields(body):
            values += _values(kind, value)
    return kind, values


def _values(kind: str, value: int | bytes) -> list[object]:
    """One wire value of a BytesList, FloatList or Int64List (packed or not) as elements."""
    if kind == "bytes":
        return [value]
    if kind == "float":
        if isinstance(value, int):  # one unpacked float, read as its 32 bits
            return [float(np.array(value, np.uint32).view(np.float32))]
        if len(value) % 4:
            msg = f"a packed FloatList of {len(value)} bytes, not a multiple of 4"
            raise WireFormatError(msg)
        return np.frombuffer(value, "<f4").tolist()
    if isinstance(value, int):
        return [value - (1 << 64) if value >= 1 << 63 else value]
    out: list[object] = []
    position = 0
    while position < len(value):
        element, position = decode_varint(value, position)
        out.append(element - (1 << 64) if element >= 1 << 63 else element)
    return out
