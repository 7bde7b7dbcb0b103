"""Building one variant's graph: call the model function, add training, signatures, init."""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from smpack.builder.signatures import build_signature_def
from smpack.builder.targets import compute_for
from smpack.builder.training import TRAIN_METHOD, build_train_op, loss_after_step
from smpack.errors import GraphError, ModelError, SmpackError, first_line
from smpack.manifest import LoadedManifest, Signature, Variant
from smpack.model import ModelContext, ModelSpec
from smpack.package.layout import TRAIN_FUNCTION_COLLECTION
from smpack.sources.python import keras_named_variables, same_start_per_variant

TRAIN_SIGNATURE_KEY = "train"


@dataclass(frozen=True)
class VariableSpec:
    """What the checkpoint must hold for a graph to restore a variable."""

    shape: tuple[int | None, ...]
    dtype: str


@dataclass
class AssembledGraph:
    """A variant's graph assembled as protos (smpack/builder/assembled.py), to be exported.

    `graph_def` is what the Python graph's `as_graph_def(add_shapes=True)` would be;
    `variable_nodes` each variable's handle and read nodes, what its Saver is built over;
    `collections` the exported collections (name -> CollectionDef).
    """

    graph_def: Any
    variable_nodes: list[Any]
    collections: dict[str, Any]
    init_op_name: str


@dataclass
class VariantGraph:
    """A finished variant graph and everything the writer needs to add it to the package.

    Built in Python (`graph`, `init_op`) or assembled as protos (`assembled`).
    """

    name: str
    variant: Variant
    graph: tf.Graph | None
    signature_defs: dict[str, Any]
    init_op: tf.Operation | None
    variables: dict[str, VariableSpec]
    model_variables: list[str]
    asset_files: dict[str, str] = field(default_factory=dict)  # tensor name -> assets/ path
    assembled: AssembledGraph | None = None

    @property
    def tags(self) -> list[str]:
        return self.variant.tags

    @property
    def built(self) -> object:
        """What the graph is made of: variants sharing one graph share this."""
        return self.graph if self.graph is not None else self.assembled


def build_variant_graph(
    loaded: LoadedManifest,
    model_fn: Callable[..., Any],
    name: str,
    variant: Variant,
    source_assets: Mapping[str, Path] | None = None,
    train_function: str = "",
    gradients: Callable[[tf.Tensor], list[tuple[Any, Any]]] | None = None,
) -> VariantGraph:
    """Build variant `name` in a fresh graph; `ctx.asset` also finds `source_assets`.

    A train graph records `train_function`, what it trains; `gradients`, if given, makes
    its gradients and variables instead of `tf.gradients` (builder/assembled_training.py).
    """
    field_path = f"variants.{name}"
    graph = tf.Graph()
    asset_files: dict[str, str] = {}
    compute = compute_for(variant)
    compute_calls: list[Callable[..., Any]] = []

    def counted_compute(fn: Callable[..., Any], *inputs: Any, retype: bool = True) -> Any:
        compute_calls.append(fn)
        return compute(fn, *inputs, retype=retype)

    with graph.as_default():
        # A fixed graph-level seed makes initial values, and so the package, reproducible.
        tf.compat.v1.set_random_seed(0)
        ctx = ModelContext(
            variant=name,
            tags=tuple(variant.tags),
            mode="train" if variant.is_training else "serve",
            precision=variant.precision,
            batch_size=variant.batch_size,
            params={**loaded.spec.source.params, **variant.params},
            _compute=counted_compute,
            _asset=lambda asset: _asset_tensor(
                graph, loaded, asset, asset_files, source_assets or {}
            ),
        )
        with same_start_per_variant(), tf.variable_creator_scope(keras_named_variables):
            spec = _call_model(loaded, model_fn, ctx)
        model_variables = [v.op.name for v in tf.compat.v1.global_variables()]
        where: dict[str, Any] = {"file": loaded.path, "field": field_path}
        _check_targeting_applied(variant, bool(compute_calls), where)
        imported = loaded.spec.source.python is None
        _check_static_batch(spec, variant, imported, where)

        signature_defs = serving_signature_defs(loaded, name, variant, spec)
        if variant.is_training:
            assert variant.optimizer is not None  # guaranteed by the manifest schema
            loss = _checked_loss(spec, where)
            train_op = build_train_op(
                loss,
                variant.optimizer,
                loss_scaling=variant.precision == "float16",
                gradients=gradients,
            )
            if train_function:
                tf.compat.v1.add_to_collection(TRAIN_FUNCTION_COLLECTION, train_function)
            if TRAIN_SIGNATURE_KEY in signature_defs:
                msg = f"signature key {TRAIN_SIGNATURE_KEY!r} is reserved for the training step"
                raise GraphError(
                    msg,
                    **where,
                )
            signature_defs[TRAIN_SIGNATURE_KEY] = tf.compat.v1.saved_model.build_signature_def(
                inputs={
                    k: tf.compat.v1.saved_model.build_tensor_info(t)
                    for k, t in {**spec.inputs, **spec.labels}.items()
                },
                outputs={
                    "loss": tf.compat.v1.saved_model.build_tensor_info(
                        loss_after_step(loss, train_op)
                    )
                },
                method_name=TRAIN_METHOD,
            )
        init_op = make_init_op()
        variables = {
            v.op.name: VariableSpec(tuple(v.shape.as_list()), v.dtype.base_dtype.name)
            for v in tf.compat.v1.global_variables()
        }
    check_float32_storage(variables, where)
    return VariantGraph(
        name=name,
        variant=variant,
        graph=graph,
        signature_defs=signature_defs,
        init_op=init_op,
        variables=variables,
        model_variables=model_variables,
        asset_files=asset_files,
    )


