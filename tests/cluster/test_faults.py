"""Faults on the real CLI: the same unit handed to two processes at once, a full disk, a
read-only or forbidden run directory, and failures reported by `atlas status`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.util import ATLAS, DEMO, ROOT, atlas, env, sets, status
from tests.conftest import assert_groups_equal


def _copy_until(whole_run: Path, dst: Path, stage: str) -> None:
    """A run directory holding the whole_run's finished stages before ``stage``."""
    order = ["collect", "reduce", "grid", "render", "tile"]
    keep = order[:order.index(stage)]
    for s in keep:
        shutil.copytree(whole_run / s, dst / s)
        shutil.copytree(whole_run / "state" / s, dst / "state" / s)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["collect", "render"])
def test_two_processes_handed_the_same_units_never_corrupt_them(whole_run: Path, tmp_path: Path, stage: str) -> None:
    run_dir = tmp_path / "run"
    _copy_until(whole_run, run_dir, stage)
    cmd = [ATLAS, stage, str(DEMO), *sets(run_dir), "--shard", "0/1"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert_groups_equal(run_dir / stage, whole_run / stage)
    assert "held by another process" in "".join(errs)  # they really met on the same units


def _in_mount(options: str, run_dir: Path, *cmd: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` with a tmpfs mounted (``options``) at ``run_dir``, in a private mount namespace."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare")
    ns = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    run_dir.mkdir(parents=True)
    script = f'mount -t tmpfs -o {options} tmpfs "{run_dir}" && exec "$@"'
    p = subprocess.run([*ns, "sh", "-c", script, "sh", *cmd], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=600)
    if "mount:" in p.stderr and p.returncode != 2:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    return p


def test_disk_full_is_a_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "small"
    p = _in_mount("size=48k", run_dir, ATLAS, "collect", str(DEMO), *sets(run_dir))
    assert p.returncode == 2, p.stderr[-3000:]
    assert "disk full" in p.stderr and str(run_dir) in p.stderr and "rerun" in p.stderr
    assert "Traceback" not in p.stderr, p.stderr[-3000:]


def test_read_only_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "ro"
    p = _in_mount("ro,size=1m", run_dir, ATLAS, "collect", str(DEMO), *sets(run_dir))
    assert p.returncode == 2 and "read-only file system" in p.stderr, p.stderr[-3000:]
    assert "Traceback" not in p.stderr


def test_forbidden_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o555)
    tmp_path.chmod(0o755)
    cmd = [ATLAS, "collect", str(DEMO), *sets(parent / "run")]
    if os.geteuid() == 0:  # root ignores permissions: run as nobody
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "no permission to write" in p.stderr, p.stderr[-3000:]
    assert "Traceback" not in p.stderr


# Runs the real CLI and sends the process itself a real SIGTERM (what SLURM sends at walltime)
# right after the stage's n-th done marker: a failure in the middle of the work.
_TERM_HOOK = r"""
import os, signal, sys
from atlas.store import RunDir

stage, after = sys.argv[1], int(sys.argv[2])
mark_done = RunDir.mark_done


def mark_done_then_term(self, name, unit, info=None):
    mark_done(self, name, unit, info)
    if name == stage and len(self.done_units(name) - {"final"}) == after:
        os.kill(os.getpid(), signal.SIGTERM)


RunDir.mark_done = mark_done_then_term
from atlas.cli import main

sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_status_shows_failures_with_reasons_until_the_stage_completes(whole_run: Path, tmp_path: Path) -> None:
    """A refusal (an unfinished input) is the user's to fix: one line, nothing recorded. A failure
    during the work (SIGTERM after a unit) is recorded and shown until the stage completes."""
    run_dir = tmp_path / "run"
    atlas("collect", str(DEMO), *sets(run_dir), "--shard", "0/2")
    p = atlas("reduce", str(DEMO), *sets(run_dir), check=False)
    assert p.returncode == 2 and "needs a finished `collect`, which is 2/4 units done" in p.stderr
    st = status(run_dir)
    assert st["collect"]["state"] == "partial" and st["collect"]["done"] == 2 and st["collect"]["total"] == 4
    assert st["reduce"]["failures"] == [] and not (run_dir / "state" / "reduce" / "failed").exists()
    text = atlas("status", str(run_dir)).stdout
    assert "FAILED" not in text and "bad=0" in text

    args = ["collect", str(DEMO), *sets(run_dir), "--shard", "1/2"]
    p = subprocess.run([sys.executable, "-c", _TERM_HOOK, "collect", "3", *args], capture_output=True, text=True,
                       env=env(), cwd=ROOT, timeout=600)
    assert p.returncode == 143 and "terminated by SIGTERM" in p.stderr, p.stderr[-3000:]
    [failure] = status(run_dir)["collect"]["failures"]
    assert failure["shard"] == "1/2" and "SIGTERM" in failure["reason"]
    text = atlas("status", str(run_dir)).stdout
    assert "FAILED shard 1/2" in text and "SIGTERM" in text and "bad=0" in text

    atlas(*args)
    atlas("reduce", str(DEMO), *sets(run_dir))
    st = status(run_dir)
    assert st["collect"]["failures"] == [] and st["reduce"]["state"] == "done" and st["reduce"]["failures"] == []
    assert_groups_equal(run_dir / "reduce", whole_run / "reduce")


def test_a_task_error_on_dask_is_the_same_clear_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    p = atlas("reduce", str(DEMO), *sets(run_dir), "--workers", "1", check=False)
    assert p.returncode == 2 and "needs a finished `collect`, which is not started" in p.stderr, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "run `atlas collect " in p.stderr
    assert not (run_dir / "state" / "reduce" / "failed").exists()  # refused before any work: not a failure
