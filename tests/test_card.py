"""Model cards of the linear example: golden files, the front matter and tables parsed back,
template errors, hostile manifest text, the sandbox, and rendering without TensorFlow."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HtmlTables, check_golden, front_matter, normalise_card
from pydantic import ValidationError

from smpack.errors import ManifestError
from smpack.manifest import load_manifest
from smpack.manifest.card_spec import CardSpec
from smpack.package.card import CardTemplateError, card_context, render_card
from smpack.package.info import PackageInfo

GOLDEN = Path(__file__).resolve().parent / "golden"
# SMPACK_UPDATE_GOLDEN=1 rewrites the golden cards instead of comparing; read the diff after.
UPDATE_GOLDEN = os.environ.get("SMPACK_UPDATE_GOLDEN") == "1"

# The card block the linear example ships with (variants/linear.yaml).
SPEC = load_manifest(Path(__file__).resolve().parent.parent / "variants" / "linear.yaml").card

HOSTILE = "</script><script>alert(1)</script>\n---\n{{ 7*7 }}\nkey: value \"quoted\" 'too'"


def test_markdown_card_matches_golden(linear_package: PackageInfo) -> None:
    card = render_card(linear_package, SPEC)
    check_golden("linear_card.md", normalise_card(card, linear_package))


def test_html_card_matches_golden(linear_package: PackageInfo) -> None:
    card = render_card(linear_package, SPEC, fmt="html")
    check_golden("linear_card.html", normalise_card(card, linear_package))
    # Self-contained: nothing a browser would fetch.
    assert not re.search(r"<script|<link|<img|src=|url\(|@import", card)


def test_front_matter_is_hugging_face_metadata(linear_package: PackageInfo) -> None:
    meta = front_matter(render_card(linear_package, SPEC))
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "tensorflow"
    assert meta["pipeline_tag"] == "tabular-regression"
    assert meta["tags"] == ["savedmodel", "smpack", "train", "serve", "serve,gpu", "serve,tpu"]
    assert meta["model-index"] == [
        {
            "name": "linear",
            "results": [
                {
                    "task": {"type": "tabular-regression"},
                    "dataset": {"type": "synthetic-test", "name": "synthetic-test"},
                    "metrics": [
                        {"type": "mse", "value": 0.0001, "name": "mse"},
                        {"type": "mae", "value": 0.01, "name": "mae (x < 0)"},
                    ],
                }
            ],
        }
    ]


def test_card_without_a_card_block_holds_the_package_facts(linear_package: PackageInfo) -> None:
    card = render_card(linear_package, None)
    assert front_matter(card) == {
        "library_name": "tensorflow",
        "tags": ["savedmodel", "smpack", "train", "serve", "serve,gpu", "serve,tpu"],
    }
    assert "_No description: the manifest has no `card.model_details.overview`._" in card
    assert "saved_model_cli show --dir linear/1 --tag_set serve,gpu" in card


def test_html_tables_list_variants_and_metrics(linear_package: PackageInfo) -> None:
    page = HtmlTables(render_card(linear_package, SPEC, fmt="html"))
    assert page.tables["variants"] == [
        ["Tag set", "Signatures", "Device", "Precision", "XLA", "TPU"],
        ["train", "serving_default, train", "unpinned", "float32", "no", "no"],
        ["serve", "serving_default", "unpinned", "float32", "no", "no"],
        ["serve,gpu", "serving_default", "/device:GPU:0", "float16", "yes", "no"],
        ["serve,tpu", "serving_default", "TPU", "bfloat16", "no", "yes"],
    ]
    assert page.tables["metrics"] == [
        ["Metric", "Value", "Slice", "Threshold", "Dataset"],
        ["mse", "0.0001", "", "", "synthetic-test"],
        ["mae", "0.01", "x < 0", "0.05", "synthetic-test"],
    ]
    files = [row[0] for row in page.tables["files"]]
    serving = [f for f in files if f.startswith("assets.extra/serving/")]
    assert len(serving) == 9  # triton: cpu, gpu; tfserving: cpu, gpu, tpu (+ batching)
    assert [f for f in files if f not in serving] == [
        "File",
        "fingerprint.pb",
        "saved_model.pb",
        "variables/variables.data-00000-of-00001",
        "variables/variables.index",
    ]


def test_parameter_count_covers_trainable_variables_only(linear_package: PackageInfo) -> None:
    # var_1 and var_2 are scalars; global_step is in the checkpoint but not trainable.
    assert card_context(linear_package, None)["package"]["parameter_count"] == 2


def test_card_leaves_out_earlier_cards_and_the_record_that_hashes_them(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    copy = tmp_path / "linear" / "1"
    shutil.copytree(linear_package.path, copy)
    (copy / "assets.extra" / "model_card.md").write_text("old card")
    (copy / "assets.extra" / "notes.txt").write_text("kept")
    info = dataclasses.replace(
        linear_package, path=copy, assets_extra=("model_card.md", "notes.txt")
    )
    package = card_context(info, None)["package"]
    assert package["assets_extra"] == ["notes.txt"]
    serving = "assets.extra/serving/"  # test_serving_config.py checks those files
    assert [f["path"] for f in package["files"] if not f["path"].startswith(serving)] == [
        "assets.extra/notes.txt",
        "fingerprint.pb",
        "saved_model.pb",
        "variables/variables.data-00000-of-00001",
        "variables/variables.index",
    ]


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        ("# {{ package.name }}\n\n{{ modle.name }}\n", 3, "'modle' is undefined; a card template"),
        ("# {{ package.name }}\n{% if %}\n", 2, "template syntax error: "),
        (
            "{% for v in variants %}\n{{ v.tag_sett }}\n{% endfor %}\n",
            2,
            "'dict object' has no attribute 'tag_sett'",
        ),
    ],
    ids=["misspelt-variable", "syntax-error", "misspelt-attribute"],
)
def test_template_errors_name_file_and_line(
    linear_package: PackageInfo, tmp_path: Path, source: str, line: int, message: str
) -> None:
    template = tmp_path / "card.md.j2"
    template.write_text(source)
    with pytest.raises(CardTemplateError) as caught:
        render_card(linear_package, SPEC, template=template)
    error = caught.value
    assert isinstance(error, ManifestError)
    assert (error.file, error.line, error.field) == (template, line, "card.template")
    assert str(error).startswith(f"{template}:{line}: card.template: {message}")


def test_missing_template_is_a_card_template_error(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    with pytest.raises(CardTemplateError, match="not found; check the path"):
        render_card(linear_package, None, template=tmp_path / "nowhere.md.j2")


@pytest.mark.parametrize(
    "expression",
    ["''.__class__.__mro__", "package.items.__self__", "lipsum.__globals__"],
)
def test_user_templates_run_in_the_sandbox(
    linear_package: PackageInfo, tmp_path: Path, expression: str
) -> None:
    template = tmp_path / "card.html.j2"
    template.write_text(f"<p>{{{{ {expression} }}}}</p>\n")
    with pytest.raises(CardTemplateError) as caught:
        render_card(linear_package, None, fmt="html", template=template)
    assert caught.value.line == 1
    assert "is unsafe" in str(caught.value)
    assert "sandbox" in str(caught.value)


def test_user_template_sees_the_context_and_filters(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    template = tmp_path / "card.md.j2"
    template.write_text(
        "---\nname: {{ package.name | yaml }}\n---\n"
        "{% for v in variants %}{{ v.tag_set }}={{ v.device }};{% endfor %}\n"
    )
    card = render_card(linear_package, SPEC, template=template)
    front, body = card.split("---\n")[1:]
    assert front == 'name: "linear"\n'
    # trim_blocks: the newline after a block tag is dropped, as in the built-in templates.
    assert body == "train=unpinned;serve=unpinned;serve,gpu=/device:GPU:0;serve,tpu=TPU;"


def _hostile_spec() -> CardSpec:
    return CardSpec.model_validate(
        {
            "model_details": {
                "name": HOSTILE,
                "overview": HOSTILE,
                "owners": [{"name": HOSTILE, "contact": "a|b"}],
                "licenses": [{"identifier": HOSTILE}],
            },
            "model_parameters": {
                "task": HOSTILE,
                "data": [
                    {"name": "evil: [set]", "split": "evaluation", "link": "javascript:alert(1)"}
                ],
            },
            "quantitative_analysis": {
                # U+2028 and NEL are line breaks to YAML; a raw one would split the scalar.
                "performance_metrics": [{"type": HOSTILE + "\u2028\x85", "value": "1 | 2"}]
            },
        }
    )


def test_hostile_text_cannot_break_the_markdown_card(linear_package: PackageInfo) -> None:
    card = render_card(linear_package, _hostile_spec())
    meta = front_matter(card)
    assert set(meta) == {"license", "library_name", "tags", "pipeline_tag", "model-index"}
    assert meta["license"] == HOSTILE.lower()
    assert meta["pipeline_tag"] == HOSTILE
    [result] = meta["model-index"][0]["results"]
    assert result["dataset"] == {"type": "evil: [set]", "name": "evil: [set]"}
    assert result["metrics"][0]["type"] == HOSTILE + "\u2028\x85"
    # Manifest text is data: printed as written, never evaluated as a template.
    assert f"# {HOSTILE}\n" in card
    assert "{{ 7*7 }}" in card
    assert "\n49\n" not in card
    assert "](javascript:" not in card
    assert "(a\\|b)" in card  # the owner's contact stays inside its table cell


def test_hostile_text_is_escaped_in_the_html_card(linear_package: PackageInfo) -> None:
    card = render_card(linear_package, _hostile_spec(), fmt="html")
    page = HtmlTables(card)
    assert "script" not in page.tags
    assert "a" not in page.tags  # the javascript: link is shown as text, not linked
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in card
    assert "{{ 7*7 }}" in card
    assert page.tables["facts"][1] == ["Owners", f"{HOSTILE} (a|b)"]


def test_card_spec_follows_model_card_toolkit_rules() -> None:
    spec = CardSpec.model_validate({"considerations": {"users": ["analysts"]}})
    assert spec.considerations.users[0].description == "analysts"
    with pytest.raises(ValidationError, match="either an SPDX identifier or custom_text"):
        CardSpec.model_validate({"model_details": {"licenses": [{}]}})
    with pytest.raises(ValidationError, match="names dataset 'eval', which is not in"):
        metric = {"type": "auc", "value": 0.9, "dataset": "eval"}
        CardSpec.model_validate({"quantitative_analysis": {"performance_metrics": [metric]}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        CardSpec.model_validate({"model_details": {"descripton": "typo"}})


def test_rendering_does_not_import_tensorflow(linear_package: PackageInfo, tmp_path: Path) -> None:
    # PackageInfo comes from TensorFlow's checkpoint reader; the card must not need more.
    pickled = tmp_path / "info.pickle"
    pickled.write_bytes(pickle.dumps(linear_package))
    script = (
        "import pickle, sys\n"
        "from smpack.package.card import render_card\n"
        f"info = pickle.loads(open({str(pickled)!r}, 'rb').read())\n"
        "render_card(info, None)\n"
        "render_card(info, None, fmt='html')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
