"""grid stage on real on-disk Zarr: dask LocalCluster vs in-process, brute-force values,
memory flat in N; the stage contract (rerun, resume after kill -9, shards, inputs) on the
tiny demo atlas."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from atlas.cluster import run_stage_on_dask
from atlas.config import Config, ConfigError, config_from_dict
from atlas.formats import CollectOutput
from atlas.ops.whitening import whitening_matrix
from atlas.stages import get_stage, run_stage, stage_status
from atlas.stages import grid as G
from atlas.store import RunDir, StoreError
from tests.stages.contract import StageContract, mark_finished
from tests.synthetic_collect import make_collect, make_layout

N, C, CHUNK, LABELS = 2000, 16, 256, 5
STAGE = get_stage("grid")
BAD = [5, 6, 1000]
SIZES = [4, 8, 16]


def build(root: Path, n: int = N, chunk_rows: int = CHUNK) -> Path:
    make_collect(root, n, C, chunk_rows=chunk_rows, seed=0, n_classes=50, top_k=4, bad_rows=BAD, n_labels=LABELS)
    make_layout(root, seed=0)
    mark_finished(root, "collect", "reduce")
    return root


def copy_inputs(src: Path, dst: Path) -> Path:
    for part in ("collect", "reduce", "state/collect", "state/reduce"):
        shutil.copytree(src / part, dst / part)
    return dst


def config(root: Path, cluster: dict[str, Any] | None = None, **grid_kw: Any) -> Config:
    grid = {"sizes": list(SIZES), "examples": 3, **grid_kw}
    return config_from_dict({"run_dir": str(root), "seed": 1, "grid": grid, "cluster": cluster or {}})


def run(cfg: Config, shard: tuple[int, int] = (0, 1)) -> bool:
    return run_stage(STAGE, cfg, shard)


def grid_arrays(root: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(root / "grid"), mode="r")
    out = {"whitening": np.asarray(g["whitening"][...])}
    for s in SIZES:
        out |= {f"level-{s}/{k}": np.asarray(v[...]) for k, v in g[f"level-{s}"].arrays()}
    return out


def assert_identical(a: Path, b: Path) -> None:
    xa, xb = grid_arrays(a), grid_arrays(b)
    assert sorted(xa) == sorted(xb)
    for k in xa:
        assert xa[k].dtype == xb[k].dtype and xa[k].tobytes() == xb[k].tobytes(), k
    assert dict(zarr.open_group(str(a / "grid")).attrs) == dict(zarr.open_group(str(b / "grid")).attrs)


@pytest.fixture(scope="module")
def cluster() -> Any:
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def inproc(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_inputs(src, tmp_path_factory.mktemp("inproc"))
    run(config(root))
    return root


def test_local_cluster_equals_in_process(inproc: Path, src: Path, tmp_path: Path, cluster: Any) -> None:
    """The engine's dask client (worker processes) runs the chunk tasks: the same bytes."""
    from dask.distributed import Client, get_task_stream

    root = copy_inputs(src, tmp_path / "dask")
    cfg = config(root, {"engine": "dask", "scheduler": cluster.scheduler_address})
    with Client(cluster) as client, get_task_stream(client) as stream:
        run_stage_on_dask(client, "grid", cfg)
    tasks = [t for t in stream.data if str(t["key"]).startswith("atlas-fan-out-")]
    assert len(tasks) == 2 * (N // CHUNK + 1)  # every chunk's sums and examples, as tasks on the workers
    assert_identical(inproc, root)


def test_local_processes_equal_in_process(inproc: Path, src: Path, tmp_path: Path) -> None:
    """cluster.processes: the chunk tasks on spawned processes that are gone when the job ends."""
    import psutil

    root = copy_inputs(src, tmp_path / "pool")
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    run(config(root, {"processes": 2}))
    assert_identical(inproc, root)
    assert "tasks on 2 spawned processes" in (root / "logs" / "grid-0of1.log").read_text()
    left = [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())]
    assert not left, [p.cmdline() for p in left]


def _brute_force(root: Path, s: int, min_count: int, t: int, e: int) -> dict[str, np.ndarray]:
    col = zarr.open_group(str(root / "collect"), mode="r")
    ok = col["status"][:] == 1
    xy = zarr.open_group(str(root / "reduce"), mode="r")["coords"][:]
    act = col["activations"][:].astype(np.float64)
    xy = np.nan_to_num(xy, nan=0.0)  # bad rows are excluded by `ok`
    r = np.minimum((xy[:, 1] * s).astype(int), s - 1)
    c = np.minimum((xy[:, 0] * s).astype(int), s - 1)
    out = {"count": np.zeros((s, s), np.int64), "mean": np.full((s, s, C), np.nan), "examples": np.full((s, s, e), -1),
           "top": np.full((s, s, t), -1), "labels": np.zeros((s, s, LABELS), np.int64)}
    cls, val, lab = col["attr_classes"][:], col["attr_values"][:], col["labels"][:]
    for i in range(s):
        for j in range(s):
            rows = np.flatnonzero(ok & (r == i) & (c == j))
            out["count"][i, j] = rows.size
            out["labels"][i, j] = np.bincount(lab[rows], minlength=LABELS)
            if rows.size < min_count:
                continue
            mean = act[rows].mean(axis=0)
            out["mean"][i, j] = mean
            attr = np.zeros(50)
            np.add.at(attr, cls[rows].ravel(), val[rows].ravel().astype(np.float64))
            out["top"][i, j] = np.lexsort((np.arange(50), -attr / rows.size))[:t]
            u = act[rows] / np.linalg.norm(act[rows], axis=1, keepdims=True)
            sim = u @ (mean / np.linalg.norm(mean))
            best = rows[np.lexsort((rows, -sim))][:e]
            out["examples"][i, j, : best.size] = best
    return out


