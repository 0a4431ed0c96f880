"""Names shared by the tile stage's parts, and :class:`Context`: what one job of the stage works from."""

from __future__ import annotations

from dataclasses import dataclass
from logging import Logger
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config
from ...store import RunDir
from ._inputs import Inputs

NAME = "tile"
OUTPUT = "tiles"
DZI_NAME = "grid-{size}"  # one Deep Zoom pyramid per grid size: grid-<s>.dzi, grid-<s>_files/
SHEET_COLS = 16          # icons per sheet row (at most: fewer for large icons, see sheet_cols)
ICONS_PER_SHEET = 256    # icons per sheet (at most: SHEET_COLS ** 2)
SHEET_MAX_PX = 2048      # a sheet is at most about this wide, so large coarse icons get fewer columns
HEAT_BLOCK = 64          # classes per heat unit (the grid's class_attribution chunk)
BASE_PX = 2048           # a pyramid's levels at most this wide are painted by one unit: the highest
                         # from the icons, each one below by halving it


def dzi_name(size: int) -> str:
    """The pyramid of grid ``size``: ``grid-<s>`` (``.dzi`` descriptor, ``_files/`` tiles)."""
    return DZI_NAME.format(size=size)


def sheet_cols(icon: int) -> int:
    """Icons per sheet row for icons of ``icon`` pixels: 16, fewer when that would pass SHEET_MAX_PX."""
    return max(1, min(SHEET_COLS, SHEET_MAX_PX // max(icon, 1)))


@dataclass
class Context:
    """One job's config, run, plan (``RUN/state/tile/plan.json``) and inputs."""

    cfg: Config
    run: RunDir
    plan: dict[str, Any]
    inputs: Inputs
    log: Logger

    examples: tuple[np.ndarray, np.ndarray] | None = None  # rows, positions (only until created)

    @property
    def out(self) -> Path:
        """The output folder, ``RUN/tiles``."""
        return self.run.stage_path(OUTPUT)
