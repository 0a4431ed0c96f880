"""Stage 3, grid: aligned multi-level grids over the layout -> ``RUN/grid``.

Two passes over the collect chunks, each chunk a dask task (a ``LocalCluster`` of worker
processes, the scheduler at ``grid.scheduler``, or in this process with
``grid.dask_workers: 0``); a task reads only its chunk, so memory is flat in N.

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
``done``
    levels pooled 2x2 from the finest, examples merged in chunk order, purity, whitening,
    the Zarr group written (replacing any partial one), then this marker.

Layout of ``RUN/grid``: root array ``whitening`` [C, C] float64; per size s a subgroup
``level-<s>`` with ``count`` [s, s] int64, ``mean_activation`` [s, s, C] float32,
``top_classes`` [s, s, T] int16 / ``top_values`` [s, s, T] float32 (mean attribution),
``label_counts`` [s, s, L] int32 (when the source has labels), ``examples`` [s, s, E] int64
collect rows and ``example_positions`` [s, s, E, 2] int16. Cell (r, c) holds the points
with r = floor(y s), c = floor(x s) of the reduce coords (x, y). A cell is *empty* when
``count < grid.min_count``: its mean is NaN, top classes -1 / NaN, examples -1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from logging import Logger
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..config import Config, GridConfig, check_grid_sizes
from ..ops.binning import (add_partials, cell_ids, cell_similarity, chunk_partial, dense_from_keys, empty_accumulator,
                           key_sums, level_means, parent_ids, purity, pyramid, rank_in_groups, top_per_cell,
                           top_rows_per_cell, unit_rows)
from ..ops.whitening import whitening_matrix
from ..progress import progress, stage_logger
from ..store import RunDir, StoreError, atomic_save_npz
from ._base import StageStatus, save_run_config
from .reduce import open_complete_collect

__all__ = ["STAGE", "run", "status", "finished"]

STAGE = "grid"
_COMBINE_BATCH = 32  # chunk partials merged into the totals at a time (fixed: part of the sum order)


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
    reduce_key: str

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self) | {"run_root": ""}, sort_keys=True).encode()).hexdigest()[:16]

    def rows(self, j: int) -> tuple[int, int]:
        return j * self.chunk_rows, min(self.n_rows, (j + 1) * self.chunk_rows)


def _validate(gc: GridConfig) -> None:
    for name in ("min_count", "top_classes", "examples"):
        if getattr(gc, name) < 1:
            raise ValueError(f"grid.{name} must be >= 1, got {getattr(gc, name)}")
    if gc.whiten_eps <= 0:
        raise ValueError(f"grid.whiten_eps must be > 0, got {gc.whiten_eps}")
    if gc.dask_workers < 0:
        raise ValueError(f"grid.dask_workers must be >= 0, got {gc.dask_workers}")
    check_grid_sizes(gc.sizes)


def _make_plan(cfg: Config, run: RunDir, collect: zarr.Group) -> GridPlan:
    _validate(cfg.grid)
    if not run.is_done("reduce", "done") or not run.has_group("reduce"):
        raise StoreError(f"{run.stage_path('reduce')} is missing or incomplete: run `atlas reduce` first")
    n, c = collect["activations"].shape
    attribution = bool(collect.attrs.get("attribution", False)) and "attr_classes" in collect
    return GridPlan(
        run_root=str(run.root), sizes=tuple(cfg.grid.sizes), min_count=cfg.grid.min_count,
        top_classes=cfg.grid.top_classes, examples=cfg.grid.examples, whiten_eps=cfg.grid.whiten_eps,
        seed=cfg.seed, n_rows=int(n), chunk_rows=int(collect.attrs["chunk_rows"]), n_channels=int(c),
        n_classes=len(collect.attrs.get("class_names") or []) if attribution else 0,
        n_labels=len(collect.attrs.get("label_names") or []), attribution=attribution,
        reduce_key=str(run.read_json("state/reduce/done/setup").get("key")),
    )


# --------------------------------------------------------------------------- chunk tasks


def _read_chunk(plan: GridPlan, j: int, *, positions: bool = False) -> dict[str, np.ndarray]:
    """Chunk j of the collect arrays the grid uses, plus its reduce coords."""
    root = Path(plan.run_root)
    col = zarr.open_group(str(root / "collect"), mode="r", zarr_format=3)
    lo, hi = plan.rows(j)
    out = {"act": np.asarray(col["activations"][lo:hi], dtype=np.float32), "ok": col["status"][lo:hi] == 1,
           "coords": zarr.open_group(str(root / "reduce"), mode="r", zarr_format=3)["coords"][lo:hi]}
    if plan.attribution:
        out["attr_classes"], out["attr_values"] = col["attr_classes"][lo:hi], col["attr_values"][lo:hi]
    if plan.n_labels:
        out["labels"] = col["labels"][lo:hi]
    if positions:
        out["positions"] = col["positions"][lo:hi]
    return out


def sums_unit(plan: GridPlan, j: int) -> None:
    """Task: finest-level sums of chunk j -> units/chunk-XXXXXX.npz, then its marker."""
    run, unit = RunDir(plan.run_root), f"chunk-{j:06d}"
    with run.lease(STAGE, unit) as mine:
        if not mine or run.is_done(STAGE, unit):
            return
        ch = _read_chunk(plan, j)
        part = chunk_partial(ch["coords"], ch["act"], ch["ok"], plan.sizes[-1],
                             attr_classes=ch.get("attr_classes"), attr_values=ch.get("attr_values"),
                             n_classes=plan.n_classes, labels=ch.get("labels"), n_labels=plan.n_labels)
        atomic_save_npz(run.unit_data_path(STAGE, unit), **part)
        run.mark_done(STAGE, unit, {"points": int(part["count"].sum())})


_MEANS_CACHE: dict[tuple[str, int, int], dict[str, np.ndarray]] = {}


def _cached_means(path: Path) -> dict[str, np.ndarray]:
    """means.npz, loaded once per worker process (keyed by path, size and mtime: the file
    is immutable once written, and a restart with other parameters rewrites it)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _MEANS_CACHE:
        _MEANS_CACHE.clear()
        _MEANS_CACHE[key] = _load_npz(path)
    return _MEANS_CACHE[key]


