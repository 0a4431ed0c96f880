"""The change figures of a view: per chunk of rows the coherence sums (units ``chunk-NNNNNN``), then
per grid level every cell's figures and rank (the last step), kernels in :mod:`atlas.ops.compare`."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...formats import GridLevel, GridOutput
from ...ops.binning import cell_ids
from ...ops.compare import (
    cell_cosine_sums,
    change_rank,
    change_score,
    class_shift,
    coherence,
    reference_cells,
    relation_change,
)
from ...store import atomic_save_npz
from ._context import NAME, Context

__all__ = ["chunk_unit", "chunk_units", "level_figures", "DEFINITIONS"]

DEFINITIONS = {
    "coherence_layout": "mean cosine of the cell's rows to their mean, in the network whose layout this is",
    "coherence_network": "the same in the other network: its activations of the same images at the same places",
    "coherence_change": "coherence_network - coherence_layout: > 0 the other network holds the rows closer together, "
                        "< 0 it splits them",
    "relation_change": "1 - Pearson correlation of the cell's cosine similarity to every other cell, in one network "
                       "and in the other (0: the same relations; up to 2)",
    "class_shift": "Jaccard distance of the two networks' top classes of the cell (0: the same classes, 1: none shared)",
    "change": "relation_change + |coherence_change|: what cells are ranked by (1 = changed most)",
}


def chunk_units(ctx: Context) -> list[str]:
    return [f"chunk-{j:06d}" for j in range(-(-ctx.n // ctx.chunk_rows))]


def chunk_unit(ctx: Context, unit: str) -> dict[str, Any]:
    """Rows of one chunk ok in both runs: per level, each cell's sums of the rows' cosines to its
    mean in both networks, and its row count (side data ``units/<unit>.npz``)."""
    j = int(unit.split("-")[1])
    lo, hi = j * ctx.chunk_rows, min((j + 1) * ctx.chunk_rows, ctx.n)
    ok = np.asarray(ctx.view_collect.status[lo:hi]) == 1
    xy = ctx.coords(lo, hi)
    net = np.asarray(ctx.view_collect.activations[lo:hi], np.float32)
    lay = np.asarray(ctx.layout_collect.activations[lo:hi], np.float32)
    arrays: dict[str, np.ndarray] = {}
    for s in ctx.sizes:
        ids = np.where(ok, cell_ids(xy, s), -1)
        arrays[f"layout_{s}"], arrays[f"count_{s}"] = cell_cosine_sums(lay, ids, ctx.means("layout")[s])
        arrays[f"network_{s}"], _ = cell_cosine_sums(net, ids, ctx.means("network")[s])
    atomic_save_npz(ctx.run.unit_data_path(NAME, unit), **arrays)
    return {"rows": [lo, hi], "paired": int(ok.sum())}


def _summed(ctx: Context, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grid ``s``'s cosine sums (layout, network) and counts over every chunk, added in chunk order."""
    n = s * s
    lay, net, cnt = np.zeros(n), np.zeros(n), np.zeros(n, np.int64)
    for unit in chunk_units(ctx):
        with np.load(ctx.run.unit_data_path(NAME, unit)) as z:
            lay += z[f"layout_{s}"]
            net += z[f"network_{s}"]
            cnt += z[f"count_{s}"]
    return lay, net, cnt


def _top(gl: GridLevel, names: list[str], t: int) -> list[list[tuple[str, float]]]:
    """Each cell's (flat, row-major) top ``t`` classes by mean attribution, as (name, value)."""
    cls, val = gl.top_classes, gl.top_values
    if cls is None or val is None or not names:
        return [[] for _ in range(gl.size * gl.size)]
    c = np.asarray(cls[...], np.int64).reshape(gl.size * gl.size, -1)[:, :t]
    v = np.asarray(val[...], np.float64).reshape(gl.size * gl.size, -1)[:, :t]
    return [[(names[k], float(x)) for k, x in zip(row_c, row_v) if 0 <= k < len(names) and np.isfinite(x)]
            for row_c, row_v in zip(c.tolist(), v.tolist())]


def _class_shift(top_l: list[list[tuple[str, float]]], top_n: list[list[tuple[str, float]]]) -> np.ndarray:
    vocab: dict[str, int] = {}
    width = max([len(x) for x in top_l + top_n] + [1])

    def ids(tops: list[list[tuple[str, float]]]) -> np.ndarray:
        out = np.full((len(tops), width), -1, np.int64)
        for i, row in enumerate(tops):
            for j, (name, _) in enumerate(row):
                out[i, j] = vocab.setdefault(name, len(vocab))
        return out

    return class_shift(ids(top_l), ids(top_n))


def level_figures(ctx: Context, s: int) -> dict[str, Any]:
    """Grid ``s``'s figures: flat [s * s] arrays (NaN outside the compared cells) of every figure,
    ``rank``, ``count``, the compared cells' flat ids, and both networks' top classes per cell."""
    lay_sum, net_sum, cnt = _summed(ctx, s)
    view, lay_grid = GridOutput.open(ctx.run), GridOutput.open(ctx.layout)
    vl, ll = view.level(s), lay_grid.level(s)
    ml, mn = ctx.means("layout")[s], ctx.means("network")[s]
    count = np.asarray(vl.count[...], np.int64).ravel()
    cells = np.flatnonzero((count >= view.min_count) & (cnt > 0) & np.isfinite(ml).all(axis=1) & np.isfinite(mn).all(axis=1))
    n = s * s
    coh_l, coh_n = coherence(lay_sum, cnt), coherence(net_sum, cnt)
    rel = np.full(n, np.nan)
    refs = reference_cells(len(cells), ctx.cfg.compare.references)
    rel[cells] = relation_change(ml[cells], mn[cells], refs)
    t = ctx.cfg.compare.top_classes
    top_l = _top(ll, lay_grid.class_names or ctx.layout_collect.class_names, t)
    top_n = _top(vl, view.class_names or ctx.view_collect.class_names, t)
    shift = np.full(n, np.nan)
    shift[cells] = _class_shift([top_l[i] for i in cells], [top_n[i] for i in cells])
    keep = np.zeros(n, bool)
    keep[cells] = True
    coh_l, coh_n = np.where(keep, coh_l, np.nan), np.where(keep, coh_n, np.nan)
    dcoh = coh_n - coh_l
    change = np.where(keep, change_score(dcoh, rel), np.nan)
    return {"cells": cells, "count": np.where(keep, cnt, 0), "coherence_layout": coh_l, "coherence_network": coh_n,
            "coherence_change": dcoh, "relation_change": rel, "class_shift": shift, "change": change,
            "rank": change_rank(change), "top_layout": top_l, "top_network": top_n}
