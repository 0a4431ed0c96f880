"""atlas.cluster.FanOut, the one owner of a job's parallelism: in this process by default, on
``cluster.processes`` spawned processes that die with the job (even under kill -9), never
processes of its own under the dask engine."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from atlas.cluster import FanOut, local_processes
from atlas.config import load_config
from tests.conftest import ROOT

LOG = logging.getLogger("test-fanout")


def _new_children(before: set[int]) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())]


def test_in_this_process_by_default() -> None:
    fan = FanOut(load_config(None), LOG)
    assert fan.where(100) == "here"
    assert list(fan.map(os.getpid, [], desc="none")) == []
    assert list(fan.map(abs, [-3, 2, -1], desc="abs")) == [(-3, 3), (2, 2), (-1, 1)]  # item order here


def test_processes_run_the_tasks_elsewhere_and_stop_with_the_fan_out() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with FanOut(load_config(None, ["cluster.processes=2"]), LOG) as fan:
        assert fan.where(1) == "here" and fan.where(2) == "pool"  # one task: no processes to start
        got = dict(fan.map(abs, list(range(-6, 0)), desc="abs"))
        assert got == {i: -i for i in range(-6, 0)}
        pids = {pid for _, pid in fan.map(_pid_after, [0.2] * 4, desc="pids")}  # the same pool, phase two
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
        assert len(_new_children(before)) == 2
    assert not _new_children(before)


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@pytest.mark.parametrize(("overrides", "n"), [
    ([], 0),
    (["cluster.processes=3"], 3),
    (["cluster.processes=3", "cluster.engine=dask"], 0),  # the dask tasks are the parallelism
    (["cluster.processes=auto"], len(os.sched_getaffinity(0))),
])
def test_how_many_local_processes(overrides: list[str], n: int) -> None:
    assert local_processes(load_config(None, overrides)) == n


_DRIVER = """
import logging, sys, time
from atlas.cluster import FanOut
from atlas.config import load_config
fan = FanOut(load_config(None, ["cluster.processes=2"]), logging.getLogger("x"))
print("started", flush=True)
for _ in fan.map(time.sleep, [60, 60, 60], desc="sleep"):
    pass
"""


def test_the_processes_die_with_a_job_killed_by_sigkill() -> None:
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while True:
            kids = [p for p in psutil.Process(proc.pid).children()
                    if "resource_tracker" not in " ".join(p.cmdline())]
            if len(kids) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(kids) == 2, [k.cmdline() for k in kids]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        gone, alive = psutil.wait_procs(kids, timeout=20)
        assert not alive, [p.pid for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
