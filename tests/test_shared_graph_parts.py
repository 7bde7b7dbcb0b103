"""What every variant graph shares is made once: the same graphs, for a fraction of the cost.

The variables' ops of an imported source (and their inferred shapes), the Saver's ops, and a
whole graph for variants that differ only in tags are made once per build; what a package's
reader finds of one GraphDef, once per read. Each is held here to giving exactly what
building it again, the slow way, gives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import fingerprint_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
from tf_helpers import X, make_tf_module, meta_graph, run_v1, write_manifest

import smpack
from smpack.builder.assembled import graph_def_and_shapes, import_into
from smpack.builder.checkpoint_bundle import StreamingSaver, initial_values, soft_placement
from smpack.builder.writer import SharedSavers, saved_model_bytes
from smpack.package.checkpoint_index import CheckpointEntry
from smpack.package.fingerprints import variant_fingerprints
from smpack.sources.savedmodel import ImportedModel, SourceVariable, VariablesTemplate, _variable
from smpack.sources.training_mode import named_like

VARIABLES = [
    SourceVariable("dense/kernel", "dense/kernel/.ATTRIBUTES/VARIABLE_VALUE", (64, 32), "float32"),
    SourceVariable("dense/bias", "dense/bias/.ATTRIBUTES/VARIABLE_VALUE", (32,), "float32"),
    SourceVariable("out/kernel", "out/kernel/.ATTRIBUTES/VARIABLE_VALUE", (32, 2), "float32"),
    SourceVariable("bn/moving_mean", "bn/mean", (32,), "float32", trainable=False),
    SourceVariable("steps", "steps", (), "int64"),
]


@contextlib.contextmanager
def plain() -> Iterator[None]:
    yield


@contextlib.contextmanager
def on_gpu_with_xla() -> Iterator[None]:
    jit = tf.xla.experimental.jit_scope(compile_ops=True, separate_compiled_gradients=False)
    with tf.device("/device:GPU:0"), jit:
        yield


def graph_made_with(create: Callable[[], Any], context: Callable[[], Any]) -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.placeholder(tf.float32, [None, 64], name="input")
        with context():
            create()
    return graph


def variable_defs(graph: tf.Graph) -> list[Any]:
    with graph.as_default():
        return [v.to_proto() for v in tf.compat.v1.global_variables()]


@pytest.mark.parametrize("context", [plain, on_gpu_with_xla])
def test_variables_template_makes_exactly_what_get_variable_makes(context) -> None:
    template = VariablesTemplate(VARIABLES)
    made_once = graph_made_with(lambda: template.create({}), context)
    get_variable = graph_made_with(lambda: [_variable(v) for v in VARIABLES], context)

    assert made_once.as_graph_def() == get_variable.as_graph_def()
    assert variable_defs(made_once) == variable_defs(get_variable)
    with made_once.as_default():
        trainable = [v.op.name for v in tf.compat.v1.trainable_variables()]
    assert trainable == ["dense/kernel", "dense/bias", "out/kernel"]


def imported_with(variables: list[SourceVariable]) -> ImportedModel:
    return ImportedModel(
        checkpoint=Path("unread"),
        inputs=[],
        outputs=[],
        variables=variables,
        handles={},
        graph_def=tf.compat.v1.GraphDef(),
        device_inputs=[],
    )


def test_an_import_named_like_the_serving_one_shares_its_variables_template() -> None:
    serving = imported_with(VARIABLES)
    # Another import of the source: its own names for the same checkpoint keys.
    training = named_like(
        imported_with([dataclasses.replace(v, name=f"train/{v.name}") for v in VARIABLES]),
        serving,
    )
    fewer = named_like(imported_with(VARIABLES[:2]), serving)

    assert training.variables_template() is serving.variables_template()
    assert fewer.variables_template() is not serving.variables_template()
    for imported in (serving, training, fewer):
        made_alone = VariablesTemplate(imported.variables)
        assert imported.variables_template().graph_def == made_alone.graph_def
        assert imported.variables_template().variable_defs == made_alone.variable_defs


def test_shapes_read_from_the_cpp_graph_are_the_ones_as_graph_def_adds() -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        unknown_rank = tf.compat.v1.placeholder(tf.int64, None, name="any")
        values, _ = tf.unique(tf.reshape(x, [-1]))  # two outputs, one of unknown size
        tf.identity(unknown_rank)
        tf.reduce_sum(values)
        tf.no_op(name="nothing_out")
    imported = tf.Graph()
    import_into(imported, graph.as_graph_def())

    graph_def, shapes = graph_def_and_shapes(imported)

    expected = graph.as_graph_def(add_shapes=True)
    assert type(graph_def) is type(expected)  # TF's own message, not a copy of it
    assert [node.name for node in graph_def.node] == [node.name for node in expected.node]
    for node in expected.node:
        added = node.attr["_output_shapes"] if "_output_shapes" in node.attr else None
        assert shapes[node.name] == added, node.name
    assert shapes["nothing_out"] is None


def graph_with_variables() -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default(), tf.device("/device:GPU:0"):
        for variable in VARIABLES:
            _variable(variable)
        tf.compat.v1.train.get_or_create_global_step()
    return graph


def exported(
    graph: tf.Graph, saver: tf.compat.v1.train.Saver | None, clear_devices: bool = False
) -> Any:
    """What `SavedModelBuilder.add_meta_graph` exports: its own Saver unless given one."""
    with graph.as_default():
        if saver is None:
            saver = tf.compat.v1.train.Saver(
                sharded=True, write_version=tf.compat.v1.train.SaverDef.V2, allow_empty=True
            )
        return saver.export_meta_graph(clear_devices=clear_devices, strip_default_attrs=True)


def test_shared_saver_exports_what_the_builders_own_saver_exports() -> None:
    savers = SharedSavers()
    first, second = graph_with_variables(), graph_with_variables()
    with first.as_default():
        shared = savers.for_default_graph()
    with second.as_default():
        shared_again = savers.for_default_graph()
    assert shared is not None and shared_again is not None
    assert shared_again._nodes is shared._nodes  # made once, for both graphs

    assert exported(first, shared) == exported(graph_with_variables(), None)
    assert exported(second, shared_again) == exported(graph_with_variables(), None)


def graph_with_many_variables() -> tf.Graph:
    # Not in name order, more than ten (names like save/Identity_10), three dtypes.
    graph = tf.Graph()
    with graph.as_default():
        for i in [7, 3, 11, 0, 5, 10, 1, 9, 2, 8, 4, 6]:
            dtype = ("float32", "int64", "float64")[i % 3]
            _variable(SourceVariable(f"layer_{i}/w", "key", (i % 4 + 1, 2), dtype))
    return graph


@pytest.mark.parametrize("clear_devices", [False, True])
@pytest.mark.parametrize("made", [graph_with_variables, graph_with_many_variables])
def test_shared_saver_made_for_one_variable_and_widened_is_tfs_own(made, clear_devices) -> None:
    graph = made()
    with graph.as_default():
        shared = SharedSavers().for_default_graph()

    ours, tfs = exported(graph, shared, clear_devices), exported(made(), None, clear_devices)
    assert ours.SerializeToString(deterministic=True) == tfs.SerializeToString(deterministic=True)


def test_the_saver_writing_the_variables_exports_what_its_own_ops_export(tmp_path: Path) -> None:
    graph, own = graph_with_many_variables(), graph_with_many_variables()
    with graph.as_default():
        shared = SharedSavers().streaming(tmp_path / "source", {})
    with own.as_default():
        built_in_the_graph = StreamingSaver(tmp_path / "source", {})

    assert isinstance(shared.saving, StreamingSaver)  # what writes the variables
    assert shared.saving.saver_def == built_in_the_graph.saver_def
    assert exported(graph, shared) == exported(own, built_in_the_graph)


def test_a_saved_model_of_tagged_copies_is_the_bytes_of_the_proto_holding_them() -> None:
    one, other = exported(graph_with_variables(), None), exported(graph_with_many_variables(), None)
    meta_graphs = [(one, ["serve"]), (other, ["train"]), (one, ["serve", "canary"])]
    saved_model = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    for untagged, tags in meta_graphs:
        copy = saved_model.meta_graphs.add()
        copy.CopyFrom(untagged)
        copy.meta_info_def.tags.extend(tags)

    assert saved_model_bytes(meta_graphs) == saved_model.SerializeToString(deterministic=True)


def test_fingerprints_of_tagged_copies_are_each_graph_fingerprinted_alone() -> None:
    one, other = exported(graph_with_variables(), None), exported(graph_with_many_variables(), None)
    # A copy of `one` under other tags and with a signature of its own: its GraphDef shared.
    copy = meta_graph_pb2.MetaGraphDef()
    copy.CopyFrom(one)
    copy.meta_info_def.tags.append("canary")
    copy.signature_def["extra"].method_name = "tensorflow/serving/predict"
    meta_graphs = [one, other, copy, one]
    checkpoint = {
        name: CheckpointEntry(name, "float32", (2,), 0, 8 * i, 8, crc32c=i)
        for i, name in enumerate(["dense/kernel", "out/kernel", "layer_3/w", "global_step"])
    }

    fingerprints = variant_fingerprints(meta_graphs, checkpoint)

    assert fingerprints == [variant_fingerprints([m], checkpoint)[0] for m in meta_graphs]
    assert fingerprints[2].changed_parts(fingerprints[0]) == ["signatures"]
    assert fingerprints[1].changed_parts(fingerprints[0]) == ["graph", "variables"]


def test_template_shapes_read_in_one_graph_are_those_of_another_importing_it() -> None:
    template = VariablesTemplate(VARIABLES)
    alone, placed = tf.Graph(), tf.Graph()
    import_into(alone, template.graph_def)
    # In another graph: after other nodes, placed and marked for XLA.
    head = tf.compat.v1.GraphDef()
    head.versions.CopyFrom(template.graph_def.versions)
    head.node.add(name="x", op="Placeholder").attr["dtype"].type = tf.float32.as_datatype_enum
    for node in template.graph_def.node:
        moved = head.node.add()
        moved.CopyFrom(node)
        moved.device = "/device:GPU:0"
        moved.attr["_XlaCompile"].b = True
    import_into(placed, head)
    _, shapes = graph_def_and_shapes(alone)
    known = {node.name: shapes[node.name] for node in template.graph_def.node}

    assert graph_def_and_shapes(placed, known) == graph_def_and_shapes(placed)


def graph_with_optimizer_state(initial_value: Callable[[], Any] | None = None) -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default(), tf.device("/device:GPU:0"):
        tf.compat.v1.set_random_seed(0)
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        weights = tf.compat.v1.get_variable("w", [4, 2])  # Glorot: random, seeded
        if initial_value is not None:
            tf.compat.v1.Variable(initial_value(), name="v")
        step = tf.compat.v1.train.get_or_create_global_step()
        loss = tf.reduce_sum(tf.matmul(x, weights))
        tf.compat.v1.train.AdamOptimizer(0.1).minimize(loss, global_step=step)  # slots
    return graph


@tf.function(autograph=False)
def doubled(value: tf.Tensor) -> tf.Tensor:
    return value * 2


def test_initial_values_are_computed_alone_as_the_graphs_session_computes_them() -> None:
    graph = graph_with_optimizer_state()
    with graph.as_default():
        fresh = tf.compat.v1.global_variables()
    with tf.compat.v1.Session(graph=graph, config=soft_placement()) as session:
        expected = session.run({v.op.name: v.initial_value for v in fresh})

    # The session is closed: computed without it.
    values = initial_values(session, fresh)

    assert "w/Adam" in values and "global_step" in values
    assert values.keys() == expected.keys()
    for name, value in values.items():
        assert (value.dtype, value.tobytes()) == (expected[name].dtype, expected[name].tobytes())


def test_initial_values_calling_a_function_are_run_in_the_graphs_session() -> None:
    graph = graph_with_optimizer_state(lambda: doubled(tf.ones([2])))
    with graph.as_default():
        fresh = tf.compat.v1.global_variables()
    with tf.compat.v1.Session(graph=graph, config=soft_placement()) as session:
        expected = session.run({v.op.name: v.initial_value for v in fresh})
    with tf.compat.v1.Session(graph=graph, config=soft_placement()) as session:
        values = initial_values(session, fresh)

    np.testing.assert_array_equal(values["v"], [2.0, 2.0])
    assert {k: v.tobytes() for k, v in values.items()} == {
        k: v.tobytes() for k, v in expected.items()
    }


def test_a_graph_that_already_has_a_saver_keeps_the_builders() -> None:
    graph = graph_with_variables()
    with graph.as_default():
        tf.compat.v1.train.Saver()
        assert SharedSavers().for_default_graph() is None


def test_variants_differing_only_in_tags_share_one_graph(tmp_path: Path) -> None:
    make_tf_module(tmp_path)
    variants = {"cpu": {"tags": ["serve"]}, "canary": {"tags": ["serve", "canary"]}}
    manifest = write_manifest(tmp_path, {"savedmodel": "two_layers"}, variants=variants)

    info = smpack.build(manifest, tmp_path / "out", measure=False)
    package = info.path

    # Described once, as both: each with its own tags, the rest as the other's.
    described = {graph.tags: graph for graph in info.graphs}
    assert set(described) == {("serve",), ("serve", "canary")}
    assert dataclasses.replace(described["serve", "canary"], tags=("serve",)) == described["serve",]
    serve, canary = meta_graph(package, ["serve"]), meta_graph(package, ["serve", "canary"])
    assert list(canary.meta_info_def.tags) == ["serve", "canary"]
    del canary.meta_info_def.tags[:]
    canary.meta_info_def.tags.append("serve")
    assert canary == serve
    np.testing.assert_array_equal(
        run_v1(package, ["serve", "canary"], {"x": X})["y"],
        run_v1(package, ["serve"], {"x": X})["y"],
    )
    # Fingerprinted with the copy's graph read once, as TF fingerprints it whole (UUID aside).
    expected = fingerprint_pb2.FingerprintDef.FromString(
        fingerprinting.CreateFingerprintDef(str(package))
    )
    written = fingerprint_pb2.FingerprintDef.FromString((package / "fingerprint.pb").read_bytes())
    expected.uuid = written.uuid
    assert written == expected


def test_a_build_leaves_what_lived_before_it_out_of_collections_until_it_ends(
    tmp_path: Path,
) -> None:
    make_tf_module(tmp_path)
    variants = {"cpu": {"tags": ["serve"]}}
    manifest = write_manifest(tmp_path, {"savedmodel": "two_layers"}, variants=variants)
    frozen_while_building: list[int] = []

    smpack.build(
        manifest,
        tmp_path / "out",
        measure=False,
        on_step=lambda step: frozen_while_building.append(gc.get_freeze_count()),
    )

    before_tensorflow, *building = frozen_while_building
    assert before_tensorflow == 0
    assert min(building) > 100_000  # TensorFlow's own objects, among others
    assert gc.get_freeze_count() == 0
