"""The variant manifest's schema: pydantic models of every field, and its JSON Schema.

Validation happens once, here; everything downstream sees only valid objects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from smpack.io import storage
from smpack.manifest.card_spec import CardSpec
from smpack.package.layout import EXAMPLES_FILE, WARMUP_FILE

SCHEMA_VERSION = 1

# TF Serving and saved_model_cli take tag sets as comma-separated lists, so a tag
# holding a comma or white space could never be selected.
_TAG = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}")
_DEVICE = re.compile(
    r"(/job:[A-Za-z0-9_\-]+)?(/replica:\d+)?(/task:\d+)?/device:(CPU|GPU|TPU|XLA_CPU|XLA_GPU):\d+"
)
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_PYTHON_SOURCE = re.compile(r"(?P<file>[^:]+\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)")
# Keys (variant names, signature keys, tensor keys) end up in folder names, tables, command
# lines and one-line messages: printable, one line, no path separator.
_KEY = re.compile(r"[^\x00-\x1f\x7f/\\]{1,128}")
INT64_MAX = 2**63 - 1


def _printable_key(value: str) -> str:
    if not _KEY.fullmatch(value) or not value.isprintable():
        msg = f"{value[:40]!r} must be 1 to 128 printable characters, no '/' or backslash"
        raise ValueError(msg)
    return value


Key = Annotated[str, AfterValidator(_printable_key)]

Precision = Literal["float32", "float16", "bfloat16"]
# A list of tensor names is shorthand for keys equal to the names (see Signature).
TensorNames = Annotated[
    dict[Key, Key],
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 1},
                {"type": "array", "items": {"type": "string"}, "minItems": 1},
            ]
        }
    ),
]
Method = Annotated[str, Field(min_length=1)]

# TF Serving's method names; any other string is accepted as a custom method.
METHODS = {
    "predict": "tensorflow/serving/predict",
    "classify": "tensorflow/serving/classify",
    "regress": "tensorflow/serving/regress",
}
# The TF Serving methods whose requests carry serialized tf.Examples, under input "inputs".
EXAMPLE_METHODS = (METHODS["classify"], METHODS["regress"])


class _Strict(BaseModel):
    # allow_inf_nan: YAML's .inf and .nan are floats; no learning rate or momentum is either.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Optimizer(_Strict):
    """The optimizer smpack builds the train op from."""

    name: Literal["sgd", "momentum", "adam"]
    learning_rate: float = Field(gt=0)
    momentum: float = Field(default=0.9, ge=0)


class Signature(_Strict):
    """One SignatureDef: keys map to the tensor names the model function returns."""

    method: Method = "predict"
    inputs: TensorNames
    outputs: TensorNames

    @field_validator("inputs", "outputs", mode="before")
    @classmethod
    def _list_means_same_names(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {name: name for name in value}
        return value

    @field_validator("inputs", "outputs")
    @classmethod
    def _not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            msg = "must name at least one tensor"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _serving_rules(self) -> Signature:
        # TF Serving's Classify and Regress APIs feed serialized tf.Examples under one
        # fixed key and read fixed output keys; any other layout fails at request time.
        if self.method == "classify":
            if set(self.inputs) != {"inputs"}:
                msg = "a classify signature takes exactly one input, keyed 'inputs'"
                raise ValueError(msg)
            if not self.outputs.keys() <= {"classes", "scores"}:
                msg = "a classify signature's outputs are 'classes' and/or 'scores'"
                raise ValueError(msg)
        if self.method == "regress":
            if set(self.inputs) != {"inputs"}:
                msg = "a regress signature takes exactly one input, keyed 'inputs'"
                raise ValueError(msg)
            if set(self.outputs) != {"outputs"}:
                msg = "a regress signature has exactly one output, keyed 'outputs'"
                raise ValueError(msg)
        return self

    @property
    def method_name(self) -> str:
        return METHODS.get(self.method, self.method)


class Variant(_Strict):
    """One MetaGraph of the package and how its graph is placed, cast and rewritten."""

    tags: list[str] = Field(min_length=1)
    mode: Literal["serve", "train"] | None = None
    optimizer: Optimizer | None = None
    device: str | None = None
    precision: Precision = "float32"
    xla: bool = False
    tpu: bool | None = None
    batch_size: int | None = Field(default=None, gt=0)
    signatures: dict[Key, Signature] | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, tags: list[str]) -> list[str]:
        for tag in tags:
            if not _TAG.fullmatch(tag):
                msg = (
                    f"tag {tag!r} must be letters, digits, '_', '.' or '-' "
                    "(tag sets are passed comma-separated to TF Serving)"
                )
                raise ValueError(msg)
        if len(set(tags)) != len(tags):
            msg = f"tags {tags} repeat a tag"
            raise ValueError(msg)
        return tags

    @field_validator("device")
    @classmethod
    def _valid_device(cls, device: str | None) -> str | None:
        if device is not None and not _DEVICE.fullmatch(device):
            msg = f"device {device!r} is not a TensorFlow device name like '/device:GPU:0'"
            raise ValueError(msg)
        return device

    @model_validator(mode="after")
    def _consistent(self) -> Variant:
        if self.is_training and self.optimizer is None:
            msg = "a train variant needs an optimizer: {name: sgd, learning_rate: 0.1}"
            raise ValueError(msg)
        if not self.is_training and self.optimizer is not None:
            msg = "optimizer is only used by a variant with mode: train"
            raise ValueError(msg)
        if self.on_tpu and self.batch_size is None:
            msg = "a TPU variant needs a static batch_size (TPU shapes are fixed)"
            raise ValueError(msg)
        if self.on_tpu and self.is_training:
            msg = "training inside tpu.rewrite is not supported; train on CPU/GPU"
            raise ValueError(msg)
        if self.on_tpu and self.device is not None:
            msg = "a TPU variant is placed by tpu.rewrite; remove device"
            raise ValueError(msg)
        return self

    @property
    def is_training(self) -> bool:
        return (self.mode or ("train" if "train" in self.tags else "serve")) == "train"

    @property
    def on_tpu(self) -> bool:
        return self.tpu if self.tpu is not None else "tpu" in self.tags

    @property
    def device_settings(self) -> list[str]:
        """The fields set here that act on the device computation (`ctx.compute`)."""
        settings = (
            ("device", self.device is not None),
            ("precision", self.precision != "float32"),
            ("xla", self.xla),
            ("tpu", self.on_tpu),
        )
        return [name for name, used in settings if used]

    @property
    def tag_set(self) -> frozenset[str]:
        return frozenset(self.tags)


# Losses smpack builds for a train variant of a savedmodel or keras source.
LOSSES = ("mse", "sparse_categorical_crossentropy", "categorical_crossentropy")


class Source(_Strict):
    """Where the model comes from: exactly one of a Python graph-building function, a TF2
    SavedModel folder or a Keras 3 `.keras` file."""

    python: str | None = None
    savedmodel: str | None = None
    keras: str | None = None
    signature: str | None = None
    train_signature: str | None = None
    # One loss for a model with one output, else a loss per output key (a mapping), summed
    # as Keras sums a multi-output model's losses.
    loss: str | dict[Key, str] | None = None
    checkpoint: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Python modules that register the source's custom ops, imported before it is read.
    imports: list[str] = Field(default_factory=list)

    @field_validator("imports")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _MODULE.fullmatch(name):
                msg = f"{name!r} is not a Python module name (like tensorflow_text)"
                raise ValueError(msg)
        return value

    @field_validator("python")
    @classmethod
    def _file_and_function(cls, value: str | None) -> str | None:
        if value is not None and storage.is_url(value):
            msg = "model code must be a local file; only savedmodel, keras and checkpoint take URLs"
            raise ValueError(msg)
        if value is not None and not _PYTHON_SOURCE.fullmatch(value):
            msg = f"{value!r} is not 'path/to/file.py:function_name'"
            raise ValueError(msg)
        return value

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str | dict[str, str] | None) -> str | dict[str, str] | None:
        if isinstance(value, dict) and not value:
            msg = "give a loss for at least one output ({output key: loss})"
            raise ValueError(msg)
        names = [value] if isinstance(value, str) else list((value or {}).values())
        for name in names:
            if name not in LOSSES and not _PYTHON_SOURCE.fullmatch(name):
                msg = f"loss {name!r} is not one of {', '.join(LOSSES)} or 'file.py:function'"
                raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Source:
        given = [k for k in ("python", "savedmodel", "keras") if getattr(self, k) is not None]
        if len(given) != 1:
            msg = f"give exactly one of python, savedmodel or keras (got {len(given)})"
            raise ValueError(msg)
        for picker in ("signature", "train_signature"):
            if getattr(self, picker) is not None and self.savedmodel is None:
                msg = f"{picker} picks a signature of a savedmodel source; remove it"
                raise ValueError(msg)
        if self.python is not None and self.loss is not None:
            msg = "loss is for savedmodel and keras sources; a python model returns its own"
            raise ValueError(msg)
        if self.python is None and self.checkpoint is not None:
            msg = "checkpoint is for python sources; a SavedModel or Keras file has its weights"
            raise ValueError(msg)
        return self

    @property
    def losses_by_field(self) -> dict[str, str]:
        """Each loss the manifest names, by its field (`source.loss`, `source.loss.<output>`)."""
        if isinstance(self.loss, dict):
            return {f"source.loss.{key}": name for key, name in self.loss.items()}
        return {} if self.loss is None else {"source.loss": self.loss}

    @property
    def python_file(self) -> str:
        return (self.python or "").rpartition(":")[0]

    @property
    def function_name(self) -> str:
        return (self.python or "").rpartition(":")[2]


# How many records TF Serving reads from a warmup file at most.
MAX_WARMUP_RECORDS = 1000


def _check_inline_or_file(kind: str, inline: dict[str, Any], files: dict[str, str]) -> None:
    """Each value given once, inline or as a file, and files in a format smpack reads."""
    both = sorted(inline.keys() & files.keys())
    if both:
        msg = f"{kind}s {both} are given both inline and as files"
        raise ValueError(msg)
    for key, file in files.items():
        if Path(file).suffix not in (".npy", ".json"):
            msg = f"file for {kind} {key!r} must be .npy or .json, not {file!r}"
            raise ValueError(msg)


class WarmupRequest(_Strict):
    """One request TF Serving replays when it loads the package (see smpack/builder/warmup.py).

    `inputs` gives values inline and `files` reads them from .npy or .json files, keyed by
    the signature's input keys; a classify or regress signature takes `examples` instead,
    each a mapping of tf.Example feature names to values.
    """

    signature: str = "serving_default"
    inputs: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)
    examples: list[dict[str, Any]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_way_per_input(self) -> WarmupRequest:
        if self.examples is not None and (self.inputs or self.files):
            msg = "give examples (classify, regress) or inputs/files (predict), not both"
            raise ValueError(msg)
        if self.examples is None and not (self.inputs or self.files):
            msg = "a request needs inputs, files or examples"
            raise ValueError(msg)
        _check_inline_or_file("input", self.inputs, self.files)
        return self


class Example(WarmupRequest):
    """Inputs the model accepts, and optionally the labels a train step learns from.

    Verify runs every variant on them (instead of inputs it makes up), and `labels`, keyed
    by the train signature's label keys, feed its one-step check of each train variant.
    Inputs and labels are given like a warmup request's: inline, or `.npy`/`.json` files.
    """

    labels: dict[str, Any] = Field(default_factory=dict)
    label_files: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _labels_once(self) -> Example:
        _check_inline_or_file("label", self.labels, self.label_files)
        return self

    @property
    def has_labels(self) -> bool:
        return bool(self.labels or self.label_files)


class ManifestCard(CardSpec):
    """The `card:` block: what people write about the model, and optionally their template.

    `template` replaces the built-in template of the card its name ends in (`.md.j2` or
    `.html.j2`); the other card keeps the built-in one.
    """

    template: str | None = None

    @field_validator("template")
    @classmethod
    def _format_in_name(cls, value: str | None) -> str | None:
        if value is not None and card_format(value) is None:
            msg = f"{value!r} must end in .md.j2 or .html.j2, naming the card it renders"
            raise ValueError(msg)
        return value


def card_format(template: str | Path) -> Literal["md", "html"] | None:
    """The card format a template file renders, from its name (`x.md.j2`, `x.html.j2`)."""
    name = Path(template).name.removesuffix(".j2")
    return "html" if name.endswith(".html") else "md" if name.endswith(".md") else None


# What `evaluate:` can compute per variant, comparing an output with the labels.
EvaluationMetric = Literal["accuracy", "mse", "mae"]
# The evaluation files `evaluate.data` may name: arrays, or tf.Examples.
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")
DATA_SUFFIXES = (".npz", *TFRECORD_SUFFIXES)


class Evaluate(_Strict):
    """Evaluation data the build measures every variant on (see smpack/checks/measure.py).

    `data` is a .npz file holding one array per input of `signature` and the labels under
    `label`, or a TFRecord file (.tfrecord, .tfrecords) of tf.Examples, one per row, whose
    features are named so (see smpack/manifest/evaluation_data.py); `output` is the output
    compared with the labels (needed when there are several).
    """

    data: str
    metrics: list[EvaluationMetric] = Field(min_length=1)
    signature: str = "serving_default"
    output: str | None = None
    label: str = "labels"

    @field_validator("data")
    @classmethod
    def _data_file(cls, value: str) -> str:
        if not value.endswith(DATA_SUFFIXES):
            msg = (
                f"{value!r} must be a .npz file (input arrays by key, and labels) or a "
                "TFRecord file of tf.Examples (.tfrecord, .tfrecords)"
            )
            raise ValueError(msg)
        return value


class Manifest(_Strict):
    """A whole variant manifest, as written in YAML (paths still relative)."""

    schema_: int = Field(alias="schema")
    name: str
    # TF Serving reads version folder names as int64.
    version: int = Field(gt=0, le=INT64_MAX)
    source: Source
    variants: dict[Key, Variant] = Field(min_length=1)
    signatures: dict[Key, Signature] = Field(
        default_factory=lambda: {
            "serving_default": Signature(inputs={"input": "input"}, outputs={"output": "output"})
        }
    )
    assets: list[str] = Field(default_factory=list)
    assets_extra: dict[str, str] = Field(default_factory=dict)
    card: ManifestCard = Field(default_factory=ManifestCard)
    warmup: list[WarmupRequest] = Field(default_factory=list, max_length=MAX_WARMUP_RECORDS)
    evaluate: Evaluate | None = None
    examples: list[Example] = Field(default_factory=list, max_length=MAX_WARMUP_RECORDS)

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )

    @field_validator("schema_")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            msg = f"schema {value} is unknown; this smpack reads schema {SCHEMA_VERSION}"
            raise ValueError(msg)
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if len(value) > 100:
            msg = f"name is {len(value)} characters long; at most 100 make a folder name"
            raise ValueError(msg)
        if not _NAME.fullmatch(value) or value in {".", ".."}:
            msg = f"name {value!r} must be a plain directory name (letters, digits, '_', '.', '-')"
            raise ValueError(msg)
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _integer_version(cls, value: Any) -> Any:
        # TF Serving only loads versions whose directory name is an integer.
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"version must be a positive integer, not {value!r}"
            raise ValueError(msg)
        return value

    @field_validator("variants")
    @classmethod
    def _distinct_tag_sets(cls, variants: dict[str, Variant]) -> dict[str, Variant]:
        # TF's builder accepts duplicate tag sets silently; loaders then pick one at random.
        seen: dict[frozenset[str], str] = {}
        for name, variant in variants.items():
            if variant.tag_set in seen:
                tags = "{" + ", ".join(sorted(variant.tag_set)) + "}"
                msg = (
                    f"tag set {tags} appears twice (variants {seen[variant.tag_set]!r} and "
                    f"{name!r}); give each variant a distinct tag set"
                )
                raise ValueError(msg)
            seen[variant.tag_set] = name
        return variants

    @model_validator(mode="after")
    def _warmup_has_a_home(self) -> Manifest:
        if self.warmup and all(v.is_training for v in self.variants.values()):
            msg = "warmup requests need a serving variant (one without mode: train)"
            raise ValueError(msg)
        if self.warmup and WARMUP_FILE in self.assets_extra:
            msg = f"warmup: writes assets.extra/{WARMUP_FILE}; remove it from assets_extra"
            raise ValueError(msg)
        if self.examples and EXAMPLES_FILE in self.assets_extra:
            msg = f"examples: writes assets.extra/{EXAMPLES_FILE}; remove it from assets_extra"
            raise ValueError(msg)
        return self

    def signatures_for(self, variant: Variant) -> dict[str, Signature]:
        return dict(variant.signatures) if variant.signatures is not None else dict(self.signatures)


def manifest_json_schema() -> str:
    """The manifest format as a JSON Schema document, for editors (yaml-language-server) and
    scripts: the text `smpack schema` prints and `smpack init` writes beside a manifest."""
    schema = Manifest.model_json_schema(by_alias=True)
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"smpack variant manifest, schema {SCHEMA_VERSION}",
        **{key: value for key, value in schema.items() if key != "title"},
    }
    return json.dumps(document, indent=2) + "\n"
