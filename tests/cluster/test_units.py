"""Exact-value tests of the execution pieces: SLURM shard parsing, sbatch options, failure
records, leases in forked children, config templating and the cluster section."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atlas.cluster import failure_info, sbatch_options, slurm_shard
from atlas.config import ConfigError, expand_env, load_config
from atlas.stages import parse_shard
from atlas.store import RunDir
from tests.conftest import DEMO, ROOT


@pytest.mark.parametrize(("env", "shard"), [
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "1"}, (0, 1)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "16"}, (3, 16)),
    ({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
    ({"SLURM_ARRAY_TASK_ID": "14", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "2",
      "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),
])
def test_slurm_shard_from_the_array_environment(env: dict[str, str], shard: tuple[int, int]) -> None:
    assert slurm_shard(env) == shard


@pytest.mark.parametrize(("env", "words"), [
    ({}, "SLURM_ARRAY_TASK_ID"),
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4"}, "plain range"),
    ({"SLURM_ARRAY_TASK_ID": "x"}, "integers"),
])
def test_slurm_shard_errors_say_what_to_do(env: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        slurm_shard(env)


def test_parse_shard_slurm_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.delenv("SLURM_ARRAY_TASK_MIN", raising=False)
    assert parse_shard("slurm") == (1, 2)
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) == (0, 1)


def test_sbatch_options_come_from_the_config(tmp_path: Path) -> None:
    cfg = load_config(DEMO, [f"run_dir={tmp_path}", "cluster.slurm.partition=gpu", "cluster.slurm.max_parallel=4",
                             "cluster.slurm.extra=[--qos=long]", "cluster.slurm.stages.render.tasks=8"])
    logs = tmp_path.resolve() / "logs" / "slurm"
    assert sbatch_options(cfg, "render") == [
        "--job-name=atlas-render", "--time=08:00:00", "--cpus-per-task=8", "--mem=32G", "--array=0-7%4",
        f"--output={logs}/%x-%A_%a.out", "--gres=gpu:1", "--partition=gpu", "--qos=long"]
    assert sbatch_options(cfg, "reduce") == [
        "--job-name=atlas-reduce", "--time=04:00:00", "--cpus-per-task=16", "--mem=64G",
        f"--output={logs}/%x-%j.out", "--partition=gpu", "--qos=long"]


def test_a_class_atlas_collect_asks_for_the_selections_resources(tmp_path: Path) -> None:
    """The engines ask the registry with the config: a class atlas's collect (a row copy) wants no GPU."""
    main = load_config(DEMO, [f"run_dir={tmp_path / 'run'}"])
    sub = load_config(DEMO, [f"run_dir={tmp_path / 'sub'}", f"classes.parent={tmp_path / 'run'}"])
    assert "--gres=gpu:1" in sbatch_options(main, "collect")
    opts = sbatch_options(sub, "collect")
    assert not any(o.startswith("--gres") for o in opts) and "--cpus-per-task=4" in opts and "--array=0-3" in opts


def test_slurm_plan_cli_lists_every_stage(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "atlas", "slurm-plan", str(DEMO), f"--set=run_dir={tmp_path}"],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    rows = [line.split("\t") for line in p.stdout.splitlines()]
    assert [r[0] for r in rows] == ["collect", "reduce", "grid", "render", "tile"]
    assert all(r[1] == "todo" for r in rows) and "--array=0-15" in rows[0]


@pytest.mark.parametrize(("override", "key"), [
    ("cluster.workers=0", "cluster.workers"),
    ("cluster.slurm.stages.grid.tasks=0", "cluster.slurm.stages.grid.tasks"),
    ("cluster.slurm.extra=['--qos long']", "cluster.slurm.extra"),
    ("cluster.engine=ray", "cluster.engine"),
])
def test_bad_cluster_settings_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(DEMO, [override])


def test_a_single_job_stage_takes_no_tasks() -> None:
    cfg = load_config(DEMO, ["cluster.slurm.stages.grid.tasks=4"])
    with pytest.raises(ConfigError, match=r"cluster\.slurm\.stages\.grid\.tasks` must be 1"):
        sbatch_options(cfg, "grid")


def test_a_nested_override_keeps_the_other_per_stage_defaults() -> None:
    opts = sbatch_options(load_config(DEMO, ["cluster.slurm.stages.render.tasks=3"]), "render")
    assert "--array=0-2" in opts and "--time=08:00:00" in opts and "--gres=gpu:1" in opts


def test_expand_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATA", "/data")
    monkeypatch.delenv("NOPE", raising=False)
    assert expand_env({"a": "${DATA}/x", "b": ["${NOPE:-d}", 3], "c": "plain $HOME"}) == \
        {"a": "/data/x", "b": ["d", 3], "c": "plain $HOME"}
    with pytest.raises(ConfigError, match=r"`images\.path` uses \$\{NOPE\}.*export NOPE"):
        expand_env({"images": {"path": "${NOPE}/train"}})


def test_failure_records(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    try:
        raise ValueError("bad thing")
    except ValueError as e:
        info = failure_info("collect", (1, 4), e)
    run.record_failure("collect", "shard-1-of-4", info)
    [f] = run.failures("collect")
    assert f["key"] == "shard-1-of-4" and f["shard"] == "1/4" and f["reason"] == "ValueError: bad thing"
    assert f["pid"] == os.getpid() and "raise ValueError" in "".join(f["traceback"])
    run.clear_failure("collect")
    assert run.failures("collect") == []


_HOLDER = """
import os, sys, time
from atlas.store import RunDir, close_inherited_leases
run = RunDir(sys.argv[1])
with run.lease("collect", "chunk-000000") as mine:
    assert mine
    if os.fork() == 0:  # a child forked while the lease is held, like a DataLoader worker
        if sys.argv[2] == "close":
            close_inherited_leases()
        time.sleep(60)
        os._exit(0)
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("child", ["close", "keep"])
def test_a_forked_child_does_not_keep_a_killed_parents_lease(tmp_path: Path, child: str) -> None:
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), child], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT, start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "held"
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        time.sleep(0.2)
        with RunDir(tmp_path).lease("collect", "chunk-000000") as mine:
            assert mine == (child == "close")  # without closing, the orphan still holds it
    finally:
        os.killpg(p.pid, signal.SIGKILL)
