"""The contract every stage keeps, and what the unit runner hands it.

A stage is a value (an instance of a :class:`StageBase` subclass, one per module, named
``STAGE``) that says *what* to do; :mod:`atlas.stages._runner` does the rest the same way
for every stage: input checks, fingerprints, leases, skip-if-done, done markers, and
"the last unit finishes the stage". Engines (in-process, dask, SLURM arrays) drive a stage
only through these attributes and never by its name.

Life of one shard of stage ``X`` (see :func:`atlas.stages._runner.run_stage`)::

    inputs finished?  -> else one-line error naming the unfinished stage and its command
    fingerprint       =  hash(X.settings(cfg), each input's recorded fingerprint)
    ctx               =  X.open(job)                      # read inputs, load the network, ...
    (first time)         X.create(ctx)  under the stage lock, then state/X/setup.json
    units             =  X.units(ctx)                     # names, in order; shard i of n owns i, i+n, ...
    for a window of     X.lease_window units: lease each, skip the done ones,
        unit, info in X.run_units(ctx, held): mark_done(unit, info)   # yielded after its data are on disk
    last one             X.finish(ctx) under the stage lock, then the ``final`` marker (fingerprint, inputs)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from ..config import Config
from ..store import RunDir

__all__ = ["Execution", "Job", "Resources", "Stage", "StageBase", "StageStatus"]

Execution = Literal["shards", "single", "driver"]
"""How an engine runs a stage: ``shards`` (its units split over any number of processes),
``single`` (one process, e.g. one dask task or one SLURM job), ``driver`` (one process that
may fan work out to the engine's dask client itself)."""


@dataclass(frozen=True)
class Resources:
    """A stage's default resources per SLURM task (``cluster.slurm.stages.<name>`` overrides them)."""

    tasks: int = 1
    time: str = "04:00:00"
    cpus: int = 8
    mem: str = "32G"
    gpus: int = 0


@dataclass
class Job:
    """What the runner hands a stage: the config, the run directory, this process's shard,
    its logger and the engine's dask client (``driver`` stages may use it; else None)."""

    cfg: Config
    run: RunDir
    shard: tuple[int, int]
    log: logging.Logger
    client: Any = None


@dataclass
class StageStatus:
    """Progress of one stage in one run directory.

    ``state``: ``not started``, ``partial``, ``done`` or ``stale`` (finished, but an input
    stage was redone since: ``atlas run`` redoes it)."""

    stage: str
    done: int
    total: int | None
    state: str = "not started"
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "state": self.state, "done": self.done, "total": self.total, **self.detail}


@runtime_checkable
class Stage(Protocol):
    """The stage contract (implemented by subclassing :class:`StageBase`)."""

    name: str
    inputs: tuple[str, ...]
    output: str
    execution: Execution
    wants_gpu: bool
    on_change: Literal["refuse", "redo"]
    lease_window: int
    resources: Resources

    def settings(self, cfg: Config) -> dict[str, Any]: ...
    def open(self, job: Job) -> Any: ...
    def create(self, ctx: Any) -> None: ...
    def units(self, ctx: Any) -> list[str]: ...
    def run_units(self, ctx: Any, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]: ...
    def finish(self, ctx: Any) -> dict[str, Any]: ...
    def scope(self, cfg: Config) -> Any: ...
    def refresh(self, job: Job) -> None: ...
    def provenance(self, ctx: Any) -> dict[str, Any]: ...
    def detail(self, run: RunDir) -> dict[str, Any]: ...


class StageBase:
    """Defaults of the stage contract; a stage module subclasses it and sets what differs.

    Class attributes:
      ``name``: the stage's name (``atlas NAME``), its state folder ``RUN/state/NAME``.
      ``inputs``: stages whose outputs it reads; it starts only when they are finished.
      ``output``: its folder under ``RUN`` (default: ``name``), removed when the stage is redone.
      ``execution``: see :data:`Execution`.
      ``wants_gpu``: its SLURM tasks ask for a GPU by default.
      ``on_change``: a rerun with other settings ``refuse``s (expensive outputs: say which keys
      differ) or ``redo``es the stage. A stage whose *inputs* changed is always redone.
      ``lease_window``: units leased and handed to :meth:`run_units` at a time.
      ``resources``: default SLURM resources per task.
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    output: str = ""
    execution: ClassVar[Execution] = "shards"
    wants_gpu: ClassVar[bool] = False
    on_change: ClassVar[Literal["refuse", "redo"]] = "redo"
    lease_window: ClassVar[int] = 1
    resources: ClassVar[Resources] = Resources()

    def __init__(self) -> None:
        if not self.output:
            self.output = self.name

    def settings(self, cfg: Config) -> dict[str, Any]:
        """The config values that decide this stage's outputs (JSON-able)."""
        raise NotImplementedError

    def open(self, job: Job) -> Any:
        """Everything a process needs to run units (inputs read, network loaded): the stage's context."""
        raise NotImplementedError

    def create(self, ctx: Any) -> None:
        """Create the (empty) outputs; called once per attempt, under the stage lock, before any unit."""

    def units(self, ctx: Any) -> list[str]:
        """Every unit's name, in the order they run (a shard owns every n-th)."""
        raise NotImplementedError

    def run_units(self, ctx: Any, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Run ``units`` (leased by this process, not done); yield ``(unit, info)`` once its data are on disk."""
        raise NotImplementedError

    def finish(self, ctx: Any) -> dict[str, Any]:
        """Run once, by the process that completes the last unit, under the stage lock; returns
        what the ``final`` marker records."""
        return {}

    def scope(self, cfg: Config) -> Any:
        """The part of the stage's work this config asks for, when it may grow later without a redo
        (render: ``render.levels``); recorded in the ``final`` marker. None: all of it."""
        return None

    def refresh(self, job: Job) -> None:
        """Called instead of any work when a finished stage is run again with the same settings
        (tile: bring the viewer's files up to date)."""

    def provenance(self, ctx: Any) -> dict[str, Any]:
        """Extra provenance for ``RUN/config.yaml`` (e.g. the weights' hash)."""
        return {}

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Stage-specific figures for ``atlas status`` (numbers and short strings)."""
        return {}

    def __repr__(self) -> str:
        return f"<stage {self.name}>"
