"""The hostile corpus: inputs an attacker or a careless operator gives smpack, one per case.

Each case builds its input in a fresh folder (`src/` for manifests and templates, `pkg/`
for a copy of a good package it then damages), names the command to run on it and the one
line smpack must print, exit code 2. `{src}`, `{pkg}` and `{out}` in the command and the
line stand for those folders. A case marked `unprivileged` needs permissions to mean
something, so it runs as an unprivileged user when the suite runs as root.

Most cases are files whose bytes git cannot hold or should not (chmod 000, FIFOs, 1 MiB
manifests, sparse 64 MiB warmup files, symlinks out of the checkout), so they are made here
rather than stored.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MANIFEST = """\
schema: 1
name: tiny
version: 1
source:
  python: models/tiny.py:model_fn
variants:
  cpu: {tags: [serve]}
"""


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path, Path], None]  # (src, pkg) -> None: lays out the hostile input
    command: tuple[str, ...]
    line: str
    unprivileged: bool = False


def manifest(text: str, name: str = "m.yaml") -> Callable[[Path, Path], None]:
    """A manifest of `text` (bytes or str) in src/."""

    def make(src: Path, pkg: Path) -> None:
        data = text.encode() if isinstance(text, str) else text
        (src / name).write_bytes(data.replace(b"{outside}", bytes(src.parent / "outside")))

    return make


def with_manifest(
    extra: str, *steps: Callable[[Path], None], text: str = MANIFEST
) -> Callable[[Path, Path], None]:
    """The tiny manifest plus `extra` YAML, with `steps` run on src/ once it is written."""

    def make(src: Path, pkg: Path) -> None:
        (src / "m.yaml").write_text(
            (text + extra).replace("{outside}", str(src.parent / "outside"))
        )
        for step in steps:
            step(src)

    return make


def replacing(old: str, new: str, *steps: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    return with_manifest("", *steps, text=MANIFEST.replace(old, new))


def package(*steps: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """A copy of the good package in pkg/ (made by the runner), damaged by `steps`."""

    def make(src: Path, pkg: Path) -> None:
        for step in steps:
            step(pkg)

    return make


def write(relative: str, data: bytes) -> Callable[[Path], None]:
    def step(root: Path) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)

    return step


def link(relative: str, target: str) -> Callable[[Path], None]:
    """A symlink; "{outside}" in `target` is a folder beside src/ and pkg/ holding a
    checkpoint, a template, a warmup file and a model file."""

    def step(root: Path) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).symlink_to(target.replace("{outside}", str(root.parent / "outside")))

    return step


def folder(relative: str, mode: int) -> Callable[[Path], None]:
    def step(root: Path) -> None:
        (root / relative).mkdir(parents=True, exist_ok=True)
        (root / relative).chmod(mode)

    return step


def chmod(relative: str, mode: int) -> Callable[[Path], None]:
    return lambda root: (root / relative).chmod(mode)


def fifo(relative: str) -> Callable[[Path], None]:
    return lambda root: os.mkfifo(root / relative)


def sparse(relative: str, size: int) -> Callable[[Path], None]:
    def step(root: Path) -> None:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        with (root / relative).open("wb") as stream:
            stream.truncate(size)

    return step


def remove(relative: str) -> Callable[[Path], None]:
    return lambda root: (root / relative).unlink()


def truncate(relative: str, keep: int) -> Callable[[Path], None]:
    return lambda root: (root / relative).write_bytes((root / relative).read_bytes()[:keep])


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def npy(header: dict[str, object], data: bytes) -> bytes:
    """A .npy file with this header and data, whatever the header claims."""
    text = repr(header).encode()
    padding = 64 - (10 + len(text) + 1) % 64
    text += b" " * padding + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def good_npy(array: np.ndarray) -> bytes:
    import io

    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


def npz(members: dict[str, bytes], claimed: int | None = None) -> bytes:
    """A .npz (a zip) storing `members`; its directory claims `claimed` bytes for the first,
    if given, whatever it holds."""
    import io
    import zipfile

    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    data = bytearray(stream.getvalue())
    if claimed is not None:
        entry = data.index(b"PK\x01\x02")  # the first member's central directory entry
        data[entry + 24 : entry + 28] = struct.pack("<I", claimed)  # its uncompressed size
    return bytes(data)


def deflated_npz_claiming(size: int) -> bytes:
    """A .npz whose deflated member `input.npy` claims `size` bytes (its npy header agreeing)
    for 1 MiB of incompressible bytes, within the 1032 times deflate can grow; and labels."""
    import io
    import zipfile

    header = npy({"descr": "|u1", "fortran_order": False, "shape": (size - 128,)}, b"")
    stored = header + np.random.default_rng(0).bytes(size // 1000)
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        archive.writestr("input.npy", stored, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("labels.npy", good_npy(np.zeros(4, np.float32)))
    data = bytearray(stream.getvalue())
    entry = data.index(b"PK\x01\x02")  # the first member's central directory entry
    data[entry + 24 : entry + 28] = struct.pack("<I", size)  # its uncompressed size
    return bytes(data)


def tfrecord_of_one_sparse_record(length: int) -> Callable[[Path], None]:
    """data/eval.tfrecord: one record of `length` zero bytes, the file sparse."""

    def step(root: Path) -> None:
        (root / "data").mkdir(exist_ok=True)
        with (root / "data" / "eval.tfrecord").open("wb") as stream:
            stream.write(struct.pack("<Q", length) + b"\0" * 4)
            stream.truncate(12 + length + 4)

    return step


def sparse_npy(relative: str, count: int) -> Callable[[Path], None]:
    """A .npy of `count` float32 zeros, its data sparse."""

    def step(root: Path) -> None:
        header = npy({"descr": "<f4", "fortran_order": False, "shape": (count,)}, b"")
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        with (root / relative).open("wb") as stream:
            stream.write(header)
            stream.truncate(len(header) + 4 * count)

    return step


def repeated_log() -> bytes:
    """A PredictionLog whose input is a float32 tensor of 2^24 elements holding one value."""

    def message(field: int, body: bytes) -> bytes:
        return varint(field << 3 | 2) + varint(len(body)) + body

    shape = message(2, varint(1 << 3) + varint(2**24))  # TensorShapeProto{dim{size}}
    tensor = varint(1 << 3) + varint(1) + message(2, shape) + message(5, struct.pack("<f", 1))
    request = message(1, message(1, b"tiny")) + message(
        2, message(1, b"input") + message(2, tensor)
    )
    return message(6, message(1, request))


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# A TFRecord whose framing is sound and whose one record is not a PredictionLog.
def tfrecord(payload: bytes) -> bytes:
    def masked(data: bytes) -> bytes:
        crc = _crc32c(data)
        return struct.pack("<I", ((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF)

    length = struct.pack("<Q", len(payload))
    return length + masked(length) + payload + masked(payload)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


BUILD = ("build", "{src}/m.yaml", "--out", "{out}", "--force")
WARMUP_REQUEST = "warmup:\n  - files: {input: data/x.%s}\n"
EVALUATE = "evaluate: {data: data/eval.npz, metrics: [mse]}\n"
BOMB = "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8)
)
TEMPLATE = ("card", "{pkg}", "--template", "{src}/t.md.j2")


def template(text: str | bytes, *steps: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    def make(src: Path, pkg: Path) -> None:
        (src / "t.md.j2").write_bytes(text.encode() if isinstance(text, str) else text)
        for step in steps:
            step(src)

    return make


CASES = [
    # ---- manifests: sizes, nesting, aliases, encodings, limits -----------------------------
    Case(
        "manifest_not_utf8",
        manifest(MANIFEST.encode() + b"# caf\xe9\n"),
        BUILD,
        "{src}/m.yaml:8: not UTF-8 text: byte 0xe9 at offset 112",
    ),
    Case(
        "manifest_5000_nested_brackets",
        manifest(MANIFEST + "x: " + nested(5000) + "\n"),
        BUILD,
        "{src}/m.yaml:8: invalid YAML: exceeded maximum nesting depth",
    ),
    Case(
        "manifest_200_nested_mappings",
        manifest(MANIFEST + "x: " + "{a: " * 200 + "1" + "}" * 200 + "\n"),
        BUILD,
        "{src}/m.yaml:8: invalid YAML: nested deeper than 64 levels",
    ),
    Case(
        "manifest_alias_bomb",
        manifest("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + BOMB + MANIFEST),
        BUILD,
        "{src}/m.yaml:5: invalid YAML: the manifest expands to more than 100,000 values",
    ),
    Case(
        "manifest_self_referencing_alias",
        manifest(MANIFEST.replace("  python:", "  params: {p: &p [1, *p]}\n  python:")),
        BUILD,
        "{src}/m.yaml:5: invalid YAML: alias *p refers to a node that contains it",
    ),
    Case(
        "manifest_larger_than_1_mib",
        manifest(MANIFEST + "# " + "x" * (1 << 20) + "\n"),
        BUILD,
        "{src}/m.yaml: the manifest is larger than 1 MiB; put data in files",
    ),
    Case(
        "manifest_is_a_fifo",
        lambda src, pkg: os.mkfifo(src / "m.yaml"),
        BUILD,
        "{src}/m.yaml: the manifest is not a regular file",
    ),
    Case(
        "manifest_is_a_folder",
        lambda src, pkg: (src / "m.yaml").mkdir(),
        BUILD,
        "{src}/m.yaml: cannot read manifest: Is a directory",
    ),
    Case(
        "manifest_unreadable",
        with_manifest("", chmod("m.yaml", 0)),
        BUILD,
        "{src}/m.yaml: cannot read manifest: Permission denied",
        unprivileged=True,
    ),
    Case(
        "version_with_5000_digits",
        replacing("version: 1", "version: " + "9" * 5000),
        BUILD,
        "{src}/m.yaml:3: invalid YAML: a number with 5000 digits; smpack's numbers fit 64 bits",
    ),
    Case(
        "version_2_to_the_70",
        replacing("version: 1", f"version: {2**70}"),
        BUILD,
        "{src}/m.yaml:3: version: Input should be less than or equal to 9223372036854775807",
    ),
    Case(
        "name_of_300_characters",
        replacing("name: tiny", "name: " + "t" * 300),
        BUILD,
        "{src}/m.yaml:2: name: name is 300 characters long; at most 100 make a folder name",
    ),
    Case(
        "name_ending_in_a_newline",
        replacing("name: tiny", 'name: "tiny\\n"'),
        BUILD,
        "{src}/m.yaml:2: name: name 'tiny\\n' must be a plain directory name "
        "(letters, digits, '_', '.', '-')",
    ),
    Case(
        "name_with_a_slash",
        replacing("name: tiny", "name: tiny/../../x"),
        BUILD,
        "{src}/m.yaml:2: name: name 'tiny/../../x' must be a plain directory name "
        "(letters, digits, '_', '.', '-')",
    ),
    Case(
        "tag_ending_in_a_newline",
        replacing("[serve]", '["serve\\n"]'),
        BUILD,
        "{src}/m.yaml:7: variants.cpu.tags: tag 'serve\\n' must be letters, digits, '_', '.' "
        "or '-' (tag sets are passed comma-separated to TF Serving)",
    ),
    Case(
        "variant_name_with_a_newline",
        replacing("  cpu:", '  "cpu\\nx":'),
        BUILD,
        "{src}/m.yaml:6: variants.'cpu\\nx'.[key]: 'cpu\\nx' must be 1 to 128 printable "
        "characters, no '/' or backslash",
    ),
    Case(
        "signature_key_with_a_slash",
        with_manifest('signatures:\n  "../sig": {inputs: [input], outputs: [output]}\n'),
        BUILD,
        "{src}/m.yaml:9: signatures.../sig.[key]: '../sig' must be 1 to 128 printable "
        "characters, no '/' or backslash",
    ),
    Case(
        "signature_input_key_with_an_escape_sequence",
        with_manifest('signatures:\n  s: {inputs: {"\\e[31mx": input}, outputs: [output]}\n'),
        BUILD,
        "{src}/m.yaml:9: signatures.s.inputs.'\\x1b[31mx'.[key]: '\\x1b[31mx' must be 1 to 128 "
        "printable characters, no '/' or backslash",
    ),
    Case(
        "learning_rate_infinite",
        replacing(
            "cpu: {tags: [serve]}",
            "train: {tags: [train], optimizer: {name: sgd, learning_rate: .inf}}",
        ),
        BUILD,
        "{src}/m.yaml:7: variants.train.optimizer.learning_rate: Input should be a finite number",
    ),
    Case(
        "learning_rate_not_a_number",
        replacing(
            "cpu: {tags: [serve]}",
            "train: {tags: [train], optimizer: {name: sgd, learning_rate: .nan}}",
        ),
        BUILD,
        "{src}/m.yaml:7: variants.train.optimizer.learning_rate: Input should be a finite number",
    ),
    Case(
        "momentum_infinite",
        replacing(
            "cpu: {tags: [serve]}",
            "train: {tags: [train], optimizer: {name: momentum, learning_rate: 0.1, "
            "momentum: .inf}}",
        ),
        BUILD,
        "{src}/m.yaml:7: variants.train.optimizer.momentum: Input should be a finite number",
    ),
    # ---- paths that leave the manifest's folder, or cannot be copied -----------------------
    Case(
        "asset_with_a_nul_byte",
        with_manifest('assets: ["data/vo\\0cab.txt"]\n'),
        BUILD,
        "{src}/m.yaml:8: assets.0: 'data/vo\\x00cab.txt' holds a NUL byte, which no file name can",
    ),
    Case(
        "asset_symlink_loop",
        with_manifest("assets: [data/loop]\n", link("data/loop", "loop")),
        BUILD,
        "{src}/m.yaml:8: assets.0: cannot resolve 'data/loop': Symlink loop from '{src}/data/loop'",
    ),
    Case(
        "asset_folder_holding_a_symlink_outside",
        with_manifest("assets: [data]\n", write("data/a.txt", b"a"), link("data/b", "/etc/passwd")),
        BUILD,
        "{src}/m.yaml:8: assets.0: data/b links outside the manifest's folder {src}",
    ),
    Case(
        "asset_folder_holding_a_symlink_loop",
        with_manifest("assets: [data]\n", link("data/sub/l", "l")),
        BUILD,
        "{src}/m.yaml:8: assets.0: data/sub/l cannot be resolved: "
        "Symlink loop from '{src}/data/sub/l'",
    ),
    Case(
        "asset_folder_holding_a_fifo",
        with_manifest("assets: [data]\n", write("data/a.txt", b"a"), fifo("data/pipe")),
        BUILD,
        "{src}/m.yaml:8: assets.0: data/pipe is neither a regular file nor a folder",
    ),
    Case(
        "asset_is_a_fifo",
        with_manifest("assets: [pipe]\n", fifo("pipe")),
        BUILD,
        "{src}/m.yaml:8: assets.0: 'pipe' is neither a regular file nor a folder",
    ),
    Case(
        "assets_extra_target_dot",
        with_manifest("assets_extra: {'.': data/a.txt}\n", write("data/a.txt", b"a")),
        BUILD,
        "{src}/m.yaml:8: assets_extra.'.': '.' must name a file inside assets.extra/",
    ),
    Case(
        "assets_extra_folder_holding_a_symlink_outside",
        with_manifest(
            "assets_extra: {more: data}\n", write("data/a.txt", b"a"), link("data/k", "/etc")
        ),
        BUILD,
        "{src}/m.yaml:8: assets_extra.more: data/k links outside the manifest's folder {src}",
    ),
    Case(
        "checkpoint_in_the_parent_folder",
        replacing("  python:", "  checkpoint: ../outside/model\n  python:"),
        BUILD,
        "{src}/m.yaml:5: source.checkpoint: '../outside/model.index' points outside the "
        "manifest's folder {src}; copy the file next to the manifest",
    ),
    Case(
        "checkpoint_absolute",
        replacing("  python:", "  checkpoint: {outside}/model\n  python:"),
        BUILD,
        "{src}/m.yaml:5: source.checkpoint: '{outside}/model.index' points outside the "
        "manifest's folder {src}; copy the file next to the manifest",
    ),
    Case(
        "checkpoint_symlinked_from_outside",
        replacing(
            "  python:",
            "  checkpoint: start\n  python:",
            link("start.index", "{outside}/model.index"),
        ),
        BUILD,
        "{src}/m.yaml:5: source.checkpoint: 'start.index' points outside the manifest's folder "
        "{src}; copy the file next to the manifest",
    ),
    Case(
        "template_symlinked_from_outside",
        with_manifest("card: {template: t.md.j2}\n", link("t.md.j2", "{outside}/t.md.j2")),
        BUILD,
        "{src}/m.yaml:8: card.template: 't.md.j2' points outside the manifest's folder {src}; "
        "copy the file next to the manifest",
    ),
    Case(
        "warmup_file_symlinked_from_outside",
        with_manifest(WARMUP_REQUEST % "npy", link("data/x.npy", "{outside}/x.npy")),
        BUILD,
        "{src}/m.yaml:9: warmup.0.files.input: 'data/x.npy' points outside the manifest's "
        "folder {src}; copy the file next to the manifest",
    ),
    Case(
        "model_file_symlinked_from_outside",
        with_manifest("", remove("models/tiny.py"), link("models/tiny.py", "{outside}/tiny.py")),
        BUILD,
        "{src}/m.yaml:5: source.python: 'models/tiny.py' points outside the manifest's "
        "folder {src}; copy the file next to the manifest",
    ),
    # ---- warmup files: built after the graphs, checked before numpy allocates -------------
    Case(
        "warmup_npy_header_claims_10_to_the_12_elements",
        with_manifest(
            WARMUP_REQUEST % "npy",
            write(
                "data/x.npy",
                npy({"descr": "<f4", "fortran_order": False, "shape": (10**12,)}, b"\0" * 16),
            ),
        ),
        BUILD,
        "{src}/m.yaml: warmup.0.files.input: cannot read 'data/x.npy': its header promises "
        "(1000000000000,) float32 (4000000000128 bytes), the file has 144",
    ),
    Case(
        "warmup_npy_truncated",
        with_manifest(
            WARMUP_REQUEST % "npy", write("data/x.npy", good_npy(np.ones(8, np.float32))[:140])
        ),
        BUILD,
        "{src}/m.yaml: warmup.0.files.input: cannot read 'data/x.npy': its header promises "
        "(8,) float32 (160 bytes), the file has 140",
    ),
    Case(
        "warmup_npy_of_python_objects",
        with_manifest(
            WARMUP_REQUEST % "npy",
            write("data/x.npy", npy({"descr": "|O", "fortran_order": False, "shape": (2,)}, b"")),
        ),
        BUILD,
        "{src}/m.yaml: warmup.0.files.input: cannot read 'data/x.npy': holds Python objects, "
        "which are only read by unpickling",
    ),
    Case(
        "warmup_npy_not_npy",
        with_manifest(WARMUP_REQUEST % "npy", write("data/x.npy", b"\0" * 4096)),
        BUILD,
        "{src}/m.yaml: warmup.0.files.input: cannot read 'data/x.npy': the magic string is not "
        "correct; expected b'\\x93NUMPY', got b'\\x00\\x00\\x00\\x00\\x00\\x00'",
    ),
    Case(
        "warmup_file_larger_than_64_mib",
        with_manifest(WARMUP_REQUEST % "npy", sparse("data/x.npy", (64 << 20) + 1)),
        BUILD,
        "{src}/m.yaml: warmup.0.files.input: 'data/x.npy' is larger than 64 MiB",
    ),
    Case(
        # Its Python objects before it is an array: up to 34 times the file.
        "warmup_json_larger_than_8_mib",
        with_manifest(WARMUP_REQUEST % "json", sparse("data/x.json", (8 << 20) + 1)),
        BUILD,
        "{src}/m.yaml: warmup.0.files.input: 'data/x.json' is larger than 8 MiB",
    ),
    Case(
        # Each file within its limit, but every request is held, then written, then
        # replayed on each load: the first is read (and fits), the second is not.
        "warmup_two_requests_of_one_40_mib_npy",
        with_manifest(
            "warmup:\n  - files: {input: data/x.npy}\n  - files: {input: data/x.npy}\n",
            sparse_npy("data/x.npy", 10 << 20),
        ),
        BUILD,
        "{src}/m.yaml: warmup.1.files.input: the warmup requests hold more than 64 MiB of "
        "values by here (each load of the model replays them all)",
    ),
    Case(
        "warmup_json_nested_100000_deep",
        with_manifest(WARMUP_REQUEST % "json", write("data/x.json", nested(100_000).encode())),
        BUILD,
        "{src}/m.yaml: warmup.0.files.input: cannot read 'data/x.json': maximum recursion "
        "depth exceeded while decoding a JSON array from a unicode string",
    ),
    Case(
        "warmup_json_mixed_types",
        with_manifest(WARMUP_REQUEST % "json", write("data/x.json", b'[1, [2, 3], "x"]')),
        BUILD,
        "{src}/m.yaml: warmup.0.files.input: not a rectangular array of one type: setting an "
        "array element with a sequence. The requested array has an inhomogeneous shape after 1 "
        "dimensions. The detected shape was (3,) + inhomogeneous part.",
    ),
    Case(
        "warmup_json_not_utf8",
        with_manifest(WARMUP_REQUEST % "json", write("data/x.json", b'["\xff"]')),
        BUILD,
        "{src}/m.yaml: warmup.0.files.input: cannot read 'data/x.json': 'utf-8' codec can't "
        "decode byte 0xff in position 2: invalid start byte",
    ),
    Case(
        "warmup_inline_ragged",
        with_manifest("warmup:\n  - inputs: {input: [[1, 2], [3]]}\n"),
        BUILD,
        "{src}/m.yaml: warmup.0.inputs.input: not a rectangular array of one type: setting an "
        "array element with a sequence. The requested array has an inhomogeneous shape after 1 "
        "dimensions. The detected shape was (2,) + inhomogeneous part.",
    ),
    Case(
        "warmup_inline_self_reference",
        with_manifest("warmup:\n  - inputs: {input: &r [1, *r]}\n"),
        BUILD,
        "{src}/m.yaml:9: invalid YAML: alias *r refers to a node that contains it",
    ),
    # ---- evaluation data: read with the manifest, checked before numpy allocates ------------
    Case(
        "evaluation_npz_array_header_claims_10_to_the_12_elements",
        with_manifest(
            EVALUATE,
            write(
                "data/eval.npz",
                npz(
                    {
                        "input.npy": npy(
                            {"descr": "<f4", "fortran_order": False, "shape": (10**12,)},
                            b"\0" * 16,
                        ),
                        "labels.npy": good_npy(np.zeros(4, np.float32)),
                    }
                ),
            ),
        ),
        BUILD,
        "{src}/m.yaml:8: evaluate.data: cannot read eval.npz as a .npz file: 'input.npy': its "
        "header promises (1000000000000,) float32 (4000000000128 bytes), the file has 144",
    ),
    Case(
        "evaluation_npz_directory_claims_4_gib_for_144_stored_bytes",
        with_manifest(
            EVALUATE,
            write(
                "data/eval.npz",
                npz(
                    {
                        # A header agreeing with the directory: only the directory can tell.
                        "input.npy": npy(
                            {"descr": "|u1", "fortran_order": False, "shape": (2**32 - 129,)},
                            b"\0" * 16,
                        ),
                        "labels.npy": good_npy(np.zeros(4, np.float32)),
                    },
                    claimed=2**32 - 1,
                ),
            ),
        ),
        BUILD,
        "{src}/m.yaml:8: evaluate.data: cannot read eval.npz as a .npz file: 'input.npy' claims "
        "4294967295 bytes, more than the 144 stored for it can hold",
    ),
    # What evaluation holds in memory: 1 GiB, or a quarter of what the machine has available
    # if less (these lines assume 4 GiB or more available).
    Case(
        "evaluation_npz_deflated_to_1_mib_from_1_gib",
        with_manifest(EVALUATE, write("data/eval.npz", deflated_npz_claiming(2**30 + 2**20))),
        BUILD,
        "{src}/m.yaml:8: evaluate.data: eval.npz holds 1,025 MiB of arrays, more than "
        "evaluation holds in memory (1,024 MiB)",
    ),
    Case(
        "evaluation_tfrecord_of_one_32_mib_row",
        with_manifest(
            "evaluate: {data: data/eval.tfrecord, metrics: [mse]}\n",
            tfrecord_of_one_sparse_record(2**25),
        ),
        BUILD,
        "{src}/m.yaml:8: evaluate.data: eval.tfrecord: record 1 is 33,554,432 bytes, more than "
        "22,369,621: one row may take a 48th of the 1,024 MiB evaluation holds in memory",
    ),
    Case(
        "evaluation_npz_cut_in_half",
        with_manifest(
            EVALUATE,
            write("data/eval.npz", npz({"labels.npy": good_npy(np.zeros(64, np.float32))})[:200]),
        ),
        BUILD,
        "{src}/m.yaml:8: evaluate.data: cannot read eval.npz as a .npz file: File is not a zip "
        "file",
    ),
    # ---- card templates: budgets and includes ---------------------------------------------
    Case(
        "template_two_nested_range_100000_loops",
        template(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        ),
        TEMPLATE,
        "{src}/t.md.j2: card.template: the template ran longer than 1 s of CPU time; make it "
        "do less",
    ),
    Case(
        "template_unbounded_recursion",
        template("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"),
        TEMPLATE,
        "{src}/t.md.j2:1: card.template: the template recurses too deeply",
    ),
    Case(
        "template_ten_gigabyte_string",
        template("{{ 'x' * 10**10 }}"),
        TEMPLATE,
        "{src}/t.md.j2:1: card.template: a repetition longer than the card's budget of "
        "16,777,216 characters",
    ),
    Case(
        "template_huge_power",
        template("{{ 2 ** 100000000 }}"),
        TEMPLATE,
        "{src}/t.md.j2:1: card.template: a power with exponent 100000000, beyond what a card needs",
    ),
    Case(
        "template_center_10_gigabytes",
        template("{{ 'x'|center(10**10) }}"),
        TEMPLATE,
        "{src}/t.md.j2:1: card.template: the template needs more than 1024 MiB of memory",
    ),
    Case(
        "template_join_of_a_huge_separator",
        template("{% set l = range(100000)|list %}{{ l|join(l|string) }}"),
        TEMPLATE,
        "{src}/t.md.j2:1: card.template: the template needs more than 1024 MiB of memory",
    ),
    Case(
        "template_output_over_budget",
        template("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"),
        TEMPLATE,
        "{src}/t.md.j2: card.template: the card would be longer than 16,777,216 characters",
    ),
    Case(
        "template_includes_a_symlink_outside",
        template("{% include 'secret.txt' %}", link("secret.txt", "/etc/hostname")),
        TEMPLATE,
        "{src}/t.md.j2:1: card.template: 'secret.txt' leads outside the template's folder {src}",
    ),
    Case(
        "template_includes_the_parent_folder",
        template("{% include '../secret.txt' %}"),
        TEMPLATE,
        "{src}/t.md.j2: card.template: template '../secret.txt' not found; check the path",
    ),
    Case(
        "template_not_utf8",
        template(b"{{ 1 }}\xff"),
        TEMPLATE,
        "{src}/t.md.j2: card.template: 'utf-8' codec can't decode byte 0xff in position 7: "
        "invalid start byte",
    ),
    Case(
        "template_unreadable",
        template("{{ 1 }}", chmod("t.md.j2", 0)),
        TEMPLATE,
        "{src}/t.md.j2: card.template: cannot read the template: Permission denied",
        unprivileged=True,
    ),
    # ---- packages: every reading command on damaged files ---------------------------------
    Case(
        "saved_model_pb_random_bytes",
        package(write("saved_model.pb", bytes(range(256)) * 16)),
        ("inspect", "{pkg}"),
        "{pkg}: not a readable SavedModel: Error parsing message with type "
        "'smpack.tf.SavedModel': Wire format was corrupt",
    ),
    Case(
        "saved_model_pb_truncated",
        package(truncate("saved_model.pb", 777)),
        ("verify", "{pkg}"),
        "{pkg}: not a readable SavedModel: Error parsing message with type "
        "'smpack.tf.SavedModel': Wire format was corrupt",
    ),
    Case(
        "saved_model_pb_declares_a_2_to_the_62_byte_field",
        package(write("saved_model.pb", b"\x08\x01\x12" + varint(2**62) + b"abc")),
        ("card", "{pkg}"),
        "{pkg}: not a readable SavedModel: Error parsing message with type "
        "'smpack.tf.SavedModel': Wire format was corrupt",
    ),
    Case(
        "saved_model_pb_empty",
        package(write("saved_model.pb", b"")),
        ("diff", "{pkg}", "{pkg}"),
        "{pkg}: not a usable SavedModel: it holds no MetaGraph",
    ),
    Case(
        "saved_model_pb_is_a_folder",
        package(remove("saved_model.pb"), lambda root: (root / "saved_model.pb").mkdir()),
        ("extract", "{pkg}", "--tags", "serve", "--out", "{out}/x"),
        "{pkg}: no saved_model.pb or saved_model.pbtxt in {pkg}",
    ),
    Case(
        "saved_model_pbtxt_with_a_0xff_byte",
        package(
            remove("saved_model.pb"),
            write("saved_model.pbtxt", b"saved_model_schema_version: 1\n\xff\n"),
        ),
        ("inspect", "{pkg}"),
        "{pkg}: not a readable SavedModel: 'utf-8' codec can't decode byte 0xff in position "
        "30: invalid start byte",
    ),
    Case(
        "saved_model_pbtxt_nested_100000_deep",
        package(
            remove("saved_model.pb"),
            write("saved_model.pbtxt", b"meta_graphs { graph_def { library { " + b"x { " * 100_000),
        ),
        ("inspect", "{pkg}"),
        "{pkg}: not a readable SavedModel: maximum recursion depth exceeded",
    ),
    Case(
        "checkpoint_index_random_bytes",
        package(write("variables/variables.index", bytes(range(256)))),
        ("inspect", "{pkg}"),
        "{pkg}/variables/variables.index: corrupt checkpoint index: not a TensorFlow table "
        "(file too short or bad magic number)",
    ),
    Case(
        "fingerprint_random_bytes",
        package(write("fingerprint.pb", b"\xff" * 64)),
        ("card", "{pkg}"),
        "{pkg}/fingerprint.pb: not a readable fingerprint: Error parsing message with type "
        "'smpack.tf.FingerprintDef': Wire format was corrupt",
    ),
    Case(
        "warmup_zero_filled",
        package(write("assets.extra/tf_serving_warmup_requests", b"\0" * 100)),
        ("verify", "{pkg}"),
        "{pkg}/assets.extra/tf_serving_warmup_requests: TFRecord file ends inside the header "
        "of record 7",
    ),
    Case(
        # Three tensors of 2^24 float32s, each from one value TensorFlow repeats.
        "warmup_records_of_64_mib_tensors_from_4_bytes",
        package(write("assets.extra/tf_serving_warmup_requests", tfrecord(repeated_log()) * 3)),
        ("verify", "{pkg}"),
        "{pkg}/assets.extra/tf_serving_warmup_requests: its requests hold more than 64 MiB of "
        "values by record 2, more than a build writes",
    ),
    Case(
        "fingerprint_of_1_mib",
        package(sparse("fingerprint.pb", 1 << 20)),
        ("card", "{pkg}"),
        "{pkg}/fingerprint.pb: larger than 64 KiB: not a fingerprint",
    ),
    Case(
        # JSON is Python objects first, up to ~34 times the file.
        "record_of_17_mib",
        package(sparse("assets.extra/smpack.json", 17 << 20)),
        ("inspect", "{pkg}"),
        "{pkg}: assets.extra/smpack.json is larger than 16 MiB, more than smpack writes",
    ),
    Case(
        "warmup_record_not_a_prediction_log",
        package(write("assets.extra/tf_serving_warmup_requests", tfrecord(b"\x0a\x03abc"))),
        ("verify", "{pkg}"),
        "{pkg}/assets.extra/tf_serving_warmup_requests: not a warmup file TF Serving can "
        "replay: record 1: protobuf field runs past its message",
    ),
    Case(
        "package_unreadable",
        package(chmod(".", 0)),
        ("inspect", "{pkg}"),
        "{pkg}/saved_model.pb: cannot read the SavedModel: Permission denied",
        unprivileged=True,
    ),
    Case(
        "variables_folder_unreadable",
        package(chmod("variables", 0)),
        ("verify", "{pkg}"),
        "{pkg}/variables/variables.index: cannot read the package: Permission denied",
        unprivileged=True,
    ),
    Case(
        "saved_model_pb_unreadable",
        package(chmod("saved_model.pb", 0)),
        ("diff", "{pkg}", "{pkg}"),
        "{pkg}/saved_model.pb: cannot read the SavedModel: Permission denied",
        unprivileged=True,
    ),
    Case(
        "weights_unreadable",
        package(chmod("variables/variables.data-00000-of-00001", 0)),
        ("card", "{pkg}"),
        "{pkg}/variables/variables.data-00000-of-00001: Permission denied",
        unprivileged=True,
    ),
    # ---- output folders ------------------------------------------------------------------
    Case(
        "output_folder_read_only",
        with_manifest("", folder("ro", 0o555)),
        ("build", "{src}/m.yaml", "--out", "{src}/ro", "--no-verify"),
        "cannot create {src}/ro/tiny: Permission denied",
        unprivileged=True,
    ),
    Case(
        "output_name_is_a_file",
        with_manifest("", write("o/tiny", b"not a folder")),
        ("build", "{src}/m.yaml", "--out", "{src}/o", "--no-verify"),
        "cannot create {src}/o/tiny: File exists",
    ),
]
