"""The grid stage's per-cell attribution to every class (``level-<s>/class_attribution``, the
class heatmap): brute-force values, float16 with named dimensions, consistent with the top
classes, and the same bytes whatever the number of cell rows written at a time."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from atlas.config import config_from_dict
from atlas.stages import get_stage, run_stage
from atlas.stages import grid as G
from tests.stages.contract import mark_finished
from tests.synthetic_collect import make_collect, make_layout

N, C, CHUNK, CLASSES, TOP_K, MIN_COUNT = 1200, 8, 256, 40, 4, 3
SIZES = [4, 8, 16]


def _run(root: Path) -> None:
    cfg = config_from_dict({"run_dir": str(root), "seed": 1,
                            "grid": {"sizes": SIZES, "examples": 2, "min_count": MIN_COUNT}})
    run_stage(get_stage("grid"), cfg)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classes") / "run"
    make_collect(root, N, C, chunk_rows=CHUNK, seed=3, n_classes=CLASSES, top_k=TOP_K, bad_rows=[7, 500])
    make_layout(root, seed=3)
    mark_finished(root, "collect", "reduce")
    _run(root)
    return root


def _brute_force(root: Path, s: int) -> tuple[np.ndarray, np.ndarray]:
    """(count [s, s], mean attribution [s, s, K] with NaN in empty cells) straight from collect and reduce."""
    col, red = zarr.open_group(str(root / "collect"), mode="r"), zarr.open_group(str(root / "reduce"), mode="r")
    ok = col["status"][:] == 1
    xy = np.nan_to_num(red["coords"][:], nan=0.0)
    r = np.minimum((xy[:, 1] * s).astype(int), s - 1)
    c = np.minimum((xy[:, 0] * s).astype(int), s - 1)
    cls, val = col["attr_classes"][:].astype(np.int64), col["attr_values"][:].astype(np.float64)
    count = np.zeros((s, s), np.int64)
    total = np.zeros((s, s, CLASSES))
    for i in np.flatnonzero(ok):
        count[r[i], c[i]] += 1
        np.add.at(total[r[i], c[i]], cls[i], val[i])
    mean = total / np.maximum(count, 1)[..., None]
    mean[count < MIN_COUNT] = np.nan
    return count, mean


def test_class_attribution_is_every_class_mean_attribution(built: Path) -> None:
    g = zarr.open_group(str(built / "grid"), mode="r")
    for s in SIZES:
        lev = g[f"level-{s}"]
        arr = lev["class_attribution"]
        assert arr.dtype == np.float16 and arr.shape == (s, s, CLASSES)
        assert tuple(arr.metadata.dimension_names) == ("cell_row", "cell_col", "class")
        assert arr.chunks == (min(s, 64), min(s, 64), min(CLASSES, 64))
        count, want = _brute_force(built, s)
        got = arr[...].astype(np.float64)
        np.testing.assert_array_equal(lev["count"][...], count)
        empty = count < MIN_COUNT
        assert np.isnan(got[empty]).all() and not np.isnan(got[~empty]).any()
        np.testing.assert_allclose(got[~empty], want[~empty], rtol=2e-3, atol=1e-4)  # float16
        # the top classes are the largest of them, with the same values
        top_c, top_v = lev["top_classes"][...].astype(np.int64), lev["top_values"][...]
        rows, cols = np.nonzero(~empty)
        picked = got[rows[:, None], cols[:, None], top_c[rows, cols]]
        np.testing.assert_allclose(picked, top_v[rows, cols], rtol=2e-3, atol=1e-4)
        assert (np.nanmax(got[rows, cols], axis=1) <= top_v[rows, cols, 0] * (1 + 2e-3) + 1e-4).all()
        # a graded map: many distinct values per class, not on / off
        assert len(np.unique(got[~empty][:, 0])) > 3 or s == SIZES[0]
    assert "class_attribution" in g.attrs


def test_written_in_blocks_of_cell_rows_gives_the_same_bytes(built: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "run"
    for part in ("collect", "reduce", "state/collect", "state/reduce"):
        shutil.copytree(built / part, root / part)
    monkeypatch.setattr(G, "_CLASS_BLOCK", 3)  # 3 cell rows at a time (and chunks of 3): the streaming path
    _run(root)
    a, b = zarr.open_group(str(built / "grid"), mode="r"), zarr.open_group(str(root / "grid"), mode="r")
    for s in SIZES:
        x, y = a[f"level-{s}/class_attribution"], b[f"level-{s}/class_attribution"]
        assert y.chunks == (3, 3, 3)
        assert x[...].tobytes() == y[...].tobytes()
