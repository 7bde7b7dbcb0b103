"""Manifest knobs beyond the bundled examples: custom tag sets, checkpoints, optimizers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import VARIANTS
from tf_helpers import CUSTOM, meta_graph, run_v1, run_v2, save_checkpoint

import smpack
from smpack.errors import ManifestError


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


def test_a_model_file_may_use_dataclasses_with_postponed_annotations(
    variants_copy: Path, tmp_path: Path
) -> None:
    # @dataclass resolves its module through sys.modules while the file runs, as `import` does.
    model = variants_copy / "models" / "linear.py"
    model.write_text(
        "from __future__ import annotations\n\nimport dataclasses\n\n"
        + model.read_text().replace('"""The classic', '"""Was the classic', 1)
        + "\n\n@dataclasses.dataclass\nclass Settings:\n    scale: float = 0.5\n"
    )
    package = smpack.build(variants_copy / "linear.yaml", tmp_path)
    x = {"input": np.array([2.0], np.float32)}
    np.testing.assert_allclose(run_v1(package.path, ["serve"], x)["output"], [3.0])
