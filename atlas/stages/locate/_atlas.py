"""What ``atlas locate`` reads of a finished atlas: reduce's placement, the grid's cells and the icons.

Everything comes from the run directory through :class:`~atlas.store.RunDir` (a stage never
imports another): the placement is rebuilt from reduce's stored ``params``, ``fit_rows``,
``raw_coords`` and ``bounds`` and collect's activations of the fitted rows, exactly as reduce
built it (:mod:`atlas.ops.placement`), so a vector gets the coordinates reduce would give it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ...formats import CollectOutput, GridOutput, ReduceOutput, RenderOutput
from ...ops.binning import cell_ids
from ...ops.knn import FaissKNN
from ...ops.layout import apply_bounds, layout_bounds
from ...ops.placement import Projection, fit_projection, place_rows, placement_knn, project
from ...store import RunDir, StoreError

__all__ = ["Placer", "load_placer", "AtlasGrid", "load_grid", "Icons", "load_icons"]


@dataclass
class Placer:
    """Reduce's placement of new vectors, normalised into the atlas square."""

    knn: FaissKNN
    projection: Projection
    embedding: np.ndarray  # float32 [m, 2]: the fitted rows' raw layout
    params: dict[str, Any]
    lo: np.ndarray  # float64 [2]
    hi: np.ndarray  # float64 [2]

    def raw(self, x: np.ndarray, salt: int = 0) -> np.ndarray:
        """float32 [q, C] vectors (as collect stores them) -> float32 [q, 2] raw layout positions."""
        return place_rows(self.knn, project(x, self.projection), self.embedding, self.params, salt)

    def coords(self, x: np.ndarray, salt: int = 0) -> np.ndarray:
        """float32 [q, C] -> atlas coordinates float32 [q, 2] (x, y) in [0, 1], as reduce's ``coords``."""
        return apply_bounds(self.raw(x, salt), self.lo, self.hi, float(self.params["margin"]))


def _bounds(reduce: ReduceOutput, collect: CollectOutput, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """reduce's normalisation bounds (lo, hi: float64 [2]): stored in its attrs, or (runs reduced
    before they were stored) measured again as its ``normalise`` step did."""
    b = reduce.bounds
    if b is not None:
        return b
    ok = collect.status_all() == 1
    return layout_bounds(np.asarray(reduce.raw_coords[:])[ok], float(params["clip_percentile"]))


def load_placer(run: RunDir) -> Placer:
    """Reduce's placement rebuilt from the run: PCA and faiss index over the fitted rows."""
    collect, reduce = CollectOutput.open(run), ReduceOutput.open(run)
    params = reduce.params
    fit_rows = np.asarray(reduce.fit_rows[:], np.int64)
    if fit_rows.size == 0 or (fit_rows < 0).any():
        raise StoreError(f"{run.stage_path('reduce')} has no fitted rows: rerun `atlas reduce {run.root / 'config.yaml'}`")
    x = collect.read_activations(fit_rows)
    projection = fit_projection(x, params.get("pca"))
    knn = placement_knn(params).fit(project(x, projection))
    embedding = np.asarray(reduce.raw_coords[:], np.float32)[fit_rows]
    lo, hi = _bounds(reduce, collect, params)
    return Placer(knn, projection, embedding, params, lo, hi)


@dataclass
class AtlasGrid:
    """The grid's levels: sizes (ascending), point counts per cell, and the source labels per cell."""

    sizes: list[int]
    counts: dict[int, np.ndarray]  # int64 [s, s]
    min_count: int
    label_counts: dict[int, np.ndarray]  # int32 [s, s, L] (empty when the source has no labels)

    def cells(self, xy: np.ndarray, size: int) -> np.ndarray:
        """Atlas coordinates float [n, 2] (x, y) -> cells int64 [n, 2] (row, col) at grid ``size``."""
        ids = cell_ids(xy, size)
        return np.stack([ids // size, ids % size], axis=1)


def load_grid(run: RunDir) -> AtlasGrid:
    """The grid's sizes, counts and label counts (``RUN/grid``)."""
    g = GridOutput.open(run)
    sizes = g.sizes
    counts = {s: np.asarray(g.level(s).count[...], np.int64) for s in sizes}
    labels = {s: np.asarray(lc[...]) for s in sizes if (lc := g.level(s).label_counts) is not None}
    return AtlasGrid(sizes, counts, g.min_count, labels)


@dataclass
class Icons:
    """The rendered icons per grid level: ``index[s]`` int [s, s] (-1: no icon), ``icons[s]`` the level's
    icon array uint8 [n, px, px, 3] (Zarr, read one icon at a time)."""

    index: dict[int, np.ndarray]
    icons: dict[int, zarr.Array[Any]]

    @property
    def levels(self) -> list[int]:
        """Grid sizes with at least one rendered icon, ascending."""
        return sorted(s for s, idx in self.index.items() if (idx >= 0).any())

    def icon_for(self, xy: np.ndarray, start: int) -> np.ndarray | None:
        """The icon of the cell holding atlas point xy [2] at the finest rendered level <= ``start``
        that has one there (coarser levels in turn); None when no level has one."""
        for s in sorted((s for s in self.levels if s <= start), reverse=True):
            i = int(cell_ids(np.asarray(xy, np.float64)[None], s)[0])
            k = int(self.index[s].ravel()[i])
            if k >= 0:
                return np.asarray(self.icons[s][k])
        return None


def load_icons(run: RunDir) -> Icons:
    """Every rendered icon (finite faithfulness) of every level of ``RUN/render``."""
    render = RenderOutput.open(run)
    index, icons = {}, {}
    for s in render.sizes:
        lvl = render.level(s)
        cells = np.asarray(lvl.cells[...], np.int64)
        rendered = np.isfinite(np.asarray(lvl.cossim[...]))
        idx = np.full((s, s), -1, np.int64)
        keep = np.flatnonzero(rendered & (cells[:, 0] >= 0))
        idx[cells[keep, 0], cells[keep, 1]] = keep
        index[s], icons[s] = idx, lvl.icons
    return Icons(index, icons)
