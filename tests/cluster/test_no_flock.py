"""A run directory where flock fails, through the real CLI: by default every command stops at once
with one line naming the file system and the choices; with `cluster.locking: none`, a whole atlas
made by concurrent `--shard i/n` processes (as SLURM array tasks run) is the in-process run's,
bit for bit and file for file.

flock is made to fail in every process the test starts (a `sitecustomize` on PYTHONPATH replaces
`fcntl.flock` with one that raises ENOSYS, as on a Lustre mount without its `flock` option): no
local file system here lacks flock, and a FUSE mount needs what a test machine may not have. The
probe, the refusal and the lock-free mode run unchanged; only the system call fails.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cluster.util import ATLAS, DEMO, ROOT, assert_runs_equal, atlas, env, sets

pytestmark = pytest.mark.slow

_SHIM = """\
import errno
import fcntl


def _no_flock(*_):
    raise OSError(errno.ENOSYS, "Function not implemented")


fcntl.flock = _no_flock
"""


@pytest.fixture(scope="module")
def no_flock(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a process whose flock fails."""
    shim = tmp_path_factory.mktemp("no-flock")
    (shim / "sitecustomize.py").write_text(_SHIM)
    return {"PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"}


def _shards(stage: str, run_dir: Path, n: int, extra_env: dict[str, str]) -> None:
    """``n`` processes running shards i/n of ``stage`` at once."""
    cmd = [ATLAS, stage, str(DEMO), *sets(run_dir, "cluster.locking=none")]
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/{n}"], cwd=ROOT, env=env(**extra_env), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [e[-3000:] for e in errs]


def test_without_flock_a_run_stops_in_one_line_naming_the_fix(no_flock: dict[str, str], tmp_path: Path) -> None:
    p = atlas("run", str(DEMO), *sets(tmp_path / "run"), check=False, **no_flock)
    assert p.returncode == 2, p.stderr[-3000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "flock does not work in" in lines[0] and "file system mounted at" in lines[0]
    assert "ENOSYS" in lines[0] and "set cluster.locking: none" in lines[0]


def test_the_lock_free_mode_makes_the_same_atlas_from_static_shards(no_flock: dict[str, str], whole_run: Path,
                                                                    tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _shards("collect", run_dir, 2, no_flock)
    for stage in ("reduce", "grid"):
        atlas(stage, str(DEMO), *sets(run_dir, "cluster.locking=none"), **no_flock)
    _shards("render", run_dir, 3, no_flock)
    _shards("tile", run_dir, 2, no_flock)
    assert_runs_equal(whole_run, run_dir)
    locks = [p for p in (run_dir / "state").rglob("locks/*")]
    assert locks == [], locks  # no lease files, and every owner marker was removed by its owner
