"""reduce stage on a real on-disk synthetic collect: layout, determinism, sample + place,
approximate kNN, resume after SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from atlas.config import Config
from atlas.stages import reduce as R
from atlas.store import RunDir, StoreError
from tests.synthetic_collect import make_collect

REPO = Path(__file__).resolve().parents[2]
N, C, CHUNK = 2000, 32, 256
BAD = [3, 7, 500, 1999]


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("collect-src")
    make_collect(root, N, C, chunk_rows=CHUNK, seed=0, bad_rows=BAD, n_labels=5)
    return root


def fresh(src: Path, dst: Path) -> Path:
    """A run dir holding a copy of the finished collect only."""
    shutil.copytree(src / "collect", dst / "collect")
    shutil.copytree(src / "state" / "collect", dst / "state" / "collect")
    return dst


def config(root: Path, **reduce_kw: Any) -> Config:
    cfg = Config(run_dir=str(root), seed=3)
    for key, value in reduce_kw.items():
        setattr(cfg.reduce, key, value)
    return cfg


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
    R.run(config(root))
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
    st = R.status(RunDir(default_run))
    assert st.state == "done" and st.total == N // CHUNK + 4 + (N % CHUNK > 0) and st.done == st.total
    assert st.detail["trustworthiness"] > 0.9 and st.detail["knn_method"] == "exact"


def test_same_seed_bit_identical_and_rerun_is_a_noop(default_run: Path, src: Path, tmp_path: Path) -> None:
    other = fresh(src, tmp_path / "again")
    R.run(config(other))
    assert_identical(default_run, other)
    before = {p: p.stat().st_mtime_ns for p in (other / "reduce").rglob("*") if p.is_file()}
    R.run(config(other))  # every step done: nothing rewritten
    assert before == {p: p.stat().st_mtime_ns for p in (other / "reduce").rglob("*") if p.is_file()}


@pytest.mark.parametrize("placement", ["interpolate", "transform"])
def test_sample_place_and_approximate_knn(src: Path, tmp_path: Path, placement: str) -> None:
    root = fresh(src, tmp_path / placement)
    R.run(config(root, fit_max=600, exact_knn_max=300, recall_queries=200, placement=placement,
                 pca=16 if placement == "interpolate" else None))
    x = arrays(root)
    attrs = zarr.open_group(str(root / "reduce"), mode="r").attrs
    assert x["fit_rows"].shape == (600,) and x["knn_indices"].shape == (600, 20)
    assert np.isin(x["fit_rows"], BAD).sum() == 0
    assert attrs["knn_method"] == "hnsw" and 0.9 < attrs["knn_recall"] <= 1.0
    ok = ~np.isin(np.arange(N), BAD)
    assert np.isfinite(x["coords"][ok]).all() and np.isnan(x["coords"][~ok]).all()
    assert attrs["trustworthiness"] > 0.85
    assert R.status(RunDir(root)).detail["knn_recall"] == attrs["knn_recall"]


def _run_in_subprocess(root: Path, reduce_kw: dict[str, Any]) -> subprocess.Popen:
    sets = "".join(f"cfg.reduce.{k} = {v!r}; " for k, v in reduce_kw.items())
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from atlas.config import Config; "
            f"from atlas.stages.reduce import run; cfg = Config(run_dir={str(root)!r}, seed=3); {sets}run(cfg)")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_when(proc: subprocess.Popen, marker: Path, timeout: float = 120.0) -> None:
    """SIGKILL the process as soon as ``marker`` exists."""
    t0 = time.monotonic()
    while not marker.exists():
        assert proc.poll() is None, "the stage ended before the marker appeared"
        assert time.monotonic() - t0 < timeout, f"{marker} never appeared"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_mid_placement_then_rerun_gives_identical_arrays(src: Path, tmp_path: Path) -> None:
    kw = {"fit_max": 600, "placement": "transform"}
    killed = fresh(src, tmp_path / "killed")
    proc = _run_in_subprocess(killed, kw)
    kill_when(proc, killed / "state" / "reduce" / "done" / "place-chunk-000000")
    assert not RunDir(killed).is_done("reduce", "done")
    assert R.status(RunDir(killed)).state == "partial"
    R.run(config(killed, **kw))
    clean = fresh(src, tmp_path / "clean")
    R.run(config(clean, **kw))
    assert_identical(killed, clean)


def test_changed_parameters_start_over(default_run: Path, src: Path, tmp_path: Path) -> None:
    root = fresh(src, tmp_path / "changed")
    R.run(config(root, fit_max=600, n_epochs=20))
    R.run(config(root, fit_max=700, n_epochs=20))
    assert arrays(root)["fit_rows"].shape == (700,)


def test_errors(src: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one job"):
        R.run(config(tmp_path), shard=(1, 2))
    with pytest.raises(StoreError, match="atlas collect"):
        R.run(config(tmp_path / "empty"))
    root = fresh(src, tmp_path / "incomplete")
    g = zarr.open_group(str(root / "collect"), mode="r+")
    del g["second_moment"]
    with pytest.raises(StoreError, match="finish `atlas collect`"):
        R.run(config(root))
    with pytest.raises(ValueError, match="reduce.fit_max"):
        R.run(config(fresh(src, tmp_path / "bad"), fit_max=0))
