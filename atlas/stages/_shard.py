"""``--shard`` values: ``i/n``, or ``slurm`` (this SLURM array task's shard)."""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["parse_shard", "slurm_shard"]


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


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1); ``"slurm"`` -> this SLURM array task's."""
    if text is None:
        return (0, 1)
    if text == "slurm":
        return slurm_shard()
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard expects i/n such as 0/4, or slurm; got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n
