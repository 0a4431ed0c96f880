"""The contract every stage keeps, as a reusable test class (like zarr-python's store tests).

A stage's test module subclasses :class:`StageContract` and sets a few class attributes::

    class TestGridContract(StageContract):
        stage = "grid"
        shardable = False
        redo = ("collect", "collect.top_k=5")

and inherits the tests: a rerun of a finished stage does nothing, a ``kill -9`` at a random
unit resumes to bit-identical outputs, shards give the outputs of one process (or are
refused), unfinished or stale inputs are refused. Every run goes through the real CLI in
a subprocess, on the tiny settings of :data:`tests.cluster.util.WHOLE`; the inputs are
copies of the session's whole tiny atlas (``tests/conftest.py::whole_run``) with the later
stages removed, so a class costs about one run of its own stage per test.

An *analysis* (``atlas.stages.ANALYSES``: ``atlas locate``, ``atlas patch-test``) keeps the same
contract on a finished atlas: its inputs are the whole tiny atlas (nothing of any analysis), its
reference that plus one run of its own command (with the class's ``overrides`` and ``cli_args``),
and a redo of a pipeline stage makes every later pipeline stage stale, then the analysis.

``ATLAS_KILL_SEED=N`` reproduces the kill points of an earlier run (each failure says its seed).
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from atlas.api import status
from atlas.config import load_config
from atlas.stages import ANALYSES, STAGES, check_inputs, get_stage
from atlas.store import RunDir, StoreError
from tests.cluster.util import WHOLE, atlas, env, sets, tree
from tests.conftest import DEMO, ROOT, assert_groups_equal

__all__ = ["StageContract", "Runs", "KILL_SEED", "FAST_RENDER", "prepared_run", "copy_run", "drop_stages", "run_killed",
           "stage_cli", "one_line_error", "mark_finished"]

KILL_SEED = int(os.environ.get("ATLAS_KILL_SEED") or random.SystemRandom().randrange(1 << 32))
"""Seeds where the kill tests stop a stage; set ``ATLAS_KILL_SEED`` to replay a failure."""

FAST_RENDER = ("render.steps=1",)
"""One optimisation step per icon: what the render and tile contracts use (they share its runs)."""


# --------------------------------------------------------------------------- run directories


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run directory (file times kept)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def drop_stages(run_dir: Path, after: str | None) -> Path:
    """Remove the outputs and state of every pipeline stage after ``after`` (all of them for None)
    and of every analysis (they come after the whole pipeline)."""
    start = 0 if after is None else STAGES.index(after) + 1
    for name in (*STAGES[start:], *ANALYSES):
        shutil.rmtree(run_dir / get_stage(name).output, ignore_errors=True)
        shutil.rmtree(run_dir / "state" / name, ignore_errors=True)
    return run_dir


def _first_changed(overrides: tuple[str, ...]) -> int:
    """Index of the first stage whose settings ``overrides`` change from the whole run's."""
    if not overrides:
        return len(STAGES)
    base, new = load_config(DEMO, list(WHOLE)), load_config(DEMO, [*WHOLE, *overrides])
    for i, name in enumerate(STAGES):
        if get_stage(name, base).settings(base) != get_stage(name, new).settings(new):  # the config's own stage
            return i
    return len(STAGES)


_PREPARED: dict[tuple[str | None, tuple[str, ...], tuple[str, ...]], Path] = {}


def prepared_run(whole_run: Path, factory: pytest.TempPathFactory, upto: str | None,
                 overrides: tuple[str, ...] = (), args: tuple[str, ...] = ()) -> Path:
    """A run directory whose stages up to ``upto`` (none for None) are finished with the tiny
    settings plus ``overrides``, and no later stage has started. Shared by the session:
    copy it before running anything in it.

    Stages the overrides leave alone come from the whole tiny atlas; the others are run
    through the CLI, once per session. ``upto`` an analysis: the whole atlas (every pipeline
    stage) plus one run of ``atlas <analysis> DEMO <args> --set ...`` (no other analysis)."""
    key = (upto, tuple(overrides), tuple(args))
    if key in _PREPARED:
        return _PREPARED[key]
    if upto in ANALYSES:
        run_dir = copy_run(prepared_run(whole_run, factory, STAGES[-1], overrides), factory.mktemp(f"upto-{upto}") / "run")
        stage_cli(upto, run_dir, overrides, *args)
    elif upto is None:
        run_dir = factory.mktemp("inputs-none") / "run"
        run_dir.mkdir()
    elif STAGES.index(upto) < _first_changed(tuple(overrides)):
        run_dir = drop_stages(copy_run(whole_run, factory.mktemp(f"upto-{upto}") / "run"), upto)
    else:
        before = STAGES[STAGES.index(upto) - 1] if STAGES.index(upto) else None
        run_dir = copy_run(prepared_run(whole_run, factory, before, overrides), factory.mktemp(f"upto-{upto}") / "run")
        atlas(upto, str(DEMO), *sets(run_dir, *overrides))
    _PREPARED[key] = run_dir
    return run_dir


