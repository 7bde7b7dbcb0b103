"""What verify and measure feed a signature: a stored input set, named as a Session wants
it, or inputs made up from the signature's specs for a graph that has none.

Made-up strings are words the graph's tables know (else plain text), and empty for the
inputs the graph parses (see smpack.package.vocabulary). Importing this imports no
TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from smpack.errors import GraphRefused
from smpack.package.dtypes import FLOATING, dtype_name, numpy_dtype
from smpack.package.vocabulary import PLAIN_TEXT, parsed_string_inputs, vocabulary_words


def feed_dict(signature: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """`inputs`, by the signature's input keys, as a Session's feeds, by tensor name.

    Raises `GraphRefused` for a key the signature has no input for (a stored request made
    for another signature): indexing the signature's map would make up an empty input.
    """
    unknown = sorted(inputs.keys() - signature.inputs.keys())
    if unknown:
        msg = f"the signature has no input {unknown[0]!r}; its inputs: {sorted(signature.inputs)}"
        raise GraphRefused(msg)
    return {signature.inputs[key].name: value for key, value in inputs.items()}


@dataclass(frozen=True)
class MadeUpInputs:
    """How inputs are made up for one graph's signatures: the words its tables know, and by
    signature key the string inputs it parses."""

    words: tuple[bytes, ...] = ()
    parsed: Mapping[str, frozenset[str]] = field(default_factory=dict)
    package: Path | None = None  # the package holding the graph, for errors

    @classmethod
    def of_graph(cls, meta_graph: Any, export_dir: Path) -> MadeUpInputs:
        words = tuple(vocabulary_words(meta_graph, export_dir))
        return cls(words, parsed_string_inputs(meta_graph), export_dir)

    def inputs(self, key: str, signature: Any, *, second: bool = False) -> dict[str, np.ndarray]:
        """Made-up inputs for signature `key` (see `spec_inputs`; `second`: the other set).

        Raises `GraphRefused`, naming the file and signature, for an input no value can be
        made up for."""
        parsed = self.parsed.get(key, frozenset())
        try:
            return spec_inputs(signature, self.words, second=second, parsed=parsed)
        except GraphRefused as e:
            raise GraphRefused(e.message, file=self.package, field=f"signature {key!r}") from e

    def text_kind(self, key: str, signature: Any) -> str:
        """What the made-up text of signature `key` is, for a check's name: " (vocabulary
        words)", " (plain text)", or "" if no input is text."""
        parsed = self.parsed.get(key, frozenset())
        text = any(
            dtype_name(info.dtype) == "string" and name not in parsed
            for name, info in signature.inputs.items()
        )
        if not text:
            return ""
        return " (vocabulary words)" if self.words else " (plain text)"


def spec_inputs(
    signature: Any,
    words: Sequence[bytes] = (),
    *,
    second: bool = False,
    parsed: Set[str] = frozenset(),
) -> dict[str, np.ndarray]:
    """Inputs matching each input's dtype and shape (unknown sizes become 8) that no model
    can find out of range: integers 0 (a valid index, id and class), strings cycling through
    `words` (words the graph's tables know: a token, or a one-word text) or without them
    through lines of plain English text (which a tokenizer splits into its real tokens),
    False, and floats in [-1, 1). The string inputs in `parsed`, which the graph decodes
    (a serialized tf.Example, an image), are empty: an empty tf.Example is valid.

    `second` makes another set, every value and unknown size changed: sizes 5, integers 1,
    True, other floats, in [0, 1) (the range of most normalised inputs), and the words
    shifted by one. What fails alike on both fails whatever the inputs (see verify's _check).

    Each array is of the numpy dtype TensorFlow gives the input's values (quantized
    integers as its records, bfloat16 and narrower floats as ml_dtypes'). Raises
    `GraphRefused` for an input of a handle (resource, variant) or a dtype TensorFlow does
    not know: no request can carry one.
    """
    rng = np.random.default_rng(1 if second else 0)
    low = 0.0 if second else -1.0
    inputs = {}
    for key in sorted(signature.inputs):
        info = signature.inputs[key]
        unknown = 5 if second else 8
        shape = tuple(d.size if d.size >= 0 else unknown for d in info.tensor_shape.dim)
        dtype = dtype_name(info.dtype)
        values = numpy_dtype(dtype)
        if values is None:
            msg = f"input {key!r} takes {dtype} values, which no request can carry"
            raise GraphRefused(msg)
        if dtype == "string":
            cycle = [b""] if key in parsed else list(words or PLAIN_TEXT)
            if second:
                cycle = cycle[1:] + cycle[:1]
            size = int(np.prod(shape, dtype=np.int64))
            inputs[key] = np.array(
                [cycle[i % len(cycle)] for i in range(size)], dtype=object
            ).reshape(shape)
        elif dtype in FLOATING:
            # Drawn in float32 (float64 for float64) and rounded once more to the input's.
            drawn = rng.uniform(low, 1, size=shape)
            inputs[key] = drawn.astype(np.float64 if dtype == "float64" else np.float32).astype(
                values
            )
        else:
            inputs[key] = np.full(shape, 1 if second else 0, dtype=values)
    return inputs
