"""Execution: one stage shard as the unit every engine runs (in-process, dask tasks, SLURM array tasks).

Engines drive stages only through the stage protocol (:class:`atlas.stages.Stage`): how a
stage is split comes from its ``execution``, its SLURM resources from its ``resources``.
"""

from ._dask import StageIncomplete, dask_client, run_stage_on_dask
from ._local import failure_info, run_shard, stage_finished
from ._slurm import sbatch_options, slurm_shard, stage_resources

__all__ = [
    "StageIncomplete",
    "dask_client",
    "failure_info",
    "run_shard",
    "run_stage_on_dask",
    "sbatch_options",
    "slurm_shard",
    "stage_finished",
    "stage_resources",
]
