"""The tile stage's inputs: what collect, grid and render left, reduced to what tiling needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...config import Config
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
    collect_attrs: dict[str, Any]
    class_names: list[str]
    label_names: list[str]
    icon_sizes: dict[int, int]        # s -> icon side of grid s (its pyramid is s * icon_sizes[s] wide)
    class_kind: str = "none"          # one of CLASS_KINDS
    n_classes: int = 0                # classes (or labels) the heatmap covers

    def canvas(self, s: int) -> int:
        """Width (= height) in pixels of grid ``s``'s pyramid: its icons at native size."""
        return s * self.icon_sizes[s]

    @property
    def class_names_shown(self) -> list[str]:
        """Names of what the heatmap and the cells' top lists refer to (classes, or source labels)."""
        return self.label_names if self.class_kind == "labels" else self.class_names if self.class_kind != "none" else []


def _class_kind(grid: Any, sizes: list[int], class_names: list[str], label_names: list[str]) -> tuple[str, int]:
    """(kind, number of classes) of the class heatmap, from what every grid level holds."""
    levels = [grid[f"level-{s}"] for s in sizes]
    if all("class_attribution" in gl for gl in levels):
        return "attribution", int(levels[0]["class_attribution"].shape[2])
    if all("top_classes" in gl for gl in levels) and class_names:
        return "attribution-top", len(class_names)
    if all("label_counts" in gl for gl in levels) and label_names:
        return "labels", int(levels[0]["label_counts"].shape[2])
    return "none", 0


def class_block(gl: Any, kind: str, k0: int, k1: int, count: np.ndarray, min_count: int) -> np.ndarray:
    """float32 [s, s, k1 - k0]: classes ``k0 .. k1 - 1`` of the heatmap of a grid level ``gl``
    (see :data:`CLASS_KINDS`); 0 where a class has nothing and in empty cells."""
    s = count.shape[0]
    if kind == "attribution":
        out = np.asarray(gl["class_attribution"][:, :, k0:k1], np.float32)
    elif kind == "labels":
        lc = np.asarray(gl["label_counts"][:, :, k0:k1], np.float32)
        out = lc / np.maximum(count, 1)[:, :, None].astype(np.float32)
    elif kind == "attribution-top":
        cls = np.asarray(gl["top_classes"][:], np.int64)
        val = np.asarray(gl["top_values"][:], np.float32)
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
    col, grid, render = run.open_group("collect"), run.open_group("grid"), run.open_group("render")
    grid_sizes = [int(s) for s in (grid.attrs.get("sizes") or cfg.grid.sizes)]
    sizes = sorted(s for s in grid_sizes if f"level-{s}" in render and "icons" in render[f"level-{s}"])
    if not sizes:
        raise StoreError(f"{run.stage_path('render')} has no rendered level among the grid sizes {grid_sizes}: "
                         "run `atlas render` first")
    min_count = int(grid.attrs.get("min_count", cfg.grid.min_count))
    index, count, icon_sizes = {}, {}, {}
    for s in sizes:
        rl, gl = render[f"level-{s}"], grid[f"level-{s}"]
        cells = np.asarray(rl["cells"][:], dtype=np.int64).reshape(-1, 2)
        shape = rl["icons"].shape
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[0] != len(cells):
            raise StoreError(f"render level-{s}: icons {shape} do not match cells {cells.shape} "
                             "(expected [cells, h, h, 3] uint8)")
        cnt = np.asarray(gl["count"][:], dtype=np.int64)
        idx = np.full((s, s), -1, np.int64)
        if len(cells) and (cells.min() < 0 or cells.max() >= s):
            raise StoreError(f"render level-{s}: cell coordinates outside the {s} x {s} grid")
        idx[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
        idx[cnt < min_count] = -1  # only non-empty cells are painted
        index[s], count[s], icon_sizes[s] = idx, cnt, int(shape[1])
    icon = icon_sizes[sizes[-1]]
    ca = dict(col.attrs)
    keep = {k: ca.get(k) for k in ("model", "layer", "layer_shape", "input_size", "n_images", "ok_count")}
    class_names = list(grid.attrs.get("class_names") or ca.get("class_names") or [])
    label_names = list(grid.attrs.get("label_names") or ca.get("label_names") or [])
    kind, n_classes = _class_kind(grid, sizes, class_names, label_names)
    return Inputs(sizes, icon, sizes[-1] * icon, sizes[-1] * icon, min_count, index, count, keep,
                  class_names, label_names, icon_sizes, kind, n_classes)
