"""The SavedModel protobuf messages smpack reads, declared here instead of imported from TF.

`import tensorflow` costs seconds; reading a package's structure should not. The field
numbers below are the public wire format of tensorflow/core/protobuf/{saved_model,
meta_graph}.proto and tensorflow/core/framework/{graph,node_def,attr_value,tensor_shape,
types}.proto. Only the fields smpack reads are declared: others are kept as unknown fields
when parsing the binary form and skipped when parsing the text form.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError

from smpack.errors import PackageError, first_line
from smpack.package.dtypes import ENUM_NAMES
from smpack.package.wire import WireFormatError, fields_at, length_delimited

_PACKAGE = "smpack.tf"
MAX_SAVED_MODEL_BYTES = 2**31 - 1

# message name -> [(field name, number, type)]; type is a scalar type name, a message name,
# "repeated X" or "map X" (map<string, X>).
_MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "SavedModel": [
        ("saved_model_schema_version", 1, "int64"),
        ("meta_graphs", 2, "repeated MetaGraphDef"),
    ],
    "MetaGraphDef": [
        ("meta_info_def", 1, "MetaInfoDef"),
        ("graph_def", 2, "GraphDef"),
        ("collection_def", 4, "map CollectionDef"),
        ("signature_def", 5, "map SignatureDef"),
        ("asset_file_def", 6, "repeated AssetFileDef"),
    ],
    "MetaInfoDef": [
        ("meta_graph_version", 1, "string"),
        ("tags", 4, "repeated string"),
        ("tensorflow_version", 5, "string"),
        ("tensorflow_git_version", 6, "string"),
    ],
    "GraphDef": [("node", 1, "repeated NodeDef"), ("library", 2, "FunctionDefLibrary")],
    "FunctionDefLibrary": [("function", 1, "repeated FunctionDef")],
    "FunctionDef": [("signature", 1, "OpDef"), ("node_def", 3, "repeated NodeDef")],
    "OpDef": [("name", 1, "string")],
    "NodeDef": [
        ("name", 1, "string"),
        ("op", 2, "string"),
        ("input", 3, "repeated string"),
        ("device", 4, "string"),
        ("attr", 5, "map AttrValue"),
    ],
    "AttrValue": [
        ("list", 1, "ListValue"),
        ("s", 2, "bytes"),
        ("i", 3, "int64"),
        ("f", 4, "float"),
        ("b", 5, "bool"),
        ("type", 6, "DataType"),
        ("shape", 7, "TensorShapeProto"),
        ("tensor", 8, "TensorProto"),
        ("placeholder", 9, "string"),
        ("func", 10, "NameAttrList"),
    ],
    "ListValue": [
        ("s", 2, "repeated bytes"),
        ("i", 3, "repeated int64"),
        ("f", 4, "repeated float"),
        ("b", 5, "repeated bool"),
        ("type", 6, "repeated DataType"),
        ("shape", 7, "repeated TensorShapeProto"),
    ],
    "NameAttrList": [("name", 1, "string")],
    "TensorProto": [
        ("dtype", 1, "DataType"),
        ("tensor_shape", 2, "TensorShapeProto"),
        ("string_val", 8, "repeated bytes"),
    ],
    "TensorShapeProto": [("dim", 2, "repeated Dim"), ("unknown_rank", 3, "bool")],
    "Dim": [("size", 1, "int64"), ("name", 2, "string")],
    "SignatureDef": [
        ("inputs", 1, "map TensorInfo"),
        ("outputs", 2, "map TensorInfo"),
        ("method_name", 3, "string"),
    ],
    "TensorInfo": [
        ("name", 1, "string"),
        ("dtype", 2, "DataType"),
        ("tensor_shape", 3, "TensorShapeProto"),
    ],
    "CollectionDef": [("node_list", 1, "NodeList"), ("bytes_list", 2, "BytesList")],
    "NodeList": [("value", 1, "repeated string")],
    "BytesList": [("value", 1, "repeated bytes")],
    "AssetFileDef": [("tensor_info", 1, "TensorInfo"), ("filename", 2, "string")],
    # The entries of a graph's `trainable_variables` collection; only the name is read.
    "VariableDef": [("variable_name", 1, "string")],
    # fingerprint.proto: the hashes TF writes to fingerprint.pb beside saved_model.pb.
    "FingerprintDef": [
        ("saved_model_checksum", 1, "uint64"),
        ("graph_def_program_hash", 2, "uint64"),
        ("signature_def_hash", 3, "uint64"),
        ("saved_object_graph_hash", 4, "uint64"),
        ("checkpoint_hash", 5, "uint64"),
        ("uuid", 7, "string"),
    ],
}

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "int64": _F.TYPE_INT64,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "bool": _F.TYPE_BOOL,
}


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="smpack/tf_subset.proto", package=_PACKAGE, syntax="proto3"
    )
    enum = file.enum_type.add(name="DataType")
    enum.value.add(name="DT_INVALID", number=0)
    for number, name in ENUM_NAMES.items():
        enum.value.add(name=name, number=number)
    for number, name in ENUM_NAMES.items():
        enum.value.add(name=name + "_REF", number=number + 100)
    for message_name, fields in _MESSAGES.items():
        message = file.message_type.add(name=message_name)
        for name, number, kind in fields:
            label, _, type_name = kind.rpartition(" ")
            field = message.field.add(name=name, number=number, label=_F.LABEL_OPTIONAL)
            if label:
                field.label = _F.LABEL_REPEATED
            if label == "map":
                # A map is a repeated nested *Entry message flagged map_entry.
                entry = message.nested_type.add(name=_entry_name(name))
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=_F.LABEL_OPTIONAL, type=_F.TYPE_STRING)
                _set_type(
                    entry.field.add(name="value", number=2, label=_F.LABEL_OPTIONAL), type_name
                )
                field.type = _F.TYPE_MESSAGE
                field.type_name = f".{_PACKAGE}.{message_name}.{entry.name}"
            else:
                _set_type(field, type_name)
    return file


def _entry_name(field_name: str) -> str:
    return "".join(part.capitalize() for part in field_name.split("_")) + "Entry"


def _set_type(field: descriptor_pb2.FieldDescriptorProto, type_name: str) -> None:
    if type_name in _SCALARS:
        field.type = _SCALARS[type_name]
    elif type_name == "DataType":
        field.type = _F.TYPE_ENUM
        field.type_name = f".{_PACKAGE}.DataType"
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = f".{_PACKAGE}.{type_name}"


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file_descriptor())
SavedModel: Any = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{_PACKAGE}.SavedModel")
)
FingerprintDef: Any = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{_PACKAGE}.FingerprintDef")
)
VariableDef: Any = message_factory.GetMessageClass(
    _pool.FindMessageTypeByName(f"{_PACKAGE}.VariableDef")
)


def read_saved_model(export_dir: str | Path, message: Any = None) -> Any:
    """Parse `saved_model.pb` (or `saved_model.pbtxt`) in `export_dir`.

    Into smpack's own `SavedModel` message (no TensorFlow) unless `message` is another class,
    such as TensorFlow's own, for readers that must keep every field. Raises `PackageError`
    for anything but a SavedModel with at least one MetaGraph.
    """
    return _read_saved_model(Path(export_dir), message or SavedModel, lambda data: data)


def read_saved_model_sharing_copies(export_dir: str | Path) -> tuple[Any, tuple[int, ...]]:
    """`read_saved_model(export_dir)`, except that a MetaGraph differing from an earlier one
    in its `meta_info_def` alone (a tag-only copy, as variants sharing one graph are) is
    parsed as that `meta_info_def` alone; and for each MetaGraph, the index of the one
    holding its graph, signatures and collections: its own, or the earlier one's.

    A copy's graph is the same bytes as the earlier one's, so all that is read from it is
    the same: parsing it again (and hashing, and scanning it) cost as much as the first.
    """
    originals: list[int] = []

    def heads_of_copies(data: bytes) -> bytes:
        shared, found = copies_as_heads(data)
        originals.extend(found)
        return shared

    saved_model = _read_saved_model(Path(export_dir), SavedModel, heads_of_copies)
    return saved_model, tuple(originals or range(len(saved_model.meta_graphs)))


_META_GRAPHS_FIELD, _META_INFO_DEF_FIELD = 2, 1


def copies_as_heads(data: bytes) -> tuple[bytes, list[int]]:
    """A serialized SavedModel's bytes with each tag-only copy's MetaGraph cut to its
    `meta_info_def`, and each MetaGraph's original (see `read_saved_model_sharing_copies`);
    `data` as it is, and no originals, if it is no SavedModel's wire format.

    Every other byte is kept as it is, so each byte of `data` is either in the result or
    in a copy's body, which is the same bytes as its original's, in the result."""
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    originals: list[int] = []
    first_with: dict[bytes, int] = {}  # a MetaGraph's fields but its meta_info_def -> index
    try:
        for number, value, start, end in fields_at(view):
            if number != _META_GRAPHS_FIELD or isinstance(value, int):
                parts.append(view[start:end])
                continue
            head: list[bytes | memoryview] = []
            body: list[bytes | memoryview] = []
            for inner, _, inner_start, inner_end in fields_at(value):
                part = value[inner_start:inner_end]
                (head if inner == _META_INFO_DEF_FIELD else body).append(part)
            index = len(originals)
            originals.append(first_with.setdefault(b"".join(body), index))
            copy = originals[index] != index
            parts.append(
                length_delimited(_META_GRAPHS_FIELD, b"".join(head)) if copy else view[start:end]
            )
    except WireFormatError:
        return data, []  # the parser says what is wrong with it
    return b"".join(parts), originals


def first_and_other_meta_graphs(data: bytes) -> tuple[bytes, bytes] | None:
    """A serialized SavedModel as two: one holding its first MetaGraph, the other the rest,
    each with the SavedModel's other fields first; every byte of `data` is in one of them.

    None if a field other than a MetaGraph follows one: each half puts those fields first,
    so the halves would not be `data`'s bytes in `data`'s order."""
    view = memoryview(data)
    fields = [(number, view[start:end]) for number, _, start, end in fields_at(view)]
    numbers = [number for number, _ in fields]
    if _META_GRAPHS_FIELD in numbers:
        first_graph = numbers.index(_META_GRAPHS_FIELD)
        if any(number != _META_GRAPHS_FIELD for number in numbers[first_graph:]):
            return None
    others = [part for number, part in fields if number != _META_GRAPHS_FIELD]
    meta_graphs = [part for number, part in fields if number == _META_GRAPHS_FIELD]
    return b"".join(others + meta_graphs[:1]), b"".join(others + meta_graphs[1:])


def _read_saved_model(
    export_dir: Path, message: Any, binary_bytes: Callable[[bytes], bytes]
) -> Any:
    """The SavedModel in `export_dir` as a `message`, saved_model.pb's bytes parsed as
    `binary_bytes` gives them."""
    saved_model = message()
    binary, text = export_dir / "saved_model.pb", export_dir / "saved_model.pbtxt"
    try:
        path = binary if binary.is_file() else text if text.is_file() else None
        if path is None:
            msg = f"no saved_model.pb or saved_model.pbtxt in {export_dir}"
            raise PackageError(msg, file=export_dir)
        # Protobuf refuses messages over 2 GiB anyway; refusing first costs no read.
        if path.stat().st_size > MAX_SAVED_MODEL_BYTES:
            msg = f"{path.name} is larger than protobuf's 2 GiB limit"
            raise PackageError(msg, file=path)
        if path is binary:
            saved_model.ParseFromString(binary_bytes(binary.read_bytes()))
        else:
            text_format.Parse(
                text.read_text(encoding="utf-8"), saved_model, allow_unknown_field=True
            )
    except OSError as e:
        msg = f"cannot read the SavedModel: {e.strerror or e}"
        raise PackageError(msg, file=e.filename or export_dir) from e
    # RecursionError: the text parser recurses once per nested message.
    except (text_format.ParseError, DecodeError, ValueError, RecursionError) as e:
        msg = f"not a readable SavedModel: {first_line(e)}"
        raise PackageError(msg, file=export_dir) from e
    if not saved_model.meta_graphs:
        msg = "not a usable SavedModel: it holds no MetaGraph"
        raise PackageError(msg, file=export_dir)
    return saved_model
