"""Two networks on the same images (``atlas compare``): pairing positions across layer grids and
the change figures of a cell. Pure numpy, no I/O.

A cell is a cell of the *layout* network's atlas (its rows: the images whose sampled activation
landed there); the *other* network's activations of the same rows are set beside them. Per cell:

* **coherence** (each network): the mean cosine of the cell's rows to their own mean in that
  network's activation space (:func:`cell_cosine_sums`, :func:`coherence`); 1 = the rows point one
  way. Its change, other minus layout, says whether the other network keeps the rows together
  (near 0), groups them more tightly (> 0) or splits them (< 0).
* **relation change**: how the cell's place among the other cells moved: 1 - the Pearson
  correlation, over the reference cells, of its similarity to each of them in one network and in
  the other (:func:`relation_change`: representational similarity analysis per cell), in [0, 2].
* **class shift**: how far the top classes moved: the Jaccard distance of the two top-T sets
  (:func:`class_shift`), in [0, 1].
* **change**: the figure cells are ranked by (:func:`change_score`, :func:`change_rank`).

Every figure is exactly 0 when the two networks are one (the same rows, the same means).
"""

from __future__ import annotations

import numpy as np

__all__ = ["map_positions", "cell_cosine_sums", "coherence", "class_shift", "relation_change", "reference_cells",
           "change_score", "change_rank", "CHANGE_FIGURES"]

CHANGE_FIGURES = ("coherence_change", "relation_change", "class_shift")
"""The per-cell change figures besides the two coherences (see the module docstring)."""


