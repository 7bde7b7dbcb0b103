"""The PredictionLog records smpack writes (TF Serving's warmup file, the manifest's
examples), read without TensorFlow.

A file is a TFRecord of `tensorflow.serving.PredictionLog` messages; the field numbers are
the public ones of tensorflow_serving/apis/{prediction_log,predict,classification,
regression,input,model}.proto and tensorflow/core/framework/tensor.proto. Tensors are
returned serialized, for TensorFlow to decode where it is loaded anyway, and as raw
row-major bytes (`raw_tensor`) for servers that take them so, like Triton's warmup files.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smpack.errors import PackageError
from smpack.package.dtypes import dtype_name, numpy_dtype
from smpack.package.wire import WireFormatError, decode_varint, message_fields, utf8

PREDICT_LOG, CLASSIFY_LOG, REGRESS_LOG = 6, 2, 3  # PredictionLog's oneof fields
# TensorProto's typed value fields, each holding elements of these dtypes (TensorFlow writes
# one of them instead of `tensor_content` for a single element, and always for bool).
_VALUE_FIELDS = {
    5: ("float32",),  # float_val, packed fixed32
    6: ("float64",),  # double_val, packed fixed64
    7: ("int32", "int16", "int8", "uint8", "uint16"),  # int_val
    10: ("int64",),  # int64_val
    11: ("bool",),  # bool_val
    13: ("float16", "bfloat16"),  # half_val: the 16 bits, as an int32
    16: ("uint32",),  # uint32_val
    17: ("uint64",),  # uint64_val
}
# The dtypes with a raw form: elements of a fixed size, each held by one of those fields.
_RAW_DTYPES = frozenset(dtype for dtypes in _VALUE_FIELDS.values() for dtype in dtypes)


@dataclass(frozen=True)
class LoggedRequest:
    """One PredictionLog's request: the signature key and, for predict, each input's
    serialized TensorProto; for classify and regress, the serialized tf.Examples, which TF
    Serving feeds to the signature's one `inputs` key."""

    signature: str
    tensors: dict[str, bytes]
    examples: tuple[bytes, ...] | None = None


@dataclass(frozen=True)
class RawTensor:
    """A tensor's dtype, shape and elements: row-major little-endian bytes for fixed-size
    dtypes, one bytes object per element for strings."""

    dtype: str
    shape: tuple[int, ...]
    elements: bytes | tuple[bytes, ...]

    def row(self, index: int) -> RawTensor:
        """Row `index` (along the first dimension), as a batch of one."""
        per_row = len(self.elements) // self.shape[0]
        elements = self.elements[per_row * index : per_row * (index + 1)]
        return RawTensor(self.dtype, (1, *self.shape[1:]), elements)

    def triton_bytes(self) -> bytes:
        """The elements as Triton's raw input files hold them: as they are, or for strings
        each element preceded by its length, a 4-byte little-endian unsigned integer."""
        if isinstance(self.elements, bytes):
            return self.elements
        return b"".join(struct.pack("<I", len(value)) + value for value in self.elements)


class RecordTooLarge(PackageError):
    """A TFRecord record longer than its reader allows."""


def tfrecords(path: Path, largest: int | None = None) -> Iterator[bytes]:
    """The records of a TFRecord file, from its framing (length, crc, data, crc), read one at
    a time: the file is never held whole, and a length is checked against what is left of
    the file (and `largest`, if given) before its record is read.

    Raises `PackageError` if the file ends inside a record, `RecordTooLarge` for a record of
    more than `largest` bytes.
    """
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        count = position = 0
        while position < size:
            header = stream.read(12)
            if len(header) < 12:
                msg = f"TFRecord file ends inside the header of record {count + 1}"
                raise PackageError(msg, file=path)
            (length,) = struct.unpack_from("<Q", header)
            position += 12 + length + 4
            if position > size:
                msg = f"TFRecord file ends inside record {count + 1}"
                raise PackageError(msg, file=path)
            if largest is not None and length > largest:
                msg = f"record {count + 1} is {length:,} bytes, more than {largest:,}"
                raise RecordTooLarge(msg, file=path)
            data = stream.read(length)
            stream.seek(4, os.SEEK_CUR)  # the data's crc
            if len(data) < length:  # the file shrank while it was read
                msg = f"TFRecord file ends inside record {count + 1}"
                raise PackageError(msg, file=path)
            count += 1
            yield data


def read_logged_requests(path: Path) -> list[LoggedRequest]:
    """The requests of the PredictionLog file at `path`, in file order (none if no file).

    Raises `PackageError` for a file that does not hold PredictionLogs.
    """
    if not path.is_file():
        return []
    requests = []
    for number, raw in enumerate(tfrecords(path), 1):
        try:
            requests.append(logged_request(raw))
        except WireFormatError as e:
            msg = f"not a file of PredictionLogs: record {number}: {e}"
            raise PackageError(msg, file=path) from e
    return requests


