"""SLURM: the sbatch scripts run as array tasks (by this test, with SLURM's environment
variables set, some SIGKILLed and rerun), and for real on a SLURM cluster when one is up
(CI starts a single-node one with .ci/slurm/up.sh): a whole atlas equal to the in-process run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.util import ATLAS, DEMO, ROOT, STAGES, assert_runs_equal, atlas, env, kill, sets, status, wait_for
from tests.conftest import assert_groups_equal

SCRIPTS = ROOT / "scripts" / "slurm"
ARRAY = {"collect": 2, "render": 2, "tile": 2}


def _task(stage: str, run_dir: Path, i: int, n: int) -> subprocess.Popen:
    """One array task of ``stage`` exactly as SLURM starts it: the sbatch script under bash."""
    slurm = {"SLURM_JOB_ID": str(100 + i), "ATLAS": ATLAS}
    if stage in ARRAY:
        slurm |= {"SLURM_ARRAY_JOB_ID": "99", "SLURM_ARRAY_TASK_ID": str(i), "SLURM_ARRAY_TASK_MIN": "0",
                  "SLURM_ARRAY_TASK_COUNT": str(n), "SLURM_ARRAY_TASK_STEP": "1"}
    return subprocess.Popen(["bash", str(SCRIPTS / f"{stage}.sbatch"), str(DEMO), *sets(run_dir)], cwd=ROOT,
                            env=env(**slurm), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]


def _shard_units(whole_run: Path, stage: str, i: int, n: int) -> list[str]:
    units = sorted(u.name for u in (whole_run / "state" / stage / "done").iterdir() if u.name.startswith(("chunk", "level")))
    return units[i::n]


@pytest.mark.slow
def test_array_tasks_killed_and_rerun_equal_in_process(whole_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    for stage in STAGES:
        n = ARRAY.get(stage, 1)
        procs = [_task(stage, run_dir, i, n) for i in range(n)]
        if stage in ("collect", "render"):
            mine = _shard_units(whole_run, stage, 1, n)  # task 1's units, in the order it runs them
            assert len(mine) >= 2
            done = run_dir / "state" / stage / "done"
            first = done / mine[0]
            wait_for(first.exists, 600, f"{stage} task 1's first unit", procs)
            kill(procs[1])
            _finish([procs[0]])
            assert not (done / mine[-1]).exists() and status(run_dir)[stage]["state"] == "partial"
            procs = [_task(stage, run_dir, 1, n)]  # the rerun of the killed task
        _finish(procs)
        assert status(run_dir)[stage]["state"] == "done", stage
    assert_runs_equal(run_dir, whole_run)


def test_slurm_shard_needs_an_array_task(tmp_path: Path) -> None:
    p = atlas("collect", str(DEMO), *sets(tmp_path / "run"), "--shard", "slurm", check=False)
    assert p.returncode == 2 and "SLURM_ARRAY_TASK_ID" in p.stderr and "Traceback" not in p.stderr


# --------------------------------------------------------------------------- real SLURM


def _slurm_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


def _need_slurm() -> None:
    """Skip without a SLURM cluster, unless CI started one (ATLAS_TEST_SLURM=1): then fail."""
    if not _slurm_up():
        if os.environ.get("ATLAS_TEST_SLURM") == "1":
            pytest.fail("ATLAS_TEST_SLURM=1 but no SLURM cluster answers (sinfo)")
        pytest.skip("no SLURM cluster here (CI starts one with .ci/slurm/up.sh)")


def _submit(run_dir: Path, more: list[str]) -> list[str]:
    p = subprocess.run(["bash", str(SCRIPTS / "submit.sh"), str(DEMO), *sets(run_dir, *more)], cwd=ROOT,
                       env=env(ATLAS=ATLAS), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return [line.split("job ")[1].split()[0] for line in p.stdout.splitlines() if "submitted job" in line]


def _wait_queue(jobs: list[str], run_dir: Path, timeout: float = 900) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        q = subprocess.run(["squeue", "-h", "-o", "%i %T %r", "-j", ",".join(jobs)], capture_output=True, text=True)
        if not q.stdout.strip():
            return
        time.sleep(1)
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-1500:]}" for p in sorted((run_dir / "logs" / "slurm").glob("*.out")))
    subprocess.run(["scancel", *jobs])
    raise AssertionError(f"SLURM jobs {jobs} still queued after {timeout} s: {q.stdout}\n{logs}")


# Resources this single-node test cluster can give: 1 CPU, 2 GB, no GPU per task.
SMALL = [f"cluster.slurm.stages.{s}.{k}={v}" for s in STAGES for k, v in (("cpus", 1), ("mem", "2G"), ("gpus", 0))] + [
    f"cluster.slurm.stages.{s}.tasks={n}" for s, n in ARRAY.items()]


@pytest.mark.slow
@pytest.mark.slurm
def test_submit_on_real_slurm_resumes_after_a_cancelled_task(whole_run: Path, tmp_path: Path) -> None:
    _need_slurm()
    run_dir = tmp_path / "run"
    jobs = _submit(run_dir, SMALL)
    assert len(jobs) == 5
    mine = _shard_units(whole_run, "collect", 1, 2)
    done = run_dir / "state" / "collect" / "done"
    wait_for(lambda: (done / mine[0]).exists(), 600, "collect task 1's first chunk")
    subprocess.run(["scancel", f"{jobs[0]}_1"], check=True)  # like a preemption: SIGTERM, then SIGKILL
    _wait_queue(jobs, run_dir)  # the failed array cancels the stages after it (--kill-on-invalid-dep)
    st = status(run_dir)
    assert st["collect"]["state"] == "partial" and st["reduce"]["state"] == "not started"
    assert [f["reason"] for f in st["collect"]["failures"]] == ["terminated by SIGTERM (walltime, preemption or scancel?)"]
    assert st["collect"]["failures"][0]["slurm_job"] == f"{jobs[0]}_1"

    jobs = _submit(run_dir, SMALL)  # resume: resubmit the same command
    _wait_queue(jobs, run_dir)
    assert all(s["state"] == "done" for s in status(run_dir).values()), status(run_dir)
    assert_runs_equal(run_dir, whole_run)
    p = subprocess.run(["bash", str(SCRIPTS / "submit.sh"), str(DEMO), *sets(run_dir, *SMALL)], cwd=ROOT,
                       env=env(ATLAS=ATLAS), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.count("already done") == 5, p.stdout + p.stderr


@pytest.mark.slow
@pytest.mark.slurm
def test_dask_engine_on_a_slurmcluster_equals_in_process(whole_run: Path, tmp_path: Path) -> None:
    """cluster.jobqueue: the dask engine starts its workers as SLURM jobs (dask-jobqueue)."""
    _need_slurm()
    run_dir = tmp_path / "run"
    jq = ["cluster.engine=dask", "cluster.jobqueue.jobs=1", "cluster.jobqueue.cores=1", "cluster.jobqueue.memory=3GB",
          "cluster.jobqueue.walltime=00:20:00"]
    atlas("collect", str(DEMO), *sets(run_dir, *jq), timeout=600)
    assert_groups_equal(run_dir / "collect", whole_run / "collect")
    assert list((run_dir / "logs" / "slurm").glob("*.err")) or list((run_dir / "logs" / "slurm").glob("*.out"))
