"""The contract every stage keeps, and what the unit runner hands it.

A stage is a value (an instance of a :class:`StageBase` subclass, one per module, named
``STAGE``) that says *what* to do; :mod:`atlas.stages._runner` does the rest the same way
for every stage: input checks, fingerprints, leases, skip-if-done, done markers, and
"the last unit finishes the stage". Engines (in-process, dask, SLURM arrays) drive a stage
only through these attributes and never by its name.

Life of one shard of stage ``X`` (see :func:`atlas.stages._runner.run_stage`)::

    inputs finished?  -> else one-line error naming the unfinished stage and its command
    fingerprint       =  hash(X.settings(cfg), each input's recorded fingerprint)
    done              =  the units with a done marker (the runner's; never read by a stage)
    finished already? =  the ``final`` marker holds the fingerprint and X.scope(cfg, done)
       then              X.refresh(job): False -> nothing to do; True -> its outputs are gone:
                         the runner forgets ``final`` and runs the stage again, as below
    ctx               =  X.open(job)                      # read inputs, load the network, ...
    (first time)         X.create(ctx)  under the stage lock, then state/X/setup.json
    forget               X.forget(ctx, done) under the stage lock: done units whose data are gone
                         (the runner removes their markers, so they run again)
    units             =  X.units(ctx)                     # names, in order; shard i of n owns i, i+n, ...
    for a window of     X.lease_window units: lease each, skip the done ones,
        unit, info in X.run_units(ctx, held): mark_done(unit, info)   # yielded after its data are on disk
    last one             X.finish(ctx) under the stage lock, then the ``final`` marker (fingerprint, inputs, scope)

The hooks by which a stage takes part in the runner's bookkeeping without touching the markers:

- :meth:`StageBase.scope` ``(cfg, done)``: the part of the work this config asks for, given the
  units already done (locate: the images located so far plus those asked for now).
- :meth:`StageBase.refresh` ``(job) -> bool``: a finished stage run again; True asks the runner to
  redo it (patch-test: the test's folder was deleted), False leaves it finished (tile: the
  viewer's files are brought up to date meanwhile).
- :meth:`StageBase.forget` ``(ctx, done) -> set``: done units whose data the stage found gone or
  obsolete (patch-test: a test redone under the same name); the runner clears their markers.
- ``Job.done``: what ``run_units`` recorded for each done unit, read live from the runner's
  markers (locate's index lists every image located in the attempt, by any process; reduce's
  ``finish`` reads what its ``knn`` and ``normalise`` steps recorded); ``Job.inputs``: the
  fingerprints the input stages finished with.
- Reading markers is left to ``detail`` (``atlas status``: read only) and the runner.
- :meth:`StageBase.check` ``(cfg, run)``: refuse a config the stage cannot run before the runner
  writes anything (collect: an image source that does not exist).
- :meth:`StageBase.for_config` ``(cfg)``: the stage that does this config's work under this name
  (collect in a class atlas: :class:`atlas.stages._select.SelectStage`); the registry asks it.

The context type: ``class RenderStage(StageBase[RenderContext])`` makes every hook take and return
that context, so mypy checks each attribute a stage reads from it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar, runtime_checkable

from ..config import Config
from ..store import RunDir

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["Ctx", "Execution", "Job", "Resources", "Stage", "StageBase", "StageStatus", "UnitInfo"]

Ctx = TypeVar("Ctx")
"""A stage's context: what :meth:`StageBase.open` returns and every other hook of a shard takes."""

