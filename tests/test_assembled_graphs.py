"""Serving graphs assembled as protos are, byte for byte, the graphs Python builds.

An imported source's serving variants, TPU ones included, are assembled from GraphDefs
(builder/assembled.py) instead of being imported into a Python graph and exported from it.
The Python path is still how train variants (and what the assembly leaves) are built, and
it is the reference here: for the same source and variant both give the same MetaGraph, the
same signatures and variables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import (
    make_branching_module,
    make_looping_module,
    make_tf_module,
    serving_variants,
    source_outputs,
    write_manifest,
)

import smpack
from smpack.builder.assembled import assembled_graph
from smpack.builder.graphs import VariantGraph, build_variant_graph
from smpack.builder.writer import SharedSavers, exported_meta_graph
from smpack.checks.xla_check import tpu_graph_on_cpu
from smpack.errors import GraphError, ManifestError, SmpackError
from smpack.manifest import LoadedManifest, load_manifest
from smpack.sources.model_source import ModelSource, open_source

VARIANTS = {
    **serving_variants(4),
    # Half precision and XLA without a device, and a device without XLA.
    "cpu_bfloat16": {"tags": ["serve", "cpu"], "precision": "bfloat16", "xla": True},
    "pinned": {"tags": ["serve", "pinned"], "device": "/device:CPU:0", "precision": "float16"},
    # tpu.rewrite in float32, batches of 2.
    "tpu_float32": {"tags": ["serve", "tpu", "float32"], "precision": "float32", "batch_size": 2},
    "train": {"tags": ["train"], "optimizer": {"name": "sgd", "learning_rate": 0.1}},
}
# The looping and branching sources' XLA and TPU variants compile their `While` and `If`
# ops, calls: built in Python.
ASSEMBLED = [
    *[("two_layers", name) for name in ("cpu", "gpu", "cpu_bfloat16", "pinned")],
    *[("two_layers", name) for name in ("tpu", "tpu_float32")],
    *[(model, name) for model in ("looping", "branching") for name in ("cpu", "pinned")],
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Each source's manifest (every variant above) and its opened source."""
    with contextlib.ExitStack() as stack:
        opened = {}
        for make in (make_tf_module, make_looping_module, make_branching_module):
            folder = tmp_path_factory.mktemp(make.__name__)
            model = make(folder)
            source = {"savedmodel": model.name, "loss": "mse"}
            loaded = load_manifest(write_manifest(folder, source, variants=VARIANTS))
            opened[model.name] = (loaded, stack.enter_context(open_source(loaded)))
        yield opened


def both_ways(
    loaded: LoadedManifest, source: ModelSource, name: str
) -> tuple[VariantGraph, VariantGraph | None]:
    variant = loaded.spec.variants[name]
    in_python = build_variant_graph(
        loaded, source.model_fn, name, variant, source.assets, source.train_function
    )
    assert source.serving_import is not None
    return in_python, assembled_graph(loaded, source.serving_import(variant), name, variant)


def serialized(variant_graph: VariantGraph) -> bytes:
    meta_graph = exported_meta_graph(variant_graph, SharedSavers())
    return bytes(meta_graph.SerializeToString(deterministic=True))


@pytest.mark.parametrize(("model", "name"), ASSEMBLED)
def test_an_assembled_serving_graph_is_the_one_python_builds(sources, model, name) -> None:
    loaded, source = sources[model]
    in_python, assembled = both_ways(loaded, source, name)

    assert assembled is not None and assembled.graph is None
    # The variant's name (warmup requests and examples are checked per name).
    assert assembled.name == in_python.name == name
    assert serialized(assembled) == serialized(in_python)
    assert assembled.signature_defs == in_python.signature_defs
    assert assembled.variables == in_python.variables
    assert assembled.model_variables == in_python.model_variables


def test_a_later_serving_graph_imports_only_the_variables_handles(sources, monkeypatch) -> None:
    # The template's other nodes are imported once per source; later graphs get them as
    # the importer wrote them (each graph held to the Python one's bytes above).
    loaded, source = sources["two_layers"]
    assert source.serving_import is not None
    template = source.serving_import(loaded.spec.variants["cpu"]).variables_template()
    not_handles = {n.name for n in template.graph_def.node if n.op != "VarHandleOp"}
    imported: list[set[str]] = []
    import_into = smpack.builder.assembled.import_into

    def recording(graph: tf.Graph, graph_def: Any, *args: Any, **kwargs: Any) -> Any:
        imported.append({node.name for node in graph_def.node})
        return import_into(graph, graph_def, *args, **kwargs)

    monkeypatch.setattr(smpack.builder.assembled, "import_into", recording)
    for name in ("cpu", "gpu", "tpu"):
        variant = loaded.spec.variants[name]
        assert assembled_graph(loaded, source.serving_import(variant), name, variant)

    assert sum(1 for names in imported if names & not_handles) <= 1


def test_a_train_variant_is_built_in_python(sources) -> None:
    loaded, source = sources["two_layers"]
    variant = loaded.spec.variants["train"]
    assert source.serving_import is not None

    assert assembled_graph(loaded, source.serving_import(variant), "train", variant) is None


@pytest.mark.parametrize("name", ["gpu", "tpu"])
def test_a_loop_xla_compiles_is_built_in_python(sources, name) -> None:
    # The `While` op XLA (and the TPU) compiles calls its cond and body: a function library.
    loaded, source = sources["looping"]
    variant = loaded.spec.variants[name]
    assert source.serving_import is not None

    assert assembled_graph(loaded, source.serving_import(variant), name, variant) is None


