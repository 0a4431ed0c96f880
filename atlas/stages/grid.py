"""Stage 3, grid: aligned multi-level grids over the layout -> ``RUN/grid``.

Two passes over the collect chunks, each chunk a task of the job's fan-out
(:class:`atlas.cluster.FanOut`); a task reads only its chunk, so memory is flat in N.

``chunk-XXXXXX``
    per-cell sums of chunk j at the finest level (counts, float64 activation sums,
    attribution sums per (cell, class), label counts), sparse over occupied cells ->
    ``state/grid/units/chunk-XXXXXX.npz``.
``combine``
    partials added in chunk order (bit-reproducible float64 sums) -> ``combined.npz``;
    every level's unit-norm cell means -> ``means.npz``.
``examples-XXXXXX``
    per level, the rows of chunk j most similar (cosine) to the mean of their own cell,
    best ``grid.examples`` per cell -> ``examples-XXXXXX.npz``.
``final`` (the runner's last step)
    levels pooled 2x2 from the finest, examples merged in chunk order, purity, whitening,
    the Zarr group written (replacing any partial one), then the marker.

The stage runs in one process (``execution = "driver"``); its chunk tasks go to the
engine's dask client when there is one (``atlas run --workers N`` / ``--scheduler``), else to
``cluster.processes`` spawned processes, else (the default) run in this process. Every task
writes its own file and the driver combines them in chunk order, so where they ran does not
change a byte of the output.

Layout of ``RUN/grid``: root array ``whitening`` [C, C] float64; per size s a subgroup
``level-<s>`` with ``count`` [s, s] int64, ``mean_activation`` [s, s, C] float32,
``top_classes`` [s, s, T] int16 / ``top_values`` [s, s, T] float32 (mean attribution),
``class_attribution`` [s, s, K] float16 (the mean attribution to every class: the class
heatmap; written 64 cell rows at a time from the sparse (cell, class) sums), ``label_counts`` [s, s, L] int32 (when the source has labels), ``examples`` [s, s, E] int64
collect rows and ``example_positions`` [s, s, E, 2] int16. Cell (r, c) holds the points
with r = floor(y s), c = floor(x s) of the reduce coords (x, y). A cell is *empty* when
``count < grid.min_count``: its mean is NaN, top classes -1 / NaN, class attribution NaN,
examples -1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from logging import Logger
from pathlib import Path
from typing import Any

import numpy as np

from .._cache import cached, clear_cache
from ..cluster import FanOut
from ..config import Config
from ..formats import CollectOutput, GridLevelWriter, GridOutput, GridWriter, ReduceOutput
from ..ops.binning import (
    add_partials,
    cell_ids,
    cell_similarity,
    chunk_partial,
    dense_cell_block,
    dense_from_keys,
    empty_accumulator,
    key_sums,
    level_means,
    parent_ids,
    purity,
    pyramid,
    rank_in_groups,
    top_per_cell,
    top_rows_per_cell,
    unit_rows,
)
from ..ops.whitening import whitening_matrix
from ..store import RunDir, atomic_save_npz, fingerprint
from ._protocol import Job, Resources, StageBase

__all__ = ["STAGE", "GridStage", "GridPlan"]

NAME = "grid"
_COMBINE_BATCH = 32  # chunk partials merged into the totals at a time (fixed: part of the sum order)
_CLASS_BLOCK = 64    # class_attribution: cell rows written at a time; chunk side in rows, columns, classes
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_MEANS_KIND = "grid.means"  # the cache of means.npz in the processes that run examples units


@dataclass(frozen=True)
class GridPlan:
    """What every chunk task needs (small, picklable)."""

    run_root: str
    sizes: tuple[int, ...]
    min_count: int
    top_classes: int
    examples: int
    whiten_eps: float
    seed: int
    n_rows: int
    chunk_rows: int
    n_channels: int
    n_classes: int
    n_labels: int
    attribution: bool

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    @property
    def key(self) -> str:
        return fingerprint(asdict(self) | {"run_root": ""})

    def rows(self, j: int) -> tuple[int, int]:
        return j * self.chunk_rows, min(self.n_rows, (j + 1) * self.chunk_rows)


def _make_plan(cfg: Config, run: RunDir, collect: CollectOutput) -> GridPlan:
    attribution = collect.has_attribution
    return GridPlan(
        run_root=str(run.root), sizes=tuple(cfg.grid.sizes), min_count=cfg.grid.min_count,
        top_classes=cfg.grid.top_classes, examples=cfg.grid.examples, whiten_eps=cfg.grid.whiten_eps,
        seed=cfg.seed, n_rows=collect.n_rows, chunk_rows=collect.chunk_rows, n_channels=collect.n_channels,
        n_classes=len(collect.class_names) if attribution else 0,
        n_labels=len(collect.label_names), attribution=attribution,
    )


# --------------------------------------------------------------------------- chunk tasks


def _read_chunk(plan: GridPlan, j: int, *, positions: bool = False) -> dict[str, np.ndarray]:
    """Chunk j of the collect arrays the grid uses, plus its reduce coords."""
    run = RunDir(plan.run_root)
    col = CollectOutput.open(run)
    lo, hi = plan.rows(j)
    out = {"act": np.asarray(col.activations[lo:hi], dtype=np.float32), "ok": np.asarray(col.status[lo:hi]) == 1,
           "coords": np.asarray(ReduceOutput.open(run).coords[lo:hi])}
    if plan.attribution:
        out["attr_classes"], out["attr_values"] = np.asarray(col.attr_classes[lo:hi]), np.asarray(col.attr_values[lo:hi])
    if plan.n_labels:
        out["labels"] = np.asarray(col.labels[lo:hi])
    if positions:
        out["positions"] = np.asarray(col.positions[lo:hi])
    return out


def sums_unit(plan: GridPlan, j: int) -> dict[str, Any]:
    """Task: finest-level sums of chunk j -> units/chunk-XXXXXX.npz (the driver marks it done)."""
    run, unit = RunDir(plan.run_root), f"chunk-{j:06d}"
    ch = _read_chunk(plan, j)
    part = chunk_partial(ch["coords"], ch["act"], ch["ok"], plan.sizes[-1],
                         attr_classes=ch.get("attr_classes"), attr_values=ch.get("attr_values"),
                         n_classes=plan.n_classes, labels=ch.get("labels"), n_labels=plan.n_labels)
    atomic_save_npz(run.unit_data_path(NAME, unit), **part)
    return {"points": int(part["count"].sum())}


def _cached_means(path: Path) -> dict[str, np.ndarray]:
    """means.npz, loaded once per worker process (keyed by path, size and mtime: the file
    is immutable once written, and a restart with other parameters rewrites it)."""
    st = path.stat()
    return cached(_MEANS_KIND, (str(path), st.st_size, st.st_mtime_ns), lambda: _load_npz(path))


def examples_unit(plan: GridPlan, j: int) -> dict[str, Any]:
    """Task: per level, chunk j's best candidates (cosine to their cell's mean) per cell."""
    run, unit = RunDir(plan.run_root), f"examples-{j:06d}"
    means = _cached_means(run.unit_data_path(NAME, "means"))
    ch = _read_chunk(plan, j, positions=True)
    rows = np.arange(*plan.rows(j), dtype=np.int64)
    unit_x = unit_rows(ch["act"])
    out: dict[str, np.ndarray] = {}
    for s in plan.sizes:
        ids = np.where(ch["ok"], cell_ids(ch["coords"], s), -1)
        ids = np.where((ids >= 0) & means[f"valid_{s}"][np.maximum(ids, 0)], ids, -1)
        sim = cell_similarity(unit_x, ids, means[f"unit_{s}"])
        m = np.flatnonzero(ids >= 0)
        keep = m[top_rows_per_cell(ids[m], rows[m], sim[m], plan.examples)]
        out |= {f"cells_{s}": ids[keep], f"rows_{s}": rows[keep], f"scores_{s}": sim[keep],
                f"pos_{s}": ch["positions"][keep]}
    atomic_save_npz(run.unit_data_path(NAME, unit), **out)
    return {}


def _map_units(func: Callable[[GridPlan, int], dict[str, Any]], ctx: _Ctx, units: list[str],
               prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run the units ``prefix-XXXXXX`` among ``units`` (one per chunk) through the job's fan-out
    (the engine's dask client, ``cluster.processes`` local processes, or here)."""
    todo = [int(u[len(prefix) + 1:]) for u in units if u.startswith(prefix + "-")]
    for j, info in ctx.fan.map(functools.partial(func, ctx.plan), todo, desc=f"grid: {prefix}", unit="chunk"):
        yield f"{prefix}-{j:06d}", info


