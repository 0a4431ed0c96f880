"""The tile stage in a class atlas: which atlas this is (for the viewer's switcher), each cell's
attribution to the two classes of a comparison, and the run's atlas index.

A class atlas's collect group says which classes it holds (attrs ``class_atlas``, written by
:mod:`atlas.stages._select`); a main run's has none.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...formats import ClassAtlasInfo, CollectOutput, GridOutput
from ...store import RunDir
from .._atlases import index_root, write_index
from ._context import Context
from ._inputs import class_block


def class_atlas_info(run: RunDir) -> ClassAtlasInfo | None:
    """The class atlas's classes (``collect`` attrs ``class_atlas``), None in a main run."""
    return CollectOutput.open(run).class_atlas


def identity(ctx: Context) -> dict[str, Any]:
    """``atlas.json``'s keys naming this atlas and where the run's index is: ``class_atlas`` (slug,
    class names and indices, rows per class; None for the main atlas), ``atlases_root`` (the run's
    folder relative to the viewer's, with a trailing ``/``) and ``atlases_index`` (the index's ``.js``)."""
    info = class_atlas_info(ctx.run)
    root = index_root(ctx.run.root, ctx.cfg.classes.parent)
    rel = Path(os.path.relpath(root.resolve(), ctx.out.resolve())).as_posix().rstrip("/") + "/"
    doc = None
    if info:
        doc = {"slug": ctx.run.root.resolve().name, "names": info.names, "classes": info.classes,
               "rows_per_class": info.rows_per_class, "threshold": info.threshold, "top_k": info.top_k,
               "max_rows": info.max_rows}
    return {"class_atlas": doc, "atlases_root": rel, "atlases_index": f"{rel}atlases.js", **_layers_keys(ctx)}


def _layers_keys(ctx: Context) -> dict[str, Any]:
    """A layer's atlas of a several-layer run: ``layer_root`` (the run that collected the layers,
    relative to the viewer, with a trailing ``/``) and ``follow_index`` (the ``follow`` step's
    ``follow.js`` there: the layer picker's list and the follow overlay's data). Nothing otherwise."""
    model = ctx.cfg.model
    if ctx.cfg.classes.parent is not None or (model.layer_of is None and len(model.all_layers) < 2):
        return {}
    root = ctx.run.root if model.layer_of is None else ctx.run.root / model.layer_of
    rel = Path(os.path.relpath(root.resolve(), ctx.out.resolve())).as_posix().rstrip("/") + "/"
    return {"layer_root": rel, "follow_index": f"{rel}follow/follow.js"}


def pair_values(ctx: Context, s: int) -> np.ndarray | None:
    """float32 [s, s, 2]: the mean attribution of each cell of grid ``s`` to the two classes of a
    comparison (0 in empty cells); None unless this is a two-class atlas with class attribution."""
    info = class_atlas_info(ctx.run)
    if not info or len(info.classes) != 2 or ctx.inputs.class_kind not in ("attribution", "attribution-top"):
        return None
    gl = GridOutput.open(ctx.run).level(s)
    cols = [class_block(gl, ctx.inputs.class_kind, k, k + 1, ctx.inputs.count[s], ctx.inputs.min_count)[:, :, 0]
            for k in info.classes]
    return np.stack(cols, axis=2)


def update_index(ctx_run: RunDir, parent: str | None) -> None:
    """Rewrite the atlas index of the run this atlas belongs to (:func:`atlas.stages._atlases.write_index`)."""
    write_index(ctx_run.at(index_root(ctx_run.root, parent)))
