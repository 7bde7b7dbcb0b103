"""Serving configs: golden files, parsed back with Triton's and TF Serving's own messages, and a
Triton repository whose version folders load exactly as Triton's TensorFlow backend loads them.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import GOLDEN, UPDATE_GOLDEN, VARIANTS, invoke
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

import smpack
from smpack.package import requests
from smpack.package.info import PackageInfo, SignatureInfo, TensorInfo
from smpack.package.requests import LoggedRequest, NoRawFormError, raw_tensor
from smpack.package.serving_config import triton_warmups


def _triton_model_config() -> ModuleType:
    """Triton's `model_config_pb2`, as tritonclient ships it.

    Imported from its file: `tritonclient.grpc`'s package init wants the grpc extra, whose
    protobuf pin (<7) TensorFlow 2.21's protobuf does not meet; the message needs neither.
    """
    spec = importlib.util.find_spec("tritonclient")
    assert spec is not None and spec.submodule_search_locations, "pip install -e '.[test]'"
    path = Path(spec.submodule_search_locations[0]) / "grpc" / "model_config_pb2.py"
    module_spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _batching_parameters_class() -> Any:
    """TF Serving's BatchingParameters (session_bundle_config.proto), which
    tensorflow-serving-api does not ship, declared with that file's field numbers."""
    from google.protobuf import wrappers_pb2

    file = descriptor_pb2.FileDescriptorProto(
        name="test/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for name, number, kind in (
        ("max_batch_size", 1, "Int64Value"),
        ("batch_timeout_micros", 2, "Int64Value"),
        ("max_enqueued_batches", 3, "Int64Value"),
        ("num_batch_threads", 4, "Int64Value"),
        ("thread_pool_name", 5, "StringValue"),
    ):
        message.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=f".google.protobuf.{kind}",
            label=field.LABEL_OPTIONAL,
        )
    message.field.add(
        name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED
    )
    message.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=field.TYPE_BOOL,
        label=field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters")
    )


model_config_pb2 = _triton_model_config()
TF_SERVING_FLAGS = {
    "--model_config_file",
    "--saved_model_tags",
    "--enable_batching",
    "--batching_parameters_file",
}
BatchingParameters = _batching_parameters_class()


def _serving_files(package: Path) -> dict[str, str]:
    return _text_files(package / "assets.extra" / "serving")