# --------------------------------------------------------------------------- combine


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _combine(plan: GridPlan, run: RunDir) -> dict[str, Any]:
    """Add the chunk partials in chunk order; save the totals and each level's cell means."""
    acc = empty_accumulator(plan.sizes[-1], plan.n_channels)
    for lo in range(0, plan.n_chunks, _COMBINE_BATCH):
        chunks = range(lo, min(plan.n_chunks, lo + _COMBINE_BATCH))
        add_partials(acc, [_load_npz(run.unit_data_path(NAME, f"chunk-{j:06d}")) for j in chunks])
    atomic_save_npz(run.unit_data_path(NAME, "combined"), **acc)
    means: dict[str, np.ndarray] = {}
    for s, lev in pyramid(acc, list(plan.sizes), plan.n_classes, plan.n_labels).items():
        valid = lev["count"].ravel() >= plan.min_count
        mean = level_means(lev["act_sum"], lev["count"], plan.min_count).reshape(s * s, -1)
        means |= {f"unit_{s}": unit_rows(mean), f"valid_{s}": valid}
    atomic_save_npz(run.unit_data_path(NAME, "means"), **means)
    return {"points": int(acc["count"].sum())}


def _merge_examples(plan: GridPlan, run: RunDir) -> dict[int, dict[str, np.ndarray]]:
    """Per level, the best ``examples`` rows of every cell over all chunks (a total order:
    score, then row id, so the result does not depend on how chunks are batched)."""
    names = ("cells", "rows", "scores", "pos")
    best: dict[int, dict[str, np.ndarray]] = {
        s: {"cells": np.zeros(0, np.int64), "rows": np.zeros(0, np.int64), "scores": np.zeros(0),
            "pos": np.zeros((0, 2), np.int16)} for s in plan.sizes}
    for lo in range(0, plan.n_chunks, _COMBINE_BATCH):
        parts = [_load_npz(run.unit_data_path(NAME, f"examples-{j:06d}"))
                 for j in range(lo, min(plan.n_chunks, lo + _COMBINE_BATCH))]
        for s, b in best.items():
            cat = {k: np.concatenate([b[k], *(p[f"{k}_{s}"] for p in parts)]) for k in names}
            keep = top_rows_per_cell(cat["cells"], cat["rows"], cat["scores"], plan.examples)
            best[s] = {k: v[keep] for k, v in cat.items()}
    return best