def logged_request(raw: bytes) -> LoggedRequest:
    """One serialized PredictionLog's request. Raises `WireFormatError` for bytes that are
    not one."""
    logs = _fields(raw)
    if len(logs) != 1:
        msg = f"a PredictionLog holds one log, this one {len(logs)}"
        raise WireFormatError(msg)
    [(log_type, log)] = logs.items()
    fields = _fields(_first(_fields(log[0]), 1, "the log's request"))
    model_spec = _fields(_first(fields, 1, "the request's model_spec"))
    signature = _text(model_spec.get(3, [b"serving_default"])[0])
    if log_type != PREDICT_LOG:
        request_input = _fields(_first(fields, 2, "the request's input"))
        example_list = _fields(_first(request_input, 1, "the input's example_list"))
        return LoggedRequest(signature, {}, tuple(example_list.get(1, [])))
    tensors = {}
    for entry in fields.get(2, []):
        key_and_tensor = _fields(entry)
        key = _text(_first(key_and_tensor, 1, "an input's key"))
        tensors[key] = _first(key_and_tensor, 2, f"input {key!r}'s tensor")
    return LoggedRequest(signature, tensors)


class NoRawFormError(ValueError):
    """A TensorProto with no raw row-major form: a dtype without a fixed size (nor a string),
    values that do not fill its shape as TensorFlow would, or bytes that are not one."""


def raw_tensor(serialized: bytes) -> RawTensor:
    """A serialized TensorProto's elements. Raises `NoRawFormError` if it has none."""
    try:
        return _raw_tensor(serialized)
    except WireFormatError as e:
        raise NoRawFormError(str(e)) from e


def _raw_tensor(serialized: bytes) -> RawTensor:
    dtype_number = 0
    shape: list[int] = []
    content: bytes | None = None
    strings: list[bytes] = []
    values: dict[int, list[int | bytes]] = {}
    for number, value in message_fields(serialized):
        if number == 1 and isinstance(value, int):
            dtype_number = value
        elif number == 2 and isinstance(value, bytes):
            for dim_number, dim in message_fields(value):
                if dim_number == 2 and isinstance(dim, bytes):
                    shape.append(_dim_size(dim))
        elif number == 4 and isinstance(value, bytes):
            content = value
        elif number == 8 and isinstance(value, bytes):
            strings.append(value)
        elif number in _VALUE_FIELDS:
            values.setdefault(number, []).append(value)
    dtype = dtype_name(dtype_number)
    count = 1
    for size in shape:
        count *= size
    if dtype == "string":
        if count and not strings or len(strings) > count:
            msg = f"a string tensor of shape {shape} holds {len(strings)} values"
            raise WireFormatError(msg)
        # Fewer values than elements: TensorFlow repeats the last one.
        padded = strings + strings[-1:] * (count - len(strings))
        return RawTensor(dtype, tuple(shape), tuple(padded))
    element = numpy_dtype(dtype) if dtype in _RAW_DTYPES else None
    if element is None:
        msg = f"a {dtype} tensor has no raw form"
        raise WireFormatError(msg)
    size = element.itemsize
    if content is None:
        content = _typed_values(dtype, size, values)
    if len(content) != count * size:
        if not content or len(content) > count * size:
            msg = f"a {dtype} tensor of shape {shape} holds {len(content)} bytes"
            raise WireFormatError(msg)
        content += content[-size:] * (count - len(content) // size)
    return RawTensor(dtype, tuple(shape), content)


def _typed_values(dtype: str, size: int, values: dict[int, list[int | bytes]]) -> bytes:
    """The little-endian bytes of the typed value field holding `dtype`'s elements."""
    number = next((n for n, dtypes in _VALUE_FIELDS.items() if dtype in dtypes), None)
    out = bytearray()
    for value in values.get(number, []) if number is not None else []:
        if isinstance(value, bytes) and number in (5, 6):  # packed fixed-size floats
            out += value
        elif isinstance(value, bytes):  # packed varints
            position = 0
            while position < len(value):
                element, position = decode_varint(value, position)
                out += _fixed(element, size)
        elif number in (5, 6):  # one unpacked float, read by message_fields as an int
            if value >> 8 * size:  # sent as a varint wider than the float
                msg = f"a {dtype} value of more than {size} bytes"
                raise WireFormatError(msg)
            out += value.to_bytes(size, "little")
        else:
            out += _fixed(value, size)
    return bytes(out)


def _fixed(varint: int, size: int) -> bytes:
    """A varint's value as `size` little-endian bytes (negative numbers arrive as 64-bit
    two's complement, whose low bytes are the narrower type's)."""
    return (varint & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def _dim_size(dim: bytes) -> int:
    for number, value in message_fields(dim):
        if number == 1 and isinstance(value, int):
            return value - (1 << 64) if value >= 1 << 63 else value
    return 0


def _fields(message: bytes) -> dict[int, list[bytes]]:
    """The length-delimited fields of a protobuf message, by field number (others skipped)."""
    fields: dict[int, list[bytes]] = {}
    for number, value in message_fields(message):
        if isinstance(value, bytes):
            fields.setdefault(number, []).append(value)
    return fields


def _first(fields: dict[int, list[bytes]], number: int, what: str) -> bytes:
    """The first value of field `number`; `what` names it for the error if it is absent."""
    if number not in fields:
        msg = f"{what} (field {number}) is missing"
        raise WireFormatError(msg)
    return fields[number][0]


def _text(value: bytes) -> str:
    return utf8(value, "a name")
