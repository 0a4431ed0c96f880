"""The tile stage's process pool: units on ``tile.workers`` spawned processes, each of which
dies with the process that started it (a killed shard stops its workers)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

from ...config import Config
from ...progress import progress
from ...store import RunDir, StoreError
from .._protocol import Job
from ._context import NAME, Context
from ._paint import run_unit
from ._plan import open_context

_WORKER_CTX: dict[str, Context] = {}


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this worker when its parent dies (a killed shard stops its workers)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_unit(cfg: Config, name: str, ppid: int) -> tuple[str, dict[str, Any]]:
    """A pool worker: one unit (leased by the parent), with a context built once per process."""
    _die_with_parent()
    if os.getppid() != ppid:
        raise StoreError("the tile process that started this worker has gone")
    if cfg.run_dir not in _WORKER_CTX:
        from ...progress import stage_logger

        run = RunDir(cfg.run_dir)
        _WORKER_CTX[cfg.run_dir] = open_context(Job(cfg, run, (0, 1), stage_logger(run.root, NAME, (0, 1))))
    ctx = _WORKER_CTX[cfg.run_dir]
    unit = next(u for u in ctx.plan["units"] if u["name"] == name)
    return name, run_unit(ctx, unit, progress(total=0, disable=True))


def pool_units(ctx: Context, names: list[str], workers: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Units on ``workers`` spawned processes; each is yielded (and so marked done) as it completes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    mp = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp) as pool:
        futures = [pool.submit(_worker_unit, ctx.cfg, n, os.getpid()) for n in names]
        bar = progress(as_completed(futures), total=len(futures), desc="tile", unit="unit")
        for fut in bar:
            yield fut.result()


def worker_count(ctx: Context, n_units: int) -> int:
    """``tile.workers`` capped by the units to do; 1 inside a daemonic process (it cannot have children)."""
    import multiprocessing

    workers = min(ctx.cfg.tile.workers, n_units)
    if workers > 1 and multiprocessing.current_process().daemon:
        ctx.log.info("running in a daemonic process (a dask worker?): tiling in-process instead of %d workers", workers)
        return 1
    return workers