def _text_files(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _check_golden_folder(name: str, files: dict[str, str]) -> None:
    """`files` must be tests/golden/serving/NAME's, each relative path to its text
    (SMPACK_UPDATE_GOLDEN=1 writes them there instead)."""
    golden = GOLDEN / "serving" / name
    if UPDATE_GOLDEN:
        for relative, text in files.items():
            (golden / relative).parent.mkdir(parents=True, exist_ok=True)
            (golden / relative).write_text(text, encoding="utf-8")
    assert files == _text_files(golden)


@pytest.mark.parametrize("example", ["linear", "text_classifier"])
def test_build_writes_the_golden_serving_configs(
    example: str, linear_package: PackageInfo, text_package: PackageInfo
) -> None:
    package = (linear_package if example == "linear" else text_package).path
    _check_golden_folder(example, _serving_files(package))


def test_an_input_of_unknown_rank_gets_tf_serving_configs_and_no_triton_one(
    unknown_rank_package: PackageInfo,
) -> None:
    """TF Serving's configs name no shapes; Triton's dims fix the rank (-1 frees a size, not
    the rank), so no Triton config is written for a `TensorSpec(None)` input."""
    files = _serving_files(unknown_rank_package.path)
    _check_golden_folder("unknown_rank", files)
    assert not any(name.startswith("triton/") for name in files)


def test_triton_configs_parse_as_model_configs(linear_package: PackageInfo) -> None:
    files = _serving_files(linear_package.path)
    configs = {
        path: text_format.Parse(text, model_config_pb2.ModelConfig())
        for path, text in files.items()
        if path.startswith("triton/")
    }
    # No Triton model for the TPU variant (Triton has no TPU backend) nor for train.
    assert sorted(configs) == ["triton/linear-cpu/config.pbtxt", "triton/linear-gpu/config.pbtxt"]
    kinds = model_config_pb2.ModelInstanceGroup.Kind
    for path, config in configs.items():
        variant = path.split("/")[1]
        assert config.name == variant
        assert config.platform == "tensorflow_savedmodel"
        # The version folder holds the variant alone, re-tagged serve (one tag for Triton).
        assert config.parameters["TF_GRAPH_TAG"].string_value == "serve"
        assert config.parameters["TF_SIGNATURE_DEF"].string_value == "serving_default"
        assert config.max_batch_size == 64  # the batch dimension is free
        assert config.HasField("dynamic_batching")
        [group] = config.instance_group
        assert group.kind == (kinds.KIND_GPU if variant == "linear-gpu" else kinds.KIND_CPU)
        [given], [answer] = config.input, config.output
        assert (given.name, answer.name) == ("input", "output")
        assert given.data_type == model_config_pb2.TYPE_FP32
        # A [batch] tensor has no dims of its own: [1] reshaped to [].
        assert list(given.dims) == [1] and list(given.reshape.shape) == []
        # linear.yaml has no examples: zeros, and the config says why.
        [warmup] = config.model_warmup
        assert warmup.batch_size == 1 and warmup.inputs["input"].zero_data
        assert "# No example in the package" in files[path]


def test_text_classifier_triton_config_carries_every_output(text_package: PackageInfo) -> None:
    text = _serving_files(text_package.path)["triton/text_classifier-cpu/config.pbtxt"]
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert [(t.name, t.data_type) for t in config.input] == [
        ("input", model_config_pb2.TYPE_STRING)
    ]
    outputs = {t.name: (t.data_type, list(t.dims)) for t in config.output}
    assert outputs == {
        "class_ids": (model_config_pb2.TYPE_INT64, [1]),
        "scores": (model_config_pb2.TYPE_FP32, [2]),
    }


def test_tf_serving_configs_parse_with_tf_serving_messages(linear_package: PackageInfo) -> None:
    files = _serving_files(linear_package.path)
    for variant, tags in (("cpu", "serve"), ("gpu", "serve,gpu"), ("tpu", "serve,tpu")):
        config = text_format.Parse(
            files[f"tfserving/{variant}/models.config"],
            model_server_config_pb2.ModelServerConfig(),
        )
        [model] = config.model_config_list.config
        assert (model.name, model.base_path, model.model_platform) == (
            "linear",
            "/models/linear",
            "tensorflow",
        )
        command = shlex.split(files[f"tfserving/{variant}/command.sh"].splitlines()[1])
        assert command[:2] == ["exec", "tensorflow_model_server"]
        flags = dict(word.split("=", 1) for word in command[2:])
        # Flags tensorflow_model_server defines (model_servers/main.cc), each as --name=value.
        assert flags.keys() <= TF_SERVING_FLAGS
        # Without --saved_model_tags TF Serving loads the graph tagged exactly serve.
        assert flags["--saved_model_tags"] == tags
        config_dir = f"/models/linear/1/assets.extra/serving/tfserving/{variant}"
        assert flags["--model_config_file"] == f"{config_dir}/models.config"
        if variant == "tpu":
            assert flags["--enable_batching"] == "true"
            assert flags["--batching_parameters_file"] == f"{config_dir}/batching_parameters.txt"
        else:
            assert "--enable_batching" not in flags
    assert "tfserving/train/models.config" not in files  # TF Serving never runs a train op
    batching = text_format.Parse(
        files["tfserving/tpu/batching_parameters.txt"], BatchingParameters()
    )
    # The TPU graph takes exactly 8 rows: every batch is padded up to 8.
    assert batching.max_batch_size.value == 8
    assert list(batching.allowed_batch_sizes) == [8]
    assert batching.num_batch_threads.value >= 1


def test_triton_repository_loads_as_triton_loads_it(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = tmp_path / "repository"
    args = ["serving-config", str(linear_package.path), "--target", "triton"]
    result = invoke(monkeypatch, [*args, "--out", str(repository)])
    assert result.exit_code == 0, result.output
    assert "skipped serve,tpu: Triton has no TPU backend" in result.stderr
    assert sorted(p.name for p in repository.iterdir()) == ["linear-cpu", "linear-gpu"]
    for model in ("linear-cpu", "linear-gpu"):
        config = text_format.Parse(
            (repository / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        savedmodel = repository / model / "1" / "model.savedmodel"
        # What Triton's TF backend does: LoadSavedModel with the one tag TF_GRAPH_TAG, then
        # the signature TF_SIGNATURE_DEF, fed and fetched by the config's tensor names.
        with tf.compat.v1.Session(
            graph=tf.Graph(), config=tf.compat.v1.ConfigProto(allow_soft_placement=True)
        ) as session:
            tag = config.parameters["TF_GRAPH_TAG"].string_value
            meta_graph = tf.compat.v1.saved_model.loader.load(session, [tag], str(savedmodel))
            signature = meta_graph.signature_def[config.parameters["TF_SIGNATURE_DEF"].string_value]
            assert {t.name for t in config.input} == set(signature.inputs)
            assert {t.name for t in config.output} == set(signature.outputs)
            answer = session.run(
                signature.outputs["output"].name,
                {signature.inputs["input"].name: np.array([1.0, 2.0, 4.0], np.float32)},
            )
        # Half plus two, from the variant's own graph.
        np.testing.assert_allclose(answer, [2.5, 3.0, 4.0], rtol=1e-2)
        weights = savedmodel / "variables" / "variables.data-00000-of-00001"
        shared = linear_package.path / "variables" / "variables.data-00000-of-00001"
        assert weights.stat().st_ino == shared.stat().st_ino  # hard-linked, not copied

    again = invoke(monkeypatch, [*args, "--out", str(repository)])
    assert again.exit_code == 2
    assert again.stderr.startswith("error: ") and "pass --force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_tf_serving_config_names_the_package_where_it_is(
    linear_package: PackageInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "tfserving"
    args = ["serving-config", str(linear_package.path), "--target", "tfserving", "--out", str(out)]
    result = invoke(monkeypatch, [*args, "--tags", "serve,gpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "gpu/command.sh",
        "gpu/models.config",
    ]
    config = text_format.Parse(
        (out / "gpu" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    assert config.model_config_list.config[0].base_path == str(linear_package.path.parent)
    command = (out / "gpu" / "command.sh").read_text()
    assert f"--model_config_file={out}/gpu/models.config --saved_model_tags=serve,gpu" in command
    assert (out / "gpu" / "command.sh").stat().st_mode & 0o100


@pytest.mark.parametrize(
    ("target", "tags", "problem"),
    [
        ("triton", "serve,tpu", "no variant to write a triton config for"),
        ("tfserving", "serve,nope", "no MetaGraph has the tag set nope,serve"),
    ],
)
def test_serving_config_refuses_in_one_line(
    target: str,
    tags: str,
    problem: str,
    linear_package: PackageInfo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    args = ["serving-config", str(linear_package.path), "--target", target, "--tags", tags]
    result = invoke(monkeypatch, [*args, "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


SENTENCES = ["good movie", "bad plot", "awful acting"]


@pytest.fixture(scope="module")
def text_with_examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """text_classifier.yaml with a 3-row example, built once (unmeasured, unverified);
    without its TPU variant, which takes exactly 8 rows."""
    folder = tmp_path_factory.mktemp("examples")
    shutil.copytree(VARIANTS, folder / "variants")
    manifest = folder / "variants" / "text_classifier.yaml"
    spec = yaml.safe_load(manifest.read_text())
    del spec["variants"]["tpu"]
    spec["examples"] = [{"inputs": {"input": SENTENCES}}]
    manifest.write_text(yaml.safe_dump(spec))
    return smpack.build(manifest, folder / "out", measure=False).path


def _strings(data: bytes) -> list[bytes]:
    """Triton's raw BYTES elements: each a 4-byte little-endian length, then the bytes."""
    strings, position = [], 0
    while position < len(data):
        (length,) = struct.unpack_from("<I", data, position)
        strings.append(data[position + 4 : position + 4 + length])
        position += 4 + length
    return strings


def test_triton_warms_up_on_the_manifests_examples(text_with_examples: Path) -> None:
    model = text_with_examples / "assets.extra" / "serving" / "triton" / "text_classifier-cpu"
    text = (model / "config.pbtxt").read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    # Triton repeats a warmup's sample to its batch size (model_config.proto's ModelWarmup),
    # so every row of the example is a warmup of its own, at the example's batch size.
    names = ["example0.row0", "example0.row1", "example0.row2"]
    assert [(w.name, w.batch_size) for w in config.model_warmup] == [(n, 3) for n in names]
    for warmup, name, sentence in zip(config.model_warmup, names, SENTENCES, strict=True):
        given = warmup.inputs["input"]
        assert given.data_type == model_config_pb2.TYPE_STRING
        assert list(given.dims) == [1]  # as the input's own dims: [1] reshaped to []
        assert not given.zero_data and given.input_data_file == f"{name}.input"
        assert _strings((model / "warmup" / f"{name}.input").read_bytes()) == [sentence.encode()]
    assert sorted(p.name for p in (model / "warmup").iterdir()) == [f"{n}.input" for n in names]
    assert "# No example in the package" not in text


def test_serving_config_warms_up_on_examples_without_smpack_json(
    text_with_examples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "text_classifier" / "1"
    shutil.copytree(text_with_examples, package)
    (package / "assets.extra" / "smpack.json").unlink()
    repository = tmp_path / "repository"
    args = ["serving-config", str(package), "--target", "triton", "--tags", "serve"]
    result = invoke(monkeypatch, [*args, "--out", str(repository)])
    assert result.exit_code == 0, result.output
    # Without smpack.json the variant is named by its tag set.
    written = repository / "text_classifier-serve"
    config = text_format.Parse(
        (written / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert [w.batch_size for w in config.model_warmup] == [3, 3, 3]
    rows = [
        _strings((written / "warmup" / w.inputs["input"].input_data_file).read_bytes())
        for w in config.model_warmup
    ]
    assert rows == [[sentence.encode()] for sentence in SENTENCES]


@pytest.mark.parametrize(
    "value",
    [
        np.array([[1.5, -2.0], [3.0, 0.25]], np.float32),
        np.array([7.0], np.float32),  # one element: TF writes float_val, not tensor_content
        np.array([-3, 5], np.int32),
        np.array([-1], np.int64),
        np.array([[True, False]]),
        np.array([0.5, -65504.0], np.float16),
        np.array([2.5], np.float16),  # half_val
        np.array([1, 255], np.uint8),
        np.array([["a", "bcd"], ["", "e"]], object),
    ],
    ids=lambda value: f"{value.dtype}{list(value.shape)}",
)
def test_raw_tensors_are_the_examples_bytes(value: np.ndarray) -> None:
    """What a Triton warmup file holds decodes back to the tensor TensorFlow serialized."""
    tensor = raw_tensor(tf.make_tensor_proto(value).SerializeToString())
    assert tensor.shape == value.shape
    if value.dtype == object:
        assert _strings(tensor.triton_bytes()) == [v.encode() for v in value.ravel()]
    else:
        decoded = np.frombuffer(tensor.triton_bytes(), value.dtype).reshape(value.shape)
        np.testing.assert_array_equal(decoded, value)


@pytest.mark.parametrize(
    ("serialized", "problem"),
    [
        (tf.make_tensor_proto(np.zeros([2, 2], np.float32)).SerializeToString()[:-3], "runs past"),
        # dtype resource (20): a handle, no elements to hand over.
        (b"\x08\x14", "a resource tensor has no raw form"),
        # dtype float32, one float_val sent as a varint wider than 32 bits.
        (b"\x08\x01\x28" + bytes([0xFF] * 9) + b"\x01", "a float32 value of more than 4 bytes"),
    ],
    ids=["truncated", "resource", "wide float"],
)
def test_tensors_without_a_raw_form_are_refused(serialized: bytes, problem: str) -> None:
    with pytest.raises(NoRawFormError, match=problem):
        raw_tensor(serialized)


def test_a_bug_in_the_tensor_decoder_is_not_a_skipped_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """triton_warmups skips examples without a raw form; a bug decoding one stays loud."""
    tensor = TensorInfo("x", "x:0", "float32", (2,))
    signature = SignatureInfo("serving_default", "tensorflow/serving/predict", (tensor,), ())
    serialized = tf.make_tensor_proto(np.array([1.0, 2.0], np.float32)).SerializeToString()
    example = LoggedRequest("serving_default", {"x": serialized})
    assert len(triton_warmups(signature, [example])) == 1
    bug = ValueError("a bug")

    def broken(dim: bytes) -> int:
        raise bug

    monkeypatch.setattr(requests, "_dim_size", broken)
    with pytest.raises(ValueError) as caught:
        triton_warmups(signature, [example])
    assert caught.value is bug
