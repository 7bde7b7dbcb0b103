"""TensorFlow's DataType enum (tensorflow/core/framework/types.proto), without TensorFlow.

The one table smpack reads dtypes from: `saved_model.pb`, the checkpoint index and the
warmup file all store them as these numbers. Reference types are the value types plus 100.
"""

from __future__ import annotations

import numpy as np

# Enum value -> (`tf.DType.name`, enum name), in enum order.
_TABLE = {
    1: ("float32", "DT_FLOAT"),
    2: ("float64", "DT_DOUBLE"),
    3: ("int32", "DT_INT32"),
    4: ("uint8", "DT_UINT8"),
    5: ("int16", "DT_INT16"),
    6: ("int8", "DT_INT8"),
    7: ("string", "DT_STRING"),
    8: ("complex64", "DT_COMPLEX64"),
    9: ("int64", "DT_INT64"),
    10: ("bool", "DT_BOOL"),
    11: ("qint8", "DT_QINT8"),
    12: ("quint8", "DT_QUINT8"),
    13: ("qint32", "DT_QINT32"),
    14: ("bfloat16", "DT_BFLOAT16"),
    15: ("qint16", "DT_QINT16"),
    16: ("quint16", "DT_QUINT16"),
    17: ("uint16", "DT_UINT16"),
    18: ("complex128", "DT_COMPLEX128"),
    19: ("float16", "DT_HALF"),
    20: ("resource", "DT_RESOURCE"),
    21: ("variant", "DT_VARIANT"),
    22: ("uint32", "DT_UINT32"),
    23: ("uint64", "DT_UINT64"),
    24: ("float8_e5m2", "DT_FLOAT8_E5M2"),
    25: ("float8_e4m3fn", "DT_FLOAT8_E4M3FN"),
    26: ("float8_e4m3fnuz", "DT_FLOAT8_E4M3FNUZ"),
    27: ("float8_e4m3b11fnuz", "DT_FLOAT8_E4M3B11FNUZ"),
    28: ("float8_e5m2fnuz", "DT_FLOAT8_E5M2FNUZ"),
    29: ("int4", "DT_INT4"),
    30: ("uint4", "DT_UINT4"),
    31: ("int2", "DT_INT2"),
    32: ("uint2", "DT_UINT2"),
    33: ("float4_e2m1fn", "DT_FLOAT4_E2M1FN"),
}

DTYPES: dict[int, str] = {number: name for number, (name, _) in _TABLE.items()}
ENUM_NAMES: dict[int, str] = {number: enum for number, (_, enum) in _TABLE.items()}
FLOATS = frozenset({"float16", "bfloat16", "float32", "float64"})
HALF_PRECISIONS = frozenset({"float16", "bfloat16"})
# Handles to state inside a running TensorFlow: no values a file or request can carry.
HANDLE_DTYPES = frozenset({"resource", "variant"})
# Every floating-point dtype: FLOATS, and the 8- and 4-bit ones no variant computes in.
FLOATING = FLOATS | {name for name in DTYPES.values() if name.startswith(("float8_", "float4_"))}

# The quantized dtypes' values, as TensorFlow gives them to numpy: a record of one field named
# after the dtype, holding its integer (tensorflow/python/framework/dtypes.py).
_QUANTIZED = {"qint8": "i1", "quint8": "u1", "qint16": "<i2", "quint16": "<u2", "qint32": "<i4"}
# The dtypes numpy lacks, whose values are ml_dtypes' types of the same name.
_ML_DTYPES = FLOATING - {"float16", "float32", "float64"} | {"int4", "uint4", "int2", "uint2"}


def numpy_dtype(name: str) -> np.dtype | None:
    """The numpy dtype of dtype `name`'s values, as `tf.DType.as_numpy_dtype` has it: numpy's
    own, ml_dtypes' narrow floats and integers (bfloat16, float8_*, int4, ...), records for
    the quantized ones, object for strings; None for handles and numbers TF does not know."""
    if name == "string":
        return np.dtype(object)
    if name in _QUANTIZED:
        return np.dtype([(name, _QUANTIZED[name])])
    if name in _ML_DTYPES:
        import ml_dtypes  # TensorFlow's own dependency; imported only for these dtypes

        return np.dtype(getattr(ml_dtypes, name))
    if name in HANDLE_DTYPES or name not in DTYPES.values():
        return None
    return np.dtype(name)


def dtype_name(number: int) -> str:
    """`tf.DType.name` of enum value `number` (a reference type as its value type)."""
    return DTYPES.get(number % 100 if number > 100 else number, f"dtype_{number}")
