"""keras_hub transformers (random weights, tiny configs) through every variant kind.

A BERT encoder classifier (token ids, two segment ids, padding mask) saved as `.keras`, and
a GPT-2 decoder with a next-token head exported as a TF2 SavedModel, each packaged as
serve / train / serve,gpu (float16 + XLA) / serve,tpu (bfloat16). The GPT-2 causal mask is
built with a float32 `Range`, which half precision must leave alone; BERT's segment
embedding has two rows, which made-up inputs must not index past.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from tf_helpers import run_v1

import smpack
from smpack.checks.verify import TOLERANCES, VerifyReport, verify_package
from smpack.checks.xla_check import run_tpu_graph_on_cpu

pytestmark = pytest.mark.slow

SEQUENCE, BATCH, VOCABULARY = 8, 2, 100
VARIANTS = {
    "cpu": {"tags": ["serve"]},
    "train": {"tags": ["train"], "optimizer": {"name": "adam", "learning_rate": 0.001}},
    "gpu": {
        "tags": ["serve", "gpu"],
        "device": "/device:GPU:0",
        "precision": "float16",
        "xla": True,
    },
    "tpu": {"tags": ["serve", "tpu"], "precision": "bfloat16", "batch_size": BATCH},
}


@dataclass
class Transformer:
    package: Path
    report: VerifyReport  # the build's own verification of the package
    feeds: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]  # what the source computes for `feeds`
    source: Path  # the .keras file or SavedModel folder the manifest names
    labels: np.ndarray  # the example's labels, for the train signature


def _feeds(with_segments: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    padding = np.ones((BATCH, SEQUENCE), np.int32)
    padding[1, 5:] = 0  # the second row is shorter
    feeds = {
        "token_ids": rng.integers(1, VOCABULARY, (BATCH, SEQUENCE)).astype(np.int32) * padding,
        "padding_mask": padding,
    }
    if with_segments:
        feeds["segment_ids"] = np.tile(np.repeat([0, 1], SEQUENCE // 2), (BATCH, 1)).astype(
            np.int32
        )
    return feeds


def _labels(source: dict[str, str]) -> np.ndarray:
    """A class per row for BERT's classifier, a next token per position for GPT-2."""
    return np.array([1, 2] if "keras" in source else [[3] * SEQUENCE] * BATCH, np.int64)


def _build(
    folder: Path, source: dict[str, str], feeds: dict[str, np.ndarray]
) -> tuple[Path, VerifyReport]:
    """`smpack build` as the CLI runs it (measured, then verified before it is published);
    the package and the build's own verify report, which the tests read rather than
    verifying the package a second time."""
    labels = {"labels": _labels(source).tolist()}
    example = {"inputs": {k: v.tolist() for k, v in feeds.items()}, "labels": labels}
    manifest = {
        "schema": 1,
        "name": "transformer",
        "version": 1,
        "source": {**source, "loss": "sparse_categorical_crossentropy"},
        "variants": VARIANTS,
        "examples": [example],
    }
    (folder / "smpack.yaml").write_text(yaml.safe_dump(manifest))
    reports: list[VerifyReport] = []

    def verified(staging: Path) -> bool:
        reports.append(verify_package(staging))
        return reports[-1].passed

    info = smpack.build(folder / "smpack.yaml", folder / "out", verify=verified)
    (report,) = reports
    assert info.published, report
    return info.path, report


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Transformer:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("bert")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCABULARY,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=SEQUENCE,
        num_segments=2,
    )
    inputs = {
        name: keras.Input((SEQUENCE,), dtype="int32", name=name)
        for name in ("token_ids", "segment_ids", "padding_mask")
    }
    classes = keras.layers.Dense(3, activation="softmax", name="classes")
    model = keras.Model(inputs, {"classes": classes(backbone(inputs)["pooled_output"])})
    model.save(folder / "bert.keras")
    feeds = _feeds(with_segments=True)
    expected = {k: np.asarray(v) for k, v in model(feeds).items()}
    source = {"keras": "bert.keras"}
    package, report = _build(folder, source, feeds)
    return Transformer(package, report, feeds, expected, folder / "bert.keras", _labels(source))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Transformer:
    import keras
    import keras_hub
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("gpt2")
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCABULARY,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=SEQUENCE,
    )
    inputs = {
        name: keras.Input((SEQUENCE,), dtype="int32", name=name)
        for name in ("token_ids", "padding_mask")
    }
    next_token = keras.layers.Dense(VOCABULARY, activation="softmax", name="next_token")
    model = keras.Model(inputs, {"next_token": next_token(backbone(inputs))})
    model.export(str(folder / "gpt2"), verbose=False)
    feeds = _feeds(with_segments=False)
    exported = tf.saved_model.load(str(folder / "gpt2")).signatures["serving_default"]
    expected = {k: v.numpy() for k, v in exported(**feeds).items()}
    source = {"savedmodel": "gpt2"}
    package, report = _build(folder, source, feeds)
    return Transformer(package, report, feeds, expected, folder / "gpt2", _labels(source))


