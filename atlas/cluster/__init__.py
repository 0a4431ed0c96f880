"""Execution: one stage shard as the unit every engine runs (in-process, dask tasks, SLURM array tasks).

Engines drive stages only through the stage protocol (:class:`atlas.stages.Stage`): how a
stage is split comes from its ``execution``, its SLURM resources from its ``resources``. A job
that spreads independent tasks over processes does so through :class:`FanOut` (the engine's
dask client, ``cluster.processes`` local processes, or in-process): the one owner of parallelism.
"""

from ._dask import StageIncomplete, dask_client, run_stage_on_dask
from ._fanout import FanOut, local_processes
from ._local import failure_info, run_shard, stage_finished
from ._slurm import sbatch_options, slurm_shard, stage_resources

__all__ = [
    "FanOut",
    "StageIncomplete",
    "dask_client",
    "failure_info",
    "local_processes",
    "run_shard",
    "run_stage_on_dask",
    "sbatch_options",
    "slurm_shard",
    "stage_finished",
    "stage_resources",
]
