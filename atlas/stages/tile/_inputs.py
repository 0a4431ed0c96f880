"""The tile stage's inputs: what collect, grid and render left, reduced to what tiling needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ...config import Config
from ...formats import CollectHeader, CollectOutput, GridLevel, GridOutput, RenderOutput
from ...store import RunDir, StoreError

# What the class heatmap shows, by what the grid stored (best first):
#   attribution      class_attribution [s, s, K]: every class's mean attribution per cell
#   attribution-top  top_classes / top_values only (a grid from before class_attribution): the top T per cell
#   labels           label_counts [s, s, L]: the share of the cell's images with each source label
#   none             nothing to search
CLASS_KINDS = ("attribution", "attribution-top", "labels", "none")


@dataclass
class Inputs:
    """What the grid, render and collect stages left, reduced to what tiling needs (small)."""

    sizes: list[int]
    icon: int                          # icon side of the finest grid
    width: int                         # finest grid's pyramid: sizes[-1] * icon (also its height)
    height: int
    min_count: int
    index: dict[int, np.ndarray]      # s -> [s, s] int64 icon row of cell (row, col), -1 when empty
    count: dict[int, np.ndarray]      # s -> [s, s] int64
    collect: CollectHeader            # the network, layer and rows collect recorded
    class_names: list[str]
    label_names: list[str]
    icon_sizes: dict[int, int]        # s -> icon side of grid s (its pyramid is s * icon_sizes[s] wide)
    class_kind: str = "none"          # one of CLASS_KINDS
    n_classes: int = 0                # classes (or labels) the heatmap covers
    ok_count: int = 0                 # collect rows read without error

    def canvas(self, s: int) -> int:
        """Width (= height) in pixels of grid ``s``'s pyramid: its icons at native size."""
        return s * self.icon_sizes[s]

    @property
    def class_names_shown(self) -> list[str]:
        """Names of what the heatmap and the cells' top lists refer to (classes, or source labels)."""
        return self.label_names if self.class_kind == "labels" else self.class_names if self.class_kind != "none" else []


def _class_kind(grid: GridOutput, sizes: list[int], class_names: list[str], label_names: list[str]) -> tuple[str, int]:
    """(kind, number of classes) of the class heatmap, from what every grid level holds."""
    levels = [grid.level(s) for s in sizes]
    attribution = [gl.class_attribution for gl in levels]
    labels = [gl.label_counts for gl in levels]
    if attribution[0] is not None and all(a is not None for a in attribution):
        return "attribution", int(attribution[0].shape[2])
    if all(gl.top_classes is not None for gl in levels) and class_names:
        return "attribution-top", len(class_names)
    if labels[0] is not None and all(lc is not None for lc in labels) and label_names:
        return "labels", int(labels[0].shape[2])
    return "none", 0


def _stored(arr: zarr.Array[Any] | None, gl: GridLevel, kind: str) -> zarr.Array[Any]:
    if arr is None:
        raise StoreError(f"grid level {gl.size} has no {kind} data: redo `atlas tile` after `atlas grid`")
    return arr


def class_block(gl: GridLevel, kind: str, k0: int, k1: int, count: np.ndarray, min_count: int) -> np.ndarray:
    """float32 [s, s, k1 - k0]: classes ``k0 .. k1 - 1`` of the heatmap of a grid level ``gl``
    (see :data:`CLASS_KINDS`); 0 where a class has nothing and in empty cells."""
    s = count.shape[0]
    out: np.ndarray
    if kind == "attribution":
        out = np.asarray(_stored(gl.class_attribution, gl, kind)[:, :, k0:k1], np.float32)
    elif kind == "labels":
        lc = np.asarray(_stored(gl.label_counts, gl, kind)[:, :, k0:k1], np.float32)
        out = lc / np.maximum(count, 1)[:, :, None].astype(np.float32)
    elif kind == "attribution-top":
        cls = np.asarray(_stored(gl.top_classes, gl, kind)[:], np.int64)
        val = np.asarray(_stored(gl.top_values, gl, kind)[:], np.float32)
        out = np.zeros((s, s, k1 - k0), np.float32)
        r, c, j = np.nonzero((cls >= k0) & (cls < k1) & np.isfinite(val))
        out[r, c, cls[r, c, j] - k0] = val[r, c, j]
    else:
        out = np.zeros((s, s, k1 - k0), np.float32)
    out = np.where(np.isfinite(out), out, 0.0).astype(np.float32)
    out[count < min_count] = 0.0
    return out


def read_inputs(cfg: Config, run: RunDir) -> Inputs:
    """Open collect / grid / render (finished: the runner checked) and build the cell -> icon maps."""
    col, grid, render = CollectOutput.open(run), GridOutput.open(run), RenderOutput.open(run)
    grid_sizes = grid.sizes
    sizes = sorted(s for s in grid_sizes if render.has_level(s))
    if not sizes:
        raise StoreError(f"{render.path} has no rendered level among the grid sizes {grid_sizes}: "
                         "run `atlas render` first")
    min_count = grid.min_count
    index, count, icon_sizes = {}, {}, {}
    for s in sizes:
        rl, gl = render.level(s), grid.level(s)
        cells = np.asarray(rl.cells[:], dtype=np.int64).reshape(-1, 2)
        shape = rl.icons.shape
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[0] != len(cells):
            raise StoreError(f"render level-{s}: icons {shape} do not match cells {cells.shape} "
                             "(expected [cells, h, h, 3] uint8)")
        cnt = np.asarray(gl.count[:], dtype=np.int64)
        idx = np.full((s, s), -1, np.int64)
        if len(cells) and (cells.min() < 0 or cells.max() >= s):
            raise StoreError(f"render level-{s}: cell coordinates outside the {s} x {s} grid")
        idx[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
        idx[cnt < min_count] = -1  # only non-empty cells are painted
        index[s], count[s], icon_sizes[s] = idx, cnt, int(shape[1])
    icon = icon_sizes[sizes[-1]]
    class_names = grid.class_names or col.class_names
    label_names = grid.label_names or col.label_names
    kind, n_classes = _class_kind(grid, sizes, class_names, label_names)
    return Inputs(sizes, icon, sizes[-1] * icon, sizes[-1] * icon, min_count, index, count, col.header,
                  class_names, label_names, icon_sizes, kind, n_classes, ok_count=col.ok_count)
