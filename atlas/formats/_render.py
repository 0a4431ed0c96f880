"""``RUN/render``: the render stage's output, its reader and its writer.

Layout: per rendered grid size s a subgroup ``level-<s>`` with ``icons`` [n, px, px, 3] uint8 (one
icon per non-empty cell, row-major), ``cells`` [n, 2] int32 (row, col), ``objective`` and ``cossim``
[n] float32 (NaN: not rendered yet), ``rank`` [n] int32 (0: not rendered yet) and ``activation``
[n, C] float32 (each icon's reduced activation); level attrs ``grid_size``, ``n_cells``, ``n_units``,
``icon_size``. Root attrs: the pixel settings, ``model``, ``layer``, ``seed``, ``sizes``, ``n_cells``
(by size), ``channels``, ``batch_size`` (resolved), ``batch_size_setting``, ``min_count``,
``icon_sizes`` (by size) and, when finished, ``faithfulness`` / ``distinctness`` (by size).
The group is created whole (a temporary folder renamed) and filled one chunk of rows per unit.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import zarr

from ..store import RunDir, StoreError
from ._base import attr_int, open_output, output_exists

ZArray: TypeAlias = "zarr.Array[Any]"  # a stored array (index it to read)

__all__ = ["RENDER", "RenderLevel", "RenderOutput", "RenderRows", "create_render", "write_render_rows",
           "write_render_summaries"]

RENDER = "render"

ICONS = "icons"
CELLS = "cells"
OBJECTIVE = "objective"
COSSIM = "cossim"
RANK = "rank"
ACTIVATION = "activation"


def level_name(size: int) -> str:
    """The subgroup of grid size ``size``: ``level-<s>``."""
    return f"level-{size}"


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class RenderLevel:
    """One level ``level-<s>`` of ``RUN/render``; arrays are Zarr arrays (index them to read)."""

    group: zarr.Group
    size: int

    def _array(self, name: str) -> ZArray:
        arr = self.group.get(name)
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.group.store_path} has no `{name}` array: rerun `atlas render`")
        return arr

    def _optional(self, name: str) -> ZArray | None:
        arr = self.group.get(name)
        return arr if isinstance(arr, zarr.Array) else None

    @property
    def icons(self) -> ZArray:
        """uint8 [n, px, px, 3]: icon i is cell ``cells[i]``'s."""
        return self._array(ICONS)

    @property
    def cells(self) -> ZArray:
        """int32 [n, 2]: each icon's cell (row, col)."""
        return self._array(CELLS)

    @property
    def objective(self) -> ZArray:
        """float32 [n]: the final objective (NaN: not rendered)."""
        return self._array(OBJECTIVE)

    @property
    def cossim(self) -> ZArray:
        """float32 [n]: faithfulness, the cosine of the icon's activation to its cell's mean (NaN: not rendered)."""
        return self._array(COSSIM)

    @property
    def rank(self) -> ZArray | None:
        """int32 [n]: distinctness, the rank of the icon's own cell among its level's (0: not rendered);
        None in renders made before it was stored."""
        return self._optional(RANK)

    @property
    def activation(self) -> ZArray | None:
        """float32 [n, C]: each icon's reduced activation (NaN: not rendered); None when not stored."""
        return self._optional(ACTIVATION)

    @property
    def has_icons(self) -> bool:
        """Whether the level holds an ``icons`` array."""
        return self._optional(ICONS) is not None

    def cell_index(self) -> np.ndarray:
        """int64 [s, s]: the icon row of each cell (-1: no icon)."""
        cells = np.asarray(self.cells[...], np.int64).reshape(-1, 2)
        idx = np.full((self.size, self.size), -1, np.int64)
        keep = np.flatnonzero((cells >= 0).all(axis=1) & (cells < self.size).all(axis=1))
        idx[cells[keep, 0], cells[keep, 1]] = keep
        return idx


