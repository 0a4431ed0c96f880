"""The compare analysis's context: the view (its paired collect, the copied layout, the grid of the
other network's means) and what it reads of the layout run (its rows, grid and icons)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config
from ...formats import VIEWS, CollectOutput, GridOutput, ReduceOutput, RenderOutput, pair_info, read_pair
from ...store import RunDir, StoreError
from .._runner import final_info

__all__ = ["NAME", "OUTPUT", "FORMAT", "SHEET_COLS", "SHEET_MAX_PX", "Context", "open_context", "settings",
           "layout_run", "sheet_cols"]

NAME = "compare"
OUTPUT = "changes"
FORMAT = 1  # of the outputs; part of the settings
SHEET_COLS = 16
SHEET_MAX_PX = 2048
_LAYOUT_STAGES = ("collect", "grid", "render")  # what the analysis reads of the layout run


def sheet_cols(icon: int) -> int:
    """Icons per sheet row (and rows per sheet) for icons of ``icon`` pixels: 16, fewer for large icons."""
    return max(1, min(SHEET_COLS, SHEET_MAX_PX // max(icon, 1)))


def layout_run(cfg: Config) -> RunDir:
    """The run whose layout the view shows (``compare.layout``)."""
    if cfg.compare.layout is None or cfg.compare.network is None:
        raise StoreError(f"{cfg.run_dir} is not a comparison's view (compare.layout is not set): compare two runs "
                         "with `atlas compare RUN_A RUN_B`")
    return RunDir(cfg.compare.layout)


def _layout_finals(cfg: Config) -> dict[str, str]:
    run = layout_run(cfg)
    out = {}
    for stage in _LAYOUT_STAGES:
        final = final_info(run, stage)
        if final is None:
            raise StoreError(f"the compared run {run.root} has no finished {stage}: run `atlas run {run.root / 'config.yaml'}` "
                             "first, then `atlas compare` again")
        out[stage] = str(final["fingerprint"])
    return out


def _names(cfg: Config) -> dict[str, Any]:
    """Which network is A and which B in this view (its folder, ``layout-b`` or else ``layout-a``), their names
    and the comparison's (``pair.json``'s, else the runs' folder names): nothing of where the folders are."""
    view = Path(cfg.run_dir).resolve()
    pair = read_pair(view.parent) or {}
    layout_is_a = view.name != VIEWS[1]
    lay, net = Path(str(cfg.compare.layout)).resolve().name, Path(str(cfg.compare.network)).resolve().name
    a = (pair.get("a") or {}).get("name") or (lay if layout_is_a else net)
    b = (pair.get("b") or {}).get("name") or (net if layout_is_a else lay)
    return {"layout": "a" if layout_is_a else "b", "a": a, "b": b, "comparison": pair.get("name")}


def settings(cfg: Config) -> dict[str, Any]:
    """The layout run's collect, grid and render fingerprints, the figures' settings and the names shown."""
    c = cfg.compare
    return {"format": FORMAT, "layout": _layout_finals(cfg), "names": _names(cfg),
            "compare": {"top_classes": c.top_classes, "references": c.references, "changed": c.changed}}


@dataclass
class Context:
    """What a process of the analysis works from; the levels' means load on first use."""

    cfg: Config
    run: RunDir
    log: logging.Logger
    layout: RunDir
    view_collect: CollectOutput
    layout_collect: CollectOutput
    sizes: list[int]
    names: dict[str, Any]
    done: Any = None
    _means: dict[str, dict[int, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def out(self) -> Path:
        return self.run.stage_path(OUTPUT)

    @property
    def chunk_rows(self) -> int:
        return self.view_collect.chunk_rows

    @property
    def n(self) -> int:
        return self.view_collect.n_images

    def means(self, which: str) -> dict[int, np.ndarray]:
        """Each grid level's cell means, float32 [s * s, C], of the ``layout`` or the ``network``
        (the view's grid: the network's activations over the layout's cells)."""
        if which not in self._means:
            grid = GridOutput.open(self.layout if which == "layout" else self.run)
            self._means[which] = {s: np.asarray(grid.level(s).mean_activation[...], np.float32).reshape(s * s, -1)
                                  for s in self.sizes}
        return self._means[which]

    def coords(self, lo: int, hi: int) -> np.ndarray:
        """The layout's coordinates of rows ``lo .. hi - 1`` (the view's copy): float32 [m, 2]."""
        return np.asarray(ReduceOutput.open(self.run).coords[lo:hi])

    def render_levels(self) -> dict[int, int]:
        """The layout run's rendered grid sizes among the view's, with their icon counts."""
        render = RenderOutput.open(self.layout)
        return {s: int(render.level(s).icons.shape[0]) for s in render.sizes if s in self.sizes and render.has_level(s)}


def open_context(cfg: Config, run: RunDir, log: logging.Logger, done: Any) -> Context:
    """The view's and the layout run's outputs, checked to pair row for row."""
    layout = run.at(layout_run(cfg).root)
    view_collect, layout_collect = CollectOutput.open(run), CollectOutput.open(layout)
    if pair_info(view_collect) is None:
        raise StoreError(f"{run.root} is not a comparison's view (its collect pairs no rows): make views with "
                         "`atlas compare RUN_A RUN_B`")
    if (view_collect.n_images, view_collect.chunk_rows) != (layout_collect.n_images, layout_collect.chunk_rows):
        raise StoreError(f"the view {run.root} holds {view_collect.n_images} rows in chunks of {view_collect.chunk_rows}, "
                         f"its layout run {layout.root} {layout_collect.n_images} in chunks of {layout_collect.chunk_rows}: "
                         "run `atlas compare` again to redo the view")
    sizes = GridOutput.open(run).sizes
    missing = [s for s in sizes if s not in GridOutput.open(layout).sizes]
    if missing:
        raise StoreError(f"the layout run {layout.root} has no grid level {missing[0]} of the view's {sizes}: run "
                         "`atlas compare` again to redo the view")
    return Context(cfg, run, log, layout, view_collect, layout_collect, sizes, _names(cfg), done)
