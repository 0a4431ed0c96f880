"""The one unit runner: every stage resumes, shards and refuses unfinished inputs the same way.

State of stage ``X`` in ``RUN/state/X/`` (see :mod:`atlas.store`)::

    setup.json      fingerprint, settings and input fingerprints of the current attempt
    units.json      the names of all its units (for ``atlas status``)
    done/<unit>     done markers, written after the unit's data are on disk
    done/final      written last, by the process that finishes the stage: fingerprint, inputs
    locks/<unit>    leases held while a process runs a unit (flock; none with cluster.locking: none)

Completeness is read from done markers only: a stage is finished when its ``final`` marker
holds its current fingerprint. A stage's fingerprint hashes its settings and the
fingerprints its inputs finished with, so redoing a stage makes every stage after it
*stale*: ``atlas status`` says so, a stage refuses stale inputs, and ``atlas run`` redoes
them in order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._names import ANALYSES
from ..config import Config, config_to_dict, provenance, run_config_text
from ..progress import Bar, plural, progress, stage_logger
from ..store import RunDir, StoreError, atomic_write_text, fingerprint
from ._protocol import Ctx, Job, Stage, StageStatus, UnitInfo

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["FINAL", "UnitRecords", "run_stage", "stage_status", "finished", "check_inputs", "final_info", "is_stale",
           "save_run_config", "my_units", "done_units", "stage_elapsed"]

FINAL = "final"
_KEEP = ("locks", "failed")  # state entries that survive a redo (held leases, failure records)
LOG_EVERY_S = 30.0  # the shard's count of units done is logged at most this often (CI and SLURM logs)


def my_units(units: list[str], shard: tuple[int, int]) -> list[str]:
    """The units a shard owns: every n-th unit starting at i (round robin keeps shards balanced)."""
    i, n = shard
    return units[i::n]


def final_info(run: RunDir, name: str) -> dict[str, Any] | None:
    """The ``final`` marker of stage ``name`` (None while it is unfinished)."""
    path = run.state_path(name) / "done" / FINAL
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return None


def _stage(name: str) -> Stage[Any]:
    from . import get_stage

    return get_stage(name)


def done_units(run: RunDir, name: str) -> frozenset[str]:
    """The units of stage ``name`` with a done marker (the ``final`` marker aside)."""
    return frozenset(run.done_units(name) - {FINAL})


class UnitRecords(Mapping[str, UnitInfo]):
    """What each done unit of one stage recorded (``Job.done``), read from its marker at each
    access: units that other processes finish meanwhile appear too."""

    def __init__(self, run: RunDir, name: str) -> None:
        self._run, self._name = run, name

    def __getitem__(self, unit: str) -> UnitInfo:
        if unit == FINAL or not self._run.is_done(self._name, unit):
            raise KeyError(unit)
        return dict(self._run.read_json(f"state/{self._name}/done/{unit}") or {})

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(done_units(self._run, self._name)))

    def __len__(self) -> int:
        return len(done_units(self._run, self._name))


def is_stale(run: RunDir, stage: Stage[Any]) -> bool:
    """Finished, but an input stage was redone (or is being redone) since."""
    final = final_info(run, stage.name)
    if final is None:
        return False
    recorded = final.get("inputs", {})
    for name in stage.inputs:
        inp = final_info(run, name)
        if inp is None or inp.get("fingerprint") != recorded.get(name) or is_stale(run, _stage(name)):
            return True
    return False


def _units_done(run: RunDir, name: str) -> str:
    try:
        units = json.loads((run.state_path(name) / "units.json").read_text())
    except (FileNotFoundError, ValueError):
        return "not started"
    done = run.done_units(name)
    return f"{sum(u in done for u in units)}/{plural(len(units), 'unit')} done"


def _finish_command(run: RunDir, name: str) -> str:
    """The command that finishes stage ``name`` of ``run`` (a further layer's run: through its run's config)."""
    parent = run.root.parent.parent
    if run.root.parent.name == "layers" and (parent / "config.yaml").is_file():
        return (f"`atlas run {parent / 'config.yaml'} --layer {run.root.name}` (it collects the layer first if "
                "needed)") if name == "collect" else f"`atlas {name} {parent / 'config.yaml'} --layer {run.root.name}`"
    return f"`atlas {name} {run.root / 'config.yaml'}` (or `atlas run` with your config)"


def check_inputs(stage: Stage[Any], run: RunDir) -> dict[str, str]:
    """The fingerprints the input stages finished with; a one-line StoreError naming the
    first unfinished or stale input and the command that finishes it."""
    out: dict[str, str] = {}
    for name in stage.inputs:
        cmd = _finish_command(run, name)
        info = final_info(run, name)
        if info is None:
            raise StoreError(f"`{stage.name}` needs a finished `{name}`, which is {_units_done(run, name)} in "
                             f"{run.root}: run {cmd} first; rerunning resumes it")
        if is_stale(run, _stage(name)):
            raise StoreError(f"`{stage.name}` needs `{name}`, which is stale (a stage before it was redone) in "
                             f"{run.root}: run {cmd} first to redo it")
        out[name] = str(info["fingerprint"])
    return out


def finished(stage: Stage[Any], cfg: Config) -> bool:
    """Whether ``stage`` is finished for ``cfg`` (its ``final`` marker holds the current fingerprint)."""
    run = RunDir.of(cfg)
    try:
        inputs = check_inputs(stage, run)
    except StoreError:
        return False
    scope = stage.scope(cfg, done_units(run, stage.name))
    try:
        settings = stage.settings(cfg)
    except StoreError:  # an input of another run directory not finished (a further layer's collect)
        return False
    return _is_current(final_info(run, stage.name), _fingerprint(stage, settings, inputs), scope)


def _fingerprint(stage: Stage[Any], settings: dict[str, Any], inputs: dict[str, str]) -> str:
    return fingerprint({"stage": stage.name, "settings": settings, "inputs": inputs})


def _is_current(final: dict[str, Any] | None, fp: str, scope: Any) -> bool:
    """A ``final`` marker that holds this fingerprint and covers this scope."""
    return final is not None and final.get("fingerprint") == fp and final.get("scope") == scope


# --------------------------------------------------------------------------- attempts


def _read_setup(run: RunDir, name: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads((run.state_path(name) / "setup.json").read_text()))
    except (FileNotFoundError, ValueError):
        return None


def _wipe(stage: Stage[Any], run: RunDir) -> None:
    """Forget an attempt: its setup first (a crash midway then starts over), then markers, side
    data and outputs. Leases and failure records stay."""
    state = run.state_path(stage.name)
    with contextlib.suppress(FileNotFoundError):
        (state / "setup.json").unlink()
    run.clear_done(stage.name, FINAL)
    if state.is_dir():
        for p in state.iterdir():
            if p.name not in _KEEP:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    if stage.owns_output:
        shutil.rmtree(run.stage_path(stage.output), ignore_errors=True)


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two settings dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [f"{prefix}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"]


def _check_attempt(stage: Stage[Any], job: Job, fp: str, settings: dict[str, Any], inputs: dict[str, str]) -> bool:
    """Under the stage lock: keep the current attempt (True), or forget it (False) when its
    inputs or settings changed; a ``refuse`` stage with other settings raises instead."""
    setup = _read_setup(job.run, stage.name)
    if setup is None:
        return False
    if setup.get("fingerprint") == fp:
        return True
    if setup.get("inputs") != inputs:  # the outputs are obsolete whatever the settings: always redo
        job.log.warning("%s: its inputs were redone since the last attempt: redoing the stage", stage.name)
        return False
    changed = _diff(setup.get("settings"), settings)
    if changed and stage.on_change == "refuse":
        raise StoreError(f"{job.run.stage_path(stage.output)} was made with other settings ({'; '.join(changed[:4])}"
                         f"{'; ...' if len(changed) > 4 else ''}): use a new run_dir, or delete "
                         f"{job.run.stage_path(stage.output)} and {job.run.state_path(stage.name)} to redo `{stage.name}`")
    job.log.warning("%s: settings changed since the last attempt (%s): redoing the stage", stage.name,
                    "; ".join(changed[:3]))
    return False


def save_run_config(cfg: Config, run: RunDir, extra: dict[str, Any] | None = None) -> None:
    """Write RUN/config.yaml: the resolved config plus provenance, keeping earlier stages' extras (atomic).
    Its ``run_dir`` is written ``.``: loading the file resolves it to the file's folder."""
    import yaml

    path = run.root / "config.yaml"
    old: dict[str, Any] = {}
    with contextlib.suppress(FileNotFoundError, yaml.YAMLError, AttributeError):
        old = dict((yaml.safe_load(path.read_text()) or {}).get("provenance") or {})
    atomic_write_text(path, run_config_text(cfg, {**old, **provenance(), **(extra or {})}))


