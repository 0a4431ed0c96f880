"""A finished run read back for exploration (notebooks): level images, icons, example crops, cells.

Everything here only reads ``RUN/``; the stages write it (docs/formats.md).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from .formats import CollectOutput, GridOutput, RenderOutput, example_crop, open_output, run_manifest
from .ops.canvas import icon_mosaic
from .store import RunDir

if TYPE_CHECKING:
    from .config import ImagesConfig

__all__ = ["AtlasRun", "child_cells"]


def child_cells(r: int, c: int) -> list[tuple[int, int]]:
    """The four cells of the next (twice as fine) aligned level that make up cell (r, c)."""
    return [(2 * r + dr, 2 * c + dc) for dr in (0, 1) for dc in (0, 1)]


class AtlasRun:
    """Read-only view of a run directory. Cheap to construct; opens groups when first used."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)
        self._groups: dict[str, zarr.Group] = {}

    def group(self, stage: str) -> zarr.Group:
        """``RUN/<stage>`` opened read-only (once), for reading what the typed readers of
        :mod:`atlas.formats` do not cover."""
        if stage not in self._groups:
            self._groups[stage] = open_output(RunDir(self.root), stage)
        return self._groups[stage]

    @cached_property
    def _collect(self) -> CollectOutput:
        return CollectOutput.open(RunDir(self.root))

    @cached_property
    def _render(self) -> RenderOutput:
        return RenderOutput.open(RunDir(self.root))

    @cached_property
    def _grid(self) -> GridOutput:
        return GridOutput.open(RunDir(self.root))

    @cached_property
    def _icon_index(self) -> dict[int, dict[tuple[int, int], int]]:
        return {s: {(int(r), int(c)): i for i, (r, c) in enumerate(np.asarray(self._render.level(s).cells[:]).tolist())}
                for s in self._render.sizes}

    @cached_property
    def _images(self) -> ImagesConfig:
        """The run's ``images`` settings (``RUN/config.yaml``; the defaults without one): how collect decoded."""
        from .config import ImagesConfig, load_config

        path = self.root / "config.yaml"
        return load_config(path).images if path.is_file() else ImagesConfig()

    def level_image(self, size: int, background: int = 255) -> np.ndarray:
        """Every rendered icon of grid ``size`` at its cell: uint8 [size * px, size * px, 3]."""
        lvl = self._render.level(size)
        return icon_mosaic(np.asarray(lvl.icons[:]), np.asarray(lvl.cells[:]), size, background)

    def icon(self, size: int, r: int, c: int) -> np.ndarray | None:
        """The icon of cell (r, c) of grid ``size`` [px, px, 3], or None for an empty cell."""
        i = self._icon_index[size].get((r, c))
        return None if i is None else np.asarray(self._render.level(size).icons[i])

    def example_crop(self, row: int, window: float = 3.0) -> np.ndarray | None:
        """Collect row ``row``: its image as the network saw it, cut to ``window`` layer cells
        around the sampled position (the viewer's example crop, :func:`atlas.formats.example_crop`);
        uint8 [h, w, 3], or None when the image can no longer be read."""
        col = self._collect
        y, x = (int(v) for v in np.asarray(col.positions[row]))
        crop = example_crop(run_manifest(self.root), row, (y, x), col.layer_grid, col.input_size, window, self._images)
        return crop.pixels

    def cell(self, size: int, r: int, c: int) -> dict[str, Any]:
        """What the atlas knows of cell (r, c) of grid ``size``: point count, mean activation,
        top classes (names and mean attributions), dataset example rows, icon and its faithfulness."""
        g, names = self._grid.level(size), self._collect.class_names
        examples = g.examples
        rows = [] if examples is None else np.asarray(examples[r, c]).tolist()
        out: dict[str, Any] = {"size": size, "cell": (r, c), "count": int(np.asarray(g.count[r, c])),
                               "mean_activation": np.asarray(g.mean_activation[r, c]),
                               "examples": [int(x) for x in rows if x >= 0]}
        top_c, top_v = g.top_classes, g.top_values
        if top_c is not None and top_v is not None:
            out["top_classes"] = [(names[k] if k < len(names) else int(k), float(v))
                                  for k, v in zip(np.asarray(top_c[r, c]).tolist(), np.asarray(top_v[r, c]).tolist())
                                  if k >= 0]
        i = self._icon_index.get(size, {}).get((r, c))
        lvl = self._render.level(size)
        out["icon"] = None if i is None else np.asarray(lvl.icons[i])
        out["cossim"] = None if i is None else float(np.asarray(lvl.cossim[i]))
        return out
