"""``RUN/grid``: the grid stage's output, its reader and its writer.

Layout: root array ``whitening`` [C, C] float64; per size s a subgroup ``level-<s>`` with
``count`` [s, s] int64, ``mean_activation`` [s, s, C] float32, ``top_classes`` [s, s, T] int16 /
``top_values`` [s, s, T] float32 (mean attribution), ``class_attribution`` [s, s, K] float16,
``label_counts`` [s, s, L] int32 (when the source has labels), ``examples`` [s, s, E] int64
collect rows and ``example_positions`` [s, s, E, 2] int16 (their sampled (y, x) on the layer grid).
Level attrs: ``size``, ``empty_cells`` (+ ``purity``, ``purity_shuffled`` with labels). Root attrs:
``sizes``, ``min_count``, ``top_classes``, ``examples``, ``whiten_eps``, ``class_names``,
``label_names``, ``purity`` / ``purity_shuffled`` (by size), ``complete`` and readable notes.
A cell is empty when ``count < min_count``: mean NaN, top classes -1 / NaN, class attribution
NaN, examples -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import zarr

from ..store import RunDir, StoreError
from ._base import attr_int, attr_list, open_output, output_exists

ZArray: TypeAlias = "zarr.Array[Any]"  # a stored array (index it to read)

__all__ = ["GRID", "GridLevel", "GridOutput", "GridWriter", "GridLevelWriter"]

GRID = "grid"

# Array names (each named here only).
WHITENING = "whitening"
COUNT = "count"
MEAN_ACTIVATION = "mean_activation"
TOP_CLASSES = "top_classes"
TOP_VALUES = "top_values"
CLASS_ATTRIBUTION = "class_attribution"
LABEL_COUNTS = "label_counts"
EXAMPLES = "examples"
EXAMPLE_POSITIONS = "example_positions"

_RC = ("cell_row", "cell_col")
_NOTES = {
    "whitening": "S = inv(M + eps * trace(M)/C * I), M = second_moment / ok_count (eps relative to the mean eigenvalue)",
    "cells": "cell (r, c) at size s holds reduce coords (x, y) with r = floor(y*s), c = floor(x*s); 1.0 -> last cell",
    "empty": "a cell is empty when count < min_count: mean_activation NaN, top_classes -1, class_attribution NaN, examples -1",
    "class_attribution": "mean over the cell's activations of h . d logit_k / d h at the sampled position (logit units; 0 where class k was in no row's collected top-K)",
    "examples_rule": "collect rows of the cell with the highest cosine similarity to the cell's mean activation",
}


def level_name(size: int) -> str:
    """The subgroup of grid size ``size``: ``level-<s>``."""
    return f"level-{size}"


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class GridLevel:
    """One level ``level-<s>`` of ``RUN/grid``; arrays are Zarr arrays (index them to read)."""

    group: zarr.Group
    size: int

    def _array(self, name: str) -> ZArray:
        arr = self.group.get(name)
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.group.store_path} has no `{name}` array: rerun `atlas grid`")
        return arr

    def _optional(self, name: str) -> ZArray | None:
        arr = self.group.get(name)
        return arr if isinstance(arr, zarr.Array) else None

    @property
    def count(self) -> ZArray:
        """int64 [s, s]: points per cell."""
        return self._array(COUNT)

    @property
    def mean_activation(self) -> ZArray:
        """float32 [s, s, C]: each cell's mean activation (NaN in empty cells)."""
        return self._array(MEAN_ACTIVATION)

    @property
    def top_classes(self) -> ZArray | None:
        """int16 [s, s, T]: each cell's top classes by mean attribution (-1: none); None without attribution."""
        return self._optional(TOP_CLASSES)

    @property
    def top_values(self) -> ZArray | None:
        """float32 [s, s, T]: their mean attributions (NaN: none); None without attribution."""
        return self._optional(TOP_VALUES)

    @property
    def class_attribution(self) -> ZArray | None:
        """float16 [s, s, K]: every class's mean attribution per cell (NaN in empty cells); None when not stored."""
        return self._optional(CLASS_ATTRIBUTION)

    @property
    def label_counts(self) -> ZArray | None:
        """int32 [s, s, L]: source labels per cell; None when the source has no labels."""
        return self._optional(LABEL_COUNTS)

    @property
    def examples(self) -> ZArray | None:
        """int64 [s, s, E]: each cell's dataset examples, collect rows best first (-1: none); None when not stored."""
        return self._optional(EXAMPLES)

    @property
    def example_positions(self) -> ZArray | None:
        """int16 [s, s, E, 2]: each example's sampled (y, x) on the layer grid (-1: none); None when not stored."""
        return self._optional(EXAMPLE_POSITIONS)

    @property
    def empty_cells(self) -> int | None:
        """Cells with ``count < min_count`` (attr ``empty_cells``); None when not recorded."""
        v = self.group.attrs.get("empty_cells")
        return v if isinstance(v, int) else None


