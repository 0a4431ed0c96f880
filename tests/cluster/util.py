"""Helpers for the engine tests: the demo config shrunk for a whole atlas in about a minute,
runs through the real CLI and sbatch scripts, and comparison of two whole runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import DEMO, ROOT, assert_groups_equal

STAGES = ("collect", "reduce", "grid", "render", "tile")
ATLAS = str(Path(sys.executable).with_name("atlas"))

# A whole atlas in about a minute: 64 images in 4 chunks, 2 grid levels, ~6 render units.
WHOLE = [
    "images.demo_count=64",
    "images.demo_size=96",
    "model.input_size=128",
    "collect.chunk_rows=16",
    "collect.batch_size=8",
    "collect.workers=0",
    "grid.sizes=[4, 8]",
    "render.steps=8",
    "render.icon_size=16",
    "render.batch_size=6",
    "tile.unit_tiles=2",
]


def sets(run_dir: Path, *more: str) -> list[str]:
    return [f"--set=run_dir={run_dir}", *(f"--set={o}" for o in [*WHOLE, *more])]


def env(**extra: str) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    e.pop("SLURM_ARRAY_TASK_ID", None)
    e.update(extra)
    return e


def atlas(*args: str, check: bool = True, timeout: float = 900, **extra_env: str) -> subprocess.CompletedProcess:
    p = subprocess.run([ATLAS, *args], capture_output=True, text=True, env=env(**extra_env), cwd=ROOT, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"atlas {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return p


def status(run_dir: Path) -> dict[str, dict]:
    report = json.loads(atlas("status", str(run_dir), "--json").stdout)
    return {st["stage"]: st for st in report["stages"]}


def markers(run_dir: Path, stage: str) -> int:
    d = run_dir / "state" / stage / "done"
    return len(list(d.iterdir())) if d.is_dir() else 0


def wait_for(pred, timeout: float, what: str, procs: list[subprocess.Popen] = ()) -> None:
    t0 = time.time()
    while not pred():
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"{what}: a process ended with {p.returncode} while waiting")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def kill(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_runs_equal(a: Path, b: Path) -> None:
    """Every stage's arrays bit for bit, and every tile/viewer file byte for byte."""
    for stage in STAGES[:4]:
        assert_groups_equal(a / stage, b / stage)
    ta, tb = tree(a / "tiles"), tree(b / "tiles")
    assert sorted(ta) == sorted(tb)
    diff = [k for k in ta if ta[k] != tb[k]]
    assert not diff, f"tile files differ: {diff[:5]}"


__all__ = ["DEMO", "ROOT", "WHOLE", "ATLAS", "sets", "env", "atlas", "status", "markers", "wait_for", "kill",
           "assert_runs_equal", "STAGES"]
