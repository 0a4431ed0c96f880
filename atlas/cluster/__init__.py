"""Execution: one stage shard as the unit every engine runs (in-process, dask tasks, SLURM array tasks)."""

from ._dask import StageIncomplete, dask_client, run_stage_on_dask
from ._local import failure_info, run_shard, stage_finished
from ._slurm import ARRAY_STAGES, sbatch_options, slurm_shard

__all__ = [
    "ARRAY_STAGES",
    "StageIncomplete",
    "dask_client",
    "failure_info",
    "run_shard",
    "run_stage_on_dask",
    "sbatch_options",
    "slurm_shard",
    "stage_finished",
]