@dataclass(frozen=True)
class GridOutput:
    """``RUN/grid`` read back: ``GridOutput.open(run).level(16).mean_activation[...]``."""

    group: zarr.Group
    path: str

    @classmethod
    def open(cls, run: RunDir) -> GridOutput:
        """The grid of ``run`` (read-only); a one-line StoreError when there is none."""
        return cls(open_output(run, GRID), str(run.stage_path(GRID)))

    @staticmethod
    def exists(run: RunDir) -> bool:
        return output_exists(run, GRID)

    @property
    def sizes(self) -> list[int]:
        """Grid sizes (attr ``sizes``), ascending."""
        return sorted(int(s) for s in attr_list(self.group, "sizes"))

    @property
    def min_count(self) -> int:
        """Points a cell needs to be non-empty (attr ``min_count``)."""
        return attr_int(self.group, "min_count")

    @property
    def class_names(self) -> list[str]:
        """The model's class names (empty without a classifier or attribution)."""
        return [str(n) for n in self._list_or_empty("class_names")]

    @property
    def label_names(self) -> list[str]:
        """The source's label names (empty without labels)."""
        return [str(n) for n in self._list_or_empty("label_names")]

    @property
    def purity(self) -> dict[str, float]:
        """Label purity per level (keys: sizes as strings); empty without labels."""
        return self._float_map("purity")

    @property
    def purity_shuffled(self) -> dict[str, float]:
        """Label purity with shuffled labels per level (the baseline); empty without labels."""
        return self._float_map("purity_shuffled")

    @property
    def whitening(self) -> ZArray | None:
        """float64 [C, C]: the whitening matrix S; None when not stored."""
        arr = self.group.get(WHITENING)
        return arr if isinstance(arr, zarr.Array) else None

    def has_level(self, size: int) -> bool:
        """Whether ``level-<size>`` exists."""
        return isinstance(self.group.get(level_name(size)), zarr.Group)

    def missing(self) -> list[str]:
        """The arrays every level needs (``count``, ``mean_activation``) that are not there, as
        ``level-<s>/<name>`` (empty for a whole grid)."""
        return [f"{level_name(s)}/{a}" for s in self.sizes for a in (COUNT, MEAN_ACTIVATION)
                if not isinstance(self.group.get(f"{level_name(s)}/{a}"), zarr.Array)]

    def level(self, size: int) -> GridLevel:
        """Level ``size``; a one-line StoreError when the grid has no such level."""
        sub = self.group.get(level_name(size))
        if not isinstance(sub, zarr.Group):
            raise StoreError(f"{self.path} has no level {size} (its sizes: {self._sizes_text()}): "
                             "rerun `atlas grid` with that size in grid.sizes")
        return GridLevel(sub, size)

    def _sizes_text(self) -> str:
        try:
            return ", ".join(map(str, self.sizes)) or "none"
        except StoreError:
            return "unknown"

    def _list_or_empty(self, key: str) -> list[Any]:
        v = self.group.attrs.get(key)
        return list(v) if isinstance(v, list) else []

    def _float_map(self, key: str) -> dict[str, float]:
        v = self.group.attrs.get(key)
        return {str(k): float(str(x)) for k, x in v.items()} if isinstance(v, dict) else {}


# --------------------------------------------------------------------------- writing