def mark_finished(run_dir: Path, *stages: str) -> None:
    """Give hand-made (synthetic) stage outputs the runner's ``final`` markers, in order, each
    recording its inputs' fingerprints, so the stages after them take them as finished."""
    run = RunDir(run_dir)
    for name in stages:
        recorded = {}
        for inp in get_stage(name).inputs:
            info = run.read_json(f"state/{inp}/done/final") if run.is_done(inp, "final") else None
            if info is not None:
                recorded[inp] = info["fingerprint"]
        run.mark_done(name, "final", {"fingerprint": f"synthetic-{name}", "inputs": recorded, "scope": None})


# --------------------------------------------------------------------------- the CLI


def stage_cli(stage: str, run_dir: Path, overrides: tuple[str, ...], *args: str,
              check: bool = True) -> subprocess.CompletedProcess:
    """``atlas STAGE demo.yaml ARGS --set ...`` on the tiny settings plus ``overrides`` (``args``: the
    command's own arguments and options, e.g. locate's images or ``--shard``)."""
    return atlas(stage, str(DEMO), *args, *sets(run_dir, *overrides), check=check)


def one_line_error(p: subprocess.CompletedProcess, *words: str) -> str:
    """Assert that the command failed with exit 2 and exactly one line holding ``words``; return it."""
    assert p.returncode == 2, f"exit {p.returncode}, expected 2:\n{p.stderr[-3000:]}"
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{p.stderr[-3000:]}"
    for w in words:
        assert w in lines[0], f"{w!r} not in: {lines[0]}"
    return lines[0]


# Runs the real CLI, and SIGKILLs the process a random moment after the stage's n-th done
# marker: before any further marker, possibly mid-way through writing the next unit's data.
# (A kill from outside, polling the markers, cannot stop fast units at a chosen count.)
_KILL_HOOK = r"""
import os, signal, sys, threading, time
from atlas.store import RunDir

stage, after, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
mark_done, fired = RunDir.mark_done, threading.Event()


def _kill():
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


def mark_done_then_die(self, name, unit, info=None):
    if fired.is_set():
        time.sleep(3600)  # the SIGKILL is on its way: no marker after the n-th
    mark_done(self, name, unit, info)
    if name == stage and len(self.done_units(name) - {"final"}) >= after:
        fired.set()
        threading.Thread(target=_kill, daemon=True).start()


RunDir.mark_done = mark_done_then_die
from atlas.cli import main

sys.exit(main(sys.argv[4:]))
"""


