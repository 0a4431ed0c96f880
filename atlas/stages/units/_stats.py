"""The pass over the collected rows (unit ``stats``): every ok row's coefficients on the basis, chunk by
chunk, into

* each unit's mean, standard deviation (its *spread*, what the self-rank scales by), largest value and
  share of rows where it is positive;
* the ``units.examples`` rows where each unit is strongest (:func:`atlas.ops.units.merge_top_rows`:
  exact, ties to the lower row), with their sampled positions and labels (the source's labels when it
  has some, else each row's top attributed class);
* each cell's mean coefficient at the finest grid size (float64 sums binned by reduce's coordinates as
  the grid bins them), pooled 2 x 2 upward; a cell is empty where the grid's count is below its
  ``min_count`` (NaN); each cell's dictionary (:func:`atlas.ops.units.dictionary`);
* for a learned basis, its reconstruction error (unexplained share of the rows' squared deviation
  from their mean) and sparsity (units active per row, units never active).

Whatever process needs it first makes it, under the lock ``state/units/locks/_stats``; ``stats.json``
is written last.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...formats import ReduceOutput
from ...formats._units import UnitsOutput, UnitStats
from ...ops.binning import cell_ids, pool2x2, scatter_counts
from ...ops.units import dictionary, labels_spanned, merge_top_rows
from ...progress import progress
from ._context import NAME, Context

__all__ = ["ensure_stats", "compute_stats"]


def ensure_stats(ctx: Context) -> UnitStats:
    if UnitsOutput.files(ctx.run).stats_info() is None:
        with ctx.run.stage_lock(NAME, "_stats"):  # not "stats": the unit's lease is that file
            if UnitsOutput.files(ctx.run).stats_info() is None:
                ctx.output().write_stats(compute_stats(ctx))
    return ctx.output().stats()


class _Acc:
    """Running sums of the pass (float64, rows added in order)."""

    def __init__(self, k: int, c: int, cells: int, n: int) -> None:
        self.sum, self.sq = np.zeros(k), np.zeros(k)
        self.max = np.full(k, -np.inf)
        self.active, self.rows = np.zeros(k, np.int64), 0
        self.cell_sums, self.cell_counts = np.zeros((cells, k)), np.zeros(cells, np.int64)
        self.best_v = np.full((k, n), -np.inf, np.float32)
        self.best_r = np.full((k, n), -1, np.int64)
        self.sse, self.x_sum, self.x_sq, self.l0 = 0.0, np.zeros(c), 0.0, 0.0

    def add(self, coef: np.ndarray, rows: np.ndarray, ids: np.ndarray, x: np.ndarray, recon: np.ndarray | None) -> None:
        c64 = coef.astype(np.float64)
        self.sum += c64.sum(axis=0)
        self.sq += np.square(c64).sum(axis=0)
        if len(coef):
            self.max = np.maximum(self.max, c64.max(axis=0))
        pos = coef > 0
        self.active += pos.sum(axis=0)
        self.l0 += float(pos.sum())
        self.rows += len(coef)
        keep = ids >= 0
        np.add.at(self.cell_sums, ids[keep], c64[keep])  # in place, rows in order
        self.cell_counts += scatter_counts(ids, self.cell_sums.shape[0])
        self.best_v, self.best_r = merge_top_rows(self.best_v, self.best_r, coef, rows)
        if recon is not None:
            x64 = x.astype(np.float64)
            self.sse += float(np.square(x64 - recon.astype(np.float64)).sum())
            self.x_sum += x64.sum(axis=0)
            self.x_sq += float(np.square(x64).sum())


def _labels(ctx: Context, rows: np.ndarray) -> tuple[np.ndarray, str]:
    """The label of each example row (-1 padding kept): the source's label, else the top attributed class."""
    col, flat = ctx.collect, rows.reshape(-1)
    out = np.full(flat.shape, -1, np.int32)
    ok = flat >= 0
    if not ok.any():
        return out.reshape(rows.shape), "none"
    order = np.unique(flat[ok])
    if col.has_labels and col.label_names:
        vals, kind = np.asarray(col.labels.oindex[order]), "labels"
    elif col.has_attribution:
        vals, kind = np.asarray(col.attr_classes.oindex[order, 0]), "classes"
    else:
        return out.reshape(rows.shape), "none"
    out[ok] = vals[np.searchsorted(order, flat[ok])]
    return out.reshape(rows.shape), kind