@pytest.fixture(params=["bert", "gpt2"])
def transformer(request: pytest.FixtureRequest) -> Transformer:
    return request.getfixturevalue(request.param)


def _relative_error(value: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(value - expected).max() / np.abs(expected).max())


def test_every_graph_passes_verify_on_the_examples(transformer: Transformer) -> None:
    report = transformer.report
    assert report.passed, report
    assert not [c for g in report.graphs for c in g.checks if c.warning]
    names = {(g.tag_set, c.name) for g in report.graphs for c in g.checks}
    assert ("train", "signature train takes a step on its 1 example") in names
    agreement = "serving_default agrees with serve (bfloat16: within 4% of scale)"
    assert ("serve,tpu", agreement) in names


def test_float32_graphs_compute_what_the_source_does(transformer: Transformer) -> None:
    # Only the serving graph: a Keras source's train graph runs its training-mode call, with
    # dropout active, as model.fit does (tests/test_real_training.py holds that to fit).
    outputs = run_v1(transformer.package, ["serve"], transformer.feeds)
    for key, expected in transformer.expected.items():
        np.testing.assert_allclose(outputs[key], expected, rtol=1e-6, atol=1e-7)


def test_half_precision_graphs_agree_within_the_stated_tolerance(transformer) -> None:
    gpu = run_v1(transformer.package, ["serve", "gpu"], transformer.feeds)
    tpu = run_tpu_graph_on_cpu(
        transformer.package, ["serve", "tpu"], "serving_default", transformer.feeds
    )
    for key, expected in transformer.expected.items():
        assert _relative_error(gpu[key], expected) <= TOLERANCES["float16"]
        assert _relative_error(tpu[key], expected) <= TOLERANCES["bfloat16"]


def test_moved_package_serves_and_trains_without_the_source(
    transformer: Transformer, tmp_path: Path
) -> None:
    import tensorflow as tf

    moved = tmp_path / "elsewhere" / "1"
    shutil.copytree(transformer.package, moved)
    hidden = tmp_path / "source-gone"
    shutil.move(transformer.source, hidden)  # put back below: other tests read the source
    try:
        outputs = run_v1(moved, ["serve"], transformer.feeds)
        with tf.compat.v1.Session(graph=tf.Graph()) as session:
            graph = tf.compat.v1.saved_model.loader.load(session, ["train"], str(moved))
            signature = graph.signature_def["train"]
            step = {signature.inputs[k].name: v for k, v in transformer.feeds.items()}
            step[signature.inputs["labels"].name] = transformer.labels
            losses = [session.run(signature.outputs["loss"].name, step) for _ in range(20)]
    finally:
        shutil.move(hidden, transformer.source)
    for key, expected in transformer.expected.items():
        np.testing.assert_allclose(outputs[key], expected, rtol=1e-6, atol=1e-7)
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_a_keras_file_calling_a_tokenizer_is_refused_with_its_export_as_the_way(
    tmp_path: Path,
) -> None:
    """Keras rebuilds a functional model by calling its layers before it loads their assets,
    so a keras_hub tokenizer inside one has no vocabulary yet and the file cannot be loaded
    (keras-team/keras-hub#1522); the model's export can (test_real_text.py builds one)."""
    import keras
    import keras_hub
    from typer.testing import CliRunner

    from smpack.cli.commands import app

    # A model's preprocessor keeps its tokenizer's vocabulary as an asset (a bare tokenizer
    # keeps it in its config, and reloads).
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat"]
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary), sequence_length=4
    )
    text = keras.Input(shape=(), dtype="string")
    keras.Model(text, preprocessor(text)).save(tmp_path / "tokenizing.keras")
    manifest = {"schema": 1, "name": "tokenizing", "version": 1}
    source = {"keras": "tokenizing.keras", "imports": ["tensorflow_text"]}
    manifest.update(source=source, variants={"cpu": VARIANTS["cpu"]})
    (tmp_path / "smpack.yaml").write_text(yaml.safe_dump(manifest))
    out = str(tmp_path / "out")
    result = CliRunner().invoke(app, ["build", str(tmp_path / "smpack.yaml"), "-o", out])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert (
        "source.keras: cannot load tokenizing.keras with Keras: it calls the "
        "WordPieceTokenizer in it before loading its vocabulary (Keras cannot reload a "
        "functional model calling a keras_hub tokenizer); save the model with "
        "model.export(folder) and name that folder in source.savedmodel"
    ) in result.stderr
