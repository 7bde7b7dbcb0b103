"""What a model function sees and returns: the API model authors write against.

A model function is classic TF1 code (placeholders, `tf.compat.v1.get_variable`, ops). smpack
calls it once per variant inside a fresh `tf.Graph`. It marks the numeric part of the model
with `ctx.compute(fn, *tensors)`; smpack places, casts and rewrites that part for the
variant's target, and leaves the rest (parsing, string ops, lookups) on the host CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class ModelContext:
    """Tells the model function which variant it is building.

    Create variables (`tf.compat.v1.get_variable`, `tf.Variable`, Keras layers) inside the
    function given to `compute`: smpack stores them as float32 (one checkpoint for every
    variant), whatever dtype is asked, and the variant's precision decides what their
    reads compute in. Float32 variables and Keras layers made at module level work too:
    the model file is imported afresh in each variant's graph.
    """

    variant: str
    tags: tuple[str, ...]
    mode: Literal["serve", "train"]
    precision: str
    batch_size: int | None
    params: Mapping[str, Any]
    _compute: Callable[..., Any] = field(repr=False)
    _asset: Callable[[str], Any] = field(repr=False)

    @property
    def training(self) -> bool:
        return self.mode == "train"

    @property
    def dtype(self) -> Any:
        """The compute dtype as a `tf.DType` (float32, float16 or bfloat16)."""
        import tensorflow as tf

        return tf.as_dtype(self.precision)

    def compute(self, fn: Callable[..., Any], *inputs: Any, retype: bool = True) -> Any:
        """Run `fn(*inputs)` as the variant's device computation and return its outputs.

        Write `fn` in float32. In a float16 or bfloat16 variant smpack builds it in float32
        and retypes it as it does imported graphs: matrix products and convolutions compute
        in half precision; softmax, reductions, normalisation statistics, ops without a
        half-precision kernel on the target, and index, range and mask arithmetic stay
        float32, with casts where the two meet. `retype=False` hands `fn` its floating
        inputs and variable reads in `ctx.dtype` instead and keeps the ops it builds as
        they are (for code placing its own casts). Floating outputs leave as float32, so
        every variant's signatures have the same dtypes. `fn` returns a tensor or a
        (nested) tuple/list/dict of tensors.
        """
        return self._compute(fn, *inputs, retype=retype)

    def asset(self, name: str) -> Any:
        """A string tensor holding the path of asset `name` (as listed under `assets:`).

        The path is rewritten by every SavedModel loader to the package's own `assets/`
        copy, so the graph keeps working after the package is moved.
        """
        return self._asset(name)


@dataclass
class ModelSpec:
    """What a model function returns: its named tensors.

    `inputs` and `outputs` are what signatures refer to; `labels` and `loss` are needed
    when `ctx.training` (smpack builds the optimizer and train op from the manifest).
    """

    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    labels: Mapping[str, Any] = field(default_factory=dict)
    loss: Any = None
