"""`smpack verify`: every graph loaded through TensorFlow and checked; `build` runs it too."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import check_golden, invoke, tree_state

from smpack.checks.verify import verify_package
from smpack.package.info import PackageInfo


def _linear_graph(variables: list[str]) -> tuple[tf.Tensor, tf.Tensor]:
    x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
    y = x
    for name in variables:
        y = y + tf.compat.v1.get_variable(name, [], initializer=tf.compat.v1.ones_initializer())
    return x, tf.identity(y, name="y")


@pytest.fixture(scope="module")
def second_graph_lacks_variable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built with TF's own builder, which accepts it: graph 2 has a variable `b` that only
    graph 1's variables were saved for, so the checkpoint lacks it."""
    path = tmp_path_factory.mktemp("tfbuilder") / "1"
    builder = tf.compat.v1.saved_model.Builder(str(path))
    for tags, variables in ((["serve"], ["a"]), (["serve", "gpu"], ["a", "b"])):
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            x, y = _linear_graph(variables)
            session.run(tf.compat.v1.global_variables_initializer())
            signatures = {
                "serving_default": tf.compat.v1.saved_model.predict_signature_def(
                    {"x": x}, {"y": y}
                )
            }
            if tags == ["serve"]:
                builder.add_meta_graph_and_variables(session, tags, signatures)
            else:
                builder.add_meta_graph(tags, signatures)
    builder.save()
    return path


def test_golden_linear_passes(linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(linear_package.path.parent.parent)
    result = invoke(monkeypatch, ["verify", "linear/1"])
    assert result.exit_code == 0, result.output
    check_golden("verify_linear.txt", result.stdout)


def test_text_classifier_passes(text_package: PackageInfo) -> None:
    report = verify_package(text_package.path)
    assert report.passed, report
    gpu = next(g for g in report.graphs if g.tag_set == "serve,gpu")
    names = [c.name for c in gpu.checks]
    assert "serving_default agrees with serve (float16 tolerance)" in names
    tpu = next(g for g in report.graphs if g.tag_set == "serve,tpu")
    assert "signature serving_default runs (TPU computation on XLA:CPU)" in [
        c.name for c in tpu.checks
    ]


def test_catches_variable_missing_from_checkpoint(
    second_graph_lacks_variable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = verify_package(second_graph_lacks_variable)
    first, second = report.graphs
    assert first.passed, first
    assert not second.passed
    failed = {c.name: c.detail for c in second.checks if not c.passed}
    assert failed["variables in checkpoint"] == "b missing from the checkpoint"
    assert "loads" in failed  # TF's loader agrees: the restore fails

    monkeypatch.chdir(second_graph_lacks_variable.parent)
    result = invoke(monkeypatch, ["verify", "1"])
    assert result.exit_code == 1
    check_golden("verify_missing_variable.txt", result.stdout)


def test_tf2_saved_model_passes(tmp_path: Path) -> None:
    module = tf.Module()
    module.w = tf.Variable(2.0)
    module.f = tf.function(
        lambda x: {"y": x * module.w}, input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    tf.saved_model.save(module, str(tmp_path), signatures=module.f)
    report = verify_package(tmp_path)
    assert report.passed, report
    [graph] = report.graphs
    assert "signature serving_default runs" in [c.name for c in graph.checks]


OVERFLOWING_MODEL = """\
import tensorflow as tf
from smpack import ModelContext, ModelSpec

def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [None], name="input")

    def scale(x):
        # 1e5 fits float32 but not float16 (max 65504): the float16 variant returns inf.
        s = tf.compat.v1.get_variable(
            "s", [], ctx.dtype, initializer=tf.compat.v1.constant_initializer(1e5)
        )
        return x * s

    out = tf.identity(ctx.compute(scale, x), name="output")
    return ModelSpec(inputs={"input": x}, outputs={"output": out})
"""

OVERFLOWING_MANIFEST = """\
schema: 1
name: overflow
version: 1
source: {python: model.py:model_fn}
variants:
  cpu: {tags: [serve]}
  half: {tags: [serve, half], precision: float16}
signatures:
  serving_default: {method: predict, inputs: [input], outputs: [output]}
"""


def test_a_package_failing_verify_is_kept_aside_and_never_replaces_a_good_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "model.py").write_text(OVERFLOWING_MODEL)
    (tmp_path / "overflow.yaml").write_text(textwrap.dedent(OVERFLOWING_MANIFEST))
    out = tmp_path / "out"
    args = ["build", str(tmp_path / "overflow.yaml"), "--out", str(out)]
    result = invoke(monkeypatch, [*args, "--no-verify"])
    assert result.exit_code == 0, result.output
    published = tree_state(out / "overflow" / "1")

    result = invoke(monkeypatch, [*args, "--force"])
    assert result.exit_code == 1
    assert "FAIL: outputs differ: output" in result.stdout
    assert "FAILED: serve,half" in result.stdout
    kept = out / "overflow" / "1.failed-verify"
    assert result.stderr.splitlines() == [
        "verify failed: the package did not pass its checks and was not published; "
        f"it is kept in {kept}"
    ]
    assert (kept / "saved_model.pb").is_file()
    assert tree_state(out / "overflow" / "1") == published
    assert sorted(p.name for p in (out / "overflow").iterdir()) == ["1", "1.failed-verify"]


def test_verify_reports_files_changed_since_the_build(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    copy = tmp_path / "linear" / "1"
    shutil.copytree(linear_package.path, copy)
    assert verify_package(copy).passed
    (copy / "assets" / "notes.txt").write_text("slipped in later")
    index = copy / "variables" / "variables.index"
    index.write_bytes(index.read_bytes())  # unchanged bytes: not a finding
    data = copy / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-4] + b"\x00\x00\x80\x7f")  # the last float is now inf
    report = verify_package(copy)
    [check] = [c for c in report.checks if c.name == "files match assets.extra/smpack.json"]
    assert not check.passed and not report.passed
    assert check.detail == (
        "variables/variables.data-00000-of-00001 was modified (its sha256 differs from "
        "assets.extra/smpack.json); assets/notes.txt was added after the build (not in "
        "assets.extra/smpack.json)"
    )


def test_packages_smpack_did_not_build_have_nothing_to_match(
    second_graph_lacks_variable: Path,
) -> None:
    names = [check.name for check in verify_package(second_graph_lacks_variable).checks]
    assert names == ["tag sets unique"]
