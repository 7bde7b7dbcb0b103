"""`extract`: one MetaGraph of a package as a standalone single-graph SavedModel.

Tools that cannot pick a multi-tag set (tf2onnx's `--tag` is not split on commas, the
TFLite converter refuses GPU-pinned graphs) can then take any variant. The weights are
shared by hard link where the filesystem allows, so extracting costs no extra space.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from smpack.io.staging import link_or_copy
from smpack.io.storage import fetched, is_url, published_directory
from smpack.package.inspection import no_such_tag_set
from smpack.package.layout import ASSETS_EXTRA, PACKAGE_DESCRIPTIONS, SERVING_FOLDER
from smpack.package.protos import read_saved_model


def extract_graph(
    package: str | Path,
    tags: frozenset[str],
    out: str | Path,
    *,
    clear_devices: bool = False,
    force: bool = False,
) -> str | Path:
    """Write the MetaGraph tagged exactly `tags` to `out`, re-tagged `serve`; returns `out`.

    Either may be a URL (gs://, ram://, ...); a local `out` comes back absolute.
    """
    out = out if is_url(out) else Path(out).absolute()
    with fetched(package) as export_dir:
        _extract(export_dir, tags, out, clear_devices=clear_devices, force=force)
    return out


def _extract(
    export_dir: Path, tags: frozenset[str], out: str | Path, *, clear_devices: bool, force: bool
) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    # TF's own message class, not smpack.package.protos: every field must survive the copy.
    saved_model = read_saved_model(export_dir, saved_model_pb2.SavedModel)
    chosen = [m for m in saved_model.meta_graphs if frozenset(m.meta_info_def.tags) == tags]
    if not chosen:
        available = [",".join(m.meta_info_def.tags) for m in saved_model.meta_graphs]
        raise no_such_tag_set(export_dir, tags, available)
    meta_graph = chosen[0]
    del meta_graph.meta_info_def.tags[:]
    meta_graph.meta_info_def.tags.append("serve")
    if clear_devices:
        for node in meta_graph.graph_def.node:
            node.ClearField("device")
        for function in meta_graph.graph_def.library.function:
            for node in function.node_def:
                node.ClearField("device")
    standalone = saved_model_pb2.SavedModel(
        saved_model_schema_version=saved_model.saved_model_schema_version
    )
    standalone.meta_graphs.append(meta_graph)

    with published_directory(out, force) as staging:
        (staging / "saved_model.pb").write_bytes(standalone.SerializeToString(deterministic=True))
        # The cards, smpack.json, the measurements and the serving configs describe the
        # whole package (all its graphs, its own saved_model.pb), so a single extracted
        # graph does not carry them.
        extra = export_dir / ASSETS_EXTRA
        whole_package = {*PACKAGE_DESCRIPTIONS, SERVING_FOLDER}

        def descriptions(folder: str, names: list[str]) -> list[str]:
            return [n for n in names if Path(folder) == extra and n in whole_package]

        for folder in ("variables", "assets", ASSETS_EXTRA):
            if (export_dir / folder).is_dir():
                shutil.copytree(
                    export_dir / folder,
                    staging / folder,
                    copy_function=link_or_copy,
                    ignore=descriptions,
                )