def _dense_examples(b: dict[str, np.ndarray], s: int, e: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (cell, rank) candidates -> examples int64 [s, s, E] and positions int16 [s, s, E, 2]."""
    rows = np.full((s * s, e), -1, np.int64)
    pos = np.full((s * s, e, 2), -1, np.int16)
    rank = rank_in_groups(b["cells"])
    rows[b["cells"], rank] = b["rows"]
    pos[b["cells"], rank] = b["pos"]
    return rows.reshape(s, s, e), pos.reshape(s, s, e, 2)


def _shuffled_label_counts(plan: GridPlan, run: RunDir) -> tuple[np.ndarray, np.ndarray]:
    """Finest cell ids and *shuffled* labels (seeded permutation) of the ok labelled rows.

    Reads only the 1-D ``status``/``labels`` and the coords, chunk by chunk: int64 [m] each.
    """
    col = CollectOutput.open(run)
    coords = ReduceOutput.open(run).coords
    ids, labels = [], []
    for j in range(plan.n_chunks):
        lo, hi = plan.rows(j)
        lab = np.asarray(col.labels[lo:hi], np.int64)
        cid = np.where(np.asarray(col.status[lo:hi]) == 1, cell_ids(np.asarray(coords[lo:hi]), plan.sizes[-1]), -1)
        good = (cid >= 0) & (lab >= 0) & (lab < plan.n_labels)
        ids.append(cid[good])
        labels.append(lab[good])
    lab_all = np.concatenate(labels)
    return np.concatenate(ids), np.random.default_rng([plan.seed, 0xBA5E]).permutation(lab_all)


def _purities(plan: GridPlan, run: RunDir, levels: dict[int, dict[str, np.ndarray]]) -> dict[int, tuple[float, float]]:
    """(purity, shuffled-label purity) per level, over cells with count >= min_count."""
    ids, shuffled = _shuffled_label_counts(plan, run)
    out, size = {}, plan.sizes[-1]
    for s in sorted(plan.sizes, reverse=True):
        while size > s:
            ids, size = parent_ids(ids, size), size // 2
        occupied = levels[s]["count"].ravel() >= plan.min_count
        real = dense_from_keys(levels[s]["label_keys"], levels[s]["label_counts"], s * s, plan.n_labels)
        base = dense_from_keys(*key_sums(ids * plan.n_labels + shuffled, np.ones(ids.size, np.int64)),
                               s * s, plan.n_labels)
        out[s] = (purity(real, occupied), purity(base, occupied))
    return out


# --------------------------------------------------------------------------- write


def _write_level(g: GridWriter, plan: GridPlan, s: int, lev: dict[str, np.ndarray],
                 ex: dict[str, np.ndarray]) -> GridLevelWriter:
    sub = g.level(s)
    sub.count(lev["count"])
    sub.mean_activation(level_means(lev["act_sum"], lev["count"], plan.min_count))
    empty = lev["count"].ravel() < plan.min_count
    if plan.attribution and plan.n_classes:
        denom = np.maximum(lev["count"].ravel()[lev["attr_keys"] // plan.n_classes], 1)
        cls, val = top_per_cell(lev["attr_keys"], lev["attr_sums"] / denom, s * s, plan.n_classes, plan.top_classes)
        cls[empty], val[empty] = -1, np.nan
        sub.top(cls.reshape(s, s, -1), val.reshape(s, s, -1))
        _write_class_attribution(sub, plan, s, lev)
    if plan.n_labels:
        lc = dense_from_keys(lev["label_keys"], lev["label_counts"], s * s, plan.n_labels, np.int32)
        sub.label_counts(lc.reshape(s, s, -1))
    sub.examples(*_dense_examples(ex, s, plan.examples))
    sub.summary(int(empty.sum()))
    return sub


def _write_class_attribution(sub: GridLevelWriter, plan: GridPlan, s: int, lev: dict[str, np.ndarray]) -> None:
    """``class_attribution`` [s, s, K] float16: every class's mean attribution per cell (NaN in empty
    cells), written ``_CLASS_BLOCK`` cell rows at a time from the sorted sparse sums, so the
    level's dense float64 matrix is never held whole (a 256 x 256 x 1000 level would be 524 MB)."""
    k, rows = plan.n_classes, min(s, _CLASS_BLOCK)
    arr = sub.class_attribution(k, _CLASS_BLOCK)
    for r0 in range(0, s, rows):
        r1 = min(s, r0 + rows)
        cnt = lev["count"][r0:r1].reshape(-1)
        mean = dense_cell_block(lev["attr_keys"], lev["attr_sums"], r0 * s, r1 * s, k) / np.maximum(cnt, 1)[:, None]
        mean[cnt < plan.min_count] = np.nan
        arr[r0:r1] = np.clip(mean, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16).reshape(r1 - r0, s, k)


