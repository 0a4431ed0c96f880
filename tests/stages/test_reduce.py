"""reduce stage on a real on-disk synthetic collect: layout, determinism, sample + place,
approximate kNN; the stage contract (rerun, resume after kill -9, shards, inputs) on the
tiny demo atlas."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from atlas.config import Config, ConfigError, config_from_dict
from atlas.stages import get_stage, run_stage, stage_status
from atlas.store import RunDir, StoreError
from tests.stages.contract import StageContract, mark_finished
from tests.synthetic_collect import make_collect

N, C, CHUNK = 2000, 32, 256
STAGE = get_stage("reduce")
BAD = [3, 7, 500, 1999]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("collect-src")
    make_collect(root, N, C, chunk_rows=CHUNK, seed=0, bad_rows=BAD, n_labels=5)
    mark_finished(root, "collect")
    return root


def fresh(src: Path, dst: Path) -> Path:
    """A run dir holding a copy of the finished collect only."""
    shutil.copytree(src / "collect", dst / "collect")
    shutil.copytree(src / "state" / "collect", dst / "state" / "collect")
    return dst


def config(root: Path, **reduce_kw: Any) -> Config:
    return config_from_dict({"run_dir": str(root), "seed": 3, "reduce": reduce_kw})


def run(cfg: Config, shard: tuple[int, int] = (0, 1)) -> bool:
    return run_stage(STAGE, cfg, shard)


def arrays(root: Path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(root / "reduce"), mode="r")
    return {name: np.asarray(arr[...]) for name, arr in g.arrays()}


def assert_identical(a: Path, b: Path) -> None:
    xa, xb = arrays(a), arrays(b)
    assert sorted(xa) == sorted(xb)
    for name in xa:
        assert xa[name].dtype == xb[name].dtype and xa[name].tobytes() == xb[name].tobytes(), name
    ga, gb = zarr.open_group(str(a / "reduce"), mode="r"), zarr.open_group(str(b / "reduce"), mode="r")
    assert dict(ga.attrs) == dict(gb.attrs)


@pytest.fixture(scope="module")
def default_run(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = fresh(src, tmp_path_factory.mktemp("default"))
    run(config(root))
    return root


def test_layout_in_unit_square_nan_on_bad_rows(default_run: Path) -> None:
    x = arrays(default_run)
    coords = x["coords"]
    bad = np.isnan(coords).any(axis=1)
    np.testing.assert_array_equal(np.flatnonzero(bad), BAD)
    assert coords.dtype == np.float32 and coords[~bad].min() >= 0.0 and coords[~bad].max() <= 1.0
    m = N - len(BAD)
    assert x["knn_indices"].shape == (m, 20) and x["knn_indices"].dtype == np.int64
    assert x["knn_dists"].dtype == np.float32
    np.testing.assert_array_equal(x["knn_indices"][:, 0], np.arange(m))
    np.testing.assert_array_equal(x["fit_rows"], np.setdiff1d(np.arange(N), BAD))
    attrs = zarr.open_group(str(default_run / "reduce"), mode="r").attrs
    assert attrs["init"] == "spectral" and attrs["knn_method"] == "exact" and attrs["knn_recall"] is None
    assert attrs["params"]["n_neighbors"] == 20 and attrs["params"]["min_dist"] == 0.05
    assert attrs["trustworthiness"] > 0.9


def test_status_reports_units_and_quality(default_run: Path) -> None:
    st = stage_status(STAGE, RunDir(default_run))
    assert st.state == "done" and st.total == N // CHUNK + 3 + (N % CHUNK > 0) and st.done == st.total
    assert st.detail["trustworthiness"] > 0.9 and st.detail["knn_method"] == "exact"


def test_same_seed_bit_identical(default_run: Path, src: Path, tmp_path: Path) -> None:
    other = fresh(src, tmp_path / "again")
    run(config(other))
    assert_identical(default_run, other)


@pytest.mark.parametrize("placement", ["interpolate", "transform"])
def test_sample_place_and_approximate_knn(src: Path, tmp_path: Path, placement: str) -> None:
    root = fresh(src, tmp_path / placement)
    run(config(root, fit_max=600, exact_knn_max=300, recall_queries=200, placement=placement,
                 pca=16 if placement == "interpolate" else None))
    x = arrays(root)
    attrs = zarr.open_group(str(root / "reduce"), mode="r").attrs
    assert x["fit_rows"].shape == (600,) and x["knn_indices"].shape == (600, 20)
    assert np.isin(x["fit_rows"], BAD).sum() == 0
    assert attrs["knn_method"] == "hnsw" and 0.9 < attrs["knn_recall"] <= 1.0
    ok = ~np.isin(np.arange(N), BAD)
    assert np.isfinite(x["coords"][ok]).all() and np.isnan(x["coords"][~ok]).all()
    assert attrs["trustworthiness"] > 0.85
    assert stage_status(STAGE, RunDir(root)).detail["knn_recall"] == attrs["knn_recall"]


def test_changed_parameters_start_over(default_run: Path, src: Path, tmp_path: Path) -> None:
    root = fresh(src, tmp_path / "changed")
    run(config(root, fit_max=600, n_epochs=20))
    run(config(root, fit_max=700, n_epochs=20))
    assert arrays(root)["fit_rows"].shape == (700,)


def test_errors(src: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one job"):
        run(config(tmp_path), shard=(1, 2))
    with pytest.raises(StoreError, match="atlas collect"):
        run(config(tmp_path / "empty"))
    root = fresh(src, tmp_path / "incomplete")
    RunDir(root).clear_done("collect", "final")  # a collect killed before its last step
    with pytest.raises(StoreError, match=r"needs a finished `collect`, which is .*`atlas collect "):
        run(config(root))
    assert not (root / "reduce").exists()
    with pytest.raises(ConfigError, match=r"reduce\.fit_max"):
        config(root, fit_max=0)


class TestReduceContract(StageContract):
    stage = "reduce"
    shardable = False
    redo = ("collect", "collect.top_k=5")
    slow = ("test_refuses_unfinished_or_stale_inputs",)  # redoes collect, then reduce (UMAP's JIT) again
