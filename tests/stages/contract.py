"""The contract every stage passes: idempotent rerun, resume after SIGKILL, shard split.

A stage's test module calls these with its own (already prepared) config overrides.
Stages run in subprocesses through the real CLI, so a kill is a real ``kill -9``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import DEMO, ROOT, assert_groups_equal


def cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "atlas", *args], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"atlas {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return p


def run_stage(stage: str, overrides: list[str], *extra: str) -> subprocess.CompletedProcess:
    return cli(stage, str(DEMO), *[f"--set={o}" for o in overrides], *extra)


def kill_when(stage: str, overrides: list[str], run_dir: Path, min_done: int, timeout: float = 300) -> int:
    """Start the stage, SIGKILL it once ``min_done`` unit markers exist; return markers seen."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "atlas", stage, str(DEMO), *[f"--set={o}" for o in overrides]],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = run_dir / "state" / stage / "done"
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            n = len(list(done_dir.glob("*"))) if done_dir.is_dir() else 0
            if n >= min_done:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return n
            if proc.poll() is not None:
                raise AssertionError(f"{stage} ended (rc={proc.returncode}) before it could be killed")
            time.sleep(0.05)
        raise AssertionError(f"{stage} made no {min_done} markers in {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def check_idempotent(stage: str, overrides: list[str], run_dir: Path) -> None:
    """A second run of a finished stage does no work and changes nothing."""
    before = {p: p.stat().st_mtime_ns for p in (run_dir / stage).rglob("*") if p.is_file()}
    run_stage(stage, overrides)
    after = {p: p.stat().st_mtime_ns for p in (run_dir / stage).rglob("*") if p.is_file()}
    assert before == after


def check_resume_after_kill(stage: str, overrides: list[str], run_dir: Path, reference: Path, min_done: int = 2) -> None:
    """kill -9 mid-stage, rerun: the arrays equal an uninterrupted run's, bit for bit."""
    kill_when(stage, overrides, run_dir, min_done)
    run_stage(stage, overrides)
    assert_groups_equal(run_dir / stage, reference / stage)


def check_shard_split(stage: str, overrides: list[str], run_dir: Path, reference: Path, n: int = 3) -> None:
    """n shards run one after another give the arrays of a single run."""
    for i in range(n):
        run_stage(stage, overrides, "--shard", f"{i}/{n}")
    assert_groups_equal(run_dir / stage, reference / stage)
