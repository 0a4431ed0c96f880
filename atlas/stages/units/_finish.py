"""The analysis's last step: the icons' self-ranks, the cells' attribution dictionaries, the viewer's
files, the located images' dictionary pictures and the run's atlas index.

Self-rank: the units' coefficients of each icon's activation (as rendered: the final 8-bit icon, reduced
over positions) divided by each unit's spread over the dataset (its standard deviation over the
collected rows); the icon's own unit's rank among all K (:func:`atlas.ops.units.self_rank`; 1: of all
units, relative to how much each varies, the icon raises its own the most).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...formats._units import UnitStats, heat_doc, units_folder, write_units_json_js
from ...ops.units import labels_spanned, quantise, self_rank
from ...store import DurableWriter
from .._atlases import index_root
from .._atlases import write_index as write_run_index
from ._attribution import attribution_dictionaries
from ._context import TITLES, Context
from ._icons import icon_file
from ._located import draw_located

__all__ = ["finish", "self_rank_summary"]


def self_rank_summary(ranks: np.ndarray, k: int) -> dict[str, Any]:
    """n, median, share ranked first, share in the first five, out of ``k`` units (ranks > 0 only)."""
    r = ranks[ranks > 0].astype(np.float64)
    if r.size == 0:
        return {"n": 0, "units": k, "median": None, "first": None, "top5": None}
    return {"n": int(r.size), "units": k, "median": float(np.median(r)), "first": round(float(np.mean(r <= 1)), 6),
            "top5": round(float(np.mean(r <= 5)), 6), "chance_median": (k + 1) / 2}


def _r(v: float, digits: int = 5) -> float | None:
    return None if not np.isfinite(v) else round(float(v), digits)


def _unit_doc(ctx: Context, u: int, st: UnitStats, ranks: np.ndarray, cossim: np.ndarray) -> dict[str, Any]:
    """``unit/<u>.js``: the unit's heatmap at every grid size, its examples and its figures."""
    levels = {}
    for s in ctx.sizes:
        q, vmax = quantise(st.mean_coef[s][:, :, u].reshape(-1))
        vals = st.mean_coef[s][:, :, u]
        finite = vals[np.isfinite(vals)]
        levels[str(s)] = {**heat_doc(q, vmax), "size": s, "min": _r(float(finite.min())) if finite.size else None}
    ex = [[int(r), int(p[0]), int(p[1]), int(lab), _r(float(v))]
          for r, p, lab, v in zip(st.examples[u], st.example_positions[u], st.example_labels[u], st.example_values[u])
          if r >= 0]
    has_icon = u < ctx.n_icons
    return {"unit": u, "levels": levels, "examples": ex, "mean": _r(float(st.mean[u])), "std": _r(float(st.std[u])),
            "max": _r(float(st.max[u])), "active": _r(float(st.active[u]), 4),
            "rank": int(ranks[u]) if has_icon else None, "cossim": _r(float(cossim[u]), 4) if has_icon else None}