TPU = {"tpu": {"tags": ["serve", "tpu"], "precision": "bfloat16", "batch_size": 2}}
ROWS_OF_3 = tf.TensorSpec([None, 3], tf.float32)


def tpu_source(
    folder: Path,
    compute: Callable[[tf.Tensor, tf.Variable], tf.Tensor],
    spec: tf.TensorSpec = ROWS_OF_3,
    variable: str = "w",
) -> tuple[Path, LoadedManifest]:
    """A one-variable SavedModel computing `compute(x, w)` and the manifest of its TPU variant."""
    module = tf.Module()
    module.w = tf.Variable(tf.random.stateless_normal([3, 3], seed=[1, 1]), name=variable)
    module.f = tf.function(lambda x: {"y": compute(x, module.w)}, input_signature=[spec])
    tf.saved_model.save(module, str(folder / "model"), signatures=module.f)
    manifest = write_manifest(folder, {"savedmodel": "model"}, variants=TPU)
    return folder / "model", load_manifest(manifest)


def is_assembled(loaded: LoadedManifest) -> bool:
    variant = loaded.spec.variants["tpu"]
    with open_source(loaded) as source:
        assert source.serving_import is not None
        return assembled_graph(loaded, source.serving_import(variant), "tpu", variant) is not None


def test_a_variable_named_like_the_tpu_scaffolding_is_built_in_python(tmp_path: Path) -> None:
    # The rewrite names its own scope `cluster`: the Python graph makes the names unique.
    model, loaded = tpu_source(tmp_path, tf.matmul, variable="cluster/centroids")
    assert not is_assembled(loaded)

    package = smpack.build(loaded.path, tmp_path / "out", measure=False)

    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    with tpu_graph_on_cpu(package.path, ["serve", "tpu"]) as graph:
        y = graph.run("serving_default", {"x": x})["y"]
    np.testing.assert_allclose(y, source_outputs(model, "serving_default", x=x)["y"], rtol=4e-2)


def test_an_op_the_tpu_rewrite_logs_as_unsupported_is_built_in_python(tmp_path: Path) -> None:
    """`Print` is on TF's unsupported list: the rewrite logs it, the Python path builds the
    graph as it always did, and the package loads; XLA then refuses to compile `Print`, which
    is verify's to report."""
    _, loaded = tpu_source(tmp_path, lambda x, w: tf.compat.v1.Print(tf.matmul(x, w), [x]))
    assert not is_assembled(loaded)

    package = smpack.build(loaded.path, tmp_path / "out", measure=False)

    with tpu_graph_on_cpu(package.path, ["serve", "tpu"]) as graph:
        with pytest.raises(SmpackError, match="XLA cannot compile .*: .*Print"):
            graph.run("serving_default", {"x": np.zeros((2, 3), np.float32)})


def test_an_input_without_a_batch_dimension_is_left_to_python_which_refuses_it(
    tmp_path: Path,
) -> None:
    _, loaded = tpu_source(tmp_path, lambda x, w: tf.reduce_sum(w) * x, tf.TensorSpec([]))
    assert not is_assembled(loaded)

    with pytest.raises(GraphError) as refused:
        smpack.build(loaded.path, tmp_path / "out", measure=False)

    # What an imported source can do: not the python source's placeholders.
    assert str(refused.value) == (
        f"{loaded.path}: variants.tpu: input 'x' has shape (); a TPU graph needs the static "
        "batch size 2 as its first dimension, which batch_size sets on each input of the "
        "source's signature that has a first dimension, and this one has none; export the "
        "source with it batched (shape [None, ...])"
    )
    assert not (tmp_path / "out").exists()


def test_an_input_of_unknown_rank_is_refused_by_a_tpu_variant(tmp_path: Path) -> None:
    _, loaded = tpu_source(tmp_path, lambda x, w: tf.reduce_sum(w) * x, tf.TensorSpec(None))

    with pytest.raises(GraphError) as refused:
        smpack.build(loaded.path, tmp_path / "out", measure=False)

    assert str(refused.value) == (
        f"{loaded.path}: variants.tpu: input 'x' has shape <unknown>; a TPU graph needs the "
        "static batch size 2 as its first dimension, which batch_size sets on each input of "
        "the source's signature that has a first dimension, and this one may have none "
        "(unknown rank); export the source with it batched (shape [None, ...])"
    )
    assert not (tmp_path / "out").exists()


def test_a_fixed_batch_other_than_batch_size_is_refused(tmp_path: Path) -> None:
    """The source computes on batches of 4 and says so: a batch_size of 2 contradicts it,
    and was silently made the input's first dimension."""
    _, loaded = tpu_source(tmp_path, tf.matmul, tf.TensorSpec([4, 3]))

    with pytest.raises(ManifestError) as refused:
        smpack.build(loaded.path, tmp_path / "out", measure=False)

    assert str(refused.value) == (
        f"{loaded.path}: variants.tpu.batch_size: batch_size is 2, but input 'x' of the "
        "source's signature has a fixed batch of 4 (shape [4, 3]); set batch_size: 4, or "
        "export the source with shape [None, ...]"
    )
    assert not (tmp_path / "out").exists()
