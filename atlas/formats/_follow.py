"""``RUN/follow``: where each layer's images land in the other layers (``model.layers``).

Written by the ``follow`` step (``atlas follow``, run by ``atlas run`` after every layer is tiled);
read by the viewer from file:// and served alike, so every file is a script defining one global:

``follow.json`` / ``follow.js`` (``window.ATLAS_FOLLOW``)
    ``format`` 1, ``n_rows``, ``k``, ``top_cells``, ``layers`` (per layer, the run's first: ``layer``,
    ``slug``, ``tiles`` (its viewer folder relative to RUN, e.g. ``layers/<slug>/tiles/``),
    ``channels``, ``grid`` [rows, cols], ``sizes`` (its grid levels), ``coords`` (file name)),
    ``pairs`` (per pair of layers i < j: ``a``, ``b`` (layer indices), ``mean_share`` (mean over
    placed images of the share of k nearest images kept), ``chance`` (that share for unrelated
    layouts), ``shared`` (file name)).
``coords-<i>.js`` (``window.ATLAS_FOLLOW_COORDS_<i>``)
    ``{n, values}``: layer i's atlas coordinates, base64 of float32 little-endian [n_rows, 2] (x, y),
    NaN for rows not placed: the cell of a row at grid size s is (floor(y s), floor(x s)), 1.0 in
    the last cell, as the grid stage bins it.
``shared-<i>-<j>.js`` (``window.ATLAS_FOLLOW_SHARED_<i>_<j>``)
    ``{n, k, values}``: per row, how many of its k nearest images on layer i's atlas are among its
    k nearest on layer j's, base64 of uint8 [n_rows] (255 for rows not placed).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..store import atomic_write_text

__all__ = ["FOLLOW", "FollowOutput"]

FOLLOW = "follow"
NOT_PLACED = 255


def _script(name: str, doc: dict[str, Any]) -> str:
    return f"window.{name} = {json.dumps(doc, separators=(',', ':'), sort_keys=True)};\n"


class FollowOutput:
    """``RUN/follow`` (plain files, not a Zarr group): written atomically, file by file; the index last."""

    def __init__(self, run_root: str | Path) -> None:
        self.path = Path(run_root) / FOLLOW

    def index(self) -> dict[str, Any] | None:
        """``follow.json``; None before the step first finished (or when it cannot be read)."""
        try:
            doc = json.loads((self.path / "follow.json").read_text())
        except (OSError, ValueError):
            return None
        return dict(doc) if isinstance(doc, dict) else None

    def write_coords(self, i: int, coords: np.ndarray) -> str:
        """Layer i's coordinates (float [n, 2]); returns the file name."""
        data = np.ascontiguousarray(coords, dtype="<f4")
        name = f"coords-{i}.js"
        atomic_write_text(self.path / name, _script(f"ATLAS_FOLLOW_COORDS_{i}", {
            "n": int(len(data)), "values": base64.b64encode(data.tobytes()).decode()}))
        return name

    def write_shared(self, i: int, j: int, shared: np.ndarray, placed: np.ndarray, k: int) -> str:
        """Per row, the neighbours layers i and j share (int [n]; rows not ``placed`` stored as 255)."""
        values = np.where(placed, np.clip(shared, 0, 254), NOT_PLACED).astype(np.uint8)
        name = f"shared-{i}-{j}.js"
        atomic_write_text(self.path / name, _script(f"ATLAS_FOLLOW_SHARED_{i}_{j}", {
            "n": int(len(values)), "k": int(k), "values": base64.b64encode(values.tobytes()).decode()}))
        return name

    def write_index(self, doc: dict[str, Any]) -> None:
        """``follow.json`` and ``follow.js`` (after every file they name)."""
        atomic_write_text(self.path / "follow.json", json.dumps(doc, indent=1, sort_keys=True))
        atomic_write_text(self.path / "follow.js", _script("ATLAS_FOLLOW", doc))
