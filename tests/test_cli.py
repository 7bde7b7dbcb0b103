"""The `smpack` command as users see it: exit codes, stdout and stderr kept apart."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import VARIANTS
from tf_helpers import run_v1, write_converting_source
from typer.testing import CliRunner

from smpack.cli.commands import app

runner = CliRunner()


def tree_state(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_build_prints_one_row_per_tag_set(tmp_path: Path) -> None:
    result = runner.invoke(app, ["build", str(VARIANTS / "linear.yaml"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for tag_set in ("train", "serve", "serve,gpu", "serve,tpu"):
        assert f"│ {tag_set} " in result.stdout
    assert "shared variables: 3 in one checkpoint" in result.stdout
    assert (tmp_path / "linear" / "1" / "saved_model.pb").is_file()


def test_existing_version_is_kept_without_force(tmp_path: Path) -> None:
    args = ["build", str(VARIANTS / "linear.yaml"), "--out", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    before = tree_state(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "already exists; pass --force" in result.stderr
    assert tree_state(tmp_path) == before


@pytest.mark.slow
def test_force_replaces_and_as_text_writes_pbtxt(tmp_path: Path) -> None:
    args = ["build", str(VARIANTS / "linear.yaml"), "--out", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, [*args, "--force", "--as-text"])
    assert result.exit_code == 0, result.output
    package = tmp_path / "linear" / "1"
    assert (package / "saved_model.pbtxt").is_file()
    assert not (package / "saved_model.pb").exists()
    assert [p.name for p in tmp_path.joinpath("linear").iterdir()] == ["1"]
    output = run_v1(package, ["serve", "gpu"], {"input": [2.0]})["output"]
    assert output.tolist() == [3.0]


@pytest.mark.parametrize(
    ("model_code", "message"),
    [
        (
            "def model_fn(ctx):\n    raise RuntimeError('no weights here')\n",
            "model function 'model_fn' raised RuntimeError: no weights here",
        ),
        (
            "def model_fn(ctx):\n    raise ValueError('what failed\\nNodeDef: details')\n",
            "raised ValueError: what failed (building variant",
        ),
        ("def model_fn(ctx):\n    return 42\n", "returned int, expected smpack.ModelSpec"),
        ("def other(ctx): ...\n", "has no function 'model_fn'"),
    ],
)
def test_model_function_problems_are_one_line(variants_copy, tmp_path, model_code, message):
    (variants_copy / "models" / "linear.py").write_text(model_code)
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", str(variants_copy / "linear.yaml"), "--out", str(out)])
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (out / "linear" / "1").exists()


def test_signature_naming_an_unknown_tensor(variants_copy: Path, tmp_path: Path) -> None:
    manifest = variants_copy / "linear.yaml"
    manifest.write_text(manifest.read_text().replace("outputs: [output]", "outputs: [logits]"))
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "linear.yaml: signatures.serving_default: " in result.stderr
    assert "names output 'logits', but the model function returned outputs ['output']" in (
        result.stderr
    )


def test_variables_that_differ_between_variants_are_refused(variants_copy, tmp_path) -> None:
    model = variants_copy / "models" / "linear.py"
    model.write_text(
        model.read_text().replace('"var_2", []', '"var_2", [] if ctx.training else [1]')
    )
    result = runner.invoke(
        app, ["build", str(variants_copy / "linear.yaml"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert (
        "linear.yaml: variants: variable 'var_2' is float32[] in variant 'train' but "
        "float32[1] in variant 'cpu'" in result.stderr
    )
    assert "every variant restores the same checkpoint" in result.stderr


@pytest.mark.slow
def test_debug_variable_brings_back_the_traceback(variants_copy: Path, tmp_path: Path) -> None:
    (variants_copy / "models" / "linear.py").write_text("def model_fn(ctx):\n    1 / 0\n")
    # --no-verify: the error is the model's, before any graph exists to verify; verify's
    # graph server would only add a TensorFlow import to each process.
    command = [
        sys.executable,
        "-m",
        "smpack",
        "build",
        str(variants_copy / "linear.yaml"),
        "--out",
        str(tmp_path),
        "--no-verify",
    ]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 2
    assert "ZeroDivisionError: division by zero" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    loud = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={"SMPACK_DEBUG": "1", "PATH": ""}
    )
    assert loud.returncode == 1
    assert "Traceback" in loud.stderr


@pytest.mark.slow
def test_a_real_process_skips_teardown_after_flushing_and_removing_autograph_files(
    tmp_path: Path,
) -> None:
    """main() ends the process with os._exit: a pipe's buffered output must get out first,
    and the module autograph wrote for the source's tf.function, which its exit hook would
    have removed, must go (every build of such a source left one in /tmp)."""
    manifest = write_converting_source(tmp_path / "source")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    command = [sys.executable, "-m", "smpack", "build", str(manifest), "--out", str(tmp_path)]
    env = {**os.environ, "TMPDIR": str(temporary)}
    built = subprocess.run(
        [*command, "--json"], capture_output=True, text=True, env=env, timeout=180
    )
    assert built.returncode == 0, built.stderr
    (outcome,) = json.loads(built.stdout)["result"]
    assert outcome["verified"] and not outcome["failed_checks"]
    assert Path(outcome["package"], "saved_model.pb").is_file()
    assert list(temporary.iterdir()) == []

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert again.returncode == 2
    assert again.stderr.startswith("error: ") and "already exists" in again.stderr


def test_help_does_not_import_tensorflow() -> None:
    code = (
        "import sys; from smpack.cli.commands import app; from typer.testing import CliRunner;"
        "CliRunner().invoke(app, ['--help']); print('tensorflow' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_classify_signature_must_follow_tf_serving_dtypes(variants_copy, tmp_path) -> None:
    manifest = variants_copy / "linear.yaml"
    manifest.write_text(
        manifest.read_text().replace(
            "serving_default: {method: predict, inputs: [input], outputs: [output]}",
            "serving_default: {method: classify, inputs: {inputs: input}, "
            "outputs: {scores: output}}",
        )
    )
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert (
        "signature 'serving_default' breaks TF Serving's classify rules: input 'inputs' "
        "must be a string tensor" in result.stderr
    )
    assert not (tmp_path / "out").exists()


def test_target_knobs_without_ctx_compute_are_refused(variants_copy, tmp_path) -> None:
    model = variants_copy / "models" / "linear.py"
    model.write_text(model.read_text().replace("ctx.compute(linear, x)", "linear(x)"))
    manifest = variants_copy / "linear.yaml"
    manifest.write_text(
        manifest.read_text()
        .replace("precision: float16, ", "")
        .replace("  tpu:   {tags: [serve, tpu], precision: bfloat16, batch_size: 8}\n", "")
    )
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert (
        "variants.gpu: sets device, xla, which apply to ctx.compute(...), but the model "
        "function never calls it" in result.stderr
    )