def run_killed(stage: str, run_dir: Path, overrides: tuple[str, ...], after: int,
               delay: float = 0.0, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``atlas STAGE DEMO ARGS --set ...`` and kill -9 it ``delay`` s after its ``after``-th done marker."""
    args = (stage, str(DEMO), *args, *sets(run_dir, *overrides))
    return subprocess.run([sys.executable, "-c", _KILL_HOOK, stage, str(after), str(delay), *args],
                          capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)


def _snapshot(paths: list[Path]) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every file and folder under ``paths``."""
    out = {}
    for root in paths:
        for p in [root, *sorted(root.rglob("*"))]:
            st = p.stat()
            out[str(p)] = (st.st_mtime_ns, st.st_size if p.is_file() else 0)
    return out


def _units(run_dir: Path, stage: str) -> list[str]:
    return list(json.loads((run_dir / "state" / stage / "units.json").read_text()))


def _states(run_dir: Path) -> dict[str, str]:
    """Each stage's state as ``atlas status`` reports it."""
    return {st["stage"]: st["state"] for st in status(run_dir)["stages"]}


def _final(run_dir: Path, stage: str) -> dict[str, Any]:
    return dict(json.loads((run_dir / "state" / stage / "done" / "final").read_text()))


# --------------------------------------------------------------------------- the contract


@dataclass(frozen=True)
class Runs:
    """Read-only runs of one stage's contract (copy them to run anything in them)."""

    inputs: Path  # the stage's inputs finished, the stage not started
    reference: Path  # ... and the stage finished in one uninterrupted process


class StageContract:
    """Tests every stage passes; a subclass names the stage and its tiny settings.

    Class attributes:
      ``stage``: the stage's name (a pipeline stage or an analysis).
      ``overrides``: ``key=value`` settings on top of the tiny whole atlas (``WHOLE``).
      ``cli_args``: arguments of the stage's own command before its ``--set`` options, on every
      call of it (rerun, kill, shards, refusals): ``atlas locate`` takes its images so.
      ``shardable``: ``--shard i/n`` splits its units (else it is refused).
      ``kill_after``: done units before the kill in ``test_resume_after_kill`` (None: a random
      number between 1 and all but one, from :data:`KILL_SEED`).
      ``output_kind``: ``zarr`` (arrays compared bit for bit) or ``files`` (byte for byte).
      ``redo``: ``(stage, "key=value")``: an earlier stage redone with another setting of
      its own, which makes this stage stale (stages with inputs); for an analysis, a pipeline
      stage: every later pipeline stage, then the analysis, become stale.
      ``reads``: stages an analysis reads besides its ``inputs`` (patch-test's ``cell:`` patch
      reads render): not tracked, so never what makes it stale, but refused the same way,
      unfinished or stale, in one line naming the stage and the command that finishes it.
      ``refused``: ``("key=value", "key: old -> new")``: other settings the finished stage
      refuses, and how the refusal names them (stages that refuse changes).
      ``accepted``: settings that do not change the stage's outputs: a rerun with them does nothing.
      ``slow``: names of the inherited tests marked ``slow`` for this stage (over ~30 s here).
    """

    stage: ClassVar[str]
    overrides: ClassVar[tuple[str, ...]] = ()
    cli_args: ClassVar[tuple[str, ...]] = ()
    shardable: ClassVar[bool] = True
    kill_after: ClassVar[int | None] = None
    output_kind: ClassVar[str] = "zarr"
    redo: ClassVar[tuple[str, str] | None] = None
    reads: ClassVar[tuple[str, ...]] = ()
    refused: ClassVar[tuple[tuple[str, str], ...]] = ()
    accepted: ClassVar[tuple[str, ...]] = ()
    slow: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Mark this stage's ``slow`` tests (on a wrapper: the base class's functions stay unmarked)."""
        super().__init_subclass__(**kwargs)
        for name in cls.slow:
            test = getattr(cls, name)

            @functools.wraps(test)
            def wrapper(self: StageContract, *args: Any, _test: Any = test, **kw: Any) -> None:
                _test(self, *args, **kw)

            wrapper.__dict__.pop("pytestmark", None)
            setattr(cls, name, pytest.mark.slow(wrapper))

    # ------------------------------------------------------------------ helpers

    @pytest.fixture(scope="class")
    @classmethod
    def runs(cls, whole_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
        """The stage's inputs, ready (the stages before it run once, through the CLI), and a reference run."""
        return cls.prepare(whole_run, tmp_path_factory)

    @classmethod
    def prepare(cls, whole_run: Path, factory: pytest.TempPathFactory) -> Runs:
        """What :meth:`runs` returns (for a subclass's own ``runs`` fixture that sets its settings
        first). An analysis's inputs: the whole atlas."""
        if cls.stage in ANALYSES:
            before = STAGES[-1]
        else:
            i = STAGES.index(cls.stage)
            before = STAGES[i - 1] if i else None
        inputs = prepared_run(whole_run, factory, before, cls.overrides)
        reference = prepared_run(whole_run, factory, cls.stage, cls.overrides, cls.cli_args)
        return Runs(inputs, reference)

    @property
    def analysis(self) -> bool:
        return self.stage in ANALYSES

    def cli(self, run_dir: Path, *opts: str, more: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
        """``atlas <stage>`` on ``run_dir`` with this class's arguments, options ``opts`` and settings plus ``more``."""
        return stage_cli(self.stage, run_dir, (*self.overrides, *more), *self.cli_args, *opts, check=check)

    def output(self, run_dir: Path) -> Path:
        return run_dir / get_stage(self.stage).output

    def assert_same_outputs(self, run_dir: Path, reference: Path, why: str = "") -> None:
        """The stage's outputs in ``run_dir`` equal the reference's: arrays bit for bit, or every file byte for byte."""
        if self.output_kind == "zarr":
            assert_groups_equal(self.output(run_dir), self.output(reference))
            return
        got, want = tree(self.output(run_dir)), tree(self.output(reference))
        assert sorted(got) == sorted(want), f"{why}: files differ: {sorted(set(got) ^ set(want))[:8]}"
        diff = [k for k in got if got[k] != want[k]]
        assert not diff, f"{why}: contents differ: {diff[:8]}"

    # ------------------------------------------------------------------ (a)

    def test_rerun_does_nothing(self, runs: Runs, tmp_path: Path) -> None:
        """A rerun of a finished stage touches none of its outputs or state, and says so."""
        run_dir = copy_run(runs.reference, tmp_path / "run")
        watched = [self.output(run_dir), run_dir / "state" / self.stage]
        before = _snapshot(watched)
        p = self.cli(run_dir)
        assert "is already complete" in p.stderr and "nothing to do" in p.stderr, p.stderr[-2000:]
        after = _snapshot(watched)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        assert not changed, f"a rerun of a finished {self.stage} changed {changed[:8]}"

    # ------------------------------------------------------------------ (b)

    def test_resume_after_kill(self, runs: Runs, tmp_path: Path) -> None:
        """kill -9 after a random number of units, rerun: the outputs of an uninterrupted run."""
        total = len(_units(runs.reference, self.stage))
        assert total >= 2, f"{self.stage}: the tiny settings give {total} unit(s); the contract needs 2 or more"
        rng = random.Random(f"{KILL_SEED}-{self.stage}")
        after = self.kill_after if self.kill_after is not None else rng.randint(1, total - 1)
        delay = rng.choice([0.0, rng.uniform(0.0, 0.2)])
        why = (f"{self.stage} killed {delay:.3f} s after {after} of {total} units (ATLAS_KILL_SEED={KILL_SEED} "
               f"replays it)")
        run_dir = copy_run(runs.inputs, tmp_path / "run")
        p = run_killed(self.stage, run_dir, self.overrides, after, delay, self.cli_args)
        assert p.returncode == -9, f"{why}: it ended with {p.returncode} instead:\n{p.stderr[-3000:]}"
        done = RunDir(run_dir).done_units(self.stage)
        assert "final" not in done and len(done) == after, f"{why}: done markers {sorted(done)}"
        assert _states(run_dir)[self.stage] == "partial", why
        self.cli(run_dir)
        assert "final" in RunDir(run_dir).done_units(self.stage), why
        try:
            self.assert_same_outputs(run_dir, runs.reference, why)
        except AssertionError as e:
            raise AssertionError(f"{why}: {e}") from e

    # ------------------------------------------------------------------ (c)

    def test_shards_match_single(self, runs: Runs, tmp_path: Path) -> None:
        """Three shards one after another give the outputs of one process; a single-job stage refuses shards."""
        stage = get_stage(self.stage)
        assert self.shardable == (stage.execution == "shards"), f"{self.stage} runs as {stage.execution!r}"
        run_dir = copy_run(runs.inputs, tmp_path / "run")
        if not self.shardable:
            one_line_error(self.cli(run_dir, "--shard", "1/3", check=False), self.stage, "1/3")
            assert not self.output(run_dir).exists() and not (run_dir / "state" / self.stage / "failed").exists()
            return
        for i in range(3):
            self.cli(run_dir, "--shard", f"{i}/3")
            assert ("final" in RunDir(run_dir).done_units(self.stage)) == (i == 2), f"after shard {i}/3"
        self.assert_same_outputs(run_dir, runs.reference, "3 shards")

    # ------------------------------------------------------------------ (d)

    def test_refuses_unfinished_or_stale_inputs(self, runs: Runs, tmp_path: Path) -> None:
        """An unfinished or stale input is refused in one line; ``atlas run`` redoes stale stages.
        A stage without inputs refuses other settings instead, naming each key and both values."""
        if not get_stage(self.stage).inputs:
            self._check_other_settings(runs, tmp_path)
            return
        self._check_unfinished_inputs(runs, tmp_path)
        self._check_stale_inputs(runs, tmp_path)

    def _check_other_settings(self, runs: Runs, tmp_path: Path) -> None:
        assert self.refused, f"{self.stage} has no inputs: name settings it refuses in `refused`"
        run_dir = copy_run(runs.reference, tmp_path / "settings")
        final = _final(run_dir, self.stage)
        for setting, diff in self.refused:
            one_line_error(self.cli(run_dir, more=(setting,), check=False), "other settings", diff)
        for setting in self.accepted:
            p = self.cli(run_dir, more=(setting,))
            assert "nothing to do" in p.stderr, f"{setting}: {p.stderr[-2000:]}"
        assert _final(run_dir, self.stage) == final

    def _check_unfinished_inputs(self, runs: Runs, tmp_path: Path) -> None:
        """Each input unfinished in turn: the runner's input check names it (through the CLI for
        the last input, the stage's direct predecessor; in this process for the others). Each
        stage of ``reads`` unfinished: the command refuses it, naming it."""
        stage = get_stage(self.stage)
        run_dir = copy_run(runs.inputs, tmp_path / "unfinished")
        for name in (*stage.inputs, *self.reads):
            marker = run_dir / "state" / name / "done" / "final"
            saved = marker.read_bytes()
            marker.unlink()
            if name in stage.inputs:
                with pytest.raises(StoreError, match=f"needs a finished `{name}`, which is .*`atlas {name} "):
                    check_inputs(stage, RunDir(run_dir))
            if name == stage.inputs[-1] or name in self.reads:
                one_line_error(self.cli(run_dir, check=False), f"needs a finished `{name}`", f"atlas {name} ")
            marker.write_bytes(saved)
        assert not self.output(run_dir).exists(), "a refused stage created its outputs"
        assert not (run_dir / "state" / self.stage / "failed").exists(), "a refusal was recorded as a failure"

    def _check_stale_inputs(self, runs: Runs, tmp_path: Path) -> None:
        """Redo ``redo``'s stage with its setting: every later stage (up to this one; for an
        analysis every later pipeline stage, then the analysis) is stale, a stale input (or stage
        of ``reads``) is refused, and `atlas run` (then the analysis's command) redoes them."""
        assert self.redo is not None, f"{self.stage} has inputs: name an earlier stage to redo in `redo`"
        earlier, setting = self.redo
        upto = [*STAGES, self.stage] if self.analysis else list(STAGES[: STAGES.index(self.stage) + 1])
        assert earlier in STAGES and earlier in upto[:-1], f"redo names {earlier!r}, not a pipeline stage before {self.stage}"
        after = upto[upto.index(earlier) + 1:]
        run_dir = copy_run(runs.reference, tmp_path / "stale")
        old = _final(run_dir, self.stage)["fingerprint"]
        if get_stage(earlier).on_change == "refuse":  # its own message says: delete it to redo it
            drop = [run_dir / get_stage(earlier).output, run_dir / "state" / earlier]
            for p in drop:
                shutil.rmtree(p)
        stage_cli(earlier, run_dir, (*self.overrides, setting))
        states = _states(run_dir)  # what `atlas status` prints
        assert states[earlier] == "done" and all(states[s] == "stale" for s in after), \
            f"after redoing {earlier} with {setting}: {states}"
        stale = [s for s in (*get_stage(self.stage).inputs, *self.reads) if s in after]
        if stale:  # a direct input (or a stage it reads) is stale: refused, pointing at it
            one_line_error(self.cli(run_dir, more=(setting,), check=False), f"`{stale[0]}`", "stale", f"atlas {stale[0]} ")
            assert _final(run_dir, self.stage)["fingerprint"] == old
        pipeline = [s for s in upto if s in STAGES]
        atlas("run", str(DEMO), *sets(run_dir, *self.overrides, setting), "--stages", ",".join(pipeline))
        if self.analysis:  # not one of `atlas run`'s stages: its own command
            self.cli(run_dir, more=(setting,))
        states = _states(run_dir)
        assert all(states[s] == "done" for s in upto), f"after `atlas run` with {setting}: {states}"
        assert _final(run_dir, self.stage)["fingerprint"] != old, f"{self.stage} was not redone"
