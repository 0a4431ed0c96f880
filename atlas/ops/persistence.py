"""How much neighbourhoods persist between two layouts of the same images (two layers' atlases).

For each image, its k nearest images on one 2-D layout and on the other; the share of the k they
have in common is the image's *persistence* (1: the same neighbours; about ``k / (n - 1)`` for two
unrelated layouts). Pure array code: no I/O, nothing from the project.
"""

from __future__ import annotations

import numpy as np

__all__ = ["layout_neighbours", "shared_neighbours", "chance_share"]


def layout_neighbours(xy: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest other points of each point of a 2-D layout, by Euclidean distance.

    ``xy``: float [n, 2], NaN rows for points not placed (they get -1 neighbours and are nobody's
    neighbour). Returns int64 [n, k] row indices into ``xy``, nearest first (ties by index), -1
    where fewer than ``k`` other points are placed."""
    from scipy.spatial import cKDTree

    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    out = np.full((n, k), -1, np.int64)
    placed = np.flatnonzero(np.isfinite(xy).all(axis=1))
    m = min(k, len(placed) - 1)
    if m < 1:
        return out
    _, nearest = cKDTree(xy[placed]).query(xy[placed], k=m + 1)
    nearest = np.asarray(nearest).reshape(len(placed), m + 1)
    own = nearest == np.arange(len(placed))[:, None]
    keep = np.where(own.any(axis=1)[:, None], ~own, np.arange(m + 1)[None, :] < m)  # drop self (or the farthest)
    out[placed, :m] = placed[nearest[keep].reshape(len(placed), m)]
    return out


def shared_neighbours(a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Per row, how many of its neighbours ``a`` and ``b`` have in common.

    ``a``, ``b``: int64 [n, k] neighbour lists (-1 = none; never counted). Returns int64 [n]."""
    if a.shape != b.shape:
        raise ValueError(f"neighbour lists must have one shape, got {a.shape} and {b.shape}")
    out = np.zeros(len(a), np.int64)
    for lo in range(0, len(a), chunk):
        x, y = a[lo:lo + chunk], b[lo:lo + chunk]
        same = (x[:, :, None] == y[:, None, :]) & (x[:, :, None] >= 0)
        out[lo:lo + chunk] = same.any(axis=2).sum(axis=1)
    return out


def chance_share(n_placed: int, k: int) -> float:
    """The share of k neighbours two unrelated layouts of ``n_placed`` points have in common on average."""
    return 0.0 if n_placed < 2 else min(k, n_placed - 1) / (n_placed - 1)
