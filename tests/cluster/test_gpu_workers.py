"""One GPU per dask worker, on the CPU: a LocalCluster whose workers declare ``GPU`` resources and see
fake device ids; GPU stages are submitted with a GPU resource; tasks are counted from the requested workers."""

from __future__ import annotations

import os
import types

import pytest

from atlas.cluster._dask import _n_tasks, _prepare
from atlas.cluster._gpu import gpu_for_worker, gpu_resources, local_index, visible_gpus
from atlas.config import ClusterConfig


def test_local_index_and_the_gpu_of_a_worker():
    assert local_index(3, {}) == 3
    assert local_index("SLURMCluster-0-1", {}) == 1 and local_index("tcp://10.0.0.1:4000-2", {}) == 2
    assert local_index("worker", {"SLURM_LOCALID": "5"}) == 5 and local_index("worker", {}) == 0
    env = {"CUDA_VISIBLE_DEVICES": "5, 7"}
    assert visible_gpus(env) == ["5", "7"]
    assert [gpu_for_worker(i, env) for i in range(3)] == ["5", "7", "5"]
    assert gpu_for_worker(0, {"CUDA_VISIBLE_DEVICES": ""}) is None


def test_tasks_are_counted_from_the_requested_workers():
    one_arrived = types.SimpleNamespace(scheduler_info=lambda: {"workers": {"a": {}}})
    cc = ClusterConfig(jobqueue={"jobs": 4, "processes": 2})
    assert _n_tasks(one_arrived, cc) == 16  # 8 workers requested, 1 arrived so far
    assert _n_tasks(one_arrived, ClusterConfig()) == 2
    assert _n_tasks(one_arrived, ClusterConfig(tasks=5)) == 5


@pytest.mark.timeout(180)
def test_each_gpu_worker_gets_its_own_device(monkeypatch):
    from dask.distributed import Client, LocalCluster

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # fake ids: nothing touches CUDA
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      resources={"GPU": 1}) as cluster, Client(cluster) as client:
        _prepare(client)
        seen = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
        assert sorted(seen.values()) == ["5", "7"], seen
        assert gpu_resources(client, True, "auto") == {"GPU": 1}
        assert gpu_resources(client, True, "cpu") is None and gpu_resources(client, False, "cuda") is None
        fut = client.submit(lambda: os.environ["CUDA_VISIBLE_DEVICES"], resources={"GPU": 1}, pure=False)
        assert fut.result(timeout=60) in ("5", "7")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert gpu_resources(client, True, "cuda") is None  # no GPU workers: tasks ask for nothing


@pytest.mark.timeout(120)
def test_slurmcluster_jobs_declare_one_gpu_per_worker_process():
    """A SLURMCluster with GPUs asks SLURM for them and starts each worker with one GPU resource (the
    job script dask-jobqueue would submit); a job's GPUs and worker processes must match."""
    pytest.importorskip("dask_jobqueue")
    from atlas.cluster._dask import _slurm_cluster

    cc = ClusterConfig(jobqueue={"jobs": 1, "processes": 2, "gpus": 2, "cores": 4})
    with _slurm_cluster(cc, None) as cluster:
        script = cluster.job_script()
    assert "#SBATCH --gres=gpu:2" in script and "--resources GPU=1" in script and "--nworkers 2" in script, script
    with _slurm_cluster(ClusterConfig(jobqueue={"jobs": 1}), None) as cluster:
        assert "--resources" not in cluster.job_script()
    with pytest.raises(ValueError, match=r"processes: 4 \(one worker per GPU\)"):
        ClusterConfig(jobqueue={"jobs": 1, "gpus": 4})
