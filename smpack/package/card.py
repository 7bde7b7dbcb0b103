"""Model cards: what the package's own files say about it, plus the manifest's `card:` block.

Everything technical on a card (variants, signatures, parameter count, file hashes, versions)
is read back from the written package, so the card cannot drift from what ships. Rendering
does not import TensorFlow: the facts `PackageInfo` lacks come from `saved_model.pb` parsed
with smpack's own protobuf messages, and from the files themselves.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import math
import re
import shlex
import traceback
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import jinja2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from jinja2.sandbox import SandboxedEnvironment

from smpack.errors import ManifestError
from smpack.manifest import card_format
from smpack.manifest.card_spec import CardSpec
from smpack.package.digests import file_sha256, tree_files
from smpack.package.info import GraphInfo, PackageInfo, TensorInfo, package_at, read_package
from smpack.package.layout import ASSETS_EXTRA, CARD_FILES
from smpack.package.protos import read_saved_model

# Jinja2 names the frames it fakes for template code like this; other frames are Python.
_TEMPLATE_FRAMES = re.compile(r"^(top-level template code|template|block '.*')$")

# Characters a JSON string may carry raw that YAML readers refuse (C1 controls, BOM,
# non-characters, surrogates) or read as line breaks (NEL is in C1; LS, PS).
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")
_YAML_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class CardTemplateError(ManifestError):
    """A card template cannot be found, parsed or rendered: a syntax error, a misspelt
    variable, or an operation Jinja2's sandbox forbids. `file` and `line` point into the
    template."""


def _variable_def_class() -> Any:
    # VariableDef (tensorflow/core/framework/variable.proto) is declared here rather than in
    # smpack.package.protos because only the card reads it, and only its first field.
    file = descriptor_pb2.FileDescriptorProto(
        name="smpack/variable_def.proto", package="smpack.card", syntax="proto3"
    )
    message = file.message_type.add(name="VariableDef")
    message.field.add(
        name="variable_name",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("smpack.card.VariableDef"))


_VariableDef = _variable_def_class()


def render_card(
    info: PackageInfo,
    spec: CardSpec | None,
    *,
    fmt: Literal["md", "html"] = "md",
    template: Path | None = None,
    name: str | None = None,
    version: int | None = None,
) -> str:
    """Render the model card of the package `info` describes, as Markdown or HTML.

    `spec` is the manifest's `card:` block; without it the card holds only what was read
    from the package. `template` replaces the built-in `model_card.{fmt}.j2` and runs in
    Jinja2's sandbox; it sees the variables `card_context` returns, and is HTML-escaped when
    `fmt` is "html". `name` and `version` default to the package's `NAME/VERSION` folders.
    Raises `CardTemplateError` naming the template file and line, and `PackageError` when
    `info.path` holds no readable saved_model.pb.
    """
    context = card_context(info, spec, name=name, version=version)
    environment: jinja2.Environment
    if template is None:
        environment = _environment(jinja2.Environment, jinja2.FunctionLoader(_builtin), fmt)
        template_name, field, template_file = f"model_card.{fmt}.j2", None, None
    else:
        template_file = Path(template).absolute()
        loader = jinja2.FileSystemLoader(template_file.parent)
        environment = _environment(SandboxedEnvironment, loader, fmt)
        template_name, field = template_file.name, "card.template"
    try:
        return environment.get_template(template_name).render(context)
    except jinja2.TemplateNotFound as e:
        msg = f"template {e.name!r} not found; check the path"
        raise CardTemplateError(msg, file=template_file, field=field) from e
    except jinja2.TemplateSyntaxError as e:
        msg = f"template syntax error: {e.message}"
        raise CardTemplateError(msg, file=e.filename, line=e.lineno, field=field) from e
    except (jinja2.TemplateError, TypeError, ValueError, ArithmeticError) as e:
        file, line = _template_location(e)
        msg = str(e)
        if isinstance(e, jinja2.UndefinedError):
            msg += f"; a card template sees {', '.join(sorted(context))} (see card_context)"
        elif isinstance(e, jinja2.exceptions.SecurityError):
            msg += "; card templates run in Jinja2's sandbox, which hides Python internals"
        raise CardTemplateError(msg, file=file or template_file, line=line, field=field) from e


def write_cards(
    export_dir: Path,
    spec: CardSpec | None,
    *,
    template: Path | None = None,
    name: str | None = None,
    version: int | None = None,
) -> list[Path]:
    """Render both cards of the package at `export_dir` into its `assets.extra/`.

    `template` replaces the built-in template of the format its name ends in; the other card
    keeps the built-in one. Returns the files written.
    """
    info = read_package(export_dir)
    (export_dir / ASSETS_EXTRA).mkdir(exist_ok=True)
    written = []
    formats: tuple[Literal["md", "html"], ...] = ("md", "html")
    for fmt in formats:
        chosen = template if template is not None and card_format(template) == fmt else None
        text = render_card(info, spec, fmt=fmt, template=chosen, name=name, version=version)
        target = export_dir / ASSETS_EXTRA / f"model_card.{fmt}"
        target.write_text(text, encoding="utf-8")
        written.append(target)
    return written


def card_for_package(
    export_dir: str | Path,
    *,
    manifest: str | Path | None = None,
    template: str | Path | None = None,
    fmt: Literal["md", "html"] | None = None,
) -> str:
    """The card of any SavedModel, smpack's or not, as `smpack card` prints it.

    `manifest` supplies the `card:` block, its template, and the package name and version;
    `template` overrides the manifest's. The format is `fmt`, else the template's (from its
    name), else Markdown. A manifest template of the other format is not used.
    """
    spec, name, version, chosen = None, None, None, None
    if manifest is not None:
        from smpack.manifest import load_manifest

        loaded = load_manifest(manifest)
        spec, name, version = loaded.card, loaded.spec.name, loaded.spec.version
        chosen = loaded.card_template
    if template is not None:
        chosen = Path(template)
    chosen_format = card_format(chosen) if chosen is not None else None
    rendered: Literal["md", "html"] = fmt or chosen_format or "md"
    if template is None and chosen_format != rendered:
        chosen = None
    with package_at(export_dir) as info:
        return render_card(info, spec, fmt=rendered, template=chosen, name=name, version=version)


def card_context(
    info: PackageInfo,
    spec: CardSpec | None,
    *,
    name: str | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    """The plain data (dicts, lists, strings, numbers) a card template renders.

    - `card`: the `card:` block as MCT-shaped dicts, every field present (None or empty).
    - `package`: name, version, directory (`name/version`, as the load commands use it),
      smpack and TensorFlow versions, parameter count (None when unknown), checkpoint bytes,
      variables, assets, and every file with its size and sha256. No absolute path: the card
      travels with the package, and where it was built says nothing true about where it is.
    - `variants`: one per MetaGraph, in file order: tag set, device, precision, XLA, TPU,
      signatures with their tensors, and the commands that load it.
    - `metrics`: the card's metrics, each with the name of the dataset it was measured on.
    - `hub`: the Hugging Face hub metadata for the Markdown front matter.
    """
    spec = spec or CardSpec()
    # PurePosixPath only to take the URL's last two parts.
    folder = PurePosixPath(info.url) if info.url else info.path.resolve()
    if version is None and folder.name.isdigit():
        version = int(folder.name)
    if name is None:
        name = folder.parent.name if folder.name.isdigit() else folder.name
    directory = f"{name}/{version}" if version is not None else name
    saved_model = read_saved_model(info.path)
    tf_versions = {graph.meta_info_def.tensorflow_version for graph in saved_model.meta_graphs}
    variants = [_variant(graph, name, directory) for graph in info.graphs]
    metrics = [
        {
            **metric.model_dump(mode="json", exclude={"dataset"}),
            "dataset": dataset.name if (dataset := spec.metric_dataset(metric)) else None,
        }
        for metric in spec.quantitative_analysis.performance_metrics
    ]
    return {
        "card": spec.model_dump(mode="json"),
        "package": {
            "name": name,
            "version": version,
            "directory": directory,
            "smpack_version": importlib.metadata.version("smpack"),
            "tensorflow_version": ", ".join(sorted(tf_versions - {""})) or None,
            "parameter_count": _parameter_count(saved_model, info),
            "checkpoint_bytes": info.variables_bytes,
            "variables": [
                {"name": v.name, "dtype": v.dtype, "shape": list(v.shape)} for v in info.variables
            ],
            "assets": list(info.assets),
            # No card lists the cards: it cannot hold its own hash, and a card rendered
            # before or after they are written must come out the same.
            "assets_extra": [a for a in info.assets_extra if a not in CARD_FILES],
            "files": _files(info.path),
        },
        "variants": variants,
        "metrics": metrics,
        "hub": _hub_metadata(spec, name, variants, metrics),
    }


def _variant(graph: GraphInfo, name: str, directory: str) -> dict[str, Any]:
    tags = list(graph.tags)
    quoted_tags = ", ".join(json.dumps(tag) for tag in tags)
    return {
        "tag_set": graph.tag_set,
        "tags": tags,
        "device": _device(graph),
        "devices": list(graph.devices),
        "precision": graph.precision,
        "xla": graph.xla,
        "tpu": graph.tpu,
        "training": graph.has_train_op,
        "signatures": [
            {
                "key": signature.key,
                "method": signature.method,
                "inputs": [_tensor(tensor) for tensor in signature.inputs],
                "outputs": [_tensor(tensor) for tensor in signature.outputs],
            }
            for signature in graph.signatures
        ],
        "load": {
            # TF Serving answers requests; it never runs a train op.
            "tf_serving": None
            if graph.has_train_op
            else (
                f"tensorflow_model_server --model_name={shlex.quote(name)} "
                f"--model_base_path={shlex.quote('/models/' + name)} "
                f"--saved_model_tags={shlex.quote(graph.tag_set)}"
            ),
            "saved_model_cli": (
                f"saved_model_cli show --dir {shlex.quote(directory)} "
                f"--tag_set {shlex.quote(graph.tag_set)}"
            ),
            # JSON string literals are valid Python and C string literals.
            "python": f"tf.saved_model.load({json.dumps(directory)}, tags=[{quoted_tags}])",
            "c_api": (
                f"const char* tags[] = {{{quoted_tags}}};\n"
                "TF_Session* session = TF_LoadSessionFromSavedModel(\n"
                f"    session_options, NULL, {json.dumps(directory)}, tags, {len(tags)}, "
                "graph, NULL, status);"
            ),
        },
    }


def _device(graph: GraphInfo) -> str:
    """One word for the variant's placement: TPU, its accelerator, its pinned CPU, or none."""
    if graph.tpu:
        return "TPU"
    pinned = [device for device in graph.devices if not device.endswith(":*")]
    accelerators = [device for device in pinned if "CPU:" not in device]
    return ", ".join(accelerators or pinned) or "unpinned"