UnitInfo = dict[str, Any]
"""What a done marker records for its unit (JSON-able; yielded by ``run_units``)."""

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
    its logger, the engine's dask client (``driver`` stages may use it; else None), ``done``: the
    record of every done unit (read live: units other processes finish later appear too), and
    ``inputs``: the fingerprint each input stage finished with (a key for caches of its outputs)."""

    cfg: Config
    run: RunDir
    shard: tuple[int, int]
    log: logging.Logger
    client: Client | None = None
    done: Mapping[str, UnitInfo] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)


@dataclass
class StageStatus:
    """Progress of one stage in one run directory.

    ``done`` / ``total``: its units done and all its units (``units.json``), the count its log
    lines and progress bar show; the final step is not a unit: ``state`` says whether it ran.
    ``state``: ``not started``, ``partial`` (units to do, or only the final step), ``done`` or
    ``stale`` (finished, but an input stage was redone since: ``atlas run`` redoes it)."""

    stage: str
    done: int
    total: int | None
    state: str = "not started"
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "state": self.state, "done": self.done, "total": self.total, **self.detail}


@runtime_checkable
class Stage(Protocol[Ctx]):
    """The stage contract, generic over the stage's context (implemented by subclassing
    :class:`StageBase`; ``Stage[Any]`` where the context does not matter: the registry, engines)."""

    @property
    def name(self) -> str: ...
    @property
    def inputs(self) -> tuple[str, ...]: ...
    @property
    def output(self) -> str: ...
    @property
    def execution(self) -> Execution: ...
    @property
    def wants_gpu(self) -> bool: ...
    @property
    def on_change(self) -> Literal["refuse", "redo"]: ...
    @property
    def lease_window(self) -> int: ...
    @property
    def resources(self) -> Resources: ...
    @property
    def owns_output(self) -> bool: ...

    def for_config(self, cfg: Config) -> Stage[Any]: ...
    def check(self, cfg: Config, run: RunDir) -> None: ...
    def settings(self, cfg: Config) -> dict[str, Any]: ...
    def open(self, job: Job) -> Ctx: ...
    def create(self, ctx: Ctx) -> None: ...
    def units(self, ctx: Ctx) -> list[str]: ...
    def forget(self, ctx: Ctx, done: frozenset[str]) -> set[str]: ...
    def run_units(self, ctx: Ctx, units: list[str]) -> Iterator[tuple[str, UnitInfo]]: ...
    def finish(self, ctx: Ctx) -> dict[str, Any]: ...
    def scope(self, cfg: Config, done: frozenset[str]) -> Any: ...
    def refresh(self, job: Job) -> bool: ...
    def provenance(self, ctx: Ctx) -> dict[str, Any]: ...
    def detail(self, run: RunDir) -> dict[str, Any]: ...


class StageBase(Generic[Ctx]):
    """Defaults of the stage contract; a stage module subclasses it with its context type
    (``class GridStage(StageBase[GridContext])``) and sets what differs.

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
      ``owns_output``: a redo removes ``output`` (False: the stage's data are written by another
      run's stage, as a further layer's collect rows are by its parent's collect pass).
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    output: str = ""
    execution: ClassVar[Execution] = "shards"
    wants_gpu: ClassVar[bool] = False
    on_change: ClassVar[Literal["refuse", "redo"]] = "redo"
    lease_window: ClassVar[int] = 1
    resources: ClassVar[Resources] = Resources()
    owns_output: ClassVar[bool] = True

    def __init__(self) -> None:
        if not self.output:
            self.output = self.name

    def for_config(self, cfg: Config) -> Stage[Any]:
        """The stage that does ``cfg``'s work under this name: this one, unless a config selects
        another implementation (collect in a class atlas copies its parent's rows)."""
        return self

    def check(self, cfg: Config, run: RunDir) -> None:
        """Refuse, with a one-line user error, a config this stage cannot run (a missing image
        source, ...); called before anything is written, so a mistake leaves no trace in the run."""

    def settings(self, cfg: Config) -> dict[str, Any]:
        """The config values that decide this stage's outputs (JSON-able)."""
        raise NotImplementedError

    def open(self, job: Job) -> Ctx:
        """Everything a process needs to run units (inputs read, network loaded): the stage's context."""
        raise NotImplementedError

    def create(self, ctx: Ctx) -> None:
        """Create the (empty) outputs; called once per attempt, under the stage lock, before any unit."""

    def units(self, ctx: Ctx) -> list[str]:
        """Every unit's name, in the order they run (a shard owns every n-th)."""
        raise NotImplementedError

    def forget(self, ctx: Ctx, done: frozenset[str]) -> set[str]:
        """The units of ``done`` to run again (their data are gone or obsolete): the runner clears
        their done markers, under the stage lock, after :meth:`open`. Default: none."""
        return set()

    def run_units(self, ctx: Ctx, units: list[str]) -> Iterator[tuple[str, UnitInfo]]:
        """Run ``units`` (leased by this process, not done); yield ``(unit, info)`` once its data are on disk."""
        raise NotImplementedError

    def finish(self, ctx: Ctx) -> dict[str, Any]:
        """Run once, by the process that completes the last unit, under the stage lock; returns
        what the ``final`` marker records."""
        return {}

    def scope(self, cfg: Config, done: frozenset[str]) -> Any:
        """The part of the stage's work this config asks for, when it may grow later without a redo
        (render: ``render.levels``), given the units done so far; recorded in the ``final`` marker.
        None: all of it."""
        return None

    def refresh(self, job: Job) -> bool:
        """Called instead of any work when a finished stage is run again with the same settings
        (tile: bring the viewer's files up to date). True: its outputs are missing, and the
        runner redoes the stage (forgets its ``final`` marker and runs it as usual)."""
        return False

    def provenance(self, ctx: Ctx) -> dict[str, Any]:
        """Extra provenance for ``RUN/config.yaml`` (e.g. the weights' hash)."""
        return {}

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Stage-specific figures for ``atlas status`` (numbers and short strings)."""
        return {}

    def __repr__(self) -> str:
        return f"<stage {self.name}>"
