"""The `evaluate:` block's data: a .npz of arrays, or a TFRecord file of tf.Examples, read as
one array per input key plus the labels (no TensorFlow).

A TFRecord file holds one tf.Example per row; each feature is one input of the evaluated
signature, named by its key, or the labels, named by `evaluate.label`. A feature with one
value per record is a column of shape [rows]; with n values in every record, [rows, n].
Int64 lists read as int64, float lists as float32, bytes lists as strings (numpy objects).
The field numbers are the public ones of tensorflow/core/example/{example,feature}.proto.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from smpack.errors import PackageError
from smpack.io.npy import load_npz
from smpack.manifest.schema import TFRECORD_SUFFIXES
from smpack.package.requests import tfrecords
from smpack.package.wire import WireFormatError, decode_varint, message_fields

# Feature's oneof fields: what each holds.
_KINDS = {1: "bytes", 2: "float", 3: "int64"}


class EvaluationDataError(ValueError):
    """The evaluation file cannot be read as evaluation data; the message says why."""


def read_evaluation_data(path: Path) -> dict[str, np.ndarray]:
    """Every column of the evaluation file at `path`, by key (labels included)."""
    if path.suffix in TFRECORD_SUFFIXES:
        return _tfrecord_columns(path)
    try:
        return load_npz(path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        msg = f"cannot read {path.name} as a .npz file: {e}"
        raise EvaluationDataError(msg) from e


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


def _tfrecord_columns(path: Path) -> dict[str, np.ndarray]:
    rows: list[dict[str, tuple[str, list[object]]]] = []
    try:
        for raw in tfrecords(path):
            rows.append(_example(raw, len(rows) + 1))
    except PackageError as e:
        msg = f"{path.name} is not a TFRecord file: {e.message}"
        raise EvaluationDataError(msg) from e
    except OSError as e:
        msg = f"cannot read {path.name}: {e.strerror or e}"
        raise EvaluationDataError(msg) from e
    if not rows:
        msg = f"{path.name} holds no records"
        raise EvaluationDataError(msg)
    columns = {}
    first = rows[0]
    for number, row in enumerate(rows, 1):
        if row.keys() != first.keys():
            differ = sorted(row.keys() ^ first.keys())[0]
            where = "record 1" if differ in first else f"record {number}"
            msg = f"{path.name}: feature {differ!r} is in {where} but not in every record"
            raise EvaluationDataError(msg)
    for key, (kind, values) in first.items():
        size = len(values)
        for number, row in enumerate(rows, 1):
            other_kind, other = row[key]
            if other_kind != kind or len(other) != size:
                msg = (
                    f"{path.name}: feature {key!r} is {size} {kind} value(s) in record 1 but "
                    f"{len(other)} {other_kind} value(s) in record {number}"
                )
                raise EvaluationDataError(msg)
        dtype = {"bytes": object, "float": np.float32, "int64": np.int64}[kind]
        column = np.array([row[key][1] for row in rows], dtype=dtype)
        columns[key] = column[:, 0] if size == 1 else column
    return columns


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