@dataclass(frozen=True)
class RenderOutput:
    """``RUN/render`` read back: ``RenderOutput.open(run).level(16).icons[i]``."""

    group: zarr.Group
    path: str

    @classmethod
    def open(cls, run: RunDir) -> RenderOutput:
        """The render of ``run`` (read-only); a one-line StoreError when there is none."""
        return cls(open_output(run, RENDER), str(run.stage_path(RENDER)))

    @staticmethod
    def exists(run: RunDir) -> bool:
        return output_exists(run, RENDER)

    @property
    def sizes(self) -> list[int]:
        """Grid sizes with a ``level-<s>`` subgroup, ascending."""
        return sorted(int(name.split("-")[1]) for name, _ in self.group.groups()
                      if name.startswith("level-") and name.split("-")[1].isdigit())

    @property
    def batch_size(self) -> int:
        """Icons per unit, as resolved when the group was created (attr ``batch_size``)."""
        return attr_int(self.group, "batch_size")

    @property
    def n_cells(self) -> dict[int, int]:
        """Icons per grid size (attr ``n_cells``)."""
        v = self.group.attrs.get("n_cells")
        if not isinstance(v, dict):
            raise StoreError(f"{self.path} has no attribute 'n_cells': redo `atlas render`")
        return {int(s): int(str(n)) for s, n in v.items()}

    @property
    def icon_size(self) -> int:
        """Icon side of the finest grid (attr ``icon_size``)."""
        return attr_int(self.group, "icon_size")

    def has_level(self, size: int) -> bool:
        """Whether ``level-<size>`` exists and holds icons."""
        sub = self.group.get(level_name(size))
        return isinstance(sub, zarr.Group) and isinstance(sub.get(ICONS), zarr.Array)

    def level(self, size: int) -> RenderLevel:
        """Level ``size``; a one-line StoreError when the render has no such level."""
        sub = self.group.get(level_name(size))
        if not isinstance(sub, zarr.Group):
            raise StoreError(f"{self.path} has no level {size} (rendered: {', '.join(map(str, self.sizes)) or 'none'}): "
                             "add it to render.levels and run `atlas render`")
        return RenderLevel(sub, size)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class RenderRows:
    """One unit's rows ``lo .. hi - 1`` of a level: ``icons`` uint8 [m, px, px, 3], ``objective`` and
    ``cossim`` float32 [m], ``rank`` int32 [m], ``activation`` float32 [m, C]."""

    icons: np.ndarray
    objective: np.ndarray
    cossim: np.ndarray
    rank: np.ndarray
    activation: np.ndarray


def create_render(run: RunDir, cells: Mapping[int, np.ndarray], sides: Mapping[int, int], channels: int,
                  batch_size: int, attrs: Mapping[str, Any]) -> None:
    """Create ``RUN/render`` whole (a temporary folder renamed over it): per grid size s with
    ``cells[s]`` int32 [n, 2] (row, col) the level's arrays, unrendered, icons ``sides[s]`` pixels
    square, chunks of ``batch_size`` rows; ``attrs`` the root attributes."""
    tmp = run.root / f".{RENDER}.creating"
    shutil.rmtree(tmp, ignore_errors=True)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    bs = batch_size
    for s, lvl_cells in cells.items():
        n, s_px = len(lvl_cells), sides[s]
        sub = g.create_group(level_name(s))
        sub.create_array(ICONS, shape=(n, s_px, s_px, 3), chunks=(bs, s_px, s_px, 3), dtype="uint8", fill_value=0,
                         dimension_names=("icon", "y", "x", "rgb"))
        arr = sub.create_array(CELLS, shape=(n, 2), chunks=(bs, 2), dtype="int32", fill_value=-1,
                               dimension_names=("icon", "rc"))
        for name in (OBJECTIVE, COSSIM):
            sub.create_array(name, shape=(n,), chunks=(bs,), dtype="float32", fill_value=np.nan, dimension_names=("icon",))
        sub.create_array(RANK, shape=(n,), chunks=(bs,), dtype="int32", fill_value=0, dimension_names=("icon",))
        sub.create_array(ACTIVATION, shape=(n, channels), chunks=(bs, channels), dtype="float32",
                         fill_value=np.nan, dimension_names=("icon", "channel"))
        if n:
            arr[...] = lvl_cells
        sub.attrs.update({"grid_size": s, "n_cells": n, "n_units": -(-n // bs), "icon_size": s_px})
    g.attrs.update(dict(attrs))
    os.replace(tmp, run.stage_path(RENDER))  # the group appears whole or not at all


def write_render_rows(run: RunDir, size: int, lo: int, hi: int, rows: RenderRows) -> None:
    """Rows ``lo .. hi - 1`` of level ``size`` (one unit: one chunk of each array)."""
    lvl = RenderOutput(open_output(run, RENDER, "r+"), str(run.stage_path(RENDER))).level(size)
    for arr, data in ((lvl.icons, rows.icons), (lvl.objective, rows.objective), (lvl.cossim, rows.cossim),
                      (lvl._array(RANK), rows.rank), (lvl._array(ACTIVATION), rows.activation)):
        arr[lo:hi] = data


def write_render_summaries(run: RunDir, faithfulness: Mapping[str, Any], distinctness: Mapping[str, Any]) -> None:
    """The root attrs ``faithfulness`` and ``distinctness`` (per size, as strings)."""
    open_output(run, RENDER, "r+").attrs.update({"faithfulness": dict(faithfulness), "distinctness": dict(distinctness)})
