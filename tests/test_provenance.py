"""assets.extra/smpack.json and fingerprint.pb: what a package came from, and whether it changed."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import VARIANTS
from tensorflow.core.protobuf import fingerprint_pb2, meta_graph_pb2, saved_model_pb2
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
from typer.testing import CliRunner

import smpack
from smpack.builder.provenance import check_provenance, write_fingerprint
from smpack.cli.commands import app
from smpack.package.info import PackageInfo
from smpack.package.record import measured_records, record_layout

runner = CliRunner()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_smpack_json_records_versions_inputs_and_every_other_file(
    text_package: PackageInfo,
) -> None:
    package = text_package.path
    record = json.loads((package / "assets.extra" / "smpack.json").read_text())

    assert record["smpack"] == smpack.__version__
    assert record["tensorflow"] == tf.__version__
    assert record["manifest"] == {
        "path": "text_classifier.yaml",
        "sha256": sha256(VARIANTS / "text_classifier.yaml"),
    }
    assert record["source"] == {
        "path": "models/text_classifier.py",
        "sha256": sha256(VARIANTS / "models" / "text_classifier.py"),
    }
    cards = {f"assets.extra/model_card.{kind}" for kind in ("md", "html", "json")}
    on_disk = {
        p.relative_to(package).as_posix(): sha256(p) for p in package.rglob("*") if p.is_file()
    }
    assert cards <= on_disk.keys()
    # The measurements and the cards that show them differ build to build: not listed here.
    measured = "assets.extra/smpack_measured.json"
    assert record["files"] == {
        name: digest
        for name, digest in on_disk.items()
        if name not in cards | {"assets.extra/smpack.json", measured}
    }
    assert {"saved_model.pb", "fingerprint.pb", "assets/vocab.txt"} <= record["files"].keys()
    # smpack_measured.json lists the cards instead.
    cards_record = json.loads((package / measured).read_text())["cards"]
    assert cards_record == {name: on_disk[name] for name in cards}


def test_fingerprint_is_tensorflows_own(linear_package: PackageInfo) -> None:
    package = str(linear_package.path)
    fingerprint = tf.saved_model.experimental.read_fingerprint(package)
    # What TF computes for this SavedModel now, UUID aside (TF draws it at random).
    expected = fingerprint_pb2.FingerprintDef.FromString(
        fingerprinting.CreateFingerprintDef(package)
    )
    assert fingerprint.saved_model_checksum == expected.saved_model_checksum != 0
    assert fingerprint.graph_def_program_hash == expected.graph_def_program_hash
    assert fingerprint.signature_def_hash == expected.signature_def_hash
    assert fingerprint.checkpoint_hash == expected.checkpoint_hash
    assert fingerprint.version.producer == expected.version.producer
    written = fingerprint_pb2.FingerprintDef.FromString(
        (linear_package.path / "fingerprint.pb").read_bytes()
    )
    assert written.uuid.isdigit()  # TF's format: a 128-bit number in decimal


def fingerprint_without_uuid(serialized: bytes) -> fingerprint_pb2.FingerprintDef:
    fingerprint = fingerprint_pb2.FingerprintDef.FromString(serialized)
    fingerprint.ClearField("uuid")
    return fingerprint


def with_tagged_copies(package: Path, target: Path, edit: str) -> Path:
    """`package`'s SavedModel in `target`, its checkpoint beside it, each MetaGraph followed
    by a copy under tags of its own (as variants differing only in tags are written), after
    `edit`: keys of a map, one the other's prefix, that C++ serializes in another order
    than Python (in the second MetaGraph, or in a copy's `meta_info_def`), or the
    SavedModel's own field written after its MetaGraphs, where C++ writes it first."""
    saved_model = saved_model_pb2.SavedModel.FromString((package / "saved_model.pb").read_bytes())
    if edit == "prefix keys in a later graph":
        for key in ("in", "input"):
            saved_model.meta_graphs[1].collection_def[key].node_list.value.append("x")
    copies = []
    for meta_graph in saved_model.meta_graphs:
        copy = meta_graph_pb2.MetaGraphDef()
        copy.CopyFrom(meta_graph)
        copy.meta_info_def.tags.append("canary")
        copies.append(copy)
    if edit == "prefix keys in a copy's meta_info_def":
        copies[-1].meta_info_def.function_aliases.update({"f": "g", "f_2": "g"})
    saved_model.meta_graphs.extend(copies)
    version = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    if edit == "schema version after the graphs":
        saved_model.ClearField("saved_model_schema_version")
    data = saved_model.SerializeToString(deterministic=True)
    if edit == "schema version after the graphs":
        data += version.SerializeToString()
    target.mkdir()
    (target / "saved_model.pb").write_bytes(data)
    shutil.copytree(package / "variables", target / "variables")
    return target


@pytest.mark.parametrize(
    ("package_name", "edit"),
    [
        ("linear", "none"),
        # Its NodeDefs' `Tidx` and `T`: C++ serializes them in another order than Python.
        ("text", "none"),
        ("linear", "prefix keys in a later graph"),
        ("linear", "prefix keys in a copy's meta_info_def"),
        ("linear", "schema version after the graphs"),
    ],
)
def test_fingerprint_of_tagged_copies_is_tensorflows_own(
    package_name: str, edit: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    package = request.getfixturevalue(f"{package_name}_package").path
    copied = with_tagged_copies(package, tmp_path / "1", edit)

    write_fingerprint(copied)

    expected = fingerprint_without_uuid(fingerprinting.CreateFingerprintDef(str(copied)))
    assert fingerprint_without_uuid((copied / "fingerprint.pb").read_bytes()) == expected


def test_fingerprint_of_tagged_copies_is_tensorflows_own_inside_a_graph(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    # A library caller building its own graph, where TF ops are symbolic, not computed.
    copied = with_tagged_copies(linear_package.path, tmp_path / "1", "none")
    with tf.Graph().as_default():
        write_fingerprint(copied)

    expected = fingerprint_without_uuid(fingerprinting.CreateFingerprintDef(str(copied)))
    assert fingerprint_without_uuid((copied / "fingerprint.pb").read_bytes()) == expected


@pytest.fixture
def package_copy(text_package: PackageInfo, tmp_path: Path) -> Path:
    target = tmp_path / "1"
    shutil.copytree(text_package.path, target)
    return target


def test_untouched_package_has_no_provenance_problems(package_copy: Path) -> None:
    assert check_provenance(package_copy) == []


def test_an_edited_card_is_caught_by_its_hash(package_copy: Path) -> None:
    (package_copy / "assets.extra" / "model_card.md").write_text("# edited card\n")
    assert check_provenance(package_copy) == [
        "assets.extra/model_card.md was modified "
        "(its sha256 differs from assets.extra/smpack_measured.json)"
    ]


def test_an_edited_measurement_is_caught_by_its_record_hash(package_copy: Path) -> None:
    path = package_copy / "assets.extra" / "smpack_measured.json"
    record = json.loads(path.read_text())
    record["variants"]["serve"] = {"latency_p50_ms": 0.001}
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    assert check_provenance(package_copy) == [
        "assets.extra/smpack_measured.json was edited "
        "(its record_sha256 does not match its entries)"
    ]


@pytest.mark.parametrize("entry", ["smpack", "tensorflow", "manifest", "source"])
def test_an_edited_record_entry_is_caught_by_the_record_hash(
    package_copy: Path, entry: str
) -> None:
    path = package_copy / "assets.extra" / "smpack.json"
    record = json.loads(path.read_text())
    record[entry] = (
        {"path": "elsewhere.py", "sha256": "0" * 64} if entry in ("manifest", "source") else "9.9"
    )
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    assert check_provenance(package_copy) == [
        "assets.extra/smpack.json was edited (its record_sha256 does not match its entries)"
    ]


def test_tampering_is_reported_file_by_file(package_copy: Path) -> None:
    data = package_copy / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-1] + b"\x7f")
    (package_copy / "assets" / "vocab.txt").unlink()
    (package_copy / "assets.extra" / "backdoor.py").write_text("import os\n")

    assert check_provenance(package_copy) == [
        "assets/vocab.txt is missing",
        "variables/variables.data-00000-of-00001 was modified "
        "(its sha256 differs from assets.extra/smpack.json)",
        "assets.extra/backdoor.py was added after the build (not in assets.extra/smpack.json)",
    ]


def test_missing_or_broken_record_is_one_problem(package_copy: Path) -> None:
    record = package_copy / "assets.extra" / "smpack.json"
    record.write_text("{not json")
    assert check_provenance(package_copy) == [
        "assets.extra/smpack.json is not a valid smpack provenance record"
    ]
    record.unlink()
    assert check_provenance(package_copy) == [
        "no assets.extra/smpack.json: the package's files cannot be checked"
    ]


def test_checkpoint_source_is_recorded_by_its_files(linear_package: PackageInfo, tmp_path) -> None:
    # The linear package's own checkpoint is a valid starting point for the linear model.
    src = tmp_path / "src"
    shutil.copytree(VARIANTS, src)
    shutil.copytree(linear_package.path / "variables", src / "start")
    manifest = src / "linear.yaml"
    manifest.write_text(
        manifest.read_text().replace(
            "  python: models/linear.py:model_fn\n",
            "  python: models/linear.py:model_fn\n  checkpoint: start/variables\n",
        )
    )
    package = smpack.build(manifest, tmp_path / "out").path

    record = json.loads((package / "assets.extra" / "smpack.json").read_text())
    lines = sorted(f"{p.name}\0{sha256(p)}\n" for p in (src / "start").iterdir())
    assert record["checkpoint"] == {
        "path": "start/variables",
        "sha256": hashlib.sha256("".join(lines).encode()).hexdigest(),
    }
    assert check_provenance(package) == []


def test_a_record_without_its_own_hash_is_not_trusted(package_copy: Path) -> None:
    path = package_copy / "assets.extra" / "smpack.json"
    record = json.loads(path.read_text())
    del record["record_sha256"]
    path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    assert check_provenance(package_copy) == [
        "assets.extra/smpack.json has no record_sha256: it predates sealed records, or was edited"
    ]


# --- Packages of smpack 0.1's layout ----------------------------------------------------------
# Built by rewriting a package built now, rather than kept as a golden package: a checked-in
# SavedModel would hold binary weights and graphs tied to the TensorFlow that wrote them,
# while the records are all that changed between the layouts (commit f7d3390), and writing
# them out here states the old layout exactly.
MEASURED_SERVE = {
    "host": "the build host",
    "reason": "",
    "signature": "serving_default",
    "batch_size": 4,
    "load_seconds": 0.25,
    "latency_p50_ms": 1.5,
    "latency_p99_ms": 2.75,
    "warm_runs": 20,
    "agreement": None,
    "metrics": {},
    "evaluation_data": None,
}


def as_smpack_0_1(package: Path) -> None:
    """Rewrite the package's records as smpack 0.1.0 wrote them: no smpack_measured.json;
    each variant's measured numbers and the cards' sha256 inside smpack.json, whose
    record_sha256 covers them too."""
    extra = package / "assets.extra"
    (extra / "smpack_measured.json").unlink()
    record = json.loads((extra / "smpack.json").read_text())
    del record["record_sha256"]
    for tag_set, variant in record["variants"].items():
        variant["measured"] = MEASURED_SERVE if tag_set == "serve" else None
    cards = ("model_card.md", "model_card.html", "model_card.json")
    record["cards"] = {f"assets.extra/{card}": sha256(extra / card) for card in cards}
    record["smpack"] = "0.1.0"
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    record["record_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (extra / "smpack.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def old_layout(linear_package: PackageInfo, tmp_path: Path) -> Path:
    target = tmp_path / "linear" / "1"
    shutil.copytree(linear_package.path, target)
    as_smpack_0_1(target)
    return target


def test_an_old_layout_package_is_read_by_its_recorded_version(old_layout: Path) -> None:
    assert smpack.__version__ == "0.2.0"  # the first with smpack_measured.json
    layout = record_layout(old_layout)
    assert layout is not None and layout.legacy and layout.smpack_version == "0.1.0"
    assert check_provenance(old_layout) == []
    measured = measured_records(old_layout)
    assert measured == {
        "train": None,
        "serve": MEASURED_SERVE,
        "serve,gpu": None,
        "serve,tpu": None,
    }
    # The card shows the numbers smpack.json holds.
    result = runner.invoke(app, ["card", str(old_layout)])
    assert result.exit_code == 0, result.output
    (serve,) = [line for line in result.stdout.splitlines() if line.startswith("| `serve` |")]
    assert "| 0.25 s | 1.5 ms | 2.75 ms |" in serve


def test_an_old_layout_package_is_still_checked_file_by_file(old_layout: Path) -> None:
    (old_layout / "assets.extra" / "model_card.md").write_text("# edited card\n")
    (old_layout / "assets.extra" / "smpack_measured.json").write_text("{}\n")
    assert check_provenance(old_layout) == [
        "assets.extra/model_card.md was modified "
        "(its sha256 differs from assets.extra/smpack.json)",
        "assets.extra/smpack_measured.json was added after the build "
        "(not in assets.extra/smpack.json)",
    ]


@pytest.mark.slow
def test_verify_and_inspect_accept_an_old_layout_package_and_say_so(old_layout: Path) -> None:
    report = smpack.verify(old_layout)
    assert report.passed, report
    [check] = [c for c in report.checks if c.name.startswith("files match ")]
    assert check.passed
    assert check.name == (
        "files match assets.extra/smpack.json (smpack 0.1.0's layout: the measurements and "
        "the cards' hashes are in it)"
    )
    result = runner.invoke(app, ["inspect", str(old_layout)])
    assert result.exit_code == 0, result.output