def test_values_match_brute_force(inproc: Path) -> None:
    g = zarr.open_group(str(inproc / "grid"), mode="r")
    pos = zarr.open_group(str(inproc / "collect"), mode="r")["positions"][:]
    for s in SIZES:
        lev, ref = g[f"level-{s}"], _brute_force(inproc, s, 4, 5, 3)
        np.testing.assert_array_equal(lev["count"][:], ref["count"])
        assert lev["count"][:].sum() == N - len(BAD)
        np.testing.assert_allclose(lev["mean_activation"][:], ref["mean"], rtol=1e-5, atol=1e-5)
        empty = ref["count"] < 4
        assert np.isnan(lev["mean_activation"][:][empty]).all() and (lev["top_classes"][:][empty] == -1).all()
        np.testing.assert_array_equal(lev["top_classes"][:][~empty], ref["top"][~empty])
        np.testing.assert_array_equal(lev["label_counts"][:], ref["labels"])
        np.testing.assert_array_equal(lev["examples"][:], ref["examples"])
        ex = lev["examples"][:]
        np.testing.assert_array_equal(lev["example_positions"][:][ex >= 0], pos[ex[ex >= 0]])
        assert (lev["example_positions"][:][ex < 0] == -1).all()
        assert lev["top_classes"].dtype == np.int16 and lev["top_values"].dtype == np.float32


def test_whitening_purity_and_attrs(inproc: Path) -> None:
    g = zarr.open_group(str(inproc / "grid"), mode="r")
    col = zarr.open_group(str(inproc / "collect"), mode="r")
    np.testing.assert_array_equal(g["whitening"][:], whitening_matrix(col["second_moment"][:], col.attrs["ok_count"], 1e-2))
    assert g.attrs["class_names"] == col.attrs["class_names"]
    for s in SIZES:
        p, b = g.attrs["purity"][str(s)], g.attrs["purity_shuffled"][str(s)]
        assert 0.6 < p <= 1.0 and b < p - 0.2
        assert g[f"level-{s}"].attrs["purity"] == p
    st = stage_status(STAGE, RunDir(inproc))
    assert st.state == "done" and st.total == 2 * 8 + 1 and st.detail["purity"] == g.attrs["purity"]


def _peak_chunk_bytes(root: Path) -> int:
    plan = G._make_plan(config(root), RunDir(root), CollectOutput.open(RunDir(root)))
    tracemalloc.start()
    try:
        G.sums_unit(plan, 0)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_chunk_kernel_memory_is_flat_in_n(tmp_path: Path) -> None:
    small = _peak_chunk_bytes(build(tmp_path / "small", n=2000))
    big = _peak_chunk_bytes(build(tmp_path / "big", n=32000))  # 16x the rows, same chunks
    assert big < 1.25 * small + 256 * 1024, (small, big)
    assert big < 8 * CHUNK * C * 8 + 2 * 2**20  # a few chunk-sized buffers, not N


def test_errors(src: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one job"):
        run(config(tmp_path), shard=(0, 2))
    root = tmp_path / "noreduce"
    for part in ("collect", "state/collect"):
        shutil.copytree(src / part, root / part)
    with pytest.raises(StoreError, match=r"needs a finished `reduce`, which is not started .*`atlas reduce "):
        run(config(root))
    root = copy_inputs(src, tmp_path / "nocollect")
    RunDir(root).clear_done("collect", "final")  # a collect killed before its last step
    with pytest.raises(StoreError, match=r"needs a finished `collect`.*`atlas collect "):
        run(config(root))
    assert not (root / "grid").exists()
    with pytest.raises(ConfigError, match=r"grid\.sizes"):
        config(root, sizes=[4, 12])


def test_without_labels_or_attribution(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    make_collect(root, 600, C, chunk_rows=128, seed=2, n_classes=50, top_k=4, n_labels=0)
    zarr.open_group(str(root / "collect"), mode="r+").attrs.update({"attribution": False})
    make_layout(root, seed=2)
    mark_finished(root, "collect", "reduce")
    run(config(root, sizes=[2, 4]))
    g = zarr.open_group(str(root / "grid"), mode="r")
    assert sorted(k for k, _ in g["level-4"].arrays()) == ["count", "example_positions", "examples", "mean_activation"]
    assert g.attrs["purity"] == {} and g["level-2"]["count"][:].sum() == 600


class TestGridContract(StageContract):
    stage = "grid"
    shardable = False
    redo = ("collect", "collect.top_k=5")  # reduce becomes stale: grid refuses it
    slow = ("test_refuses_unfinished_or_stale_inputs",)  # redoes collect, reduce and grid


class TestGridContractOnProcesses(TestGridContract):
    """kill -9 while the chunk tasks run on ``cluster.processes`` spawned processes (they die with
    the job), rerun: the bytes of an uninterrupted run."""

    overrides = ("cluster.processes=2",)
    slow = ()
    test_rerun_does_nothing = None  # type: ignore[assignment]  # as in-process: the fan-out is not reached
    test_shards_match_single = None  # type: ignore[assignment]
    test_refuses_unfinished_or_stale_inputs = None  # type: ignore[assignment]