def _put(g: zarr.Group, name: str, data: np.ndarray, fill: Any, dims: tuple[str, ...]) -> None:
    chunks = tuple(min(d, 64) if i < 2 else d for i, d in enumerate(data.shape))
    arr = g.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=fill, dimension_names=dims)
    arr[...] = data


class GridLevelWriter:
    """Writes one level ``level-<s>`` of a grid being created (see the module docstring for shapes)."""

    def __init__(self, group: zarr.Group, size: int) -> None:
        self.group, self.size = group, size

    def count(self, count: np.ndarray) -> None:
        """int64 [s, s]."""
        _put(self.group, COUNT, count, 0, _RC)

    def mean_activation(self, mean: np.ndarray) -> None:
        """float32 [s, s, C] (NaN in empty cells)."""
        _put(self.group, MEAN_ACTIVATION, mean, np.nan, (*_RC, "channel"))

    def top(self, classes: np.ndarray, values: np.ndarray) -> None:
        """``top_classes`` int16 [s, s, T] (-1: none) and ``top_values`` float32 [s, s, T] (NaN: none)."""
        _put(self.group, TOP_CLASSES, classes, -1, (*_RC, "top"))
        _put(self.group, TOP_VALUES, values, np.nan, (*_RC, "top"))

    def class_attribution(self, n_classes: int, block: int) -> ZArray:
        """The empty ``class_attribution`` float16 [s, s, K] array, chunked ``block`` cell rows and
        columns by ``block`` classes, for the caller to fill a block of cell rows at a time."""
        s, rows = self.size, min(self.size, block)
        return self.group.create_array(CLASS_ATTRIBUTION, shape=(s, s, n_classes),
                                       chunks=(rows, rows, min(n_classes, block)), dtype="float16",
                                       fill_value=0.0, dimension_names=(*_RC, "class"))

    def label_counts(self, counts: np.ndarray) -> None:
        """int32 [s, s, L]."""
        _put(self.group, LABEL_COUNTS, counts, 0, (*_RC, "label"))

    def examples(self, rows: np.ndarray, positions: np.ndarray) -> None:
        """``examples`` int64 [s, s, E] (-1: none) and ``example_positions`` int16 [s, s, E, 2]."""
        _put(self.group, EXAMPLES, rows, -1, (*_RC, "example"))
        _put(self.group, EXAMPLE_POSITIONS, positions, -1, (*_RC, "example", "yx"))

    def summary(self, empty_cells: int) -> None:
        """The level's attrs ``size`` and ``empty_cells``."""
        self.group.attrs.update({"size": self.size, "empty_cells": int(empty_cells)})

    def purity(self, purity: float, shuffled: float) -> None:
        """The level's label purity and its shuffled-label baseline."""
        self.group.attrs.update({"purity": purity, "purity_shuffled": shuffled})


class GridWriter:
    """Creates ``RUN/grid`` (replacing any partial one) and writes it."""

    def __init__(self, run: RunDir) -> None:
        self.group = zarr.open_group(str(run.stage_path(GRID)), mode="w", zarr_format=3)

    def whitening(self, w: np.ndarray) -> None:
        """float64 [C, C]."""
        _put(self.group, WHITENING, w, 0.0, ("channel", "channel_t"))

    def level(self, size: int) -> GridLevelWriter:
        """A new level ``level-<size>``."""
        return GridLevelWriter(self.group.create_group(level_name(size)), size)

    def finish(self, *, sizes: list[int], min_count: int, top_classes: int, examples: int, whiten_eps: float,
               class_names: list[str], label_names: list[str], purities: dict[int, tuple[float, float]]) -> None:
        """The root attrs, written last (``complete: true``)."""
        self.group.attrs.update({
            "sizes": list(sizes), "min_count": min_count, "top_classes": top_classes,
            "examples": examples, "whiten_eps": whiten_eps,
            "whitening": _NOTES["whitening"], "cells": _NOTES["cells"], "empty": _NOTES["empty"],
            "class_attribution": _NOTES["class_attribution"], "examples_rule": _NOTES["examples_rule"],
            "class_names": list(class_names), "label_names": list(label_names),
            "purity": {str(s): p for s, (p, _) in purities.items()},
            "purity_shuffled": {str(s): b for s, (_, b) in purities.items()},
            "complete": True,
        })