def _save_call_config(stage: Stage[Any], cfg: Config, run: RunDir) -> None:
    """An analysis's inputs (``atlas locate``'s images, ``atlas patch-test``'s keys): the config of
    its latest call, in ``RUN/state/<stage>/config.yaml``; the run's own config.yaml is never rewritten."""
    import yaml

    data = config_to_dict(cfg)
    data.pop("run_dir", None)
    atomic_write_text(run.state_path(stage.name) / "config.yaml",
                      f"# the config of the latest `atlas {stage.name}` call on this run (its run directory aside)\n"
                      + yaml.safe_dump(data, sort_keys=False) + "\n"
                      + yaml.safe_dump({"provenance": provenance()}, sort_keys=False))


def _start(stage: Stage[Ctx], job: Job, fp: str, settings: dict[str, Any],
           inputs: dict[str, str]) -> tuple[Ctx, list[str]]:
    """Open the stage; create its outputs when this attempt is new; forget the done units the
    stage names (:meth:`~atlas.stages.StageBase.forget`). Returns the context and the units."""
    run = job.run
    with run.stage_lock(stage.name):
        keep = _check_attempt(stage, job, fp, settings, inputs)
        if not keep:
            _wipe(stage, run)
    ctx = stage.open(job)
    with run.stage_lock(stage.name):
        if _read_setup(run, stage.name) is None:
            _wipe(stage, run)
            stage.create(ctx)
            if stage.name not in ANALYSES:
                save_run_config(job.cfg, run, stage.provenance(ctx))
            run.write_json(f"state/{stage.name}/setup.json", {"fingerprint": fp, "settings": settings, "inputs": inputs})
        elif stage.name not in ANALYSES and stage.scope(job.cfg, done_units(run, stage.name)) is not None:
            save_run_config(job.cfg, run, stage.provenance(ctx))  # the scope grew (a layer, a level): say so
        if stage.name in ANALYSES:
            _save_call_config(stage, job.cfg, run)
        _forget(stage, job, ctx)
        units = stage.units(ctx)
        path = run.state_path(stage.name) / "units.json"
        if not path.is_file() or json.loads(path.read_text()) != units:
            atomic_write_text(path, json.dumps(units))
    return ctx, units


