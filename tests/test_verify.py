"""`smpack verify`: every graph loaded through TensorFlow and checked; `build` runs it too."""

from __future__ import annotations

import os
import shutil
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import check_golden, invoke, json_result, tree_state
from tensorflow.core.protobuf import saved_model_pb2

from smpack.checks.verify import (
    _MEMORY_BUDGET,
    Check,
    VerifyReport,
    _check_graph,
    _memory_needed,
    _Requests,
    verify_package,
)
from smpack.io.tf_quietly import schedule_xla_cpu_for_memory
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


def test_verify_reports_what_checking_each_graph_cost(
    linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.perf_counter()
    result = invoke(monkeypatch, ["verify", str(linear_package.path), "--costs"])
    took = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    table = lines[lines.index("what checking each graph cost") :]
    rows = [line.split("│")[1:-1] for line in table if line.startswith("│")]
    assert [row[0].strip() for row in rows] == ["train", "serve", "serve,gpu", "serve,tpu"]
    for _, importing, restoring, running, cpu, peak_rss in rows:
        seconds = [
            float(cell.strip().removesuffix(" s")) for cell in (importing, restoring, running)
        ]
        # Each graph's own wall time is part of verify's; every process computed something
        # and held at least TensorFlow's runtime.
        assert 0 < sum(seconds) < took, rows
        assert float(cpu.strip().removesuffix(" s")) > 0, rows
        assert peak_rss.strip().endswith("MiB"), rows
    assert "s of CPU in the graphs' processes" in result.stdout

    # The same costs, in numbers, where a program reads them.
    report = verify_package(linear_package.path)
    for graph in report.graphs:
        assert graph.cost is not None, graph.tag_set
        assert graph.cost.running > 0 and graph.cost.cpu > 0, graph
        assert graph.cost.peak_rss > 100 << 20, graph  # TensorFlow's runtime at least
    plain = invoke(monkeypatch, ["verify", str(linear_package.path)])
    assert "what checking each graph cost" not in plain.stdout


def test_text_classifier_passes(text_package: PackageInfo) -> None:
    report = verify_package(text_package.path)
    assert report.passed, report
    gpu = next(g for g in report.graphs if g.tag_set == "serve,gpu")
    names = [c.name for c in gpu.checks]
    assert "serving_default agrees with serve (float16: within 1% of scale)" in names
    tpu = next(g for g in report.graphs if g.tag_set == "serve,tpu")
    # Its made-up strings are words of its vocabulary asset, so they go through real lookups.
    synthetic = "signature serving_default runs on synthetic inputs (vocabulary words)"
    assert f"{synthetic} (TPU computation on XLA:CPU)" in [c.name for c in tpu.checks]


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


def _graph_index(package: Path, tags: list[str]) -> int:
    saved_model = saved_model_pb2.SavedModel.FromString((package / "saved_model.pb").read_bytes())
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    return found.index(tags)


def test_a_signature_naming_no_tensor_fails_its_checks_with_one_line_each(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    """What TF refuses (KeyError, ValueError from a tensor name the graph lacks) is the graph's
    failure, in a Session and on XLA:CPU alike, with TF's own telling line."""
    package = tmp_path / "broken"
    shutil.copytree(linear_package.path, package)
    saved_model = saved_model_pb2.SavedModel.FromString((package / "saved_model.pb").read_bytes())
    kept = [m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags]
    del saved_model.meta_graphs[:]
    for meta_graph in kept:
        if "gpu" not in meta_graph.meta_info_def.tags:  # two graphs are enough
            meta_graph.signature_def["serving_default"].outputs["output"].name = "nosuch:0"
            saved_model.meta_graphs.add().CopyFrom(meta_graph)
    (package / "saved_model.pb").write_bytes(saved_model.SerializeToString())

    report = verify_package(package)

    failed = [(tag_set, c.name, c.detail) for tag_set, c in report.rows() if not c.passed]
    alike = "failed alike on two sets of made-up inputs, whatever their values: "
    missing = "The name 'nosuch:0' refers to a Tensor which does not exist."
    assert failed[1:] == [
        ("serve", "signature tensors resolve", f"{missing} The operation, 'nosuch', does "
         "not exist in the graph."),
        ("serve", "signature serving_default runs on synthetic inputs", f"{alike}Argument "
         f"`fetch` = nosuch:0 cannot be interpreted as a Tensor. (\"{missing} The "
         "operation, 'nosuch', does not exist in the graph.\")"),
        ("serve,tpu", "signature tensors resolve (in the GraphDef)",
         "no such node: serving_default: nosuch:0"),
        ("serve,tpu", "signature serving_default runs on synthetic inputs (TPU computation "
         "on XLA:CPU)", f"{alike}the graph has no node 'nosuch'"),
    ]  # fmt: skip
    assert failed[0][0] == "(package)" and failed[0][2].startswith("saved_model.pb was modified")


def test_a_bug_in_verify_is_raised_not_recorded_as_a_failed_check(
    linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyError or ValueError from smpack's own code around TF's calls is a bug: it must
    not read as the graph failing to load or run."""

    def bug(*args: object) -> None:
        raise KeyError("injected")  # noqa: EM101

    def other_bug(*args: object) -> None:
        raise ValueError("injected")  # noqa: EM101

    serve = _graph_index(linear_package.path, ["serve"])
    tpu = _graph_index(linear_package.path, ["serve", "tpu"])
    no_requests = _Requests({}, {})
    with monkeypatch.context() as patched:
        patched.setattr("smpack.checks.verify.pins_this_host_lacks", bug)
        with pytest.raises(KeyError, match="injected"):
            _check_graph(linear_package.path, serve, no_requests, ())
    with monkeypatch.context() as patched:
        patched.setattr("smpack.checks.verify.feed_dict", other_bug)
        with pytest.raises(ValueError, match="injected"):
            _check_graph(linear_package.path, serve, no_requests, ())
    with monkeypatch.context() as patched:
        patched.setattr("smpack.checks.xla_check._host_graph", bug)
        with pytest.raises(KeyError, match="injected"):
            _check_graph(linear_package.path, tpu, no_requests, ())


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
    assert "signature serving_default runs on synthetic inputs" in [c.name for c in graph.checks]


def test_made_up_quantized_inputs_run_and_a_handle_input_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A qint8 input is fed as TF feeds one (it was "smpack bug": numpy has no qint8); a
    variant input, which no request can carry, is the package's one-line error, exit 2."""
    quantized, handle = tf.Module(), tf.Module()
    quantized.w = tf.Variable(2.0)
    quantized.f = tf.function(
        lambda x: {"y": tf.quantization.dequantize(x, -1.0, 1.0) * quantized.w},
        input_signature=[tf.TensorSpec([None, 2], tf.qint8)],
    )
    handle.f = tf.function(
        lambda h: {"n": tf.raw_ops.TensorListLength(input_handle=h)},
        input_signature=[tf.TensorSpec([], tf.variant)],
    )
    for name, module in (("quantized", quantized), ("handle", handle)):
        tf.saved_model.save(module, str(tmp_path / name), signatures=module.f)

    fed = invoke(monkeypatch, ["verify", "--json", str(tmp_path / "quantized")])
    refused = invoke(monkeypatch, ["verify", str(tmp_path / "handle")])

    assert fed.exit_code == 0, fed.output
    [graph] = json_result(fed.stdout, "verify")["graphs"]
    assert {"name": "signature serving_default runs on synthetic inputs", "passed": True,
            "detail": "", "warning": False} in graph["checks"]  # fmt: skip
    assert refused.exit_code == 2
    assert refused.stderr.splitlines() == [
        f"error: {tmp_path / 'handle'}: signature 'serving_default': input 'h' takes variant "
        "values, which no request can carry"
    ]


OVERFLOWING_MODEL = """\
import tensorflow as tf
from smpack import ModelContext, ModelSpec

def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [None], name="input")

    def scale(x):
        # x * 1e3 * 1e3 fits float32 but not float16 (max 65504): the float16 variant,
        # whose products compute in float16, returns inf.
        s = tf.compat.v1.get_variable(
            "s", [], ctx.dtype, initializer=tf.compat.v1.constant_initializer(1e3)
        )
        return x * s * s

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
    assert "FAIL: output is inf or NaN where serve" in result.stdout
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
    [check] = [c for c in report.checks if c.name.startswith("files match ")]
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


# A small CNN whose outputs are about 1e-3, with a half-precision variant that is wrong by
# 10%: off by ~1e-4, which an absolute tolerance of 1e-2 could never see.
SMALL_CNN = """\
import tensorflow as tf
from smpack import ModelContext, ModelSpec

def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [4, 8, 8, 1], name="input")

    def cnn(x):
        init = tf.compat.v1.random_normal_initializer(stddev=1e-3, seed=1)
        w = tf.compat.v1.get_variable("w", [3, 3, 1, 4], ctx.dtype, initializer=init)
        y = tf.reduce_mean(tf.nn.conv2d(x, w, 1, "SAME"), axis=[1, 2])
        return y * (SCALE if ctx.precision != "float32" else 1.0)

    out = tf.identity(ctx.compute(cnn, x), name="output")
    return ModelSpec(inputs={"input": x}, outputs={"output": out})
"""

# Softmax over three clearly separated classes; the wrong variant reverses their order.
CLASSIFIER = """\
import tensorflow as tf
from smpack import ModelContext, ModelSpec

def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [4, 3], name="input")

    def classify(x):
        logits = 10.0 * tf.constant([[1.0, 0.0, 0.0]], x.dtype) + 0.0 * x
        if ctx.precision != "float32" and REVERSED:
            logits = tf.reverse(logits, [1])
        return tf.nn.softmax(logits)

    out = tf.identity(ctx.compute(classify, x), name="output")
    return ModelSpec(inputs={"input": x}, outputs={"output": out})
"""

HALF_MANIFEST = """\
schema: 1
name: half
version: 1
source: {python: model.py:model_fn}
variants:
  cpu: {tags: [serve]}
  gpu: {tags: [serve, gpu], precision: float16, xla: true}
  tpu: {tags: [serve, tpu], precision: bfloat16, batch_size: 4}
"""


def _half_package(folder: Path, model: str) -> Path:
    import smpack

    (folder / "model.py").write_text(model)
    (folder / "smpack.yaml").write_text(HALF_MANIFEST)
    return smpack.build(folder / "smpack.yaml", folder / "out").path


def _agreement(report: VerifyReport, tag_set: str) -> Check:
    graph = next(g for g in report.graphs if g.tag_set == tag_set)
    return next(c for c in graph.checks if c.name.startswith("serving_default agrees with"))


@pytest.mark.parametrize("scale", [1.0, 1.1])
def test_half_precision_agreement_is_relative_to_the_output_scale(tmp_path, scale) -> None:
    from tf_helpers import run_v1

    package = _half_package(tmp_path, SMALL_CNN.replace("SCALE", str(scale)))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype(np.float32)
    reference = run_v1(package, ["serve"], {"input": x})["output"]
    half = run_v1(package, ["serve", "gpu"], {"input": x})["output"]
    assert np.abs(reference).max() < 1e-2
    assert np.allclose(half, reference, rtol=1e-2, atol=1e-2)  # the old check passed both
    report = verify_package(package)
    gpu, tpu = _agreement(report, "serve,gpu"), _agreement(report, "serve,tpu")
    assert gpu.name == "serving_default agrees with serve (float16: within 1% of scale)"
    assert tpu.name == "serving_default agrees with serve (bfloat16: within 4% of scale)"
    if scale == 1.0:
        assert report.passed, report
    else:
        assert not gpu.passed and not tpu.passed
        # 10%: the variant returns 1.1 times the output (its mean computed in float32)
        assert gpu.detail.startswith("output differs by 10.0")


@pytest.mark.parametrize("reversed_classes", [False, True])
def test_classifiers_must_agree_on_the_top_class(tmp_path, reversed_classes) -> None:
    package = _half_package(tmp_path, CLASSIFIER.replace("REVERSED", str(reversed_classes)))
    check = _agreement(verify_package(package), "serve,gpu")
    assert check.passed is not reversed_classes
    if reversed_classes:
        assert "output: top-1 differs on 4 of 4 rows" in check.detail


# Token ids start at 1 here (0 is not a token), so synthetic zeros index row -1.
SHIFTED_IDS = """\
import tensorflow as tf
from smpack import ModelContext, ModelSpec

def model_fn(ctx: ModelContext) -> ModelSpec:
    ids = tf.compat.v1.placeholder(tf.int32, [2], name="input")

    def embed(ids):
        table = tf.compat.v1.get_variable("table", [3, 2], ctx.dtype)
        return tf.gather(table, ids - 1)

    out = tf.identity(ctx.compute(embed, ids), name="output")
    return ModelSpec(inputs={"input": ids}, outputs={"output": out})
"""


@pytest.mark.parametrize("warmup", [False, True])
def test_failing_on_synthetic_inputs_is_a_warning_not_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warmup: bool
) -> None:
    manifest = "schema: 1\nname: ids\nversion: 1\nsource: {python: model.py:model_fn}\n"
    manifest += "variants: {cpu: {tags: [serve]}}\n"
    if warmup:
        manifest += "warmup: [{inputs: {input: [1, 3]}}]\n"
    (tmp_path / "model.py").write_text(SHIFTED_IDS)
    (tmp_path / "smpack.yaml").write_text(manifest)
    monkeypatch.chdir(tmp_path)
    result = invoke(monkeypatch, ["build", "smpack.yaml", "--out", "out"])
    assert result.exit_code == 0, result.output
    [graph] = verify_package(tmp_path / "out" / "ids" / "1").graphs
    [run] = [c for c in graph.checks if c.name.startswith("signature serving_default runs")]
    if warmup:
        assert (run.name, run.passed, run.warning) == (
            "signature serving_default runs on its 1 warmup request",
            True,
            False,
        )
    else:
        assert (run.name, run.passed, run.warning) == (
            "signature serving_default runs on synthetic inputs",
            True,
            True,
        )
        assert run.detail.startswith("failed on inputs verify made up")
        assert " ".join(result.stdout.split()).endswith(
            "verified: all checks of 1 graph pass, with 1 warning (serve: signature "
            "serving_default runs on synthetic inputs; see smpack verify)"
        )
        verified = invoke(monkeypatch, ["verify", "out/ids/1"])
        assert verified.exit_code == 0
        assert "warn: failed on inputs verify made up" in " ".join(verified.stdout.split())


# Whatever the inputs, the graph's own variable has 4 values where it asserts 3.
MISSIZED_WEIGHTS = """\
import tensorflow as tf
from smpack import ModelContext, ModelSpec

def model_fn(ctx: ModelContext) -> ModelSpec:
    x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="input")

    def scale(x):
        weights = tf.compat.v1.get_variable("weights", [2, 2], ctx.dtype)
        size = tf.reduce_sum(tf.ones_like(weights))  # not known before it runs
        with tf.control_dependencies([tf.debugging.assert_equal(size, 3.0)]):
            return tf.matmul(x, weights)

    out = tf.identity(ctx.compute(scale, x), name="output")
    return ModelSpec(inputs={"input": x}, outputs={"output": out})
