"""Provenance: what a package was built from, and hashes to tell later if it was changed.

A build writes three files. `fingerprint.pb` is TensorFlow's own (as `tf.saved_model.save`
writes it; TF's TF1 builder does not), so `tf.saved_model.experimental.read_fingerprint`
works. `assets.extra/smpack.json` records the smpack and TensorFlow versions, the sha256 of
the manifest and of the model source, and the sha256 of every other file of the package
but the measurements and the cards. `assets.extra/smpack_measured.json` records what was
measured on the build host and the sha256 of the cards, which show it. `check_provenance`
compares both against the files on disk (in a package of smpack 0.1's layout, smpack.json
alone, which held both: see smpack/package/record.py).

The first two are reproducible: no timestamps, no absolute paths, and the fingerprint's UUID
(random in TF) is derived from the package's content. Timings are not, so they and the cards
stay out of smpack.json: two measured builds of one manifest differ in
smpack_measured.json and the cards only.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from smpack import __version__
from smpack.errors import PackageError
from smpack.io.tf_quietly import stderr_kept_unless_failing
from smpack.manifest import LoadedManifest
from smpack.package.digests import file_sha256, tree_files
from smpack.package.layout import (
    ASSETS_EXTRA,
    CARD_FILES,
    FINGERPRINT_FILE,
    MEASURED_PATH,
    PACKAGE_DESCRIPTIONS,
    RECORD_PATH,
)
from smpack.package.protos import copies_as_heads, first_and_other_meta_graphs
from smpack.package.record import MAX_RECORD_BYTES, record_layout

# A record cannot hash itself; the cards, written after it, embed every other hash and the
# measured numbers, which differ build to build.
_UNLISTED = tuple(f"{ASSETS_EXTRA}/{name}" for name in PACKAGE_DESCRIPTIONS)
# ...so the cards' hashes go into smpack_measured.json once they are written (seal_provenance).
_CARDS = tuple(f"{ASSETS_EXTRA}/{name}" for name in CARD_FILES)


def write_provenance(
    export_dir: Path, loaded: LoadedManifest, variants: dict[str, dict[str, Any]]
) -> None:
    """Write `fingerprint.pb` and `assets.extra/smpack.json` into the staged package.

    `variants` is what smpack.json records per MetaGraph, by tag set (the manifest's name for
    it, its fingerprint, what it trains). Call after every file but the measurements and the
    model cards is written: smpack.json lists them all.
    """
    import tensorflow as tf

    write_fingerprint(export_dir)
    record = {
        "smpack": __version__,
        "tensorflow": tf.__version__,
        "manifest": _described(loaded.path, loaded.folder),
        "source": _described(
            loaded.python_file or loaded.model_path, loaded.folder, loaded.model_url
        ),
        "checkpoint": _checkpoint(loaded),
        # The card: block, so `smpack card PKG` renders the same card without the manifest.
        "card": loaded.card.model_dump(mode="json"),
        # TF Serving, and `smpack verify`, need these modules' ops to load the graphs.
        "imports": loaded.spec.source.imports,
        "files": package_files(export_dir),
        "variants": variants,
    }
    _write_sealed(export_dir / RECORD_PATH, record)


def write_measurements(export_dir: Path, measured: dict[str, dict[str, Any] | None]) -> None:
    """Write `assets.extra/smpack_measured.json`: what was measured per MetaGraph, by tag set
    (None for every variant of an unmeasured build). The cards read it; seal it once they
    are written (`seal_provenance`)."""
    target = export_dir / MEASURED_PATH
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps({"variants": measured}, indent=2, sort_keys=True) + "\n")


def write_fingerprint(export_dir: Path) -> None:
    """Write TF's `fingerprint.pb` for the SavedModel at `export_dir`, with a stable UUID."""
    fingerprint = _tensorflows_fingerprint(export_dir)
    # TF draws the UUID at random on every save; derive it from the hashes instead, so the
    # same inputs give the same bytes. TF writes it as a decimal 128-bit number.
    fingerprint.ClearField("uuid")
    content = hashlib.sha256(fingerprint.SerializeToString(deterministic=True)).digest()
    fingerprint.uuid = str(int.from_bytes(content[:16], "big"))
    (export_dir / FINGERPRINT_FILE).write_bytes(fingerprint.SerializeToString(deterministic=True))


