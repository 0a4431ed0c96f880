"""Fan-out: the one way a stage job spreads independent tasks over processes.

A stage whose units are independent pieces of work (a chunk's sums, a band of tiles) hands them
to :class:`FanOut`, which runs them on the same workers as everything else:

1. the engine's dask client, when the job has one (``cluster.engine: dask``, a ``driver`` stage);
2. else, under the local engine, a pool of ``cluster.processes`` spawned processes, each killed
   by the kernel when the process that started it dies (a ``kill -9`` of the shard stops them);
3. else in this process (the default: no start-up cost on small runs, and a shard that is
   already a dask task or one of many SLURM array tasks should not start processes of its own).

Results are yielded as tasks complete, so a stage marks each unit done as soon as its data are
on disk. Tasks must be picklable (module-level functions, ``functools.partial`` of them) and
must write their outputs themselves; what they return travels back to this process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

from ..config import Config
from ..progress import progress
from ..stages._protocol import Job

__all__ = ["FanOut", "local_processes"]

T = TypeVar("T")
R = TypeVar("R")


def local_processes(cfg: Config) -> int:
    """Processes a job fans out to without a dask client: ``cluster.processes`` under the local
    engine (0 or 1: in this process; ``auto``: the CPUs this process may use); 0 under the dask
    engine, whose tasks are the parallelism."""
    n = cfg.cluster.processes
    if cfg.cluster.engine != "local":
        return 0
    return len(os.sched_getaffinity(0)) if n == "auto" else n


def _die_with_parent(parent: int) -> None:
    """Pool initializer (Linux): the kernel SIGKILLs this process when its parent dies; exit at
    once should the parent already be gone."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


class FanOut:
    """Where one job's tasks run (see the module docstring); a context manager that stops its
    processes on exit. The process pool starts at the first :meth:`map` with two or more tasks
    and serves every later one, so a stage with several phases pays its start-up once."""

    def __init__(self, cfg: Config, log: logging.Logger, client: Any = None) -> None:
        self.client = client
        self.retries = cfg.cluster.retries
        self.processes = 0 if client is not None else local_processes(cfg)
        self.log = log
        self._pool: ProcessPoolExecutor | None = None

    @classmethod
    def of(cls, job: Job) -> FanOut:
        """The fan-out of a stage job: its config, its logger, the engine's client (if any)."""
        return cls(job.cfg, job.log, job.client)

    def __enter__(self) -> FanOut:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the process pool (queued tasks are cancelled; running ones finish)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def where(self, n_tasks: int) -> str:
        """``dask``, ``pool`` or ``here``: where ``n_tasks`` tasks would run now."""
        if self.client is not None:
            return "dask"
        if self._pool is not None or (min(self.processes, n_tasks) > 1 and self._may_fork()):
            return "pool"
        return "here"

    def _may_fork(self) -> bool:
        if multiprocessing.current_process().daemon:
            self.log.info("running in a daemonic process (a dask worker?): tasks run in it instead of "
                          "%d processes", self.processes)
            self.processes = 0
            return False
        return True

    def map(self, func: Callable[[T], R], items: Sequence[T], *, desc: str,
            unit: str = "task") -> Iterator[tuple[T, R]]:
        """``(item, func(item))`` for every item, in the order they complete (in item order here)."""
        if not items:
            return
        where = self.where(len(items))
        if where == "dask":
            yield from self._on_dask(func, items, desc, unit)
        elif where == "pool":
            yield from self._on_pool(func, items, desc, unit)
        else:
            for item in progress(items, desc=desc, unit=unit):
                yield item, func(item)

    def _on_pool(self, func: Callable[[T], R], items: Sequence[T], desc: str, unit: str) -> Iterator[tuple[T, R]]:
        from concurrent.futures import as_completed

        if self._pool is None:
            n = min(self.processes, len(items))
            self._pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_die_with_parent, initargs=(os.getpid(),))
            self.log.info("%s: %d tasks on %d spawned processes", desc, len(items), n)
        futures: dict[Future[R], T] = {self._pool.submit(func, item): item for item in items}
        try:
            for fut in progress(as_completed(futures), total=len(futures), desc=desc, unit=unit):
                yield futures[fut], fut.result()
        finally:
            for fut in futures:
                fut.cancel()

    def _on_dask(self, func: Callable[[T], R], items: Sequence[T], desc: str, unit: str) -> Iterator[tuple[T, R]]:
        from dask.distributed import as_completed

        token = uuid.uuid4().hex[:8]
        futures = self.client.map(func, list(items), pure=False, retries=self.retries,
                                  key=[f"atlas-fan-out-{token}-{i}" for i in range(len(items))])
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for fut in progress(as_completed(futures), total=len(futures), desc=desc, unit=unit):
                yield items[index[fut.key]], fut.result()
        finally:
            self.client.cancel(futures)
