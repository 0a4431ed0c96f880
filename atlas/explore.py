"""A finished run read back for exploration (notebooks): level images, icons, example crops, cells.

Everything here only reads ``RUN/``; the stages write it (docs/formats.md).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .ops.canvas import crop_box, icon_mosaic

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
        """``RUN/<stage>`` opened read-only (once)."""
        from .store import RunDir

        if stage not in self._groups:
            self._groups[stage] = RunDir(self.root).open_group(stage)
        return self._groups[stage]

    @cached_property
    def _icon_index(self) -> dict[int, dict[tuple[int, int], int]]:
        render = self.group("render")
        return {int(name.split("-")[1]): {(int(r), int(c)): i for i, (r, c) in enumerate(sub["cells"][:])}
                for name, sub in render.groups()}

    @cached_property
    def _manifest(self) -> Any:
        from .sources import read_manifest

        return read_manifest(self.root)

    def level_image(self, size: int, background: int = 255) -> np.ndarray:
        """Every rendered icon of grid ``size`` at its cell: uint8 [size * px, size * px, 3]."""
        lvl = self.group("render")[f"level-{size}"]
        return icon_mosaic(lvl["icons"][:], lvl["cells"][:], size, background)

    def icon(self, size: int, r: int, c: int) -> np.ndarray | None:
        """The icon of cell (r, c) of grid ``size`` [px, px, 3], or None for an empty cell."""
        i = self._icon_index[size].get((r, c))
        return None if i is None else self.group("render")[f"level-{size}/icons"][i]

    def example_crop(self, row: int, window: float = 3.0) -> np.ndarray:
        """Collect row ``row``: its image as the network saw it, cut to ``window`` layer cells
        around the sampled position (as the viewer's example crops)."""
        from .sources import load_image

        col = self.group("collect")
        size, (_, h, w) = int(col.attrs["input_size"]), col.attrs["layer_shape"]
        img = load_image(self._manifest.locations[row], size=size, max_pixels=10**12, min_side=1)
        y, x = col["positions"][row]
        top, left, bottom, right = crop_box(int(y), int(x), h, w, size, window)
        return img[top:bottom, left:right]

    def cell(self, size: int, r: int, c: int) -> dict[str, Any]:
        """What the atlas knows of cell (r, c) of grid ``size``: point count, mean activation,
        top classes (names and mean attributions), dataset example rows, icon and its faithfulness."""
        g, col = self.group("grid")[f"level-{size}"], self.group("collect")
        names = list(col.attrs.get("class_names") or [])
        out: dict[str, Any] = {"size": size, "cell": (r, c), "count": int(g["count"][r, c]),
                               "mean_activation": g["mean_activation"][r, c],
                               "examples": [int(x) for x in g["examples"][r, c] if x >= 0]}
        if "top_classes" in g:
            out["top_classes"] = [(names[k] if k < len(names) else int(k), float(v))
                                  for k, v in zip(g["top_classes"][r, c], g["top_values"][r, c]) if k >= 0]
        i = self._icon_index.get(size, {}).get((r, c))
        out["icon"] = None if i is None else self.group("render")[f"level-{size}/icons"][i]
        out["cossim"] = None if i is None else float(self.group("render")[f"level-{size}/cossim"][i])
        return out
