"""SLURM: the array task's shard from its environment, and sbatch options from the config."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ..config import Config, SlurmStageConfig

__all__ = ["slurm_shard", "sbatch_options", "ARRAY_STAGES"]

ARRAY_STAGES = ("collect", "render", "tile")  # stages whose units are split over array tasks


def slurm_shard(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(i, n) of this SLURM array task: i from ``SLURM_ARRAY_TASK_ID`` (relative to the array's
    first index and step), n = ``SLURM_ARRAY_TASK_COUNT``."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env:
        raise ValueError("--shard slurm needs SLURM_ARRAY_TASK_ID: submit the stage as an array job "
                         "(sbatch --array=0-N, as scripts/slurm/submit.sh does), or pass --shard i/n")
    try:
        task = int(env["SLURM_ARRAY_TASK_ID"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(env.get("SLURM_ARRAY_TASK_STEP", "1")) or 1
        count = int(env.get("SLURM_ARRAY_TASK_COUNT", "1"))
    except ValueError:
        raise ValueError("SLURM_ARRAY_TASK_ID/_MIN/_STEP/_COUNT must be integers") from None
    i = (task - first) // step
    if count < 1 or not 0 <= i < count or (task - first) % step:
        raise ValueError(f"SLURM array task {task} is not one of {count} tasks from {first} in steps of {step}: "
                         "use a plain range such as --array=0-15 (a %limit is fine)")
    return i, count


def sbatch_options(cfg: Config, stage: str) -> list[str]:
    """The sbatch options of ``stage`` from ``cluster.slurm`` (one option per item, no spaces)."""
    sc = cfg.cluster.slurm
    st: SlurmStageConfig = getattr(sc, stage)
    logs = Path(cfg.run_dir).resolve() / "logs" / "slurm"
    opts = [f"--job-name=atlas-{stage}", f"--time={st.time}", f"--cpus-per-task={st.cpus}", f"--mem={st.mem}"]
    if stage in ARRAY_STAGES:
        limit = f"%{sc.max_parallel}" if sc.max_parallel else ""
        opts += [f"--array=0-{st.tasks - 1}{limit}", f"--output={logs}/%x-%A_%a.out"]
    else:
        opts += [f"--output={logs}/%x-%j.out"]
    if st.gpus:
        opts.append(f"--gres=gpu:{st.gpus}")
    if sc.partition:
        opts.append(f"--partition={sc.partition}")
    if sc.account:
        opts.append(f"--account={sc.account}")
    return opts + list(sc.extra)
