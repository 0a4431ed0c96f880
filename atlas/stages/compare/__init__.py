"""Analysis ``compare``: the change figures of a comparison's view, and what its viewer needs.

``atlas compare RUN_A RUN_B`` (:mod:`atlas.compare`) makes two *views* of two networks over the
same images, each a run directory of its own (``RUN_A/compare/<name>/layout-a``: A's layout and
cells, B's activations of the same rows, B's icons of their means; ``layout-b``: the reverse), runs
their stages (collect pairs the rows, reduce copies the layout: :mod:`atlas.stages._pair`; grid,
render and tile as in any run), then this analysis in each view. Run on its own, ``atlas compare
VIEW/config.yaml`` computes one view's figures (its stages must be finished).

Per cell of every grid level of the view (:mod:`atlas.ops.compare` has the kernels; the layout
network is the one whose layout the view shows, the other the view's own):

    coherence_layout, coherence_network   mean cosine of the cell's rows to their mean, in each network
    coherence_change                      coherence_network - coherence_layout
    relation_change                       1 - Pearson correlation of the cell's similarities to the
                                          other cells in the two networks (RSA per cell), in [0, 2]
    class_shift                           Jaccard distance of the two networks' top classes
    change, rank                          relation_change + |coherence_change|, and the cells' rank by it

Outputs, ``<view>/changes/`` (:mod:`atlas.formats._compare`): ``summary.json`` / ``.js``,
``cells-<s>.json`` / ``.js`` per grid size and the layout network's icons as sheets
(``icons/<s>/<k>.png``). Units: ``chunk-NNNNNN`` (per chunk of rows, the cosine sums: side data)
and ``icons-SSSS-KKKK`` (one sheet each); the last process adds the sums in chunk order, computes
the figures and writes the files, then the holding run's atlas index (the view appears in the
viewers' atlas list). Inputs: the view's collect, reduce, grid and render; settings: the layout
run's collect, grid and render fingerprints (redoing the layout run redoes the figures) and
``compare.top_classes`` / ``references`` / ``changed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ...config import Config
from ...formats import CompareOutput, pair_info, write_changes
from ...formats._compare import icon_sheet_path
from ...progress import plural
from ...store import DurableWriter, RunDir
from .._atlases import index_root, write_index
from .._protocol import Job, Resources, StageBase
from ._context import NAME, OUTPUT, Context, open_context, settings
from ._figures import DEFINITIONS, chunk_unit, chunk_units, level_figures
from ._icons import icon_slots, icon_unit, icon_units

__all__ = ["STAGE", "CompareStage", "DEFINITIONS"]


def _r(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 6)


def _cells_doc(ctx: Context, s: int, fig: dict[str, Any], rendered: bool) -> list[dict[str, Any]]:
    idx, _, cols = icon_slots(ctx, s) if rendered else (np.full((s, s), -1), 0, 1)
    per = cols * cols
    out = []
    for i in fig["cells"].tolist():
        r, c = divmod(i, s)
        slot = int(idx[r, c])
        out.append({"row": r, "col": c, "count": int(fig["count"][i]),
                    **{k: _r(fig[k][i]) for k in DEFINITIONS}, "rank": int(fig["rank"][i]),
                    "top_layout": [{"name": n, "value": _r(v)} for n, v in fig["top_layout"][i]],
                    "top_network": [{"name": n, "value": _r(v)} for n, v in fig["top_network"][i]],
                    "icon": [slot // per, slot % per] if slot >= 0 else None})
    return out


def _level_summary(ctx: Context, s: int, fig: dict[str, Any], rendered: bool) -> dict[str, Any]:
    cells = fig["cells"]
    mean = {k: _r(float(np.nanmean(fig[k][cells]))) if cells.size and np.isfinite(fig[k][cells]).any() else None
            for k in DEFINITIONS}
    order = np.argsort(np.where(fig["rank"] > 0, fig["rank"], np.iinfo(np.int64).max), kind="stable")
    top = [int(i) for i in order[:ctx.cfg.compare.changed] if fig["rank"][i] > 0]
    icons = None
    if rendered:
        _, side, cols = icon_slots(ctx, s)
        icons = {"url": icon_sheet_path(s, "{sheet}"), "cols": cols, "size": side}
    return {"cells": int(cells.size), "mean": mean, "changed": [[i // s, i % s] for i in top], "icons": icons}


def _finish(ctx: Context) -> dict[str, Any]:
    info = pair_info(ctx.view_collect)
    levels, cells = {}, {}
    rendered = ctx.render_levels()
    for s in ctx.sizes:
        fig = level_figures(ctx, s)
        cells[s] = _cells_doc(ctx, s, fig, s in rendered)
        levels[str(s)] = _level_summary(ctx, s, fig, s in rendered)
    lay, net = ctx.layout_collect, ctx.view_collect
    names = ctx.names
    other = "b" if names["layout"] == "a" else "a"
    summary = {"format": 1, "comparison": names["comparison"], "a": names["a"], "b": names["b"],
               "layout": names["layout"], "network": other, "pairing": info.mode if info else None,
               "models": {names["layout"]: {"model": lay.model, "layer": lay.layer, "grid": list(lay.layer_grid)},
                          other: {"model": net.model, "layer": net.layer, "grid": list(net.layer_grid)}},
               "rows": net.n_images, "paired": int((net.status_all() == 1).sum()), "sizes": ctx.sizes,
               "definitions": DEFINITIONS, "levels": levels, "cells": {str(s): f"cells-{s}.js" for s in ctx.sizes}}
    writer = DurableWriter()
    write_changes(ctx.run.root, summary, cells, writer)
    writer.sync()
    holder = index_root(ctx.run.root, None)
    if holder != ctx.run.root:
        write_index(ctx.run.at(holder))  # the viewers' atlas list now names this view
    finest = levels[str(ctx.sizes[-1])]
    ctx.log.info("compare: %s of the %d x %d grid compared, mean change %s; %s", plural(finest["cells"], "cell"),
                 ctx.sizes[-1], ctx.sizes[-1], finest["mean"]["change"], ctx.out / "summary.json")
    return {"cells": {s: lv["cells"] for s, lv in levels.items()}, "mean_change": {s: lv["mean"]["change"] for s, lv in levels.items()}}


class CompareStage(StageBase[Context]):
    """Analysis: the change figures of a comparison's view -> ``<view>/changes``."""

    name = NAME
    output = OUTPUT
    inputs = ("collect", "reduce", "grid", "render")
    execution = "shards"
    wants_gpu = False
    on_change = "redo"
    lease_window = 8
    resources = Resources(tasks=1, time="01:00:00", cpus=4, mem="16G", gpus=0)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return settings(cfg)

    def open(self, job: Job) -> Context:
        return open_context(job.cfg, job.run, job.log, job.done)

    def units(self, ctx: Context) -> list[str]:
        return [*chunk_units(ctx), *icon_units(ctx)]

    def run_units(self, ctx: Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for unit in units:
            yield unit, (icon_unit(ctx, unit) if unit.startswith("icons-") else chunk_unit(ctx, unit))

    def finish(self, ctx: Context) -> dict[str, Any]:
        return _finish(ctx)

    def refresh(self, job: Job) -> bool:
        """Redo the figures when their files were deleted since."""
        return CompareOutput(job.run.root).summary() is None

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Cells compared and the mean change on the finest grid."""
        doc = CompareOutput(run.root).summary()
        if not doc:
            return {}
        finest = doc["levels"][str(doc["sizes"][-1])]
        return {"cells": finest["cells"], "mean_change": finest["mean"]["change"], "pairing": doc.get("pairing")}


STAGE = CompareStage()