def _forget(stage: Stage[Ctx], job: Job, ctx: Ctx) -> None:
    """Clear the done markers of the units the stage asks to run again (never ``final``)."""
    done = done_units(job.run, stage.name)
    gone = sorted(stage.forget(ctx, done) & done)
    if gone:
        job.log.info("%s: running %s again (their data are gone or obsolete)", stage.name,
                     plural(len(gone), "done unit"))
    for unit in gone:
        job.run.clear_done(stage.name, unit)


@contextlib.contextmanager
def _leased(run: RunDir, name: str, window: list[str]) -> Iterator[list[str]]:
    """Lease every unit of ``window`` that no live process holds and that is not done yet."""
    with contextlib.ExitStack() as stack:
        held = [u for u in window if stack.enter_context(run.lease(name, u)) and not run.is_done(name, u)]
        yield held


class _Count:
    """A shard's units done: its bar (one per process, on a terminal) and, every
    :data:`LOG_EVERY_S`, a log line with the same count (rate and ETA)."""

    def __init__(self, stage: str, log: logging.Logger, total: int) -> None:
        self.stage, self.log, self.total, self.done = stage, log, total, 0
        self.t0 = self.logged = time.monotonic()
        self.bar: Bar[None] = progress(total=total, desc=stage, unit="unit")

    def add(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        now = time.monotonic()
        if now - self.logged >= LOG_EVERY_S and self.done < self.total:
            self.logged = now
            rate = self.done / max(now - self.t0, 1e-9)
            self.log.info("%s: %d/%s done (%.2f units/s, ETA %.0f s)", self.stage, self.done,
                          plural(self.total, "unit"), rate, (self.total - self.done) / max(rate, 1e-9))


def _run_mine(stage: Stage[Ctx], job: Job, ctx: Ctx, todo: list[str]) -> int:
    """Run this shard's undone units, ``lease_window`` at a time; returns how many it ran."""
    ran = 0
    count = _Count(stage.name, job.log, len(todo))
    with count.bar:
        for k in range(0, len(todo), stage.lease_window):
            window = todo[k:k + stage.lease_window]
            with _leased(job.run, stage.name, window) as held:
                if len(held) < len(window):
                    job.log.info("skipping %s held by another process or done", plural(len(window) - len(held), "unit"))
                    count.add(len(window) - len(held))
                if not held:
                    continue
                for unit, info in stage.run_units(ctx, held):
                    job.run.mark_done(stage.name, unit, info)
                    ran += 1
                    count.add()
    return ran


def _maybe_finish(stage: Stage[Ctx], job: Job, ctx: Ctx, units: list[str], fp: str, inputs: dict[str, str]) -> bool:
    """Under the stage lock: finish the stage if every unit is done (once); returns finished."""
    run = job.run
    with run.stage_lock(stage.name):
        done = run.done_units(stage.name)
        missing = [u for u in units if u not in done]
        if missing:
            job.log.info("%s still to do (by other shards, or rerun to resume); the last one finishes the "
                         "stage", plural(len(missing), "unit"))
            return False
        scope = stage.scope(job.cfg, done_units(run, stage.name))
        if _is_current(final_info(run, stage.name), fp, scope):
            return True
        info = stage.finish(ctx)
        run.mark_done(stage.name, FINAL, {**info, "fingerprint": fp, "inputs": inputs, "scope": scope,
                                          "units": len(units)})
    job.log.info("%s complete (%s)", stage.name, plural(len(units), "unit"))
    return True


def run_stage(stage: Stage[Ctx], cfg: Config, shard: tuple[int, int] = (0, 1), client: Client | None = None,
              started: Callable[[], None] | None = None) -> bool:
    """Run shard ``shard`` of ``stage`` in this process; returns whether the stage is now finished.

    Idempotent: finished units are skipped, so rerunning a shard, or running it twice at
    once, is safe; a rerun of a finished stage with the same settings does nothing and says so
    (unless its :meth:`~atlas.stages.StageBase.refresh` finds its outputs gone: then it is redone).
    ``started`` is called once the checks are passed and the stage is open (inputs finished,
    settings and selection valid, sources found), before any unit runs: an error before it is
    a refusal, not a failure of the work (:func:`atlas.cluster.run_shard` records only failures).
    """
    if stage.execution != "shards" and tuple(shard) != (0, 1):
        raise ValueError(f"the {stage.name} stage runs as one job; got --shard {shard[0]}/{shard[1]}")
    run = RunDir.of(cfg)
    inputs = check_inputs(stage, run)
    stage.check(cfg, run)
    locking_note = run.check_locking()  # flock missing: a one-line refusal before anything is written
    settings = stage.settings(cfg)
    fp = _fingerprint(stage, settings, inputs)
    shard = (int(shard[0]), int(shard[1]))
    job = Job(cfg, run, shard, stage_logger(run.root, stage.name, shard), client, UnitRecords(run, stage.name), inputs)
    if locking_note:
        job.log.warning("%s", locking_note)
    if _is_current(final_info(run, stage.name), fp, stage.scope(cfg, done_units(run, stage.name))):
        if not stage.refresh(job):
            job.log.info("%s is already complete in %s with these settings: nothing to do", stage.name, run.root)
            return True
        job.log.warning("%s: its finished outputs are missing from %s: redoing it", stage.name, run.root)
        with run.stage_lock(stage.name):
            run.clear_done(stage.name, FINAL)
    ctx, units = _start(stage, job, fp, settings, inputs)
    if started is not None:
        started()
    done = run.done_units(stage.name)
    mine = my_units(units, job.shard)
    todo = [u for u in mine if u not in done]
    job.log.info("shard %d/%d: %d of its %s to do (%s in all)", shard[0], shard[1], len(todo),
                 plural(len(mine), "unit"), plural(len(units), "unit"))
    _run_mine(stage, job, ctx, todo)
    return _maybe_finish(stage, job, ctx, units, fp, inputs)


# --------------------------------------------------------------------------- status


def stage_elapsed(run: RunDir, name: str) -> float | None:
    """Seconds from the current attempt's start (``setup.json``) to its newest done unit (None
    before a unit is done): with the units done, the rate ``atlas status`` extrapolates."""
    state = run.state_path(name)
    try:
        start = (state / "setup.json").stat().st_mtime
        newest = max(p.stat().st_mtime for p in (state / "done").iterdir() if p.name not in (FINAL,)
                     and not p.name.startswith("."))
    except (FileNotFoundError, ValueError):
        return None
    return max(newest - start, 0.0)


def stage_status(stage: Stage[Any], run: RunDir) -> StageStatus:
    """Units done / total (the units the log and the bar count; the final step is the state:
    ``partial`` until it is done, even with every unit done), the state, and the stage's own figures."""
    state = run.state_path(stage.name)
    final = final_info(run, stage.name)
    try:
        units = list(json.loads((state / "units.json").read_text()))
    except (FileNotFoundError, ValueError):
        units = None
    if units is None and final is None:
        return StageStatus(stage.name, 0, None, "not started")
    if units is None:
        n_done = total = int(final.get("units", 0) if final else 0)
    else:
        done = run.done_units(stage.name)
        n_done, total = sum(u in done for u in units), len(units)
    if final is not None:
        st = "stale" if is_stale(run, stage) else "done"
    else:
        st = "partial"
    detail: dict[str, Any] = {}
    with contextlib.suppress(StoreError, FileNotFoundError, KeyError):
        detail = stage.detail(run)
    return StageStatus(stage.name, n_done, total, st, detail)