def _tensorflows_fingerprint(export_dir: Path) -> Any:
    """The FingerprintDef that TF's `CreateFingerprintDef(export_dir)` gives, its UUID aside,
    with the tag-only copies of a MetaGraph parsed once.

    TF's checksum is Fingerprint64 of its C++ deterministic serialization of the whole
    SavedModel, parsed (28.5 MB at the bench's 8 variants, four of them copies; 0.6-0.9 s
    with the GIL held); its other fields read the first MetaGraph and the checkpoint index
    alone. So TF fingerprints the SavedModel with each copy cut to its `meta_info_def`
    (`copies_as_heads`), in two: the first MetaGraph alone gives the fields but the
    checksum, the others (copies' heads included) their own checksum. If each checksum is
    Fingerprint64 of the bytes TF was given, C++ serializes them as they are, hence the
    copies' bodies too (the same bytes as their originals'), and, where saved_model.pb's
    own fields come before its MetaGraphs as in both halves (C++ writes fields in number
    order), the package's checksum is Fingerprint64 of saved_model.pb. C++ serializes some
    maps in another order than protobuf's upb, which serializes Python's messages: upb puts
    integer keys in descending order (a FunctionDef's `arg_attr`) and a string key after the
    keys it is a prefix of (a NodeDef's `Tidx` before its `T`). Then, or where a field
    follows a MetaGraph, TF fingerprints the whole package, as it does one without copies or
    in text form; the first MetaGraph, checked first, usually holds such
    a map if any graph does, so it is seldom parsed twice.
    """
    from tensorflow.core.protobuf import fingerprint_pb2

    saved_model = export_dir / "saved_model.pb"
    if saved_model.is_file():
        data = saved_model.read_bytes()
        heads, originals = copies_as_heads(data)
        if (
            originals != list(range(len(originals)))
            and (halves := first_and_other_meta_graphs(heads)) is not None
        ):
            first, others = halves
            with tempfile.TemporaryDirectory() as folder:
                scratch = Path(folder)
                fingerprint = _fingerprint_kept_as_is(first, export_dir, scratch)
                if (
                    fingerprint is not None
                    and _fingerprint_kept_as_is(others, export_dir, scratch) is not None
                ):
                    fingerprint.saved_model_checksum = _fingerprint64(data)
                    return fingerprint
    return fingerprint_pb2.FingerprintDef.FromString(_create_fingerprint_def(export_dir))


def _fingerprint_kept_as_is(saved_model: bytes, export_dir: Path, scratch: Path) -> Any:
    """TF's FingerprintDef of a SavedModel of `saved_model`'s bytes beside `export_dir`'s
    checkpoint index (linked), all that its fingerprint reads, written in `scratch`; None if
    C++ serializes those bytes otherwise (its checksum is not theirs)."""
    from tensorflow.core.protobuf import fingerprint_pb2

    (scratch / "saved_model.pb").write_bytes(saved_model)
    index = export_dir / "variables" / "variables.index"
    linked = scratch / "variables" / "variables.index"
    if index.exists() and not linked.exists():
        linked.parent.mkdir()
        linked.symlink_to(index.resolve())
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(_create_fingerprint_def(scratch))
    return fingerprint if fingerprint.saved_model_checksum == _fingerprint64(saved_model) else None


def _create_fingerprint_def(export_dir: Path) -> bytes:
    """TF's `CreateFingerprintDef` of the SavedModel at `export_dir`, serialized."""
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    with stderr_kept_unless_failing():
        try:
            return fingerprinting.CreateFingerprintDef(str(export_dir))
        except fingerprinting.FingerprintException as e:
            msg = f"cannot fingerprint the SavedModel: {e}"
            raise PackageError(msg) from e


def _fingerprint64(data: bytes) -> int:
    """TF's Fingerprint64 of `data` (farmhash's), which fingerprint.pb's checksum is.

    The Fingerprint op computes it for each string of a vector, as 8 little-endian bytes.
    """
    import tensorflow as tf
    from tensorflow.python.eager import context

    # Eagerly, whatever graph a caller of smpack.build has entered or mode it has set.
    with context.eager_mode():
        digest = tf.fingerprint(tf.constant([data]), method="farmhash64").numpy()[0]
    return int.from_bytes(digest.tobytes(), "little")


def package_files(
    export_dir: Path, *, cached: bool = True, cards_in: str | None = None
) -> dict[str, str]:
    """sha256 of every file of the package that smpack.json lists under `files`, by relative
    path; with `cards_in`, the record that lists the cards, those too."""
    unlisted = (RECORD_PATH, cards_in) if cards_in else _UNLISTED
    return {
        relative: file_sha256(path, cached=cached)
        for relative, path in tree_files(export_dir)
        if relative not in unlisted
    }


def seal_provenance(export_dir: Path) -> None:
    """Add the model cards' sha256 and the record's own to `smpack_measured.json`.

    Call once the cards are written. The record's own hash covers the measurements too.
    """
    target = export_dir / MEASURED_PATH
    record = json.loads(target.read_text(encoding="utf-8"))
    record["cards"] = {
        relative: file_sha256(path)
        for relative, path in tree_files(export_dir)
        if relative in _CARDS
    }
    _write_sealed(target, record)


