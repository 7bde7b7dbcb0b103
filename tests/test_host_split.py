"""Where an imported graph is cut between host and device, on small hand-made graphs."""

from __future__ import annotations

from typing import Any

import pytest
import tensorflow as tf

from smpack.errors import ModelError
from smpack.sources.host_split import Split, split_host

WHERE: dict[str, Any] = {"file": "smpack.yaml", "field": "source.savedmodel"}


def split(build: Any) -> Split:
    """Split the graph `build` makes; it returns its output, init op and external nodes."""
    graph = tf.Graph()
    with graph.as_default():
        output, init, external = build()
    flat = graph.as_graph_def()
    signature = tf.compat.v1.graph_util.extract_sub_graph(flat, [output.op.name])
    return split_host(flat, signature, external, init.name, {}, WHERE)


def lookup_then_scale(read_first: bool = False) -> Any:
    words = tf.compat.v1.placeholder(tf.string, [None], name="words")
    scale = tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="scale", name="scale")
    initializer = tf.lookup.KeyValueTensorInitializer(["a", "b"], [0, 1], tf.string, tf.int64)
    table = tf.lookup.StaticHashTable(initializer, -1)
    if read_first:  # a variable read feeding the string ops
        value = tf.raw_ops.ReadVariableOp(resource=scale, dtype=tf.float32)
        words = tf.strings.join([words, tf.strings.as_string(value)])
    ids = table.lookup(words)
    with tf.control_dependencies([words.op]):
        read = tf.raw_ops.ReadVariableOp(resource=scale, dtype=tf.float32)
    output = tf.identity(tf.cast(ids, tf.float32) * read, name="output")
    return output, tf.compat.v1.tables_initializer(), {"words", "scale"}


def test_strings_and_tables_stay_on_the_host_and_only_numbers_cross() -> None:
    result = split(lookup_then_scale)
    assert result.host is not None
    # The external nodes stay, for the importer to cut and map to the variant's own.
    device_ops = {n.op for n in result.device.node if n.name not in ("words", "scale")}
    assert not device_ops & {"LookupTableFindV2", "HashTableV2", "Placeholder"}
    assert {"Cast", "Mul", "ReadVariableOp"} <= device_ops
    # The lookup's ids are the one input; a control edge on the words is not an input.
    assert result.device_inputs == ["hash_table_Lookup/LookupTableFindV2:0"]
    assert result.host.inputs == ["words:0"]
    assert result.host.tables == ["HashTableV2"]
    (initializer,) = result.host.initializers
    assert initializer.endswith("LookupTableImportV2")


def test_a_graph_without_strings_or_tables_is_all_device() -> None:
    def numeric() -> Any:
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        return tf.identity(x * 2.0, name="output"), tf.no_op(name="init"), {"x"}

    result = split(numeric)
    assert result.host is None and result.device_inputs == []


def test_a_variable_read_upstream_of_the_strings_is_refused() -> None:
    with pytest.raises(ModelError, match="reads a variable upstream of the signature's string"):
        split(lambda: lookup_then_scale(read_first=True))