def make_init_op() -> tf.Operation:
    """The default graph's init op, run by every loader after restoring: fills its tables."""
    return tf.group(
        tf.compat.v1.tables_initializer(),
        tf.compat.v1.local_variables_initializer(),
        name="smpack_init",
    )


def built_before(
    loaded: LoadedManifest, graphs: list[VariantGraph], name: str, variant: Variant
) -> VariantGraph | None:
    """An already built graph that `variant` would build again, as `variant`'s.

    An imported source's graph depends on how a variant computes, never on its tag set or
    name (a python source's model function may read both), so variants differing only in
    tags share one graph and the writer exports it once.
    """
    if loaded.spec.source.python is not None:
        return None
    for graph in graphs:
        if computes_as(graph.variant) == computes_as(variant):
            return dataclasses.replace(graph, name=name, variant=variant)
    return None


def computes_as(variant: Variant) -> tuple[Any, ...]:
    """What an imported source's graph for `variant` depends on: equal for variants that
    share one graph (`built_before`)."""
    return (variant.model_dump_json(exclude={"tags"}), variant.is_training, variant.on_tpu)


def serving_signature_defs(
    loaded: LoadedManifest, name: str, variant: Variant, spec: ModelSpec
) -> dict[str, Any]:
    """The SignatureDefs of variant `name` over `spec`'s inputs and outputs (no train one)."""
    where: dict[str, Any] = {"file": loaded.path}
    # Point at the signature where the manifest wrote it: in the variant or at the top.
    signatures_field = f"variants.{name}.signatures" if variant.signatures else "signatures"
    return {
        key: build_signature_def(
            key,
            signature,
            spec.inputs,
            dict(spec.outputs),
            {**where, "field": f"{signatures_field}.{key}"},
        )
        for key, signature in _signature_specs(loaded, variant, spec).items()
    }


def _signature_specs(
    loaded: LoadedManifest, variant: Variant, spec: ModelSpec
) -> dict[str, Signature]:
    # An imported source without a signatures block keeps its own input and output keys.
    if (
        loaded.spec.source.python is None
        and variant.signatures is None
        and "signatures" not in loaded.spec.model_fields_set
    ):
        same_names = Signature(
            inputs={k: k for k in spec.inputs}, outputs={k: k for k in spec.outputs}
        )
        return {"serving_default": same_names}
    return loaded.spec.signatures_for(variant)


def _call_model(
    loaded: LoadedManifest, model_fn: Callable[..., Any], ctx: ModelContext
) -> ModelSpec:
    try:
        spec = model_fn(ctx)
    except SmpackError:
        raise
    except Exception as e:
        model = f"model function {loaded.function_name!r}" if loaded.python_file else "importing"
        msg = (
            f"{model} raised {type(e).__name__}: {first_line(e)} (building variant {ctx.variant!r})"
        )
        raise ModelError(
            msg,
            file=loaded.python_file or loaded.path,
            field="source.python" if loaded.python_file else "source",
            line=_line_in(e, loaded.python_file),
        ) from e
    if not isinstance(spec, ModelSpec):
        msg = (
            f"model function {loaded.function_name!r} returned {type(spec).__name__}, "
            "expected smpack.ModelSpec"
        )
        raise ModelError(
            msg,
            file=loaded.python_file or loaded.path,
            field="source.python" if loaded.python_file else "source",
        )
    return spec