def _tensor(tensor: TensorInfo) -> dict[str, Any]:
    return {
        "key": tensor.key,
        "name": tensor.name,
        "dtype": tensor.dtype,
        "shape": None if tensor.shape is None else list(tensor.shape),
        "shape_text": "scalar" if tensor.shape == () else tensor.shape_text,
    }


def _parameter_count(saved_model: Any, info: PackageInfo) -> int | None:
    """Elements of the variables in the graphs' `trainable_variables` collections.

    None when no graph has that collection (TF2 object-graph SavedModels) or when a
    trainable variable is missing from `info.variables`: an unknown count beats a wrong one.
    """
    collections = [
        graph.collection_def["trainable_variables"]
        for graph in saved_model.meta_graphs
        if "trainable_variables" in graph.collection_def
    ]
    if not collections:
        return None
    names = {
        _VariableDef.FromString(raw).variable_name.rpartition(":")[0]
        for collection in collections
        for raw in collection.bytes_list.value
    }
    shapes = {variable.name: variable.shape for variable in info.variables}
    if not names <= shapes.keys():
        return None
    return sum(math.prod(shapes[name]) for name in names)


def _files(root: Path) -> list[dict[str, Any]]:
    cards = {f"{ASSETS_EXTRA}/{card}" for card in CARD_FILES}
    return [
        {"path": relative, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for relative, path in tree_files(root)
        if relative not in cards
    ]


def _hub_metadata(
    spec: CardSpec, name: str, variants: list[dict[str, Any]], metrics: list[dict[str, Any]]
) -> dict[str, Any]:
    """Hugging Face model card metadata (huggingface.co/docs/hub/model-cards)."""
    hub: dict[str, Any] = {}
    if spec.model_details.licenses:
        # The hub takes one license, as a lowercase id; anything it does not list is "other".
        first = spec.model_details.licenses[0]
        identifier = (first.identifier or "").lower()
        if identifier and identifier != "proprietary":
            hub["license"] = identifier
        else:
            hub["license"] = "other"
            hub["license_name"] = identifier or "custom"
    hub["library_name"] = "tensorflow"
    hub["tags"] = ["savedmodel", "smpack", *(variant["tag_set"] for variant in variants)]
    task = spec.model_parameters.task
    if task is not None:
        hub["pipeline_tag"] = task
    if metrics:
        # The hub groups metrics by task and dataset; smpack's cards have one task.
        results: dict[str | None, dict[str, Any]] = {}
        for metric in metrics:
            dataset = metric["dataset"]
            if dataset not in results:
                result: dict[str, Any] = {"task": {"type": task or "other"}}
                if dataset is not None:
                    result["dataset"] = {"type": dataset, "name": dataset}
                results[dataset] = {**result, "metrics": []}
            label = metric["type"] + (f" ({metric['slice']})" if metric["slice"] else "")
            results[dataset]["metrics"].append(
                {"type": metric["type"], "value": metric["value"], "name": label}
            )
        hub["model-index"] = [{"name": name, "results": list(results.values())}]
    return hub


def _environment(
    kind: type[jinja2.Environment], loader: jinja2.BaseLoader, fmt: str
) -> jinja2.Environment:
    environment = kind(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        autoescape=fmt == "html",
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters["yaml"] = _to_yaml
    environment.filters["cell"] = _markdown_cell
    environment.tests["weburl"] = _is_web_url
    return environment


def _builtin(name: str) -> tuple[str, str, Any] | None:
    resource = importlib.resources.files("smpack.templates").joinpath(name)
    if not resource.is_file():
        return None
    return resource.read_text(encoding="utf-8"), str(resource), lambda: True


def _template_location(error: BaseException) -> tuple[str | None, int | None]:
    """The template file and line Jinja2 rewrote the traceback to, innermost first."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        if _TEMPLATE_FRAMES.match(frame.name):
            return frame.filename, frame.lineno
    return None, None


def _to_yaml(value: Any) -> str:
    """YAML for `value`: every string as a one-line double-quoted scalar, so no text from a
    manifest can end the front matter (`---`), start a mapping (`: `) or break a line.

    Mappings and lists come out in block style over several lines, for front matter.
    """
    if isinstance(value, dict | list) and value:
        return "\n".join(_yaml_lines(value, 0))
    return _yaml_scalar(value)


def _yaml_lines(value: dict[str, Any] | list[Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    items = (
        [(f"{pad}{_yaml_key(k)}:", v) for k, v in value.items()]
        if isinstance(value, dict)
        else [(f"{pad}-", v) for v in value]
    )
    for head, item in items:
        if not (isinstance(item, dict | list) and item):
            lines.append(f"{head} {_yaml_scalar(item)}")
        elif head.endswith("-") and isinstance(item, dict):
            # "- key: value" keeps a list of mappings compact, as hub cards write it.
            nested = _yaml_lines(item, indent + 2)
            lines += [f"{pad}- {nested[0].lstrip()}", *nested[1:]]
        else:
            lines += [head, *_yaml_lines(item, indent + 2)]
    return lines


def _yaml_key(key: str) -> str:
    return key if _YAML_PLAIN_KEY.match(key) else _yaml_scalar(key)


def _yaml_scalar(value: Any) -> str:
    # JSON is a subset of YAML 1.2 except for the characters _YAML_UNSAFE escapes.
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _markdown_cell(value: Any) -> str:
    """`value` as text that stays inside one Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def _is_web_url(value: Any) -> bool:
    """Whether `value` may become a link: http(s) only, so no `javascript:` URL is clickable."""
    return isinstance(value, str) and value.lower().startswith(("https://", "http://"))
