"""Binning a unit-square layout into aligned multi-level grids. Pure numpy, no I/O.

Conventions (shared with the grid stage and its readers):

* coords are (x, y) in [0, 1]: column 0 is x, column 1 is y. At grid size s, cell
  (r, c) = (floor(y * s), floor(x * s)); a point exactly at 1.0 goes into the last cell.
  Flat cell id = r * s + c. Rows with NaN coords get id -1 (ignored).
* Levels are aligned: cell (r, c) at size s has children (2r..2r+1, 2c..2c+1) at size 2s,
  so every coarser level is the 2x2 pooling of the next finer one.
* All sums are float64 and are accumulated in a fixed order (rows in order inside a chunk,
  chunks in order when combining), so results are bit-reproducible.
* Sparse sums are (sorted int64 keys, values) pairs; a key packs (cell, class) as
  ``cell * n_classes + class``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cell_ids",
    "parent_ids",
    "scatter_counts",
    "scatter_sums",
    "key_sums",
    "merge_key_sums",
    "pool2x2",
    "pool_keys",
    "level_means",
    "top_per_cell",
    "dense_from_keys",
    "dense_cell_block",
    "purity",
    "unit_rows",
    "cell_similarity",
    "top_rows_per_cell",
    "rank_in_groups",
    "chunk_partial",
    "empty_accumulator",
    "add_partial",
    "add_partials",
    "pyramid",
]


def cell_ids(coords: np.ndarray, size: int) -> np.ndarray:
    """Flat cell id of each point at grid ``size``: coords float [n, 2] (x, y) -> int64 [n].

    Values are clipped into [0, 1]; 1.0 lands in the last cell; NaN rows give -1.
    """
    xy = np.asarray(coords, dtype=np.float64)
    finite = np.asarray(np.isfinite(xy).all(axis=1))
    rc = np.floor(np.clip(np.where(finite[:, None], xy, 0.0), 0.0, 1.0) * size).astype(np.int64)
    rc = np.minimum(rc, size - 1)
    ids = rc[:, 1] * size + rc[:, 0]
    return np.where(finite, ids, -1)


def parent_ids(ids: np.ndarray, size: int) -> np.ndarray:
    """Flat ids at size ``size`` -> ids of their parents at size // 2 (int64 [n]; -1 stays -1)."""
    ids = np.asarray(ids, dtype=np.int64)
    r, c = ids // size, ids % size
    half = size // 2
    return np.where(ids < 0, -1, (r // 2) * half + c // 2)


def scatter_counts(ids: np.ndarray, n_cells: int) -> np.ndarray:
    """Points per cell: ids int [n] (negative ignored) -> int64 [n_cells]."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.bincount(ids[ids >= 0], minlength=n_cells).astype(np.int64)


def scatter_sums(ids: np.ndarray, values: np.ndarray, n_cells: int) -> np.ndarray:
    """Per-cell sums in float64, rows added in order: ids int [n], values [n, ...] ->
    float64 [n_cells, ...]. Negative ids are ignored."""
    ids = np.asarray(ids, dtype=np.int64)
    keep = ids >= 0
    out = np.zeros((n_cells, *values.shape[1:]), dtype=np.float64)
    np.add.at(out, ids[keep], np.asarray(values, dtype=np.float64)[keep])
    return out


def key_sums(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum values sharing a key: keys int [n], values [n] -> (sorted unique int64 keys [u],
    sums [u] in float64, or int64 for integer values). Equal keys add in input order."""
    keys = np.asarray(keys, dtype=np.int64)
    dtype = np.int64 if np.issubdtype(np.asarray(values).dtype, np.integer) else np.float64
    if keys.size == 0:
        return keys, np.zeros(0, dtype=dtype)
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sums = np.add.reduceat(np.asarray(values, dtype=dtype)[order], starts)
    return k[starts], sums


def merge_key_sums(keys_a: np.ndarray, sums_a: np.ndarray, keys_b: np.ndarray,
                   sums_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add two sparse sums (each with sorted unique keys): a's value + b's value per key.
    Returns (sorted unique keys [u], sums [u]) with the dtype of sums_a. Linear time: a
    stable sort of two sorted runs is a single merge."""
    keys = np.concatenate([np.asarray(keys_a, np.int64), np.asarray(keys_b, np.int64)])
    vals = np.concatenate([sums_a, np.asarray(sums_b, dtype=sums_a.dtype)])
    order = np.argsort(keys, kind="stable")  # a key present in both: a's value first
    keys, vals = keys[order], vals[order]
    if keys.size == 0:
        return keys, vals
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], np.add.reduceat(vals, starts)


def pool2x2(grid: np.ndarray) -> np.ndarray:
    """Sum aligned 2x2 blocks: [s, s, ...] -> [s/2, s/2, ...] (children added in the fixed
    order (0,0), (0,1), (1,0), (1,1))."""
    s = grid.shape[0]
    if s % 2 or grid.shape[1] != s:
        raise ValueError(f"pool2x2 needs a square grid of even side, got shape {grid.shape}")
    out: np.ndarray = grid[0::2, 0::2] + grid[0::2, 1::2] + grid[1::2, 0::2] + grid[1::2, 1::2]
    return out


def pool_keys(keys: np.ndarray, sums: np.ndarray, size: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pool sparse (cell, class) sums from grid ``size`` to size // 2.

    keys: int64 [u] = cell * n_classes + class; sums [u] -> (keys, sums) at the parent level.
    """
    cells, cls = keys // n_classes, keys % n_classes
    return key_sums(parent_ids(cells, size) * n_classes + cls, sums)


def level_means(sums: np.ndarray, counts: np.ndarray, min_count: int) -> np.ndarray:
    """Cell means: sums [s, s, ...] / counts [s, s] -> float32 [s, s, ...], NaN where
    count < min_count (empty cell)."""
    c = counts.reshape(counts.shape + (1,) * (sums.ndim - counts.ndim)).astype(np.float64)
    full = np.broadcast_to(c >= max(min_count, 1), sums.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(full, sums / np.where(c > 0, c, 1.0), np.nan).astype(np.float32)


def rank_in_groups(groups: np.ndarray) -> np.ndarray:
    """Position of each element inside its run of equal values: sorted int [n] -> int64 [n]
    (e.g. [3, 3, 5, 7, 7, 7] -> [0, 1, 0, 0, 1, 2])."""
    groups = np.asarray(groups)
    if groups.size == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    return np.arange(groups.size) - np.repeat(starts, np.diff(np.r_[starts, groups.size]))


def top_per_cell(keys: np.ndarray, values: np.ndarray, n_cells: int, n_classes: int,
                 t: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-t classes per cell by value (ties: lower class first).

    keys: int64 [u] = cell * n_classes + class; values: float [u] ->
    (int16 [n_cells, t] classes, -1 padded; float32 [n_cells, t] values, NaN padded).
    """
    cells, cls = keys // n_classes, keys % n_classes
    order = np.lexsort((cls, -np.asarray(values, np.float64), cells))
    cells, cls, vals = cells[order], cls[order], np.asarray(values)[order]
    rank = rank_in_groups(cells)
    keep = rank < t
    out_c = np.full((n_cells, t), -1, dtype=np.int16)
    out_v = np.full((n_cells, t), np.nan, dtype=np.float32)
    out_c[cells[keep], rank[keep]] = cls[keep]
    out_v[cells[keep], rank[keep]] = vals[keep]
    return out_c, out_v


def dense_from_keys(keys: np.ndarray, values: np.ndarray, n_cells: int, n_classes: int,
                    dtype: type = np.int64) -> np.ndarray:
    """Sparse (cell, class) values -> dense [n_cells, n_classes] (zeros elsewhere)."""
    out: np.ndarray = np.zeros((n_cells, n_classes), dtype=dtype)
    out[keys // n_classes, keys % n_classes] = values
    return out


def dense_cell_block(keys: np.ndarray, values: np.ndarray, cell_lo: int, cell_hi: int,
                     n_classes: int) -> np.ndarray:
    """Rows ``cell_lo .. cell_hi - 1`` of the dense [n_cells, n_classes] matrix of sparse
    (cell, class) values: float64 [cell_hi - cell_lo, n_classes], zeros elsewhere.

    ``keys`` must be sorted (as :func:`key_sums` leaves them), so the block's keys are one
    contiguous run found by binary search: a level is written block by block without ever
    holding its whole dense matrix.
    """
    keys = np.asarray(keys, np.int64)
    a, b = np.searchsorted(keys, [cell_lo * n_classes, cell_hi * n_classes], side="left")
    out = np.zeros((cell_hi - cell_lo, n_classes), np.float64)
    k = keys[a:b]
    out[k // n_classes - cell_lo, k % n_classes] = np.asarray(values, np.float64)[a:b]
    return out


def purity(label_counts: np.ndarray, occupied: np.ndarray) -> float:
    """Count-weighted share of the majority label over the occupied cells.

    label_counts: int [n_cells, L]; occupied: bool [n_cells] -> float in [0, 1]
    (NaN when no labelled point lies in an occupied cell).
    """
    lc = label_counts[occupied]
    total = lc.sum()
    return float(lc.max(axis=1).sum() / total) if lc.size and total > 0 else float("nan")


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero and NaN rows become 0): float [n, d] -> float32 [n, d]."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def cell_similarity(unit_x: np.ndarray, ids: np.ndarray, unit_means: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row to the mean of its own cell.

    unit_x: float [n, d] unit rows (:func:`unit_rows`); ids: int [n] (-1 = none);
    unit_means: float [n_cells, d] unit rows (0 for empty cells) -> float64 [n]
    (-inf where id < 0).
    """
    safe = np.where(ids >= 0, ids, 0)
    sim = np.einsum("nd,nd->n", unit_x, unit_means[safe], dtype=np.float64)
    return np.where(ids >= 0, sim, -np.inf)


def top_rows_per_cell(cells: np.ndarray, rows: np.ndarray, scores: np.ndarray,
                      e: int) -> np.ndarray:
    """Indices (into the inputs) of the best ``e`` candidates of each cell, by score then
    lower row id, ordered by cell then rank. cells, rows, scores: [n] -> int64 [<= n]."""
    order = np.lexsort((rows, -np.asarray(scores, np.float64), cells))
    return order[rank_in_groups(np.asarray(cells)[order]) < e]


def chunk_partial(coords: np.ndarray, act: np.ndarray, ok: np.ndarray, size: int, *,
                  attr_classes: np.ndarray | None = None, attr_values: np.ndarray | None = None,
                  n_classes: int = 0, labels: np.ndarray | None = None,
                  n_labels: int = 0) -> dict[str, np.ndarray]:
    """Per-cell sums of one chunk at grid ``size`` (sparse: occupied cells only).

    coords: float [n, 2] (x, y); act: float [n, C]; ok: bool [n] (rows used);
    attr_classes: int [n, K], attr_values: float [n, K] (top-K attribution, optional);
    labels: int [n] (-1 = none, optional). Returns ``cells`` int64 [u] (sorted ids),
    ``count`` int64 [u], ``act_sum`` float64 [u, C], and when given ``attr_keys`` / ``attr_sums``
    (key = cell * n_classes + class, float64) and ``label_keys`` / ``label_counts``
    (key = cell * n_labels + label, int64).
    """
    ids = cell_ids(coords, size)
    keep = np.asarray(ok, dtype=bool) & (ids >= 0)
    ids = ids[keep]
    cells, inverse = np.unique(ids, return_inverse=True)
    out = {"cells": cells, "count": np.bincount(inverse, minlength=cells.size).astype(np.int64),
           "act_sum": scatter_sums(inverse, np.asarray(act)[keep], cells.size)}
    if attr_classes is not None and attr_values is not None and n_classes > 0:
        cls = np.asarray(attr_classes, dtype=np.int64)[keep]
        good = (cls >= 0) & (cls < n_classes)
        keys = ids[:, None] * n_classes + cls
        out["attr_keys"], out["attr_sums"] = key_sums(keys[good], np.asarray(attr_values, np.float64)[keep][good])
    if labels is not None and n_labels > 0:
        lab = np.asarray(labels, dtype=np.int64)[keep]
        good = (lab >= 0) & (lab < n_labels)
        out["label_keys"], out["label_counts"] = key_sums(ids[good] * n_labels + lab[good],
                                                          np.ones(int(good.sum()), dtype=np.int64))
    return out


def empty_accumulator(size: int, n_channels: int) -> dict[str, np.ndarray]:
    """Zero finest-level totals for :func:`add_partial`: dense counts [s*s] and activation
    sums [s*s, C], empty sparse attribution and label sums."""
    return {"count": np.zeros(size * size, np.int64), "act_sum": np.zeros((size * size, n_channels), np.float64),
            "attr_keys": np.zeros(0, np.int64), "attr_sums": np.zeros(0, np.float64),
            "label_keys": np.zeros(0, np.int64), "label_counts": np.zeros(0, np.int64)}


def add_partials(acc: dict[str, np.ndarray], parts: list[dict[str, np.ndarray]]) -> None:
    """Add a batch of chunks' :func:`chunk_partial` into ``acc`` in place.

    Dense totals are added part by part; the sparse sums of the batch are first summed
    together (parts in order) and then merged once into ``acc``, so the large accumulator
    is re-sorted once per batch, not once per chunk. Call with batches in chunk order and
    a fixed batch size for bit-reproducible float sums.
    """
    for part in parts:
        acc["count"][part["cells"]] += part["count"]
        acc["act_sum"][part["cells"]] += part["act_sum"]
    for keys, vals in (("attr_keys", "attr_sums"), ("label_keys", "label_counts")):
        present = [p for p in parts if keys in p]
        if present:
            batch = key_sums(np.concatenate([p[keys] for p in present]), np.concatenate([p[vals] for p in present]))
            acc[keys], acc[vals] = merge_key_sums(acc[keys], acc[vals], *batch)


def add_partial(acc: dict[str, np.ndarray], part: dict[str, np.ndarray]) -> None:
    """:func:`add_partials` for one chunk."""
    add_partials(acc, [part])


def pyramid(acc: dict[str, np.ndarray], sizes: list[int], n_classes: int,
            n_labels: int) -> dict[int, dict[str, np.ndarray]]:
    """Every level's totals from the finest one by repeated 2x2 pooling.

    acc: :func:`empty_accumulator` layout at size S = max(sizes); sizes: increasing powers
    of two, each double the previous. Returns {s: {"count" int64 [s, s], "act_sum" float64
    [s, s, C], "attr_keys"/"attr_sums", "label_keys"/"label_counts" (sparse, at size s)}}.
    """
    big = sizes[-1]
    cur = {"count": acc["count"].reshape(big, big), "act_sum": acc["act_sum"].reshape(big, big, -1),
           "attr_keys": acc["attr_keys"], "attr_sums": acc["attr_sums"],
           "label_keys": acc["label_keys"], "label_counts": acc["label_counts"]}
    out = {big: cur}
    s = big
    while s > sizes[0]:
        nxt = {"count": pool2x2(cur["count"]), "act_sum": pool2x2(cur["act_sum"])}
        for keys, vals, n in (("attr_keys", "attr_sums", n_classes), ("label_keys", "label_counts", n_labels)):
            nxt[keys], nxt[vals] = pool_keys(cur[keys], cur[vals], s, n) if n > 0 else (cur[keys], cur[vals])
        s //= 2
        out[s] = cur = nxt
    return {size: out[size] for size in sizes}