def _write(plan: GridPlan, run: RunDir, log: Logger) -> None:
    acc = _load_npz(run.unit_data_path(NAME, "combined"))
    levels = pyramid(acc, list(plan.sizes), plan.n_classes, plan.n_labels)
    examples = _merge_examples(plan, run)
    purities = _purities(plan, run, levels) if plan.n_labels else {}
    col = CollectOutput.open(run)
    g = GridWriter(run)
    w = whitening_matrix(np.asarray(col.second_moment[:]), col.ok_count, plan.whiten_eps)
    g.whitening(w)
    for s in plan.sizes:
        sub = _write_level(g, plan, s, levels[s], examples[s])
        if s in purities:
            sub.purity(*purities[s])
    g.finish(sizes=list(plan.sizes), min_count=plan.min_count, top_classes=plan.top_classes, examples=plan.examples,
             whiten_eps=plan.whiten_eps, class_names=col.class_names,
             label_names=col.label_names, purities=purities)
    for s, (p, b) in purities.items():
        log.info("level %d: label purity %.3f (shuffled labels %.3f)", s, p, b)


# --------------------------------------------------------------------------- the stage


@dataclass
class _Ctx:
    """The plan and where the chunk tasks run (:class:`atlas.cluster.FanOut`: the engine's
    client, local processes that start at the first task, or this process)."""

    plan: GridPlan
    run: RunDir
    log: Logger
    fan: FanOut

    def close(self) -> None:
        self.fan.close()
        clear_cache(_MEANS_KIND)


