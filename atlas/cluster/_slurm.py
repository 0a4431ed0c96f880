"""SLURM: sbatch options of a stage from its defaults and the config (the array task's shard
comes from :func:`atlas.stages.parse_shard`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..config import Config, slurm_stage_resources
from ..stages import get_stage
from ..stages._shard import slurm_shard

__all__ = ["slurm_shard", "sbatch_options", "stage_resources"]


def stage_resources(cfg: Config, stage: str) -> dict[str, Any]:
    """tasks, time, cpus, mem, gpus of ``stage``: ``cluster.slurm.stages.<stage>`` over the stage's defaults."""
    st = get_stage(stage, cfg)
    defaults = asdict(st.resources) | ({"gpus": max(st.resources.gpus, 1)} if st.wants_gpu else {})
    return slurm_stage_resources(cfg, stage, defaults, single=st.execution != "shards")


def sbatch_options(cfg: Config, stage: str) -> list[str]:
    """The sbatch options of ``stage`` (one option per item, no spaces): an array for sharded stages."""
    sc = cfg.cluster.slurm
    res = stage_resources(cfg, stage)
    logs = Path(cfg.run_dir).resolve() / "logs" / "slurm"
    opts = [f"--job-name=atlas-{stage}", f"--time={res['time']}", f"--cpus-per-task={res['cpus']}", f"--mem={res['mem']}"]
    if get_stage(stage, cfg).execution == "shards":
        limit = f"%{sc.max_parallel}" if sc.max_parallel else ""
        opts += [f"--array=0-{int(res['tasks']) - 1}{limit}", f"--output={logs}/%x-%A_%a.out"]
    else:
        opts += [f"--output={logs}/%x-%j.out"]
    if res["gpus"]:
        opts.append(f"--gres=gpu:{res['gpus']}")
    if sc.partition:
        opts.append(f"--partition={sc.partition}")
    if sc.account:
        opts.append(f"--account={sc.account}")
    return opts + list(sc.extra)
