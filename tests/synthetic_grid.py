"""A synthetic ``RUN/grid`` group (the grid stage's output that render reads), for tests and benchmarks.

Layout written (Zarr v3)::

    RUN/grid
      whitening [C, C] float64                  S = inv(A^T A / N + eps I)
      level-<s>/count [s, s] int64              for each s in sizes
      level-<s>/mean_activation [s, s, C] float32
      attrs: sizes, min_count

Points are drawn on the finest level; a coarser cell's count is the sum of its 2x2
children and its mean the count-weighted mean of theirs (aligned levels, as the grid
stage builds them). Empty cells (count 0) hold zeros. With ``vectors`` (e.g. real
layer activations [N, C]) every point is a row of ``vectors``, so the cell means are
realistic targets; otherwise points are clustered Gaussian vectors.

Usage::

    from tests.synthetic_grid import make_grid
    make_grid(tmp_path / "run", [2, 4], 192, seed=0, min_count=2)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from atlas.ops.whitening import whitening_matrix
from atlas.store import RunDir

__all__ = ["make_grid", "non_empty_cells"]


def _points(n: int, c: int, rng: np.random.Generator, vectors: np.ndarray | None) -> np.ndarray:
    """n point vectors float64 [n, c]: rows of ``vectors``, or clustered Gaussians with a shared offset."""
    if vectors is not None:
        return np.asarray(vectors, dtype=np.float64)[rng.integers(0, len(vectors), n)]
    centres = rng.normal(size=(8, c)) * 2.0 + rng.normal(size=c)
    return centres[rng.integers(0, 8, n)] + rng.normal(size=(n, c))


def _coarsen(count: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum 2x2 blocks: count [s, s], total [s, s, C] -> [s/2, s/2], [s/2, s/2, C]."""
    s = count.shape[0] // 2
    return count.reshape(s, 2, s, 2).sum(axis=(1, 3)), total.reshape(s, 2, s, 2, -1).sum(axis=(1, 3))


def make_grid(run_root: str | Path, sizes: Sequence[int], c: int, *, seed: int, min_count: int,
              vectors: np.ndarray | None = None, mean_points: float = 3.0, eps: float = 1e-2) -> None:
    """Write ``run_root/grid`` for grid ``sizes`` (increasing powers of two) and ``c`` channels.

    Finest-level cell counts are Poisson(``mean_points``) (some cells stay under
    ``min_count``); ``vectors`` [N, c] are the points to average when given.
    """
    sizes = sorted(int(s) for s in sizes)
    rng = np.random.default_rng([seed, 4127])
    fine = sizes[-1]
    count = rng.poisson(mean_points, size=(fine, fine)).astype(np.int64)
    pts = _points(int(count.sum()), c, rng, vectors)
    owner = np.repeat(np.arange(fine * fine), count.reshape(-1))
    total = np.zeros((fine * fine, c))
    np.add.at(total, owner, pts)
    total = total.reshape(fine, fine, c)
    g = zarr.open_group(str(Path(run_root) / "grid"), mode="w", zarr_format=3)
    levels = {fine: (count, total)}
    for s in reversed(sizes[:-1]):
        levels[s] = _coarsen(*levels[2 * s])
    for s in sizes:
        cnt, tot = levels[s]
        mean = np.where(cnt[..., None] > 0, tot / np.maximum(cnt, 1)[..., None], 0.0).astype(np.float32)
        g.create_array(f"level-{s}/count", shape=cnt.shape, dtype="int64", fill_value=0)[...] = cnt
        g.create_array(f"level-{s}/mean_activation", shape=mean.shape, chunks=(s, s, c), dtype="float32",
                       fill_value=0)[...] = mean
    g.create_array("whitening", shape=(c, c), dtype="float64", fill_value=0)[...] = \
        whitening_matrix(pts.T @ pts, len(pts), eps)
    g.attrs.update({"sizes": sizes, "min_count": min_count, "synthetic": True})
    RunDir(run_root).mark_done("grid", "done", {"synthetic": True})


def non_empty_cells(run_root: str | Path, size: int, min_count: int) -> np.ndarray:
    """(row, col) of the cells of level ``size`` with count >= ``min_count``, row-major: int32 [n, 2]."""
    count = zarr.open_group(str(Path(run_root) / "grid"), mode="r")[f"level-{size}/count"][...]
    return np.argwhere(count >= min_count).astype(np.int32)
