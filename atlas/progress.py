"""Progress bars (rate and ETA) and per-stage, per-shard logs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

__all__ = ["progress", "stage_logger"]

T = TypeVar("T")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None) -> tqdm:
    """A tqdm bar on stderr showing count, rate and ETA. Disabled when stderr is not a TTY
    unless ``ATLAS_PROGRESS=1`` (CI logs then get the periodic log lines instead)."""
    import os

    if disable is None:
        disable = not (sys.stderr.isatty() or os.environ.get("ATLAS_PROGRESS") == "1")
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True,
                smoothing=0.1, mininterval=0.5, file=sys.stderr)


def stage_logger(run_root: Path, stage: str, shard: tuple[int, int] = (0, 1)) -> logging.Logger:
    """Logger writing to ``RUN/logs/<stage>-<i>of<n>.log`` and to stderr (INFO)."""
    name = f"atlas.{stage}.{shard[0]}of{shard[1]}"
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False
    logdir = Path(run_root) / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / f"{stage}-{shard[0]}of{shard[1]}.log"
    for h in list(log.handlers):
        if getattr(h, "baseFilename", None) != str(path.resolve()) and isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
    if not any(isinstance(h, logging.FileHandler) for h in log.handlers):
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
    if not any(type(h) is logging.StreamHandler for h in log.handlers):
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter(f"[{stage}] %(message)s"))
        log.addHandler(sh)
    return log