def map_positions(positions: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Positions on one layer grid -> the positions at the same relative location on another.

    positions int [n, 2] (y, x) on the ``src`` (H, W) grid (-1: none) -> int16 [n, 2] on the
    ``dst`` (H', W') grid: the cell of ``dst`` that holds the centre of the ``src`` cell,
    ``floor((y + 0.5) * H' / H)`` (and x likewise); the identity when the grids are equal.
    Rows with a negative coordinate stay (-1, -1).
    """
    p = np.asarray(positions, np.int64).reshape(-1, 2)
    (h, w), (h2, w2) = src, dst
    if min(h, w, h2, w2) <= 0:
        raise ValueError(f"layer grids must be non-empty, got {src} and {dst}")
    y = np.minimum(((2 * p[:, 0] + 1) * h2) // (2 * h), h2 - 1)
    x = np.minimum(((2 * p[:, 1] + 1) * w2) // (2 * w), w2 - 1)
    out = np.stack([y, x], axis=1)
    out[(p < 0).any(axis=1)] = -1
    return out.astype(np.int16)


def cell_cosine_sums(x: np.ndarray, ids: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the sum of its rows' cosines to the cell's mean, and its row count.

    x float [m, C] rows; ids int [m] flat cell id of each row (-1: ignored); means float [n, C]
    the cells' mean activations (NaN in empty cells). Returns (sums float64 [n], counts int64 [n]).
    A row or mean of norm 0 has cosine 0. Rows are added in order (float64): bit-reproducible.
    """
    ids = np.asarray(ids, np.int64)
    n = int(means.shape[0])
    sums, counts = np.zeros(n, np.float64), np.zeros(n, np.int64)
    keep = np.flatnonzero(ids >= 0)
    if keep.size == 0:
        return sums, counts
    xs = np.asarray(x, np.float64)[keep]
    mu = np.asarray(means, np.float64)[ids[keep]]
    dot = np.einsum("ij,ij->i", xs, mu)
    norm = np.linalg.norm(xs, axis=1) * np.linalg.norm(mu, axis=1)
    cos = np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0)
    cos = np.where(np.isfinite(cos), cos, 0.0)
    np.add.at(sums, ids[keep], cos)
    np.add.at(counts, ids[keep], 1)
    return sums, counts


def coherence(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean cosine of each cell's rows to the cell's mean: float64 [n] (NaN where a cell has no row)."""
    counts = np.asarray(counts)
    return np.where(counts > 0, np.asarray(sums, np.float64) / np.maximum(counts, 1), np.nan)


def class_shift(top_a: np.ndarray, top_b: np.ndarray) -> np.ndarray:
    """How far each cell's top classes moved: the Jaccard distance of the two sets.

    top_a, top_b int [n, T] class ids in one vocabulary (-1: none; the two networks' classes matched
    by name first) -> float64 [n]: 1 - |A & B| / |A | B| (0: the same classes, 1: none shared); NaN
    where both are empty.
    """
    a, b = np.asarray(top_a), np.asarray(top_b)
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        sa, sb = {int(k) for k in a[i] if k >= 0}, {int(k) for k in b[i] if k >= 0}
        union = sa | sb
        if union:
            out[i] = 1.0 - len(sa & sb) / len(union)
    return out


def reference_cells(n: int, limit: int) -> np.ndarray:
    """The cells each relation profile is measured against: all ``n`` when ``n <= limit``, else
    ``limit`` of them evenly spaced in cell order (int64 [min(n, limit)])."""
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    norm = np.linalg.norm(m, axis=1, keepdims=True)
    return np.where(norm > 0, m / np.where(norm > 0, norm, 1.0), 0.0)


def relation_change(means_a: np.ndarray, means_b: np.ndarray, refs: np.ndarray | None = None,
                    block: int = 1024) -> np.ndarray:
    """How each cell's relations to the other cells moved between two activation spaces.

    means_a float [n, Ca], means_b float [n, Cb]: the same n cells' mean activations in each network
    (finite rows); refs int [r]: the reference cells (default: all). For cell i, its profile is its
    cosine similarity to every reference j != i; the figure is 1 - the Pearson correlation of its
    profile in a and in b: float64 [n] in [0, 2] (0: the same relations). NaN where a profile has
    fewer than 2 entries; 0 where both profiles are constant and 1 where only one is.
    """
    ua, ub = _unit(means_a), _unit(means_b)
    n = len(ua)
    refs = np.arange(n, dtype=np.int64) if refs is None else np.asarray(refs, np.int64)
    out = np.full(n, np.nan)
    if len(refs) - 1 < 2 and n > 0:
        return out
    for lo in range(0, n, block):
        rows = np.arange(lo, min(n, lo + block))
        sa, sb = ua[rows] @ ua[refs].T, ub[rows] @ ub[refs].T  # [b, r]
        self_ref = rows[:, None] == refs[None, :]
        w = (~self_ref).astype(np.float64)
        k = w.sum(axis=1)
        da = sa - (sa * w).sum(axis=1, keepdims=True) / np.maximum(k, 1)[:, None]
        db = sb - (sb * w).sum(axis=1, keepdims=True) / np.maximum(k, 1)[:, None]
        cov = (da * db * w).sum(axis=1)
        va, vb = (da * da * w).sum(axis=1), (db * db * w).sum(axis=1)
        scale = np.sqrt(va * vb)
        tiny = 1e-24
        r = np.where(scale > tiny, cov / np.where(scale > tiny, scale, 1.0), np.nan)
        r = np.where((va <= tiny) & (vb <= tiny), 1.0, np.where((va <= tiny) | (vb <= tiny), 0.0, r))
        out[rows] = np.where(k >= 2, 1.0 - np.clip(r, -1.0, 1.0), np.nan)
    return out


def change_score(coherence_change: np.ndarray, relation: np.ndarray) -> np.ndarray:
    """The figure cells are ranked by: the relation change plus the size of the coherence change,
    float64 [n] (NaN where the relation change is NaN). Both are 0 when the networks agree; the
    relation change says the cell moved among the others, the coherence change that its rows were
    pulled together or apart."""
    return np.asarray(relation, np.float64) + np.abs(np.nan_to_num(np.asarray(coherence_change, np.float64)))


def change_rank(change: np.ndarray) -> np.ndarray:
    """Rank of each cell by ``change`` float [n], largest first: int64 [n], 1 = changed most; ties
    keep cell order; NaN cells rank 0 (not ranked)."""
    c = np.asarray(change, np.float64)
    ok = np.flatnonzero(np.isfinite(c))
    order = ok[np.lexsort((ok, -c[ok]))]
    rank = np.zeros(len(c), np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank
