"""Writing serving configurations: into a package's `assets.extra/serving/` at build time, and
on demand as a ready Triton model repository or TF Serving config folder.

What the configs say comes from `smpack.package.serving_config`; this module decides where
they go and writes the Triton version folders, which hold one variant each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from smpack.errors import PackageError
from smpack.io.staging import write_atomically
from smpack.io.storage import is_url
from smpack.package.info import PackageInfo, package_at
from smpack.package.inspection import no_such_tag_set
from smpack.package.layout import ASSETS_EXTRA, SERVING_FOLDER
from smpack.package.serving_config import (
    TARGETS,
    TRITON_SAVEDMODEL,
    ServingConfig,
    Target,
    serving_config,
    variant_names,
)

# Where TF Serving's images look for models; the configs inside a package assume it holds
# the package as <MODELS_ROOT>/<name>/<version>/, since no build knows where it will be.
MODELS_ROOT = "/models"


def write_package_serving_configs(
    export_dir: Path, info: PackageInfo, *, name: str, version: int, names: dict[str, str]
) -> list[ServingConfig]:
    """Write every target's configs into `export_dir`'s `assets.extra/serving/<target>/`."""
    base_path = f"{MODELS_ROOT}/{name}"
    configs = []
    for target in TARGETS:
        config_dir = f"{base_path}/{version}/{ASSETS_EXTRA}/{SERVING_FOLDER}/{target}"
        config = serving_config(
            info,
            target,
            name=name,
            version=version,
            base_path=base_path,
            config_dir=config_dir,
            names=names,
        )
        folder = export_dir / ASSETS_EXTRA / SERVING_FOLDER / target
        for file in config.files:
            path = folder / file.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(file.data)
        configs.append(config)
    return configs


@dataclass(frozen=True)
class WrittenServingConfig:
    """What `write_serving_config` wrote: the config, the folder, and its files."""

    config: ServingConfig
    out: Path
    written: tuple[Path, ...]


def write_serving_config(
    package: str | Path,
    target: Target,
    out: str | Path,
    *,
    tags: frozenset[str] | None = None,
    force: bool = False,
) -> WrittenServingConfig:
    """Write `target`'s configuration of the package at `package` (a folder or URL) into
    `out`, naming the package where it is: a Triton model repository (each model's config
    and version folder), or TF Serving's models.config, command and batching files.

    Raises `PackageError` for a file that exists unless `force`, and when no serving
    variant (or none tagged `tags`) can be served by `target`.
    """
    out = Path(out).absolute()
    location = str(package).rstrip("/") if is_url(package) else Path(package).absolute().as_posix()
    base, _, last = location.rpartition("/")
    if not last.isdigit() and target == "tfserving":
        msg = "TF Serving loads <base>/<version>/; put the package in a numbered folder"
        raise PackageError(msg, file=location)
    version = int(last) if last.isdigit() else 1
    name = base.rpartition("/")[2] if last.isdigit() else last
    with package_at(location) as info:
        if tags is not None and not any(frozenset(g.tags) == tags for g in info.graphs):
            raise no_such_tag_set(location, tags, [g.tag_set for g in info.graphs])
        config = serving_config(
            info,
            target,
            name=name,
            version=version,
            base_path=base,
            config_dir=out.as_posix(),
            names=variant_names(info.path),
            tags=tags,
        )
    if not config.files:
        why = "; ".join(f"{s.tag_set}: {s.reason}" for s in config.skipped)
        msg = f"no variant to write a {target} config for" + (f" ({why})" if why else "")
        raise PackageError(msg, file=location, field="--tags" if tags else None)
    targets = [out / file.path for file in config.files]
    existing = [path for path in targets if path.exists()]
    if target == "triton":
        versions = [out / model.name / str(version) for model in config.triton_models]
        existing += [path for path in versions if path.exists()]
    if existing and not force:
        msg = f"{existing[0]} already exists; pass --force to replace it"
        raise PackageError(msg)
    if target == "triton":
        from smpack.io.tf_quietly import import_tensorflow_quietly

        import_tensorflow_quietly()
        from smpack.checks.extract import extract_graph

        for model in config.triton_models:
            extract_graph(
                location,
                frozenset(model.tags),
                out / model.name / str(version) / TRITON_SAVEDMODEL,
                force=force,
            )
    for file, path in zip(config.files, targets, strict=True):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            msg = f"cannot create {path.parent}: {e.strerror or e}"
            raise PackageError(msg) from e
        write_atomically(path, file.data)
        if path.suffix == ".sh":
            mode = path.stat().st_mode
            path.chmod(mode | (mode & 0o444) >> 2)  # executable by whoever may read it
    return WrittenServingConfig(config, out, tuple(targets))