def _positions(ctx: Context, rows: np.ndarray) -> np.ndarray:
    flat = rows.reshape(-1)
    out = np.full((flat.size, 2), -1, np.int16)
    ok = flat >= 0
    if ok.any():
        order = np.unique(flat[ok])
        pos = np.asarray(ctx.collect.positions.oindex[order, :])
        out[ok] = pos[np.searchsorted(order, flat[ok])]
    return out.reshape(*rows.shape, 2)


def _levels(ctx: Context, acc: _Acc, top: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Each level's mean coefficients [s, s, K] (NaN where the grid's cell is empty) and dictionary."""
    k, finest = acc.cell_sums.shape[1], max(ctx.sizes)
    sums = acc.cell_sums.reshape(finest, finest, k)
    counts = acc.cell_counts.reshape(finest, finest)
    means, units, shares = {}, {}, {}
    for s in sorted(ctx.sizes, reverse=True):
        while sums.shape[0] > s:
            sums, counts = pool2x2(sums), pool2x2(counts)
        empty = ctx.counts[s] < ctx.min_count
        with np.errstate(invalid="ignore", divide="ignore"):
            m = (sums / np.maximum(counts, 1)[:, :, None]).astype(np.float32)
        m[empty] = np.nan
        means[s] = m
        u, sh = dictionary(m.reshape(-1, k), top)
        units[s], shares[s] = u.reshape(s, s, top), sh.reshape(s, s, top)
    return means, units, shares


def compute_stats(ctx: Context) -> UnitStats:
    """The pass over every chunk of collected rows (see the module docstring)."""
    t0 = time.time()
    basis, col, u = ctx.basis(), ctx.collect, ctx.cfg.units
    coords = ReduceOutput.open(ctx.run).coords
    finest = max(ctx.sizes)
    acc = _Acc(basis.size, ctx.channels, finest * finest, u.examples)
    learned = basis.kind != "channels"
    r, n = col.chunk_rows, col.n_rows
    bar = progress(total=n, desc="units: rows", unit="row")
    for lo in range(0, n, r):
        hi = min(lo + r, n)
        ok = np.asarray(col.status[lo:hi]) == 1
        x = np.asarray(col.activations[lo:hi], np.float32)[ok]
        rows = np.arange(lo, hi, dtype=np.int64)[ok]
        coef = basis.encode(x)
        ids = cell_ids(np.asarray(coords[lo:hi], np.float64)[ok], finest)
        acc.add(coef, rows, ids, x, basis.reconstruct(x, coef) if learned else None)
        bar.update(hi - lo)
    bar.close()
    n_ok = max(acc.rows, 1)
    mean = acc.sum / n_ok
    std = np.sqrt(np.maximum(acc.sq / n_ok - mean ** 2, 0.0))
    ex_rows = acc.best_r
    ex_vals = np.where(ex_rows >= 0, acc.best_v, np.nan).astype(np.float32)
    labels, label_kind = _labels(ctx, ex_rows)
    means, units, shares = _levels(ctx, acc, u.dictionary)
    info: dict[str, Any] = {"rows": int(acc.rows), "label_kind": label_kind,
                            "dead_units": int((acc.active == 0).sum()),
                            "active_per_row": round(acc.l0 / n_ok, 4)}
    spanned = labels_spanned(labels)
    info["labels_spanned_mean"] = round(float(spanned[ex_rows[:, 0] >= 0].mean()) if (ex_rows[:, 0] >= 0).any() else 0.0, 4)
    if learned:
        sst = acc.x_sq - float(np.square(acc.x_sum).sum()) / n_ok
        info["unexplained_variance"] = round(acc.sse / max(sst, 1e-30), 6)
    ctx.log.info("units: %d rows, %d units (%d never active, %.1f active per row) in %.1f s", acc.rows, basis.size,
                 info["dead_units"], info["active_per_row"], time.time() - t0)
    return UnitStats(mean.astype(np.float32), std.astype(np.float32),
                     np.where(np.isfinite(acc.max), acc.max, np.nan).astype(np.float32),
                     (acc.active / n_ok).astype(np.float32), ex_rows, _positions(ctx, ex_rows), ex_vals,
                     labels, means, units, shares, info)