def _cells_doc(ctx: Context, s: int, st: UnitStats, attr: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """``cells-<s>.js``: per non-empty cell [row, col, units, shares, attribution units, shares, class]."""
    units, shares = st.top_units[s], st.top_shares[s]
    cells = []
    for r, c in zip(*np.nonzero(ctx.counts[s] >= ctx.min_count)):
        keep = units[r, c] >= 0
        row: list[Any] = [int(r), int(c), units[r, c][keep].tolist(), [round(float(v), 4) for v in shares[r, c][keep]]]
        if s in attr:
            au, ash, ac = attr[s]
            k = au[r, c] >= 0
            row += [au[r, c][k].tolist(), [round(float(v), 4) for v in ash[r, c][k]], int(ac[r, c])]
        cells.append(row)
    return {"size": s, "top": ctx.cfg.units.dictionary, "attribution": s in attr, "cells": cells}


def _index(ctx: Context, st: UnitStats, ranks: np.ndarray, summary: dict[str, Any],
           located: dict[str, str]) -> dict[str, Any]:
    out, col, t = ctx.output(), ctx.collect, ctx.cfg.tile
    spanned = labels_spanned(st.example_labels)
    return {"format": 1, "basis": ctx.cfg.units.basis, "kind": ctx.kind, "title": TITLES[ctx.kind], "n_units": ctx.n_units,
            "n_icons": ctx.n_icons, "channels": ctx.channels, "model": col.model, "layer": col.layer,
            "sizes": ctx.sizes, "icon_size": ctx.icon_size, "icon_url": icon_file(0, t.format).replace("0.", "{unit}.", 1),
            "unit_url": "unit/{unit}.js", "cells_url": "cells-{size}.js", "example_url": "examples/{row}.jpg",
            "example_window": t.example_window, "layer_shape": list(col.layer_shape), "input_size": col.input_size,
            "label_kind": st.info.get("label_kind"), "attribution": ctx.pairs is not None,
            "dictionary": ctx.cfg.units.dictionary, "self_rank": summary,
            "basis_info": out.basis_info(), "stats": dict(st.info),
            "ranks": ranks[:ctx.n_icons].tolist(), "spans": spanned.tolist(),
            "spread": [_r(float(v), 4) for v in st.std], "located": located}


def finish(ctx: Context) -> dict[str, Any]:
    basis, st, out = ctx.basis(), ctx.stats(), ctx.output()
    act = np.asarray(out.array("activation")[...], np.float32)
    cossim = np.asarray(out.array("cossim")[...], np.float32)
    ranks = self_rank(basis.encode(act), st.std, np.arange(ctx.n_icons)).astype(np.int32) if ctx.n_icons else \
        np.zeros(0, np.int32)
    summary = self_rank_summary(ranks, ctx.n_units)
    spent = [float(ctx.done[u]["seconds"]) for u in ctx.done if u.startswith("icons-") and "seconds" in ctx.done[u]]
    seconds = round(sum(spent) / ctx.n_icons, 4) if spent and ctx.n_icons else None
    attr = attribution_dictionaries(ctx)
    out.write_finish(ranks, attr, {"self_rank": summary})
    icons = np.asarray(out.array("icons")[...])
    located = draw_located(ctx, icons)
    folder, writer = units_folder(ctx.run.root), DurableWriter()
    full_ranks = np.zeros(ctx.n_units, np.int64)
    full_ranks[:ctx.n_icons] = ranks
    full_cos = np.full(ctx.n_units, np.nan, np.float32)
    full_cos[:ctx.n_icons] = cossim
    for u in range(ctx.n_units):
        write_units_json_js(writer, folder / f"unit/{u}.js", f"ATLAS_UNITS_UNIT_{u}", _unit_doc(ctx, u, st, full_ranks, full_cos))
    for s in ctx.sizes:
        write_units_json_js(writer, folder / f"cells-{s}.js", f"ATLAS_UNITS_CELLS_{s}", _cells_doc(ctx, s, st, attr))
    index = _index(ctx, st, full_ranks, summary, located)
    write_units_json_js(writer, folder / "index.js", "ATLAS_UNITS", index, json_twin=True)
    writer.sync()
    write_run_index(ctx.run.at(index_root(ctx.run.root, ctx.cfg.classes.parent)))  # the viewers learn there are units
    ctx.log.info("units %s: %d units, %d icons; self-rank median %s, first for %s of them; %s labels per unit's "
                 "examples", ctx.cfg.units.basis, ctx.n_units, ctx.n_icons, summary["median"],
                 summary["first"], st.info.get("labels_spanned_mean"))
    return {"basis": ctx.cfg.units.basis, "units": ctx.n_units, "icons": ctx.n_icons, "self_rank": summary,
            "seconds_per_icon": seconds, "located": sorted(located)}
