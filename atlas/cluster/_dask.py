"""The dask engine: a stage's shards as tasks on a dask cluster, with retries and progress."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import ClusterConfig, Config, ConfigError
from ..progress import plural, progress
from ..stages import get_stage
from ..store import RunDir, StoreError
from ._gpu import gpu_plugin, gpu_resources
from ._local import failure_info, run_shard, stage_finished

__all__ = ["dask_client", "run_stage_on_dask", "StageIncomplete"]

log = logging.getLogger("atlas")


class StageIncomplete(StoreError):
    """Units of a stage were still undone after every retry; rerunning resumes them."""


def _slurm_cluster(cc: ClusterConfig, log_dir: str | None) -> Any:
    try:
        from dask_jobqueue.slurm import SLURMCluster
    except ImportError:
        raise ConfigError("cluster.jobqueue.jobs > 0 needs dask-jobqueue: pip install dask-jobqueue "
                          "(or start a scheduler yourself and set cluster.scheduler)") from None
    jq = cc.jobqueue
    extra = list(jq.job_extra_directives) + ([f"--gres=gpu:{jq.gpus}"] if jq.gpus else [])
    # With GPUs, each of a job's `processes` workers declares one: GPU tasks go one per worker, and
    # GpuPerWorker gives worker k of the job the job's k-th GPU (its name ends in -k).
    resources = ["--resources", "GPU=1"] if jq.gpus else []
    return SLURMCluster(cores=jq.cores, memory=jq.memory, processes=jq.processes, walltime=jq.walltime,
                        queue=jq.queue, account=jq.account, job_extra_directives=extra, log_directory=log_dir,
                        worker_extra_args=resources)


@contextlib.contextmanager
def dask_client(cc: ClusterConfig, run_dir: str | None = None) -> Iterator[Any]:
    """A Client on ``cc.scheduler``, on a SLURMCluster (``cc.jobqueue.jobs`` > 0) or on a
    LocalCluster of ``cc.workers`` processes (non-daemonic, so they may start decode workers).
    SLURMCluster job logs go to ``run_dir/logs/slurm``."""
    import dask
    from dask.distributed import Client, LocalCluster

    if cc.scheduler:
        with Client(cc.scheduler) as client:
            log.info("dask: scheduler %s, %s", cc.scheduler, plural(len(client.scheduler_info()["workers"]), "worker"))
            yield _prepare(client)
        return
    if cc.jobqueue.jobs > 0:
        log_dir = str(Path(run_dir) / "logs" / "slurm") if run_dir else None
        with _slurm_cluster(cc, log_dir) as cluster, Client(cluster) as client:
            cluster.scale(jobs=cc.jobqueue.jobs)
            log.info("dask: SLURMCluster of %d jobs requested; waiting for a first worker", cc.jobqueue.jobs)
            client.wait_for_workers(1)
            yield _prepare(client)
        return
    gpus = _local_gpus()  # each worker declares one GPU: GpuPerWorker gives it its own
    with dask.config.set({"distributed.worker.daemon": False}), \
            LocalCluster(n_workers=cc.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         resources={"GPU": 1} if gpus else None) as cluster, \
            Client(cluster) as client:
        log.info("dask: LocalCluster of %d worker processes%s", cc.workers, f", {gpus} GPUs" if gpus else "")
        yield _prepare(client)


class _NoComputeFailed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


def _quiet_task_errors() -> None:
    """Drop the workers' "Compute Failed" tracebacks: a task's error reaches the driver,
    which prints it once (one line for the user's errors) and records it in the run."""
    logging.getLogger("distributed.worker").addFilter(_NoComputeFailed())


def _local_gpus() -> int:
    """The CUDA devices this process sees (0 without torch's CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _prepare(client: Any) -> Any:
    """Install the quiet-errors set-up and one GPU per GPU worker (:mod:`atlas.cluster._gpu`) on every
    worker, present and future (restarted ones too)."""
    from dask.distributed import WorkerPlugin

    class QuietTaskErrors(WorkerPlugin):
        name = "atlas-quiet-task-errors"

        def setup(self, worker: Any) -> None:
            _quiet_task_errors()

    client.register_plugin(QuietTaskErrors())
    client.register_plugin(gpu_plugin())
    return client


def _n_tasks(client: Any, cc: ClusterConfig) -> int:
    if cc.tasks:
        return cc.tasks
    requested = cc.jobqueue.jobs * cc.jobqueue.processes  # a SLURMCluster's workers arrive one by one
    workers = max(len(client.scheduler_info()["workers"]), requested) or 1
    return 2 * workers


def _shards(name: str, client: Any, cfg: Config) -> list[tuple[int, int]]:
    cc = cfg.cluster
    if get_stage(name, cfg).execution != "shards":
        return [(0, 1)]
    n = _n_tasks(client, cc)
    return [(i, n) for i in range(n)]


def _submit_round(client: Any, name: str, cfg: Config, shards: list[tuple[int, int]],
                  rnd: int) -> list[tuple[Exception, str]]:
    """Submit one task per shard; wait for all; return the failures (recorded in the run)."""
    from dask.distributed import as_completed

    token = uuid.uuid4().hex[:8]
    resources = gpu_resources(client, get_stage(name, cfg).wants_gpu, str(cfg.model.device))
    futures = {client.submit(run_shard, name, cfg, sh, retries=cfg.cluster.retries, pure=False, resources=resources,
                             key=f"atlas-{name}-{sh[0]}of{sh[1]}-round{rnd}-{token}"): sh for sh in shards}
    errors = []
    for fut in progress(as_completed(futures), total=len(futures), desc=f"{name}: shards on dask", unit="shard"):
        sh = futures[fut]
        try:
            fut.result()
        except Exception as e:  # the task's own failure is recorded by run_shard; a dead worker is not
            errors.append((e, f"shard {sh[0]}/{sh[1]}: {type(e).__name__}: {e}"))
            if type(e).__name__ == "KilledWorker":
                RunDir(cfg.run_dir).record_failure(name, f"dask-{sh[0]}-of-{sh[1]}", failure_info(name, sh, e))
    return errors


def run_stage_on_dask(client: Any, name: str, cfg: Config) -> None:
    """Run stage ``name`` on ``client``'s cluster until it is complete.

    How is the stage's :attr:`~atlas.stages.Stage.execution`: ``shards``: its units split into
    ``cluster.tasks`` shards, one task each; ``single``: one task; ``driver``: on this process,
    with ``client`` handed to the stage to fan its work out to the same cluster.
    A task that raises is retried ``cluster.retries`` times; a task whose worker dies is
    rescheduled by dask. Should units still be undone (held by a dying worker's lease),
    another round is submitted, at most ``cluster.retries`` more.
    """
    cc = cfg.cluster
    if get_stage(name, cfg).execution == "driver":
        run_shard(name, cfg, (0, 1), client)
        return
    reasons: list[str] = []
    for rnd in range(cc.retries + 1):
        errors = _submit_round(client, name, cfg, _shards(name, client, cfg), rnd)
        if stage_finished(name, cfg):
            RunDir(cfg.run_dir).clear_failure(name)
            return
        reasons = [text for _, text in errors]
        own = [e for e, _ in errors if type(e).__name__ != "KilledWorker"]
        if own and all(isinstance(e, type(own[0])) and str(e) == str(own[0]) for e in own):
            raise own[0]  # every task failed the same way, retries included: a problem to fix, not to retry
        log.warning("%s: units still undone after round %d on dask (%s); submitting again",
                    name, rnd + 1, "; ".join(reasons) or "their leases were held")
    raise StageIncomplete(f"{name} is incomplete after {cc.retries + 1} rounds on dask: {'; '.join(reasons[:3])}. "
                          f"See `atlas status {cfg.run_dir}`; rerun to resume (finished units are kept)")
