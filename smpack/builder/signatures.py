"""SignatureDefs from the manifest's signature specs and the model's named tensors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from smpack.errors import GraphError
from smpack.manifest import Signature


def build_signature_def(
    key: str,
    signature: Signature,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    where: dict[str, Any],
) -> Any:
    """One SignatureDef; `where` locates errors (file and field of the manifest)."""
    tensor_infos = {
        "inputs": _tensor_infos(key, "inputs", signature.inputs, inputs, where),
        "outputs": _tensor_infos(key, "outputs", signature.outputs, outputs, where),
    }
    signature_def = tf.compat.v1.saved_model.build_signature_def(
        inputs=tensor_infos["inputs"],
        outputs=tensor_infos["outputs"],
        method_name=signature.method_name,
    )
    if signature.method in ("classify", "regress") and not (
        tf.compat.v1.saved_model.is_valid_signature(signature_def)
    ):
        rule = (
            "input 'inputs' must be a string tensor (serialized tf.Example), 'classes' a "
            "string tensor and 'scores' a float tensor"
            if signature.method == "classify"
            else "input 'inputs' must be a string tensor (serialized tf.Example) and "
            "'outputs' a float tensor"
        )
        msg = f"signature {key!r} breaks TF Serving's {signature.method} rules: {rule}"
        raise GraphError(msg, **where)
    return signature_def


def _tensor_infos(
    key: str, side: str, names: Mapping[str, str], tensors: Mapping[str, Any], where: dict
) -> dict[str, Any]:
    infos = {}
    for signature_name, tensor_name in names.items():
        if tensor_name not in tensors:
            msg = (
                f"signature {key!r} names {side[:-1]} {tensor_name!r}, but the model function "
                f"returned {side} {sorted(tensors)}"
            )
            raise GraphError(
                msg,
                **where,
            )
        infos[signature_name] = tf.compat.v1.saved_model.build_tensor_info(tensors[tensor_name])
    return infos
