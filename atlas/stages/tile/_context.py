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
DZI_NAME = "atlas"
SHEET_COLS = 16          # icons per sheet row
ICONS_PER_SHEET = 256    # icons per sheet (one unit of work)


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
