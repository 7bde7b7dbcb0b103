"""Cards as users get them: written by `smpack build`, rendered by `smpack card` for any
SavedModel, with the manifest's own template, and from an installed wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
import yaml
from conftest import (
    ROOT,
    VARIANTS,
    HtmlTables,
    check_golden,
    front_matter,
    normalise_card,
    tree_state,
)
from typer.testing import CliRunner

from smpack.cli.commands import app
from smpack.package.info import PackageInfo

runner = CliRunner()


def test_build_writes_both_cards_into_assets_extra(linear_package: PackageInfo) -> None:
    cards = linear_package.path / "assets.extra"
    # The golden files are the cards of the linear example, exactly as its build writes them.
    for fmt in ("md", "html"):
        card = (cards / f"model_card.{fmt}").read_text()
        check_golden(f"linear_card.{fmt}", normalise_card(card, linear_package))


def test_card_command_renders_the_card_block_the_package_recorded(
    linear_package: PackageInfo,
) -> None:
    result = runner.invoke(app, ["card", str(linear_package.path)])
    assert result.exit_code == 0, result.output
    # No manifest: the card: block comes from smpack.json, so the card is the built one.
    assert result.stdout == (linear_package.path / "assets.extra" / "model_card.md").read_text()
    meta = front_matter(result.stdout)
    assert (meta["library_name"], meta["license"]) == ("tensorflow", "apache-2.0")


def test_card_command_with_the_manifest_matches_the_built_card(
    linear_package: PackageInfo, tmp_path: Path
) -> None:
    out = tmp_path / "card.html"
    args = ["card", str(linear_package.path), "-m", str(VARIANTS / "linear.yaml")]
    result = runner.invoke(app, [*args, "--format", "html", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert out.read_text() == (linear_package.path / "assets.extra" / "model_card.html").read_text()


def test_card_for_a_savedmodel_smpack_did_not_build(tmp_path: Path) -> None:
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def __call__(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"doubled": 2.0 * x}

    export = tmp_path / "doubler" / "7"
    module = Doubler()
    tf.saved_model.save(module, str(export), signatures={"serving_default": module.__call__})
    result = runner.invoke(app, ["card", str(export), "--format", "html"])
    assert result.exit_code == 0, result.output
    page = HtmlTables(result.stdout)
    variants = page.tables["variants"]
    assert [row[0] for row in variants[1:]] == ["serve"]
    assert "doubler/7" in result.stdout
    assert "doubled" in result.stdout and "float32" in result.stdout


def test_manifest_template_replaces_the_markdown_card_only(
    variants_copy: Path, tmp_path: Path
) -> None:
    (variants_copy / "brief.md.j2").write_text(
        "# {{ card.model_details.name }}\n{% for v in variants %}- {{ v.tag_set }}\n{% endfor %}"
    )
    manifest = variants_copy / "linear.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["card"]["template"] = "brief.md.j2"
    manifest.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["build", str(manifest), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    cards = tmp_path / "linear" / "1" / "assets.extra"
    assert (cards / "model_card.md").read_text() == (
        "# Half plus two\n- train\n- serve\n- serve,gpu\n- serve,tpu\n"
    )
    assert (cards / "model_card.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("typo.md.j2", "typo.md.j2:2: card.template: 'modle' is undefined"),
        ("missing.md.j2", "card.template: 'missing.md.j2' does not exist"),
        ("card.txt", "card.template: Value error, 'card.txt' must end in .md.j2 or .html.j2"),
    ],
    ids=["undefined-variable", "missing", "unknown-format"],
)
def test_bad_card_template_fails_the_build_cleanly(
    variants_copy: Path, tmp_path: Path, template: str, message: str
) -> None:
    (variants_copy / "typo.md.j2").write_text("# {{ package.name }}\n{{ modle.name }}\n")
    (variants_copy / "card.txt").write_text("")
    manifest = variants_copy / "linear.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["card"]["template"] = template
    manifest.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    result = runner.invoke(app, ["build", str(manifest), "--out", str(out)])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert message.replace("Value error, ", "") in line
    assert "Traceback" not in result.output
    assert not out.exists()  # the failed build removed the folders it made


def test_bad_card_template_leaves_an_existing_package_intact(
    variants_copy: Path, tmp_path: Path
) -> None:
    manifest, out = variants_copy / "linear.yaml", tmp_path / "out"
    assert runner.invoke(app, ["build", str(manifest), "--out", str(out)]).exit_code == 0
    before = tree_state(out)
    (variants_copy / "typo.html.j2").write_text("<p>{{ nothing }}</p>\n")
    data = yaml.safe_load(manifest.read_text())
    data["card"]["template"] = "typo.html.j2"
    manifest.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["build", str(manifest), "--out", str(out), "--force"])
    assert result.exit_code == 2
    assert "typo.html.j2:1: card.template: 'nothing' is undefined" in result.stderr
    assert tree_state(out) == before


@pytest.mark.slow
def test_templates_ship_in_the_wheel(linear_package: PackageInfo, tmp_path: Path) -> None:
    # Built from a copy of what the wheel is made of: building in the checkout would leave
    # build/ and *.egg-info behind in it.
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for folder in ("smpack", "templates"):
        ignored = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / folder, source / folder, ignore=ignored)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    [wheel] = (tmp_path / "dist").glob("smpack-*.whl")
    installed = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(installed),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    package = tmp_path / "linear" / "1"
    shutil.copytree(linear_package.path, package)
    script = (
        "import smpack, smpack.package.card\n"
        "from smpack.package.info import read_package\n"
        f"assert smpack.__file__.startswith({str(installed)!r}), smpack.__file__\n"
        f"info = read_package({str(package)!r})\n"
        "print(smpack.package.card.render_card(info, None, fmt='html')[:15])\n"
    )
    # Run away from the checkout, so only the installed wheel can supply the templates.
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PYTHONPATH": str(installed), "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "<!DOCTYPE html>"