def _line_in(error: BaseException, python_file: Path | None) -> int | None:
    """The line of the model file where `error` was raised (its deepest frame in that file)."""
    line = None
    for frame, lineno in traceback.walk_tb(error.__traceback__):
        if Path(frame.f_code.co_filename) == python_file:
            line = lineno
    return line


def _asset_tensor(
    graph: tf.Graph,
    loaded: LoadedManifest,
    name: str,
    asset_files: dict[str, str],
    source_assets: Mapping[str, Path],
) -> tf.Tensor:
    source = source_assets.get(name) or _asset_source(loaded, name)
    if source is None:
        listed = ", ".join(a.name for a in loaded.assets) or "none"
        msg = (
            f"the model asks for asset {name!r}, which the manifest does not list "
            f"(assets: {listed})"
        )
        raise ModelError(
            msg,
            file=loaded.path,
            field="assets",
        )
    # The build-time value is the source file, so initialisers work while building; the
    # AssetFileDef written with the package makes loaders substitute the packaged copy.
    # Made in the variant graph even when asked for inside a half-precision ctx.compute,
    # whose trace captures it from there.
    with graph.as_default():
        tensor = tf.constant(str(source), name="asset_path")
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS, tensor)
    asset_files[tensor.name] = name
    return tensor


def _asset_source(loaded: LoadedManifest, name: str) -> Any:
    top, _, rest = name.partition("/")
    for asset in loaded.assets:
        if asset.name == top:
            candidate = asset / rest if rest else asset
            return candidate if candidate.is_file() else None
    return None


def _check_targeting_applied(variant: Variant, computed: bool, where: dict[str, Any]) -> None:
    # device, precision, xla and TPU act on ctx.compute; without it they would be
    # silently ignored and the "GPU" graph would be a plain CPU graph.
    knobs = variant.device_settings
    if knobs and not computed:
        message = (
            f"sets {', '.join(knobs)}, which apply to ctx.compute(...), but the model "
            "function never calls it; wrap the model's numeric part in ctx.compute"
        )
        raise GraphError(message, **where)


def _check_static_batch(
    spec: ModelSpec, variant: Variant, imported: bool, where: dict[str, Any]
) -> None:
    if not variant.on_tpu:
        return
    for key, tensor in spec.inputs.items():
        shape = tensor.shape
        if shape.rank is None or shape.rank == 0 or shape[0] != variant.batch_size:
            msg = (
                f"input {key!r} has shape {shape}; a TPU graph needs the static batch size "
                f"{variant.batch_size} as its first dimension"
            )
            if imported:
                # An imported input's first dimension is made batch_size (savedmodel.batched;
                # a fixed one other than it is refused): only an input without one, or of
                # unknown rank (`TensorSpec(None)`), gets here.
                lacks = "has none" if shape.rank == 0 else "may have none (unknown rank)"
                msg += (
                    ", which batch_size sets on each input of the source's signature that "
                    f"has a first dimension, and this one {lacks}; export the source with "
                    "it batched (shape [None, ...])"
                )
            else:
                msg += " (build placeholders with shape [ctx.batch_size, ...])"
            raise GraphError(msg, **where)


def _checked_loss(spec: ModelSpec, where: dict[str, Any]) -> tf.Tensor:
    if spec.loss is None:
        msg = "a train variant needs the model function to return a loss (ModelSpec.loss)"
        raise GraphError(msg, **where)
    loss = tf.convert_to_tensor(spec.loss)
    if loss.shape.rank != 0 or not loss.dtype.is_floating:
        msg = f"the loss must be a float scalar, got {loss.dtype.name} {loss.shape}"
        raise GraphError(msg, **where)
    if not spec.labels:
        msg = "a train variant needs the model function to return its labels (ModelSpec.labels)"
        raise GraphError(
            msg,
            **where,
        )
    # The train signature takes inputs and labels by key: one key for both would feed one.
    shared = sorted(spec.labels.keys() & spec.inputs.keys())
    if shared:
        msg = f"the train signature would take the labels and an input both as {shared[0]!r}: "
        msg += "rename one of them"
        raise GraphError(msg, **where)
    return loss


def check_float32_storage(variables: dict[str, VariableSpec], where: dict[str, Any]) -> None:
    """Refuse a graph storing a variable in half precision: the checkpoint is float32."""
    for name, spec in variables.items():
        if spec.dtype in ("float16", "bfloat16"):
            msg = (
                f"variable {name!r} is stored as {spec.dtype}; create variables with "
                "tf.compat.v1.get_variable inside ctx.compute so smpack keeps the shared "
                "checkpoint float32"
            )
            raise GraphError(
                msg,
                **where,
            )
