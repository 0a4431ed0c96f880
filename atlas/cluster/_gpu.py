"""One GPU per dask worker: the worker's own device, and GPU resources for the tasks that want one.

A dask worker that declares a ``GPU`` resource (``dask worker --resources GPU=1``, or the
LocalCluster the dask engine starts on a machine with CUDA) is given one of the GPUs its
process sees, by its local index: the LocalCluster's worker number, the ``-k`` suffix of a
multi-process worker's name (``--nworkers``, SLURMCluster ``processes``), else ``LOCAL_RANK`` /
``SLURM_LOCALID``. :class:`GpuPerWorker` narrows ``CUDA_VISIBLE_DEVICES`` to that GPU before the
worker touches CUDA, so ``model.device: cuda`` (= ``cuda:0``) is its own GPU, and
``batch_size: auto`` measures that GPU's free memory, not a GPU shared with the other workers.
Tasks of stages that want a GPU are submitted with ``resources={"GPU": 1}`` when the cluster
has such workers, so at most one runs per GPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["GpuPerWorker", "gpu_plugin", "local_index", "visible_gpus", "gpu_for_worker", "cluster_has_gpus", "gpu_resources"]


def local_index(name: Any, env: Mapping[str, str]) -> int:
    """The worker's index among the workers of its node: an int name, a ``-k`` suffix, ``LOCAL_RANK`` or ``SLURM_LOCALID``, else 0."""
    if isinstance(name, int):
        return name
    m = re.search(r"-(\d+)$", str(name))
    if m:
        return int(m.group(1))
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        if env.get(var, "").isdigit():
            return int(env[var])
    return 0


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES``'s entries, else 0 .. n-1 for the n GPUs torch counts."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_for_worker(name: Any, env: Mapping[str, str]) -> str | None:
    """The GPU id (an entry of :func:`visible_gpus`) worker ``name`` gets: its local index modulo their count; None without GPUs."""
    gpus = visible_gpus(env)
    return gpus[local_index(name, env) % len(gpus)] if gpus else None


class GpuPerWorker:
    """The set-up of :func:`gpu_plugin`: on a worker that declares a ``GPU`` resource, narrow
    ``CUDA_VISIBLE_DEVICES`` to the worker's own GPU (before the worker initialises CUDA)."""

    name = "atlas-gpu-per-worker"

    def setup(self, worker: Any) -> None:
        total = getattr(getattr(worker, "state", None), "total_resources", None) or getattr(worker, "total_resources", {})
        if not total.get("GPU"):
            return
        gpu = gpu_for_worker(worker.name, os.environ)
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            import torch

            if hasattr(torch.cuda, "_cached_device_count"):  # counted before the narrowing: count again
                torch.cuda._cached_device_count = None


def gpu_plugin() -> Any:
    """A dask ``WorkerPlugin`` doing :class:`GpuPerWorker`'s set-up on every worker, present and future."""
    from dask.distributed import WorkerPlugin

    class Plugin(GpuPerWorker, WorkerPlugin):
        pass

    return Plugin()


def cluster_has_gpus(client: Any) -> bool:
    """Whether a worker of ``client``'s cluster declares a ``GPU`` resource."""
    workers = client.scheduler_info().get("workers", {})
    return any((w.get("resources") or {}).get("GPU") for w in workers.values())


def gpu_resources(client: Any, wants_gpu: bool, device: str) -> dict[str, float] | None:
    """``{"GPU": 1}`` for a task of a stage that wants a GPU, off ``device: cpu``, when the cluster has GPU workers."""
    if not wants_gpu or device == "cpu" or not cluster_has_gpus(client):
        return None
    return {"GPU": 1}
