"""The dask engine on a real LocalCluster of worker processes: a whole atlas equals the
in-process run bit for bit, also when a worker is SIGKILLed in the middle of a stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.cluster.util import ATLAS, DEMO, ROOT, assert_runs_equal, env, kill, markers, sets, status, wait_for
from tests.conftest import assert_groups_equal

pytestmark = pytest.mark.slow


def _workers(driver: subprocess.Popen) -> list[psutil.Process]:
    """The dask worker processes: the driver's children started by multiprocessing's spawn."""
    out = []
    for k in psutil.Process(driver.pid).children():
        try:
            if "spawn_main" in " ".join(k.cmdline()) and k.status() != psutil.STATUS_ZOMBIE:
                out.append(k)
        except psutil.Error:  # gone or a zombie meanwhile
            continue
    return out


def _kill_a_worker(driver: subprocess.Popen, run_dir: Path, stage: str, min_done: int) -> None:
    """SIGKILL a worker once ``stage`` has ``min_done`` markers; wait for its nanny to replace it."""
    wait_for(lambda: markers(run_dir, stage) >= min_done, 600, f"{min_done} {stage} markers", [driver])
    workers = _workers(driver)
    assert len(workers) == 2, [w.cmdline() for w in workers]
    victim = workers[0].pid
    workers[0].kill()
    wait_for(lambda: len(ws := _workers(driver)) == 2 and victim not in [w.pid for w in ws], 120,
             "the nanny to restart the killed worker", [driver])


def test_whole_atlas_on_dask_with_killed_workers_equals_in_process(whole_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # collect.workers=1: DataLoader decode workers inside dask workers (non-daemonic), which
    # must not keep the killed worker's leases alive.
    cmd = [ATLAS, "run", str(DEMO), "--workers", "2", *sets(run_dir, "collect.workers=1")]
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _kill_a_worker(driver, run_dir, "collect", 1)
        _kill_a_worker(driver, run_dir, "render", 1)
        out, _ = driver.communicate(timeout=900)
    finally:
        if driver.poll() is None:
            kill(driver)
    assert driver.returncode == 0, out[-4000:]
    assert "the atlas is ready" in out
    assert_runs_equal(run_dir, whole_run)
    st = status(run_dir)
    assert all(st[s]["state"] == "done" and not st[s]["failures"] for s in st)


def test_collect_on_an_existing_scheduler_through_the_dask_launcher(whole_run: Path, tmp_path: Path) -> None:
    """scripts/dask/launch.py --scheduler: a cluster someone else started, with daemonic workers
    (dask's default), where collect decodes on threads instead of starting subprocesses."""
    from dask.distributed import LocalCluster

    run_dir = tmp_path / "run"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        p = subprocess.run([sys.executable, str(ROOT / "scripts" / "dask" / "launch.py"), str(DEMO), "--scheduler",
                            cluster.scheduler_address, "--stages", "collect", *sets(run_dir, "collect.workers=1")],
                           cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "collect  done" in p.stdout
    assert_groups_equal(run_dir / "collect", whole_run / "collect")
    logs = "".join(f.read_text() for f in (run_dir / "logs").glob("collect-*.log"))
    assert "daemonic process" in logs
