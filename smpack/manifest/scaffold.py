"""`smpack init`: a commented starter manifest and model function that build as they are.

A new user learns the manifest from a file that works; every field is shown with a comment,
and the optional ones sit commented out with their defaults.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from smpack.errors import ManifestError
from smpack.manifest import manifest_json_schema

MANIFEST = Template("""\
# yaml-language-server: $$schema=$schema
# Build with: smpack build $manifest --out build/
schema: 1                       # manifest format version
name: $name  # package folder: build/$name/<version>/
version: 1                      # TF Serving version folder; raise it for each release
source:
  python: models/$name.py:model_fn   # relative to this file; runs your code
  # checkpoint: ckpt/model      # optional: start variables from a TF checkpoint prefix
  params: {hidden: 16}          # handed to the model as ctx.params
variants:                       # one MetaGraph each, all sharing one checkpoint
  cpu:   {tags: [serve]}
  train: {tags: [train], optimizer: {name: adam, learning_rate: 0.01}}
  gpu:   {tags: [serve, gpu], device: /device:GPU:0, precision: float16, xla: true}
  tpu:   {tags: [serve, tpu], precision: bfloat16, batch_size: 8}
signatures:                     # defaults for every variant; a variant may give its own
  serving_default: {method: predict, inputs: [features], outputs: [scores]}
# assets: [data/vocab.txt]      # files the graph reads, copied into assets/
# assets_extra: {}              # copied verbatim into assets.extra/
card:                           # model card text (Model Card Toolkit field names)
  model_details:
    name: $name
    overview: What the model does, for whom, and how well.
  # considerations: {limitations: [...], out_of_scope_uses: [...]}
""")

MODEL = Template('''\
"""Starter model for $name: a two-layer network over four float features."""

import tensorflow as tf

from smpack import ModelContext, ModelSpec


def model_fn(ctx: ModelContext) -> ModelSpec:
    features = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size, 4], name="features")

    # The numeric part, written in float32, which smpack places, retypes to the variant's
    # precision and compiles. Variables made inside it with get_variable are stored
    # float32 in the one checkpoint, whatever dtype (here ctx.dtype) they ask for.
    def network(x: tf.Tensor) -> tf.Tensor:
        w1 = tf.compat.v1.get_variable("w1", [4, ctx.params["hidden"]], ctx.dtype)
        b1 = tf.compat.v1.get_variable(
            "b1", [ctx.params["hidden"]], ctx.dtype, tf.compat.v1.zeros_initializer()
        )
        w2 = tf.compat.v1.get_variable("w2", [ctx.params["hidden"], 1], ctx.dtype)
        return tf.squeeze(tf.matmul(tf.nn.relu(tf.matmul(x, w1) + b1), w2), axis=1)

    scores = tf.identity(ctx.compute(network, features), name="scores")
    if not ctx.training:
        return ModelSpec(inputs={"features": features}, outputs={"scores": scores})
    target = tf.compat.v1.placeholder(tf.float32, [ctx.batch_size], name="target")
    loss = tf.reduce_mean(tf.square(scores - target), name="loss")
    return ModelSpec(
        inputs={"features": features},
        outputs={"scores": scores},
        labels={"target": target},
        loss=loss,
    )
''')

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


SCHEMA_FILE = "manifest.schema.json"


def write_starter(manifest: Path) -> list[Path]:
    """Write a starter manifest at `manifest`, its model, and the manifest JSON Schema.

    The manifest's `$schema` line points at the schema file beside it, so editors check it
    offline. Nothing the user wrote is overwritten: if the manifest or model exists, nothing
    is written; the schema file is generated, so it is refreshed.
    """
    name = manifest.name.removesuffix(".yaml").removesuffix(".yml")
    if not _NAME.match(name):
        msg = (
            f"{name!r} cannot name a package and a Python module; use letters, digits "
            "and '_', starting with a letter"
        )
        raise ManifestError(msg, file=manifest)
    model = manifest.parent / "models" / f"{name}.py"
    for path in (manifest, model):
        if path.exists():
            msg = "already exists; init never overwrites, choose another path"
            raise ManifestError(msg, file=path)
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_text(MODEL.substitute(name=name), encoding="utf-8")
    manifest.write_text(
        MANIFEST.substitute(name=name, manifest=manifest, schema=SCHEMA_FILE),
        encoding="utf-8",
    )
    schema = manifest.parent / SCHEMA_FILE
    schema.write_text(manifest_json_schema(), encoding="utf-8")
    return [manifest, model, schema]
