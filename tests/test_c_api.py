"""The package loads from C: TF_LoadSessionFromSavedModel is the loader behind TF Serving.

A small C program is compiled against the headers and shared library inside the installed
TensorFlow wheel, so the check needs nothing beyond the wheel and a C compiler.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from conftest import run_c

from smpack.package.info import PackageInfo

# A C compiler run and subprocesses per tag set.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_c_api_runs_each_variant_as_its_tf_serving_command_names_it(
    c_loader: Path, linear_package: PackageInfo, variant: str
) -> None:
    # The tag set exactly as the generated command line hands it to tensorflow_model_server,
    # which splits --saved_model_tags at commas; the signature TF Serving runs by default.
    command = linear_package.path / "assets.extra/serving/tfserving" / variant / "command.sh"
    flags = dict(
        word.split("=", 1) for word in shlex.split(command.read_text().splitlines()[1])[2:]
    )
    tag_set = flags["--saved_model_tags"]
    graph = linear_package.graph(*tag_set.split(","))
    signature = next(s for s in graph.signatures if s.key == "serving_default")
    result = run_c(
        c_loader,
        linear_package.path,
        tag_set,
        signature.inputs[0].name,
        signature.outputs[0].name,
        "1",
        "2",
        "5",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0] == "loaded"
    # half plus two, within half precision for the float16 graph
    assert [float(v) for v in lines[1:]] == pytest.approx([2.5, 3.0, 4.5], rel=1e-3)


@pytest.mark.parametrize("package", ["linear_package", "text_package"])
def test_c_api_loads_every_graph_a_cpu_host_can_run(
    c_loader: Path, package: str, request: pytest.FixtureRequest
) -> None:
    info: PackageInfo = request.getfixturevalue(package)
    loadable = [g.tag_set for g in info.graphs if not g.tpu]
    assert {"serve", "train", "serve,gpu"} <= set(loadable)
    for tag_set in loadable:
        result = run_c(c_loader, info.path, tag_set)
        assert result.returncode == 0, f"{tag_set}: {result.stderr}"
        assert result.stdout.split() == ["loaded"]


def test_c_api_refuses_a_tag_set_the_package_lacks(
    c_loader: Path, linear_package: PackageInfo
) -> None:
    result = run_c(c_loader, linear_package.path, "serve,cuda")
    assert result.returncode == 1
    assert "load:" in result.stderr and "serve" in result.stderr


def test_c_api_fails_on_the_tpu_graph_only_for_want_of_tpu_kernels(
    c_loader: Path, linear_package: PackageInfo
) -> None:
    # The documented limit: everything else in the serve,tpu graph is loadable; the TPU ops
    # need a TPU host (the XLA-on-CPU tests cover the computation itself).
    result = run_c(c_loader, linear_package.path, "serve,tpu")
    assert result.returncode == 1
    assert "No OpKernel was registered to support Op 'TPUReplicatedInput'" in result.stderr


def test_c_api_runs_an_input_of_unknown_rank(
    c_loader: Path, unknown_rank_package: PackageInfo
) -> None:
    """TF Serving's loader feeds a `TensorSpec(None)` input a vector (`y` reads only `x`),
    in float32 and in the float16 graph; the train graph loads."""
    for tag_set in ("serve", "serve,gpu"):
        graph = unknown_rank_package.graph(*tag_set.split(","))
        signature = next(s for s in graph.signatures if s.key == "serving_default")
        x = next(t for t in signature.inputs if t.key == "x")
        y = next(t for t in signature.outputs if t.key == "y")
        assert x.shape_text == "unknown rank"
        path = unknown_rank_package.path
        result = run_c(c_loader, path, tag_set, x.name, y.name, "1", "-2", "3")
        assert result.returncode == 0, f"{tag_set}: {result.stderr}"
        lines = result.stdout.split()
        assert lines[0] == "loaded"
        assert [float(v) for v in lines[1:]] == pytest.approx([2.0, -4.0, 6.0], rel=1e-3)
    result = run_c(c_loader, unknown_rank_package.path, "train")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["loaded"]