"""


def test_failing_alike_on_two_made_up_input_sets_fails_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = "schema: 1\nname: sized\nversion: 1\nsource: {python: model.py:model_fn}\n"
    manifest += "variants: {cpu: {tags: [serve]}}\n"
    (tmp_path / "model.py").write_text(MISSIZED_WEIGHTS)
    (tmp_path / "smpack.yaml").write_text(manifest)
    monkeypatch.chdir(tmp_path)
    result = invoke(monkeypatch, ["build", "smpack.yaml", "--out", "out"])
    assert result.exit_code == 1, result.output
    assert not (tmp_path / "out" / "sized" / "1").exists()
    [graph] = verify_package(tmp_path / "out" / "sized" / "1.failed-verify").graphs
    [run] = [c for c in graph.checks if c.name.startswith("signature serving_default runs")]
    assert (run.name, run.passed, run.warning) == (
        "signature serving_default runs on synthetic inputs",
        False,
        False,
    )
    assert run.detail.startswith(
        "failed alike on two sets of made-up inputs, whatever their values: "
        "assertion failed: [Condition x == y did not hold element-wise:]"
    )


XLA_MEMORY_ORDER = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def test_verify_has_xla_cpu_schedule_for_memory(
    linear_package: PackageInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """XLA:CPU's concurrency-first schedule converts every weight of a half-precision graph
    before its first matmul (1.1x the weights more at verify's peak); XLA reads its flags at
    its first compilation, so verify sets this one before any graph loads."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert verify_package(linear_package.location).passed
    assert os.environ["XLA_FLAGS"] == XLA_MEMORY_ORDER


def test_the_xla_schedule_is_left_alone_where_the_flag_was_not_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # XLA exits on an XLA_FLAGS flag it does not know.
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(tf, "__version__", "2.16.1")
    schedule_xla_cpu_for_memory()
    assert "XLA_FLAGS" not in os.environ


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (
            "--xla_cpu_fast_math_honor_nans=true",
            f"--xla_cpu_fast_math_honor_nans=true {XLA_MEMORY_ORDER}",
        ),
        # The user's own choice of scheduler stands.
        (
            "--xla_cpu_enable_concurrency_optimized_scheduler=true",
            "--xla_cpu_enable_concurrency_optimized_scheduler=true",
        ),
    ],
)
def test_the_xla_schedule_keeps_the_users_flags(
    monkeypatch: pytest.MonkeyPatch, before: str, after: str
) -> None:
    monkeypatch.setenv("XLA_FLAGS", before)
    schedule_xla_cpu_for_memory()
    assert os.environ["XLA_FLAGS"] == after


def test_small_graphs_are_checked_two_at_once_and_a_gibibyte_of_weights_one_at_a_time(
    linear_package: PackageInfo,
) -> None:
    """Two graph processes at once only while both fit the budget: never from 1 GiB of
    weights up, where verify's memory must stay within 2.25x the weights."""
    graphs = linear_package.graphs
    small = sorted(_memory_needed(g, linear_package.variables_bytes) for g in graphs)
    assert small[-1] + small[-2] <= _MEMORY_BUDGET
    large = sorted(_memory_needed(g, 1 << 30) for g in graphs)
    assert large[0] + large[1] > _MEMORY_BUDGET
