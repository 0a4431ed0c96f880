"""The tile stage's units fanned out (:class:`atlas.cluster.FanOut`): in this process by default,
else on ``cluster.processes`` spawned processes (each dies with the shard that started it) or the
engine's dask client. A worker process opens the stage's context once and reuses it for every
unit it runs (:func:`atlas._cache.cached`, keyed by the run and the attempt it belongs to)."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..._cache import cached
from ...cluster import FanOut
from ...config import Config, config_to_dict
from ...progress import progress, stage_logger
from ...store import RunDir, StoreError, fingerprint
from .._protocol import Job
from ._context import NAME, Context
from ._paint import run_unit, run_units
from ._plan import open_context

_CONTEXT_KIND = "tile.context"


def _worker_context(cfg: Config) -> Context:
    """The context a worker process runs units with: built once per run, config and attempt
    (``state/tile/setup.json``: a redone stage, or its redone inputs, gets a new one)."""
    run = RunDir(cfg.run_dir)
    try:
        setup = (run.state_path(NAME) / "setup.json").read_text()
    except FileNotFoundError:
        raise StoreError(f"the tile stage's attempt in {run.root} was forgotten while its units ran: "
                         f"rerun `atlas tile {run.root / 'config.yaml'}` to resume") from None
    key = (str(Path(cfg.run_dir).resolve()), fingerprint(config_to_dict(cfg)), setup)
    return cached(_CONTEXT_KIND, key, lambda: open_context(Job(cfg, run, (0, 1), stage_logger(run.root, NAME, (0, 1)))))


def worker_unit(cfg: Config, name: str) -> tuple[str, dict[str, Any]]:
    """A task: unit ``name`` (leased by the job that fanned it out) with this process's context."""
    ctx = _worker_context(cfg)
    unit = next(u for u in ctx.plan["units"] if u["name"] == name)
    return name, run_unit(ctx, unit, progress(total=0, disable=True))


def fan_units(ctx: Context, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Units ``names`` where the job's fan-out runs them; each is yielded (and so marked done) as it
    completes. In this process they run with the job's own context and its tile progress bar."""
    with FanOut(ctx.cfg, ctx.log) as fan:
        if fan.where(len(names)) == "here":
            yield from run_units(ctx, names)
            return
        for _, done in fan.map(functools.partial(worker_unit, ctx.cfg), names, desc="tile", unit="unit"):
            yield done