class GridStage(StageBase[_Ctx]):
    """Stage 3: aligned multi-level grids of cell means, classes, labels, examples -> ``RUN/grid``."""

    name = NAME
    inputs = ("collect", "reduce")
    execution = "driver"
    lease_window = 1 << 30  # one process runs every unit, in order
    resources = Resources(tasks=1, time="02:00:00", cpus=8, mem="32G", gpus=0)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return {"seed": cfg.seed, "grid": cfg.grid.model_dump(mode="json")}

    def open(self, job: Job) -> _Ctx:
        plan = _make_plan(job.cfg, job.run, CollectOutput.open(job.run))
        return _Ctx(plan, job.run, job.log, FanOut.of(job))

    def units(self, ctx: _Ctx) -> list[str]:
        n = ctx.plan.n_chunks
        return [*(f"chunk-{j:06d}" for j in range(n)), "combine", *(f"examples-{j:06d}" for j in range(n))]

    def run_units(self, ctx: _Ctx, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            yield from _map_units(sums_unit, ctx, units, "chunk")
            if "combine" in units:
                yield "combine", _combine(ctx.plan, ctx.run)
            yield from _map_units(examples_unit, ctx, units, "examples")
        finally:
            ctx.close()

    def finish(self, ctx: _Ctx) -> dict[str, Any]:
        _write(ctx.plan, ctx.run, ctx.log)
        return {"sizes": list(ctx.plan.sizes)}

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Label purity per level (and with shuffled labels), empty levels."""
        if "final" not in run.done_units(NAME):
            return {}
        g = GridOutput.open(run)
        out: dict[str, Any] = {}
        if g.purity:
            out |= {"purity": g.purity, "purity_shuffled": g.purity_shuffled}
        empty = [s for s in g.sizes if g.level(s).empty_cells == s * s]
        if empty:
            out["empty_levels"] = empty
        return out


STAGE = GridStage()
