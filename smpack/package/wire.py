"""The protobuf wire format: the little of it smpack reads and writes without message classes.

Checkpoint indexes, warmup records and bundle tables hold small protobuf messages whose field
numbers are public; decoding them here keeps TensorFlow and generated `_pb2` modules out of
the paths that must stay fast or TF-version-independent.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator


class WireFormatError(ValueError):
    """Bytes that are not the protobuf message expected (or the checkpoint index table that
    holds such messages): cut short, of another wire type, or lacking a field. Its own type,
    so a ValueError (or KeyError, IndexError) from the code decoding them stays that code's
    bug."""


def utf8(value: bytes, what: str) -> str:
    """`value` decoded; WireFormatError naming `what` if it is not UTF-8."""
    try:
        return value.decode()
    except UnicodeDecodeError as e:
        msg = f"{what} is not UTF-8: {e}"
        raise WireFormatError(msg) from e


def encode_varint(value: int) -> bytes:
    """`value` (non-negative) as a base-128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varint at `data[pos:]` and the position after it; WireFormatError if truncated."""
    result = shift = 0
    while pos < len(data) and shift < 70:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    msg = f"truncated varint at byte {pos}"
    raise WireFormatError(msg)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2): a string, bytes or a nested message."""
    return encode_varint(number << 3 | 2) + encode_varint(len(payload)) + payload


def message_fields(message: int | bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield (field number, value) of a protobuf message: ints, or bytes if length-delimited."""
    if isinstance(message, int):  # a submessage's field number arrived with a numeric wire type
        msg = "protobuf field is a number where a message was expected"
        raise WireFormatError(msg)
    for number, value, _, _ in fields_at(message):
        yield number, bytes(value) if isinstance(value, memoryview) else value


def fields_at(
    message: bytes | memoryview,
) -> Iterator[tuple[int, int | bytes | memoryview, int, int]]:
    """Yield (field number, value, start, end) of each field of a protobuf message, whose
    tag and value are `message[start:end]`: values as `message_fields` gives them, slices of
    a memoryview for a memoryview (so nothing is copied)."""
    pos = 0
    while pos < len(message):
        start = pos
        tag, pos = decode_varint(message, pos)
        wire_type = tag & 7
        value: int | bytes | memoryview
        if wire_type == 0:
            value, pos = decode_varint(message, pos)
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            if pos + size > len(message):
                msg = "protobuf field runs past its message"
                raise WireFormatError(msg)
            (value,) = struct.unpack_from("<Q" if size == 8 else "<I", message, pos)
            pos += size
        elif wire_type == 2:
            length, pos = decode_varint(message, pos)
            value, pos = message[pos : pos + length], pos + length
            if pos > len(message):
                msg = "protobuf field runs past its message"
                raise WireFormatError(msg)
        else:
            msg = f"unexpected protobuf wire type {wire_type}"
            raise WireFormatError(msg)
        yield tag >> 3, value, start, pos
