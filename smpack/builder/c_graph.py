"""A TensorFlow graph of the C API alone, for what the Python bindings leave out.

`tf.gradients` differentiates a Python graph op by op (a Python `Operation` per node, a
Python gradient function per op); TensorFlow's C API adds the gradients its C++ registry
(tensorflow/cc/gradients) defines to a graph of no Python operations,
`TF_AddGradientsWithPrefix`, which the Python bindings do not wrap. It is called here
through ctypes, in the library the bindings already loaded (one op registry: the source's
custom op libraries are in it).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import tensorflow as tf
from tensorflow.core.framework import graph_pb2


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


class _Buffer(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("length", ctypes.c_size_t),
        ("dealloc", ctypes.c_void_p),
    ]


_POINTER = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "TF_NewGraph": (_POINTER, []),
    "TF_DeleteGraph": (None, [_POINTER]),
    "TF_NewStatus": (_POINTER, []),
    "TF_DeleteStatus": (None, [_POINTER]),
    "TF_GetCode": (ctypes.c_int, [_POINTER]),
    "TF_Message": (ctypes.c_char_p, [_POINTER]),
    "TF_NewImportGraphDefOptions": (_POINTER, []),
    "TF_DeleteImportGraphDefOptions": (None, [_POINTER]),
    "TF_NewBufferFromString": (ctypes.POINTER(_Buffer), [ctypes.c_char_p, ctypes.c_size_t]),
    "TF_NewBuffer": (ctypes.POINTER(_Buffer), []),
    "TF_DeleteBuffer": (None, [ctypes.POINTER(_Buffer)]),
    "TF_GraphImportGraphDef": (None, [_POINTER, ctypes.POINTER(_Buffer), _POINTER, _POINTER]),
    "TF_GraphToGraphDef": (None, [_POINTER, ctypes.POINTER(_Buffer), _POINTER]),
    "TF_GraphOperationByName": (_POINTER, [_POINTER, ctypes.c_char_p]),
    "TF_OperationName": (ctypes.c_char_p, [_POINTER]),
    "TF_OperationOutputType": (ctypes.c_int, [_Output]),
    "TF_GraphGetTensorNumDims": (ctypes.c_int, [_POINTER, _Output, _POINTER]),
    "TF_GraphGetTensorShape": (
        None,
        [_POINTER, _Output, ctypes.POINTER(ctypes.c_int64), ctypes.c_int, _POINTER],
    ),
    "TF_AddGradientsWithPrefix": (
        None,
        [
            _POINTER,
            ctypes.c_char_p,
            ctypes.POINTER(_Output),
            ctypes.c_int,
            ctypes.POINTER(_Output),
            ctypes.c_int,
            ctypes.POINTER(_Output),
            _POINTER,
            ctypes.POINTER(_Output),
        ],
    ),
}

# What TF_AddGradients says of an op its C++ registry has no gradient for.
_NO_GRADIENT = "No gradient defined for op"


class ImportRefused(Exception):  # noqa: N818 -- the GraphDef is not a graph TF makes
    """TensorFlow's importer refused the GraphDef."""


class NoCxxGradient(Exception):  # noqa: N818 -- a fact about TF's registry, not an error
    """An op of the graph has no gradient in TensorFlow's C++ registry."""


@functools.cache
def _library() -> ctypes.CDLL:
    library = ctypes.CDLL(tf.sysconfig.get_lib() + "/libtensorflow_cc.so.2")
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(library, name)
        function.restype = restype
        function.argtypes = argtypes
    return library


class CGraph:
    """A C API graph holding one imported GraphDef; tensors are named `node:index`."""

    def __init__(self, graph_def: Any) -> None:
        self._lib = _library()
        self._graph = self._lib.TF_NewGraph()
        self._status = self._lib.TF_NewStatus()
        self._open = True
        try:
            self.add(graph_def)
        except ImportRefused:
            self.close()
            raise

    def add(self, graph_def: Any) -> None:
        """Import `graph_def`'s nodes beside the graph's (reading none of them)."""
        options = self._lib.TF_NewImportGraphDefOptions()
        serialized = graph_def.SerializeToString()
        buffer = self._lib.TF_NewBufferFromString(serialized, len(serialized))
        try:
            self._lib.TF_GraphImportGraphDef(self._graph, buffer, options, self._status)
        finally:
            self._lib.TF_DeleteBuffer(buffer)
            self._lib.TF_DeleteImportGraphDefOptions(options)
        if self._lib.TF_GetCode(self._status):
            raise ImportRefused(self._message())

    def close(self) -> None:
        """Free the graph (again: nothing)."""
        if self._open:
            self._open = False
            self._lib.TF_DeleteGraph(self._graph)
            self._lib.TF_DeleteStatus(self._status)

    def dtype(self, tensor: str) -> tf.DType:
        return tf.as_dtype(self._lib.TF_OperationOutputType(self._output(tensor)))

    def shape(self, tensor: str) -> tf.TensorShape:
        """The shape TensorFlow's shape inference gives `tensor`."""
        output = self._output(tensor)
        rank = self._lib.TF_GraphGetTensorNumDims(self._graph, output, self._status)
        self._check()
        if rank < 0:
            return tf.TensorShape(None)
        dims = (ctypes.c_int64 * rank)()
        self._lib.TF_GraphGetTensorShape(self._graph, output, dims, rank, self._status)
        self._check()
        return tf.TensorShape([None if d < 0 else d for d in dims])

    def add_gradients(
        self, prefix: str, ys: list[tuple[str, str]], xs: list[str]
    ) -> list[str | None]:
        """The gradients with respect to `xs` of a loss whose gradients with respect to
        tensors `y` are `dy`, for each (y, dy) of `ys`, added under `prefix/`; None for an
        x the ys do not depend on through differentiable ops.

        Every x must be reachable from a y (TensorFlow refuses the others). Raises
        `NoCxxGradient` if an op on the way has no C++ gradient.
        """
        y = (_Output * len(ys))(*(self._output(t) for t, _ in ys))
        dx = (_Output * len(ys))(*(self._output(d) for _, d in ys))
        x = (_Output * len(xs))(*(self._output(t) for t in xs))
        dy = (_Output * len(xs))()
        self._lib.TF_AddGradientsWithPrefix(
            self._graph, prefix.encode(), y, len(ys), x, len(xs), dx, self._status, dy
        )
        if self._lib.TF_GetCode(self._status) and _NO_GRADIENT in self._message():
            raise NoCxxGradient(self._message())
        self._check()
        return [
            None if not d.oper else f"{self._lib.TF_OperationName(d.oper).decode()}:{d.index}"
            for d in dy
        ]

    def graph_def(self) -> Any:
        buffer = self._lib.TF_NewBuffer()
        try:
            self._lib.TF_GraphToGraphDef(self._graph, buffer, self._status)
            self._check()
            data = ctypes.string_at(buffer.contents.data, buffer.contents.length)
        finally:
            self._lib.TF_DeleteBuffer(buffer)
        return graph_pb2.GraphDef.FromString(data)

    def _output(self, tensor: str) -> _Output:
        name, _, index = tensor.partition(":")
        operation = self._lib.TF_GraphOperationByName(self._graph, name.encode())
        if not operation:
            msg = f"no operation {name!r} in the graph"
            raise KeyError(msg)
        return _Output(operation, int(index or 0))

    def _message(self) -> str:
        return bytes(self._lib.TF_Message(self._status)).decode(errors="replace")

    def _check(self) -> None:
        if self._lib.TF_GetCode(self._status):
            raise RuntimeError(self._message())