def examples_unit(plan: GridPlan, j: int) -> None:
    """Task: per level, chunk j's best candidates (cosine to their cell's mean) per cell."""
    run, unit = RunDir(plan.run_root), f"examples-{j:06d}"
    with run.lease(STAGE, unit) as mine:
        if not mine or run.is_done(STAGE, unit):
            return
        means = _cached_means(run.unit_data_path(STAGE, "means"))
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
        atomic_save_npz(run.unit_data_path(STAGE, unit), **out)
        run.mark_done(STAGE, unit)


@contextlib.contextmanager
def _dask_client(gc: GridConfig) -> Iterator[Any]:
    """A dask Client (scheduler address or a LocalCluster of processes), or None for in-process."""
    if gc.scheduler is None and gc.dask_workers == 0:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if gc.scheduler is not None:
        with Client(gc.scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=gc.dask_workers, processes=True, threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def _run_units(func: Callable[[GridPlan, int], None], plan: GridPlan, prefix: str, gc: GridConfig,
               client_box: dict[str, Any], stack: contextlib.ExitStack) -> None:
    """Run the not-yet-done units ``prefix-XXXXXX`` (one per chunk), then check they are done."""
    run = RunDir(plan.run_root)
    todo = [j for j in range(plan.n_chunks) if not run.is_done(STAGE, f"{prefix}-{j:06d}")]
    if not todo:
        return
    if "client" not in client_box:
        client_box["client"] = stack.enter_context(_dask_client(gc))
    client = client_box["client"]
    if client is None:
        for j in progress(todo, desc=f"grid: {prefix}", unit="chunk"):
            func(plan, j)
    else:
        from dask.distributed import as_completed

        futures = client.map(func, [plan] * len(todo), todo, pure=False, retries=2,
                             key=[f"grid-{prefix}-{plan.key}-{j}" for j in todo])
        for fut in progress(as_completed(futures), total=len(todo), desc=f"grid: {prefix}", unit="chunk"):
            fut.result()
    missing = [j for j in todo if not run.is_done(STAGE, f"{prefix}-{j:06d}")]
    if missing:
        raise RuntimeError(f"grid units {prefix}-{missing[0]:06d} (+{len(missing) - 1}) are held by another "
                           "process; rerun `atlas grid` when it has finished")


# --------------------------------------------------------------------------- combine


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _combine(plan: GridPlan, run: RunDir) -> None:
    """Add the chunk partials in chunk order; save the totals and each level's cell means."""
    if run.is_done(STAGE, "combine"):
        return
    acc = empty_accumulator(plan.sizes[-1], plan.n_channels)
    for lo in range(0, plan.n_chunks, _COMBINE_BATCH):
        chunks = range(lo, min(plan.n_chunks, lo + _COMBINE_BATCH))
        add_partials(acc, [_load_npz(run.unit_data_path(STAGE, f"chunk-{j:06d}")) for j in chunks])
    atomic_save_npz(run.unit_data_path(STAGE, "combined"), **acc)
    means: dict[str, np.ndarray] = {}
    for s, lev in pyramid(acc, list(plan.sizes), plan.n_classes, plan.n_labels).items():
        valid = lev["count"].ravel() >= plan.min_count
        mean = level_means(lev["act_sum"], lev["count"], plan.min_count).reshape(s * s, -1)
        means |= {f"unit_{s}": unit_rows(mean), f"valid_{s}": valid}
    atomic_save_npz(run.unit_data_path(STAGE, "means"), **means)
    run.mark_done(STAGE, "combine", {"points": int(acc["count"].sum())})


def _merge_examples(plan: GridPlan, run: RunDir) -> dict[int, dict[str, np.ndarray]]:
    """Per level, the best ``examples`` rows of every cell over all chunks (a total order:
    score, then row id, so the result does not depend on how chunks are batched)."""
    names = ("cells", "rows", "scores", "pos")
    best = {s: {"cells": np.zeros(0, np.int64), "rows": np.zeros(0, np.int64), "scores": np.zeros(0),
                "pos": np.zeros((0, 2), np.int16)} for s in plan.sizes}
    for lo in range(0, plan.n_chunks, _COMBINE_BATCH):
        parts = [_load_npz(run.unit_data_path(STAGE, f"examples-{j:06d}"))
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
    col = run.open_group("collect")
    coords = run.open_group("reduce")["coords"]
    ids, labels = [], []
    for j in range(plan.n_chunks):
        lo, hi = plan.rows(j)
        lab = np.asarray(col["labels"][lo:hi], np.int64)
        cid = np.where(np.asarray(col["status"][lo:hi]) == 1, cell_ids(coords[lo:hi], plan.sizes[-1]), -1)
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


def _put(g: zarr.Group, name: str, data: np.ndarray, fill: Any, dims: tuple[str, ...]) -> None:
    chunks = tuple(min(d, 64) if i < 2 else d for i, d in enumerate(data.shape))
    g.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=fill, dimension_names=dims)
    g[name][...] = data


_RC = ("cell_row", "cell_col")


def _write_level(g: zarr.Group, plan: GridPlan, s: int, lev: dict[str, np.ndarray],
                 ex: dict[str, np.ndarray]) -> None:
    sub = g.create_group(f"level-{s}")
    _put(sub, "count", lev["count"], 0, _RC)
    _put(sub, "mean_activation", level_means(lev["act_sum"], lev["count"], plan.min_count), np.nan, (*_RC, "channel"))
    empty = lev["count"].ravel() < plan.min_count
    if plan.attribution and plan.n_classes:
        denom = np.maximum(lev["count"].ravel()[lev["attr_keys"] // plan.n_classes], 1)
        cls, val = top_per_cell(lev["attr_keys"], lev["attr_sums"] / denom, s * s, plan.n_classes, plan.top_classes)
        cls[empty], val[empty] = -1, np.nan
        _put(sub, "top_classes", cls.reshape(s, s, -1), -1, (*_RC, "top"))
        _put(sub, "top_values", val.reshape(s, s, -1), np.nan, (*_RC, "top"))
    if plan.n_labels:
        lc = dense_from_keys(lev["label_keys"], lev["label_counts"], s * s, plan.n_labels, np.int32)
        _put(sub, "label_counts", lc.reshape(s, s, -1), 0, (*_RC, "label"))
    rows, pos = _dense_examples(ex, s, plan.examples)
    _put(sub, "examples", rows, -1, (*_RC, "example"))
    _put(sub, "example_positions", pos, -1, (*_RC, "example", "yx"))
    sub.attrs.update({"size": s, "empty_cells": int(empty.sum())})


def _write(plan: GridPlan, run: RunDir, log: Logger) -> None:
    acc = _load_npz(run.unit_data_path(STAGE, "combined"))
    levels = pyramid(acc, list(plan.sizes), plan.n_classes, plan.n_labels)
    examples = _merge_examples(plan, run)
    purities = _purities(plan, run, levels) if plan.n_labels else {}
    col = run.open_group("collect")
    g = zarr.open_group(str(run.stage_path(STAGE)), mode="w", zarr_format=3)
    w = whitening_matrix(np.asarray(col["second_moment"][:]), int(col.attrs["ok_count"]), plan.whiten_eps)
    _put(g, "whitening", w, 0.0, ("channel", "channel_t"))
    for s in plan.sizes:
        _write_level(g, plan, s, levels[s], examples[s])
        if s in purities:
            g[f"level-{s}"].attrs.update({"purity": purities[s][0], "purity_shuffled": purities[s][1]})
    g.attrs.update(_root_attrs(plan, col, purities))
    for s, (p, b) in purities.items():
        log.info("level %d: label purity %.3f (shuffled labels %.3f)", s, p, b)


def _root_attrs(plan: GridPlan, col: zarr.Group, purities: dict[int, tuple[float, float]]) -> dict[str, Any]:
    return {
        "sizes": list(plan.sizes), "min_count": plan.min_count, "top_classes": plan.top_classes,
        "examples": plan.examples, "whiten_eps": plan.whiten_eps,
        "whitening": "S = inv(M + eps * trace(M)/C * I), M = second_moment / ok_count (eps relative to the mean eigenvalue)",
        "cells": "cell (r, c) at size s holds reduce coords (x, y) with r = floor(y*s), c = floor(x*s); 1.0 -> last cell",
        "empty": "a cell is empty when count < min_count: mean_activation NaN, top_classes -1, examples -1",
        "examples_rule": "collect rows of the cell with the highest cosine similarity to the cell's mean activation",
        "class_names": list(col.attrs.get("class_names") or []), "label_names": list(col.attrs.get("label_names") or []),
        "purity": {str(s): p for s, (p, _) in purities.items()},
        "purity_shuffled": {str(s): b for s, (_, b) in purities.items()},
        "complete": True,
    }


# --------------------------------------------------------------------------- entry points


def _setup(plan: GridPlan, run: RunDir, log: Logger) -> None:
    """Keep finished units only if they were made with the same parameters and inputs."""
    if run.is_done(STAGE, "setup") and run.read_json(f"state/{STAGE}/done/setup").get("key") == plan.key:
        return
    done = sorted(run.done_units(STAGE), key=lambda u: u != "setup")
    if done:
        log.info("grid parameters or inputs differ from the previous attempt: starting over")
    for unit in done:
        run.clear_done(STAGE, unit)
    shutil.rmtree(run.state_path(STAGE) / "units", ignore_errors=True)
    shutil.rmtree(run.stage_path(STAGE), ignore_errors=True)
    run.mark_done(STAGE, "setup", {"key": plan.key, "n_chunks": plan.n_chunks})


def run(cfg: Config, *, shard: tuple[int, int] = (0, 1)) -> None:
    """Compute (or resume) ``RUN/grid`` from ``RUN/collect`` and ``RUN/reduce``."""
    if tuple(shard) != (0, 1):
        raise ValueError(f"the grid stage runs as one job (it fans chunks out to dask workers itself); "
                         f"got --shard {shard[0]}/{shard[1]}")
    run_dir = RunDir(cfg.run_dir)
    collect = open_complete_collect(run_dir)
    plan = _make_plan(cfg, run_dir, collect)
    log = stage_logger(run_dir.root, STAGE)
    save_run_config(cfg, run_dir)
    with run_dir.stage_lock(STAGE), contextlib.ExitStack() as stack:
        _setup(plan, run_dir, log)
        if run_dir.is_done(STAGE, "done"):
            return
        box: dict[str, Any] = {}
        _run_units(sums_unit, plan, "chunk", cfg.grid, box, stack)
        _combine(plan, run_dir)
        _run_units(examples_unit, plan, "examples", cfg.grid, box, stack)
        stack.close()
        _MEANS_CACHE.clear()
        _write(plan, run_dir, log)
        run_dir.mark_done(STAGE, "done", {"sizes": list(plan.sizes)})


def status(run: RunDir) -> StageStatus:
    """Units: one per chunk for the sums, one per chunk for the examples, combine, done."""
    done = run.done_units(STAGE)
    if "setup" not in done:
        return StageStatus(STAGE, 0, None)
    n_chunks = int(run.read_json(f"state/{STAGE}/done/setup")["n_chunks"])
    n_done = sum(u.startswith(("chunk-", "examples-")) for u in done) + ("combine" in done) + ("done" in done)
    detail: dict[str, Any] = {}
    if "done" in done and run.has_group(STAGE):
        attrs = run.open_group(STAGE).attrs
        detail = {"purity": attrs.get("purity"), "purity_shuffled": attrs.get("purity_shuffled")}
    return StageStatus(STAGE, n_done, 2 * n_chunks + 2, detail)


def finished(run: RunDir, cfg: Config | None = None) -> bool:
    """The stage is complete: its last marker is written (``cfg`` is not needed)."""
    return run.is_done(STAGE, "done")
