"""Manifest knobs beyond the bundled examples: custom tag sets, checkpoints, optimizers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import VARIANTS
from tf_helpers import meta_graph, run_v1, run_v2

import smpack
from smpack.errors import ManifestError

CUSTOM = """\
schema: 1
name: linear
version: 3
source:
  python: models/linear.py:model_fn
  {checkpoint}
variants:
  plain:    {{tags: [serve]}}
  cpu_xla:  {{tags: [serve, cpu, xla], xla: true, precision: bfloat16}}
  half:     {{tags: [serve, half], precision: float16}}
  momentum: {{tags: [train, momentum], optimizer: {{name: momentum, learning_rate: 0.1}}}}
"""


def save_checkpoint(prefix: Path, var_1: float, var_2: list[float] | float) -> None:
    import tensorflow as tf

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        variables = [
            tf.compat.v1.get_variable("var_1", initializer=tf.constant(var_1)),
            tf.compat.v1.get_variable("var_2", initializer=tf.constant(var_2)),
        ]
        session.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver(variables).save(session, str(prefix))


def test_custom_tag_sets_and_knob_combinations(variants_copy: Path, tmp_path: Path) -> None:
    manifest = variants_copy / "custom.yaml"
    manifest.write_text(CUSTOM.format(checkpoint=""))
    package = smpack.build(manifest, tmp_path).path
    x = {"input": np.array([1.0, 3.0], np.float32)}
    for tags in (["serve"], ["serve", "cpu", "xla"], ["serve", "half"]):
        np.testing.assert_allclose(run_v2(package, tags, x)["output"], [2.5, 3.5], rtol=1e-2)
    nodes = meta_graph(package, ["serve", "cpu", "xla"]).graph_def.node
    assert any(n.attr["_XlaCompile"].b for n in nodes)
    assert not [n.name for n in nodes if n.device]
    momentum = {n.op for n in meta_graph(package, ["train", "momentum"]).graph_def.node}
    assert "ResourceApplyMomentum" in momentum


def test_variables_start_from_the_source_checkpoint(variants_copy: Path, tmp_path: Path) -> None:
    save_checkpoint(variants_copy / "ckpt" / "model", 3.0, 1.0)
    manifest = variants_copy / "custom.yaml"
    manifest.write_text(CUSTOM.format(checkpoint="checkpoint: ckpt/model"))
    package = smpack.build(manifest, tmp_path).path
    output = run_v1(package, ["serve"], {"input": [1.0, 2.0]})["output"]
    np.testing.assert_allclose(output, [4.0, 7.0])


def test_checkpoint_with_a_wrong_shape_is_refused(variants_copy: Path, tmp_path: Path) -> None:
    save_checkpoint(variants_copy / "ckpt" / "model", 3.0, [1.0, 2.0])
    manifest = variants_copy / "custom.yaml"
    manifest.write_text(CUSTOM.format(checkpoint="checkpoint: ckpt/model"))
    with pytest.raises(ManifestError) as caught:
        smpack.build(manifest, tmp_path / "out")
    assert caught.value.field == "source.checkpoint"
    assert "checkpoint variable 'var_2' is float32[2], the model's is float32[]" in str(
        caught.value
    )
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_a_manifest_error(variants_copy: Path, tmp_path: Path) -> None:
    manifest = variants_copy / "custom.yaml"
    manifest.write_text(CUSTOM.format(checkpoint="checkpoint: ckpt/nothing"))
    with pytest.raises(ManifestError, match="no TF checkpoint at"):
        smpack.build(manifest, tmp_path)


def test_published_package_is_readable_by_other_users(tmp_path: Path) -> None:
    # TF Serving often runs as its own user: the version folder must not stay mkdtemp-private.
    previous = os.umask(0o022)
    try:
        package = smpack.build(VARIANTS / "linear.yaml", tmp_path).path
    finally:
        os.umask(previous)
    assert oct(stat.S_IMODE(package.stat().st_mode)) == oct(0o755)
