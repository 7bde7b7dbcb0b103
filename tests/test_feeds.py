"""Made-up inputs (smpack/checks/feeds.py) are values TensorFlow takes for every dtype it can
feed, in the numpy dtypes it gives those values (smpack/package/dtypes.py); an input no
request can carry is refused in one line naming it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from smpack.checks.feeds import MadeUpInputs, spec_inputs
from smpack.errors import GraphRefused
from smpack.package.dtypes import DTYPES, HANDLE_DTYPES, numpy_dtype

FED = sorted(name for name in DTYPES.values() if name not in HANDLE_DTYPES)


@pytest.mark.parametrize(("number", "name"), sorted(DTYPES.items()))
def test_the_numpy_dtype_of_each_dtype_is_tensorflows(number: int, name: str) -> None:
    if name in HANDLE_DTYPES:
        assert numpy_dtype(name) is None
        with pytest.raises(KeyError):  # TF has no numpy form of a handle either
            tf.as_dtype(number).as_numpy_dtype  # noqa: B018
    else:
        assert numpy_dtype(name) == np.dtype(tf.as_dtype(number).as_numpy_dtype)


def test_made_up_inputs_of_every_dtype_are_fed_as_they_are() -> None:
    """Quantized, 4-bit and 8-bit inputs included: each set runs through a Session, and
    comes back with its values and the dtype TF gives them."""
    signature = meta_graph_pb2.SignatureDef()
    graph = tf.Graph()
    with graph.as_default():
        for name in FED:
            placeholder = tf.compat.v1.placeholder(name, [None, 3], name=name)
            signature.inputs[name].CopyFrom(tf.compat.v1.saved_model.build_tensor_info(placeholder))
        echoed = {name: tf.identity(graph.get_tensor_by_name(f"{name}:0")) for name in FED}
    config = tf.compat.v1.ConfigProto()
    # Grappler's MLIR passes log every narrow dtype they cannot convert; nothing to optimise.
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    with tf.compat.v1.Session(graph=graph, config=config) as session:
        for second in (False, True):
            inputs = spec_inputs(signature, second=second)
            feeds = {f"{name}:0": value for name, value in inputs.items()}
            outputs = session.run(echoed, feeds)
            for name in FED:
                assert inputs[name].dtype == numpy_dtype(name), name
                assert inputs[name].shape == ((5, 3) if second else (8, 3))
                if name == "string":
                    assert outputs[name].tolist() == inputs[name].tolist()
                else:  # quantized values come back as plain integers, the same bytes
                    assert outputs[name].tobytes() == inputs[name].tobytes(), name


@pytest.mark.parametrize("dtype", [20, 21, 99])  # resource, variant, a number TF lacks
def test_an_input_no_request_can_carry_is_refused_naming_it(dtype: int) -> None:
    signature = meta_graph_pb2.SignatureDef()
    signature.inputs["x"].dtype = 1
    signature.inputs["handle"].dtype = dtype

    with pytest.raises(GraphRefused) as refused:
        MadeUpInputs(package=None).inputs("serving_default", signature)

    name = {20: "resource", 21: "variant"}.get(dtype, "dtype_99")
    assert str(refused.value) == (
        f"signature 'serving_default': input 'handle' takes {name} values, "
        "which no request can carry"
    )
