"""What verify and measure make up for a string input, read from the graph without TensorFlow.

Verify makes up inputs for signatures that have no examples or warmup requests. For a text
model, an empty string only exercises the out-of-vocabulary path (and a tokenizer makes no
token of it); words the model's own tables hold exercise its real lookups, and plain text,
for a graph without such a table (a tokenizer whose vocabulary is compiled into its op),
its real tokenization. A string the graph parses (a serialized `tf.Example`, an image) is
not text: it stays empty, an empty `tf.Example` being valid where no made-up text is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Initialisers whose keys are a tensor (input 1): StaticHashTable's KeyValueTensorInitializer.
_KEYS_FROM_TENSOR = frozenset({"InitializeTableV2", "InitializeTable", "LookupTableImportV2"})
# Initialisers whose keys are lines (or columns of lines) of a file (input 1, its path).
_KEYS_FROM_FILE = frozenset({"InitializeTableFromTextFileV2", "InitializeTableFromTextFile"})
_WHOLE_LINE = -2  # tf.lookup.TextFileIndex.WHOLE_LINE
_STRING = 7  # DT_STRING
# Tokens that stand for no word: padding, masks, out-of-vocabulary markers ([UNK], <unk>),
# and wordpiece continuations (##s), which are never a word on their own.
_SPECIAL = re.compile(rb"^(\[[^\]]*\]|<[^>]*>|##.*|\s*)$")
_LINES_READ = 256  # a vocabulary's first words are enough; a file may hold millions
# A longer line is no word worth making up an input of: it is skipped a chunk at a time, not
# held (a file of one endless line was read whole).
_LONGEST_LINE = 4096
_SKIP_CHUNK = 1 << 16
# Ops reading a string as encoded data, not text: what feeds them is made up empty.
_PARSING_OPS = frozenset(
    {
        "ParseExample",
        "ParseExampleV2",
        "ParseSingleExample",
        "ParseSequenceExample",
        "ParseSequenceExampleV2",
        "ParseSingleSequenceExample",
        "DecodeJSONExample",
        "DecodeProtoV2",
        "ParseTensor",
        "DecodeRaw",
        "DecodePaddedRaw",
        "DecodeCompressed",
        "DecodeBase64",
        "DecodeCSV",
        "DecodeJpeg",
        "DecodeAndCropJpeg",
        "DecodePng",
        "DecodeGif",
        "DecodeBmp",
        "DecodeWebP",
        "DecodeImage",
        "DecodeWav",
    }
)
# Ops a string passes through unchanged on its way to what reads it.
_PASSING_OPS = frozenset({"Identity", "IdentityN", "StopGradient", "Reshape", "ExpandDims"})
# Made-up text for a graph whose tables know no word: short lines of common English words,
# of different lengths, which a tokenizer's vocabulary is likely to hold.
PLAIN_TEXT: tuple[bytes, ...] = (
    b"the cat sat on the mat",
    b"a dog",
    b"they are the greatest",
    b"hello world",
    b"it was the best of times",
    b"on",
    b"the quick brown fox jumps over the lazy dog",
    b"to be or not to be",
)


def vocabulary_words(meta_graph: Any, export_dir: Path, count: int = 8) -> list[bytes]:
    """Up to `count` distinct words the graph's string-keyed tables are filled with, in the
    order their initialisers list them; [] for a graph with no such table."""
    words: list[bytes] = []
    for word in _table_keys(meta_graph, export_dir):
        if word not in words and not _SPECIAL.match(word):
            words.append(word)
            if len(words) == count:
                break
    return words


def _table_keys(meta_graph: Any, export_dir: Path) -> Iterator[bytes]:
    nodes = {node.name: node for node in meta_graph.graph_def.node}
    assets = {a.tensor_info.name: a.filename for a in meta_graph.asset_file_def}
    for node in meta_graph.graph_def.node:
        if len(node.input) < 2 or not _string_keyed(nodes, node.input[0]):
            continue
        keys = _through_identities(nodes, node.input[1])
        if node.op in _KEYS_FROM_TENSOR:
            producer = nodes.get(keys.partition(":")[0])
            if producer is not None and producer.op == "Const":
                tensor = producer.attr["value"].tensor
                if tensor.dtype == _STRING:
                    yield from tensor.string_val
        elif node.op in _KEYS_FROM_FILE and node.attr["key_index"].i != -1:  # -1: line numbers
            filename = assets.get(keys if ":" in keys else f"{keys}:0")
            if filename is not None:
                yield from _file_keys(export_dir / "assets" / filename, node)


def _string_keyed(nodes: dict[str, Any], table: str) -> bool:
    """Whether the table an initialiser fills has string keys (an IntegerLookup's has not)."""
    producer = nodes.get(_through_identities(nodes, table).partition(":")[0])
    return (
        producer is None
        or "key_dtype" not in producer.attr
        or (producer.attr["key_dtype"].type == _STRING)
    )


def _through_identities(nodes: dict[str, Any], tensor: str) -> str:
    """The tensor an input names, past any Identity ops (host parts are imported behind them)."""
    seen = set()
    while (node := nodes.get(tensor.partition(":")[0])) is not None and node.op == "Identity":
        if node.name in seen:
            break
        seen.add(node.name)
        tensor = node.input[0]
    return tensor


def _file_keys(path: Path, node: Any) -> Iterator[bytes]:
    key_index = node.attr["key_index"].i
    delimiter = node.attr["delimiter"].s or b"\t"
    try:
        with path.open("rb") as file:
            for _ in range(_LINES_READ):
                line = file.readline(_LONGEST_LINE + 1)
                if not line:
                    break
                if len(line) > _LONGEST_LINE and not line.endswith(b"\n"):
                    _skip_line(file)
                    continue
                line = line.rstrip(b"\r\n")
                if key_index == _WHOLE_LINE:
                    yield line
                else:
                    columns = line.split(delimiter)
                    if key_index < len(columns):
                        yield columns[key_index]
    except OSError:
        return  # verify's own "assets present" check reports a missing vocabulary


def _skip_line(file: Any) -> None:
    """Read past the end of the current line, a chunk at a time."""
    while chunk := file.readline(_SKIP_CHUNK):
        if chunk.endswith(b"\n"):
            return


def parsed_string_inputs(meta_graph: Any) -> dict[str, frozenset[str]]:
    """By signature key, the string inputs the graph parses as encoded data (a serialized
    `tf.Example`, a tensor proto, an image, CSV) rather than reading as text."""
    consumers: dict[str, list[Any]] = {}  # by node, the nodes reading its outputs
    for node in meta_graph.graph_def.node:
        for tensor in node.input:
            # A control input ("^name") only orders the node after `name`: it reads no value.
            if not tensor.startswith("^"):
                consumers.setdefault(tensor.partition(":")[0], []).append(node)
    parsed = {}
    for key, signature in meta_graph.signature_def.items():
        parsed[key] = frozenset(
            name
            for name, info in signature.inputs.items()
            if info.dtype == _STRING and _reaches_parser(consumers, info.name.partition(":")[0])
        )
    return parsed


def _reaches_parser(consumers: dict[str, list[Any]], node_name: str) -> bool:
    seen, pending = set(), [node_name]
    while pending:
        for node in consumers.get(pending.pop(), []):
            if node.op in _PARSING_OPS:
                return True
            if node.op in _PASSING_OPS and node.name not in seen:
                seen.add(node.name)
                pending.append(node.name)
    return False