def _write_sealed(target: Path, record: dict[str, Any]) -> None:
    """Write `record` as JSON with its own `record_sha256` over all its other entries."""
    record["record_sha256"] = _record_sha256(record)
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _record_sha256(record: dict[str, Any]) -> str:
    unsealed = {key: value for key, value in record.items() if key != "record_sha256"}
    text = json.dumps(unsealed, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def check_provenance(export_dir: str | Path) -> list[str]:
    """Problems found comparing the package with its `assets.extra/smpack.json` and
    `assets.extra/smpack_measured.json`.

    An empty list means both records are whole (each one's own hash matches), every file
    they list (smpack.json the package's files, smpack_measured.json the model cards) is
    present and unchanged, and no file was added. A package whose model cards say smpack
    built it but which has no smpack.json yields one problem. In smpack 0.1's layout,
    smpack.json lists the cards too, and there is no smpack_measured.json.
    """
    export_dir = Path(export_dir)
    files = _sealed_entries(export_dir, RECORD_PATH, "files")
    if isinstance(files, str):
        return [files]
    layout = record_layout(export_dir)
    assert layout is not None  # smpack.json was just read
    cards = _sealed_entries(export_dir, layout.measured_path, "cards")
    if isinstance(cards, str):
        return [cards]
    listed = {path: (digest, RECORD_PATH) for path, digest in files.items()}
    listed.update({path: (digest, layout.measured_path) for path, digest in cards.items()})
    found = package_files(export_dir, cached=False, cards_in=layout.measured_path)
    problems = []
    for relative, (digest, record) in sorted(listed.items()):
        if relative not in found:
            problems.append(f"{relative} is missing")
        elif found[relative] != digest:
            problems.append(f"{relative} was modified (its sha256 differs from {record})")
    problems += [
        f"{relative} was added after the build (not in {RECORD_PATH})"
        for relative in sorted(found.keys() - listed.keys())
    ]
    return problems


def _sealed_entries(export_dir: Path, relative: str, key: str) -> dict[str, str] | str:
    """The sha256 by path that the sealed record at `relative` lists under `key`, or the
    problem that keeps it from being trusted."""
    path = export_dir / relative
    if not path.is_file():
        return f"no {relative}: the package's files cannot be checked"
    if path.stat().st_size > MAX_RECORD_BYTES:
        return f"{relative} is larger than {MAX_RECORD_BYTES >> 20} MiB, more than smpack writes"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        entries = record[key]
        if not isinstance(entries, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return f"{relative} is not a valid smpack provenance record"
    if "record_sha256" not in record:
        # An older smpack did not seal its record; nothing says its entries are as written.
        return f"{relative} has no record_sha256: it predates sealed records, or was edited"
    if record["record_sha256"] != _record_sha256(record):
        return f"{relative} was edited (its record_sha256 does not match its entries)"
    return entries


def claims_smpack(export_dir: Path) -> bool:
    """Whether the package says smpack built it: it carries smpack's record or model cards."""
    claims = (RECORD_PATH, MEASURED_PATH, *_CARDS)
    return any((export_dir / relative).is_file() for relative in claims)


def _tree_sha256(paths: list[tuple[str, Path]]) -> str:
    """One sha256 for several files: over their relative names and contents' hashes."""
    digest = hashlib.sha256()
    for relative, path in sorted(paths):
        digest.update(f"{relative}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _described(path: Path | None, folder: Path, url: str | None = None) -> dict[str, str] | None:
    """A source file or folder as its path relative to the manifest's folder (or its URL, for
    a remote one fetched to `path`) and its hash."""
    if path is None:
        return None
    relative = url or Path(os.path.relpath(path, folder)).as_posix()
    if path.is_dir():
        return {
            "path": relative + "/",
            "sha256": _tree_sha256(list(tree_files(path))),
        }
    return {"path": relative, "sha256": file_sha256(path)}


def recorded_source_files(loaded: LoadedManifest) -> list[Path]:
    """Every file of the source and checkpoint whose hash smpack.json records.

    A package's weights are usually these very files, hard-linked, so the build hashes them
    ahead, while it builds the graphs.
    """
    source = loaded.python_file or loaded.model_path
    files = [] if source is None else [source]
    if source is not None and source.is_dir():
        files = [path for _, path in tree_files(source)]
    return files + [path for _, path in _checkpoint_parts(loaded)]


def _checkpoint_parts(loaded: LoadedManifest) -> list[tuple[str, Path]]:
    """The files of the manifest's checkpoint (index and data shards), by name."""
    if loaded.checkpoint is None:
        return []
    prefix = loaded.checkpoint
    return [
        (p.name, p)
        for p in prefix.parent.iterdir()
        if p.name.startswith(f"{prefix.name}.") and p.is_file()
    ]


def _checkpoint(loaded: LoadedManifest) -> dict[str, str] | None:
    if loaded.checkpoint is None:
        return None
    prefix = loaded.checkpoint
    parts = _checkpoint_parts(loaded)
    relative = loaded.checkpoint_url or Path(os.path.relpath(prefix, loaded.folder)).as_posix()
    return {"path": relative, "sha256": _tree_sha256(parts)}
