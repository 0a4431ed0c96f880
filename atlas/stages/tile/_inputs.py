"""The tile stage's inputs: what collect, grid and render left, reduced to what tiling needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...config import Config
from ...store import RunDir, StoreError


@dataclass
class Inputs:
    """What the grid, render and collect stages left, reduced to what tiling needs (small)."""

    sizes: list[int]
    icon: int
    width: int
    height: int
    min_count: int
    index: dict[int, np.ndarray]      # s -> [s, s] int64 icon row of cell (row, col), -1 when empty
    count: dict[int, np.ndarray]      # s -> [s, s] int64
    collect_attrs: dict[str, Any]
    class_names: list[str]
    label_names: list[str]


def read_inputs(cfg: Config, run: RunDir) -> Inputs:
    """Open collect / grid / render (finished: the runner checked) and build the cell -> icon maps."""
    col, grid, render = run.open_group("collect"), run.open_group("grid"), run.open_group("render")
    grid_sizes = [int(s) for s in (grid.attrs.get("sizes") or cfg.grid.sizes)]
    sizes = sorted(s for s in grid_sizes if f"level-{s}" in render and "icons" in render[f"level-{s}"])
    if not sizes:
        raise StoreError(f"{run.stage_path('render')} has no rendered level among the grid sizes {grid_sizes}: "
                         "run `atlas render` first")
    min_count = int(grid.attrs.get("min_count", cfg.grid.min_count))
    index, count = {}, {}
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
        index[s], count[s] = idx, cnt
    icon = int(render[f"level-{sizes[-1]}"]["icons"].shape[1])
    ca = dict(col.attrs)
    keep = {k: ca.get(k) for k in ("model", "layer", "layer_shape", "input_size", "n_images", "ok_count")}
    class_names = list(grid.attrs.get("class_names") or ca.get("class_names") or [])
    label_names = list(grid.attrs.get("label_names") or ca.get("label_names") or [])
    return Inputs(sizes, icon, sizes[-1] * icon, sizes[-1] * icon, min_count, index, count, keep,
                  class_names, label_names)
