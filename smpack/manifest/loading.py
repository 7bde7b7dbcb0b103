"""Loading a manifest: YAML in, a validated `LoadedManifest` out, every path resolved.

Everything downstream sees only `Manifest` objects whose paths are absolute and exist, so
the rest of smpack never re-checks user input. Paths resolve against the manifest's own
folder, never the working directory.
"""

from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
)

from smpack.errors import ManifestError, SmpackError
from smpack.io import storage
from smpack.manifest.card_spec import CardSpec
from smpack.manifest.schema import LOSSES, Manifest
from smpack.package.layout import PACKAGE_DESCRIPTIONS, SERVING_FOLDER


class LoadedManifest(BaseModel):
    """A validated manifest with every path resolved against the manifest's folder."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: Path
    spec: Manifest
    python_file: Path | None
    function_name: str
    model_path: Path | None = None  # the savedmodel folder or .keras file
    # The Python file of each `file.py:function` loss, by that name.
    loss_files: dict[str, Path] = {}
    checkpoint: Path | None
    # Sources named by URL (gs://, ...), fetched into local temporary copies before a build.
    model_url: str | None = None
    checkpoint_url: str | None = None
    assets: list[Path]
    assets_extra: dict[str, Path]
    card: CardSpec
    card_template: Path | None
    evaluate_data: Path | None = None  # the `evaluate:` block's .npz file

    @property
    def folder(self) -> Path:
        return self.path.parent


# Limits on what a manifest may make smpack parse. Real manifests are a few KiB with a few
# levels of nesting; a hostile one could otherwise cost minutes and gigabytes (a 50 MiB file),
# overflow the parser's stack (deep nesting) or expand aliases exponentially.
MAX_MANIFEST_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_VALUES = 100_000
# Digits of the longest integer a manifest may hold: an int64 has 19.
_MAX_DIGITS = 30


def load_manifest(path: str | Path) -> LoadedManifest:
    """Read, validate and resolve a manifest; raise `ManifestError` naming file, line and field."""
    path = Path(path).absolute()
    text = _read_text(path)
    try:
        _check_shape(text)
        data = yaml.load(text, Loader=_SafeUniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        msg = f"invalid YAML: {problem}"
        raise ManifestError(msg, file=path, line=mark.line + 1 if mark else None) from e
    if not isinstance(data, dict):
        msg = f"the top level must be a mapping of fields, not {type(data).__name__}"
        raise ManifestError(msg, file=path)
    try:
        spec = Manifest.model_validate(data)
    except ValidationError as e:
        raise _manifest_error(e, path, text) from e
    try:
        return _resolve(spec, path)
    except ManifestError as e:
        if e.line is None and e.field:
            e.line = _line_of(text, e.field.split("."))
        raise


def _read_text(path: Path) -> str:
    """The manifest's text, refused before parsing if it is too big or not UTF-8."""
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer that never comes.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as stream:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                msg = "the manifest is not a regular file"
                raise ManifestError(msg, file=path)
            data = stream.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        msg = f"cannot read manifest: {e.strerror}"
        raise ManifestError(msg, file=path) from e
    if len(data) > MAX_MANIFEST_BYTES:
        msg = f"the manifest is larger than {MAX_MANIFEST_BYTES >> 20} MiB; put data in files"
        raise ManifestError(msg, file=path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        msg = f"not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start}"
        raise ManifestError(msg, file=path, line=line) from e


def _check_shape(text: str) -> None:
    """Refuse deep nesting, alias bombs, self-referencing aliases and huge integers.

    Walks the parser's events, which use no recursion and build nothing, before anything is
    composed (PyYAML composes recursively) or constructed (aliases share one object, so a
    self-referencing one is a cycle that validation would follow for ever).
    """
    depth = 0
    expanded: dict[str, int] = {}  # anchor -> values its node stands for
    open_nodes: list[list[Any]] = []  # [anchor, values so far] per open collection
    for event in yaml.parse(text, Loader=_Loader):
        values = 0
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                _refuse(f"nested deeper than {MAX_DEPTH} levels", event)
            open_nodes.append([event.anchor, 1])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            anchor, values = open_nodes.pop()
            if anchor is not None:
                expanded[anchor] = values
        elif isinstance(event, yaml.AliasEvent):
            values = expanded.get(event.anchor or "", 0)
            if not values:
                _refuse(f"alias *{event.anchor} refers to a node that contains it", event)
        elif isinstance(event, yaml.ScalarEvent):
            values = 1
            if event.anchor is not None:
                expanded[event.anchor] = 1
            digits = event.value.lstrip("+-").replace("_", "")
            if not event.style and digits.isdigit() and len(digits) > _MAX_DIGITS:
                _refuse(f"a number with {len(digits)} digits; smpack's numbers fit 64 bits", event)
        if open_nodes:
            open_nodes[-1][1] += values
            if open_nodes[-1][1] > MAX_VALUES:
                _refuse(f"the manifest expands to more than {MAX_VALUES:,} values", event)


def _refuse(problem: str, event: yaml.Event) -> None:
    raise yaml.MarkedYAMLError(problem=problem, problem_mark=event.start_mark)  # type: ignore[arg-type]


# libyaml's parser where PyYAML was built with it: the pure-Python one reads ~100 KiB/s.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _SafeUniqueKeyLoader(_Loader):  # type: ignore[valid-type,misc]
    """`yaml.SafeLoader` that refuses a key written twice in one mapping.

    PyYAML silently keeps the last of two equal keys, so a second `version:` further down
    would quietly override the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key; SafeLoader reports it itself
            if duplicate:
                problem = f"key {key!r} appears twice in one mapping; YAML would keep only the last"
                raise yaml.constructor.ConstructorError(None, None, problem, key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _manifest_error(error: ValidationError, path: Path, text: str) -> ManifestError:
    errors = error.errors()
    # A misspelt key also makes the field it meant "missing"; the typo is the better report.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # A key may hold a newline or control character: shown escaped, the error stays one line.
    loc = [str(part) if str(part).isprintable() else repr(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = f"unknown field {loc[-1]!r}" + _suggestion(loc[-1], _fields_at(loc[:-1]))
    elif first["type"] == "missing":
        message = "required field is missing"
    field = ".".join(loc) or None
    return ManifestError(message, file=path, field=field, line=_line_of(text, loc))


def _suggestion(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; valid fields: {', '.join(choices)}"


def _fields_at(loc: list[str]) -> list[str]:
    """The valid field names of the model found at `loc` in the manifest schema."""
    model: type[BaseModel] = Manifest
    for part in loc:
        annotation = model.model_fields.get(part) or model.model_fields.get(part + "_")
        if annotation is None:
            continue  # a dict key such as a variant name
        nested = _model_in(annotation.annotation)
        if nested is None:
            return []
        model = nested
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _line_of(text: str, loc: list[str]) -> int | None:
    """The 1-based line of the deepest YAML node on the path `loc`."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((kv for kv in node.value if kv[0].value == part), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _resolve(spec: Manifest, path: Path) -> LoadedManifest:
    folder = path.parent
    python_file, model_path, model_url = _resolve_source(spec, folder, path)
    loss_files = {
        loss: _existing(folder, loss.rpartition(":")[0], path, field)
        for field, loss in spec.source.losses_by_field.items()
        if loss not in LOSSES
    }
    checkpoint, checkpoint_url = None, None
    if spec.source.checkpoint is not None and storage.is_url(spec.source.checkpoint):
        checkpoint_url = spec.source.checkpoint
        _remote_exists(f"{checkpoint_url}.index", path, "source.checkpoint", "no TF checkpoint at")
    elif spec.source.checkpoint is not None:
        checkpoint = _checkpoint_prefix(folder, spec.source.checkpoint, path)
    assets = [_existing(folder, entry, path, f"assets.{i}") for i, entry in enumerate(spec.assets)]
    for i, asset in enumerate(assets):
        _check_tree(asset, folder, path, f"assets.{i}")
    names: dict[str, int] = {}
    for i, asset in enumerate(assets):
        if asset.name in names:
            msg = (
                f"{spec.assets[names[asset.name]]!r} and {spec.assets[i]!r} would both be "
                f"assets/{asset.name}; rename one"
            )
            raise ManifestError(
                msg,
                file=path,
                field=f"assets.{i}",
            )
        names[asset.name] = i
    extras = {}
    for target, source in spec.assets_extra.items():
        if not target or Path(target).name in {"", ".", ".."} or not target.isprintable():
            msg = f"{target!r} must name a file inside assets.extra/"
            raise ManifestError(msg, file=path, field=f"assets_extra.{target!r}")
        if Path(target).is_absolute() or ".." in Path(target).parts:
            msg = f"{target!r} must be a relative path inside assets.extra/"
            raise ManifestError(
                msg,
                file=path,
                field=f"assets_extra.{target}",
            )
        written_by_smpack = Path(target).parts[0] == SERVING_FOLDER
        if Path(target).as_posix() in PACKAGE_DESCRIPTIONS or written_by_smpack:
            msg = f"smpack writes assets.extra/{target} itself; give this file another name"
            raise ManifestError(msg, file=path, field=f"assets_extra.{target}")
        extras[target] = _existing(folder, source, path, f"assets_extra.{target}")
        _check_tree(extras[target], folder, path, f"assets_extra.{target}")
    for index, request in enumerate(spec.warmup):
        for key, file in request.files.items():
            _existing(folder, file, path, f"warmup.{index}.files.{key}")
    training = any(v.is_training for v in spec.variants.values())
    serving = any(not v.is_training for v in spec.variants.values())
    for index, example in enumerate(spec.examples):
        if example.has_labels and not training:
            msg = "labels feed a train variant's train signature, and no variant trains"
            raise ManifestError(msg, file=path, field=f"examples.{index}.labels")
        if not example.has_labels and not serving:
            msg = "an example without labels needs a serving variant (one without mode: train)"
            raise ManifestError(msg, file=path, field=f"examples.{index}")
        for key, file in example.files.items():
            _existing(folder, file, path, f"examples.{index}.files.{key}")
        for key, file in example.label_files.items():
            _existing(folder, file, path, f"examples.{index}.label_files.{key}")
    template = spec.card.template
    card_template = None if template is None else _existing(folder, template, path, "card.template")
    evaluate_data = None
    if spec.evaluate is not None:
        evaluate_data = _existing(folder, spec.evaluate.data, path, "evaluate.data")
        _check_evaluation_data(spec, evaluate_data, path)
    return LoadedManifest(
        path=path,
        spec=spec,
        python_file=python_file,
        function_name=spec.source.function_name,
        model_path=model_path,
        loss_files=loss_files,
        checkpoint=checkpoint,
        model_url=model_url,
        checkpoint_url=checkpoint_url,
        assets=assets,
        assets_extra=extras,
        card=CardSpec.model_validate(spec.card.model_dump(exclude={"template"})),
        card_template=card_template,
        evaluate_data=evaluate_data,
    )


def _resolve_source(
    spec: Manifest, folder: Path, path: Path
) -> tuple[Path | None, Path | None, str | None]:
    """The python file, or the savedmodel folder / keras file (local, or its URL)."""
    source = spec.source
    if source.python is not None:
        return _existing(folder, source.python_file, path, "source.python"), None, None
    if source.loss is None and any(v.is_training for v in spec.variants.values()):
        msg = f"a train variant of a savedmodel or keras source needs a loss: {', '.join(LOSSES)}"
        raise ManifestError(msg, file=path, field="source.loss")
    if source.savedmodel is not None:
        if storage.is_url(source.savedmodel):
            url = source.savedmodel.rstrip("/")
            _remote_exists(f"{url}/saved_model.pb", path, "source.savedmodel", "no SavedModel at")
            return None, None, url
        model = _existing(folder, source.savedmodel, path, "source.savedmodel")
        if not (model / "saved_model.pb").is_file():
            msg = f"{source.savedmodel!r} is not a SavedModel folder (no saved_model.pb in it)"
            raise ManifestError(msg, file=path, field="source.savedmodel")
        return None, model, None
    assert source.keras is not None  # Source allows exactly one kind
    if not source.keras.endswith(".keras"):
        msg = f"{source.keras!r} is not a Keras 3 .keras file"
        raise ManifestError(msg, file=path, field="source.keras")
    if storage.is_url(source.keras):
        _remote_exists(source.keras, path, "source.keras", "no Keras file at")
        return None, None, source.keras
    model = _existing(folder, source.keras, path, "source.keras")
    if not model.is_file():
        msg = f"{source.keras!r} is not a Keras 3 .keras file"
        raise ManifestError(msg, file=path, field="source.keras")
    return None, model, None


def _remote_exists(url: str, manifest: Path, field: str, problem: str) -> None:
    """Refuse a source URL that names nothing, before any TensorFlow work starts."""
    try:
        found = storage.exists(url)
    except SmpackError as e:
        raise ManifestError(e.message, file=manifest, field=field) from e
    if not found:
        msg = f"{problem} {url}"
        raise ManifestError(msg, file=manifest, field=field)


def _check_evaluation_data(spec: Manifest, data: Path, manifest: Path) -> None:
    """Refuse evaluation data that cannot be read, or (when the manifest names the evaluated
    signature's inputs) lacks one of them or the labels. Dtypes are checked against the
    built graphs, when measuring."""
    from smpack.manifest.evaluation_data import (
        EvaluationDataError,
        check_columns,
        read_evaluation_data,
    )

    assert spec.evaluate is not None
    signature = spec.signatures.get(spec.evaluate.signature)
    # Without a signatures: block, a SavedModel or Keras source keeps its own input keys;
    # a variant may give its own signatures.
    named = (
        signature is not None
        and ("signatures" in spec.model_fields_set or spec.source.python is not None)
        and not any(variant.signatures for variant in spec.variants.values())
    )
    try:
        columns = read_evaluation_data(data)
        if named:
            assert signature is not None
            check_columns(columns, data.name, set(signature.inputs), spec.evaluate.label)
        elif spec.evaluate.label not in columns:
            msg = f"{data.name} has no labels {spec.evaluate.label!r}"
            raise EvaluationDataError(msg)
    except EvaluationDataError as e:
        raise ManifestError(str(e), file=manifest, field="evaluate.data") from e


def _existing(folder: Path, relative: str, manifest: Path, field: str) -> Path:
    """Resolve `relative` inside `folder`, refusing paths (or symlinks) that leave it."""
    if storage.is_url(relative):
        msg = (
            "only source.savedmodel, source.keras and source.checkpoint may be URLs; "
            "copy this file next to the manifest"
        )
        raise ManifestError(msg, file=manifest, field=field)
    if "\0" in relative:
        msg = f"{relative!r} holds a NUL byte, which no file name can"
        raise ManifestError(msg, file=manifest, field=field)
    try:
        candidate = (folder / relative).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        msg = f"cannot resolve {relative!r}: {getattr(e, 'strerror', None) or e}"
        raise ManifestError(msg, file=manifest, field=field) from e
    if not candidate.is_relative_to(folder.resolve()):
        msg = (
            f"{relative!r} points outside the manifest's folder {folder}; "
            "copy the file next to the manifest"
        )
        raise ManifestError(
            msg,
            file=manifest,
            field=field,
        )
    if not candidate.exists():
        msg = f"{relative!r} does not exist in {folder}"
        raise ManifestError(msg, file=manifest, field=field)
    if not (candidate.is_file() or candidate.is_dir()):
        # A FIFO or device would block or never end when copied.
        msg = f"{relative!r} is neither a regular file nor a folder"
        raise ManifestError(msg, file=manifest, field=field)
    return candidate


def _check_tree(root: Path, folder: Path, manifest: Path, field: str) -> None:
    """Refuse a folder holding a symlink that leaves `folder` (or loops), or a special file:
    copying it would pull in what the manifest's folder does not hold."""
    if not root.is_dir():
        return
    inside = folder.resolve()
    for parent, names, files in os.walk(root):
        for name in [*names, *files]:
            entry = Path(parent) / name
            relative = entry.relative_to(root.parent)
            try:
                target = entry.resolve(strict=True)
            except (OSError, RuntimeError) as e:
                msg = f"{relative} cannot be resolved: {getattr(e, 'strerror', None) or e}"
                raise ManifestError(msg, file=manifest, field=field) from e
            if not target.is_relative_to(inside):
                msg = f"{relative} links outside the manifest's folder {folder}"
                raise ManifestError(msg, file=manifest, field=field)
            if not (target.is_file() or target.is_dir()):
                msg = f"{relative} is neither a regular file nor a folder"
                raise ManifestError(msg, file=manifest, field=field)


def _checkpoint_prefix(folder: Path, prefix: str, manifest: Path) -> Path:
    """The local checkpoint's prefix, every file of it inside the manifest's folder."""
    field = "source.checkpoint"
    given = folder / prefix
    if "\0" not in prefix and not Path(f"{given}.index").is_file():
        msg = f"no TF checkpoint at {given} (expected {given.name}.index)"
        raise ManifestError(msg, file=manifest, field=field)
    index = _existing(folder, f"{prefix}.index", manifest, field)
    checkpoint = index.with_name(index.name.removesuffix(".index"))
    for part in checkpoint.parent.glob(f"{checkpoint.name}.*"):
        _existing(folder, str(part.relative_to(folder.resolve())), manifest, field)
    return checkpoint
