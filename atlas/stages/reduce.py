"""Stage 2, reduce: a 2-D UMAP layout of the collected activations -> ``RUN/reduce``.

Steps, each finished by a done marker in ``RUN/state/reduce/done/`` (a rerun skips the
finished ones and produces bit-identical arrays):

``setup``
    the Zarr group and its arrays, created for one set of parameters (their hash is kept
    in the marker; a rerun with other parameters starts over).
``knn``
    k-NN graph of the fitted rows (all ok rows, or a seeded sample of ``reduce.fit_max``)
    with faiss on L2-normalised vectors: exact up to ``reduce.exact_knn_max`` points, HNSW
    beyond with recall@k measured against exact search -> ``knn_indices``, ``knn_dists``,
    ``fit_rows``.
``fit``
    umap-learn on that graph (``precomputed_knn``) -> ``state/reduce/units/fit.npz``.
``place-chunk-XXXXXX``
    the raw layout of collect chunk j -> ``raw_coords`` rows: fitted rows copied, other ok
    rows placed from their nearest fitted points (``reduce.placement``), chunk by chunk.
``normalise``
    ``coords`` = ``raw_coords`` clipped per axis to the [p, 100 - p] percentiles and
    scaled into [margin, 1 - margin] (as Lucid did); NaN for rows not ok.
``done``
    trustworthiness (k=10, on a seeded sample) measured; parameters and quality in attrs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from logging import Logger
from typing import Any

import numpy as np
import zarr

from ..config import Config, ReduceConfig
from ..ops.knn import FaissKNN, set_faiss_threads
from ..ops.layout import (apply_bounds, apply_pca, choose_init, default_n_neighbors, fit_pca, fit_umap,
                          interpolate_positions, layout_bounds, trustworthiness, umap_transform)
from ..progress import progress, stage_logger
from ..store import RunDir, StoreError, atomic_save_npz
from ._base import StageStatus, save_run_config

__all__ = ["STAGE", "run", "status", "finished", "open_complete_collect", "read_rows"]

STAGE = "reduce"
_STEPS = ("knn", "fit", "normalise", "done")


def open_complete_collect(run: RunDir) -> zarr.Group:
    """``RUN/collect``, checked to be complete (``second_moment`` and ``ok_count`` present)."""
    if not run.has_group("collect"):
        raise StoreError(f"{run.stage_path('collect')} has no Zarr group: run `atlas collect` first")
    g = run.open_group("collect")
    if "second_moment" not in g or "ok_count" not in g.attrs:
        raise StoreError(
            f"{run.stage_path('collect')} is incomplete (no second_moment / ok_count yet): "
            "finish `atlas collect` (rerun it to resume the missing chunks) before this stage")
    return g


def read_rows(arr: zarr.Array, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Rows of a 2-D collect array, read one chunk at a time: sorted int rows [m] -> float32 [m, C]."""
    out = np.empty((rows.size, arr.shape[1]), dtype=np.float32)
    if rows.size == 0:
        return out
    chunk_of = rows // chunk_rows
    cuts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1], True])
    for a, b in zip(cuts[:-1], cuts[1:]):
        lo = int(chunk_of[a]) * chunk_rows
        block = arr[lo:min(lo + chunk_rows, arr.shape[0])]
        out[a:b] = block[rows[a:b] - lo]
    return out


# --------------------------------------------------------------------------- plan


def _validate(rc: ReduceConfig) -> None:
    positive = ("exact_knn_max", "fit_max", "place_k", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search",
                "recall_queries", "trust_sample", "spectral_max")
    for name in positive:
        if getattr(rc, name) < 1:
            raise ValueError(f"reduce.{name} must be >= 1, got {getattr(rc, name)}")
    for name in ("pca", "n_epochs", "threads"):
        if getattr(rc, name) is not None and getattr(rc, name) < 1:
            raise ValueError(f"reduce.{name} must be >= 1 or null, got {getattr(rc, name)}")
    if rc.n_neighbors is not None and rc.n_neighbors < 2:
        raise ValueError(f"reduce.n_neighbors must be >= 2 or null, got {rc.n_neighbors}")
    if rc.fit_max < 3:
        raise ValueError(f"reduce.fit_max must be >= 3, got {rc.fit_max}")
    if rc.min_dist < 0:
        raise ValueError(f"reduce.min_dist must be >= 0, got {rc.min_dist}")
    if not 0 <= rc.clip_percentile < 50:
        raise ValueError(f"reduce.clip_percentile must be in [0, 50), got {rc.clip_percentile}")
    if not 0 <= rc.margin < 0.5:
        raise ValueError(f"reduce.margin must be in [0, 0.5), got {rc.margin}")


@dataclass
class _Plan:
    """Everything resolved before the steps run; ``params`` decide the output."""

    n_rows: int
    n_channels: int
    chunk_rows: int
    status: np.ndarray  # uint8 [N]
    fit_rows: np.ndarray  # int64 [M], sorted
    params: dict[str, Any]
    key: str = ""

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)


def _make_plan(cfg: Config, collect: zarr.Group) -> _Plan:
    rc = cfg.reduce
    _validate(rc)
    status = np.asarray(collect["status"][:])
    ok_rows = np.flatnonzero(status == 1).astype(np.int64)
    if ok_rows.size < 3:
        raise ValueError(f"reduce needs at least 3 ok rows in RUN/collect, found {ok_rows.size}")
    fit_rows = ok_rows
    if ok_rows.size > rc.fit_max:
        rng = np.random.default_rng([cfg.seed, 0x5EED])
        fit_rows = np.sort(rng.choice(ok_rows, size=rc.fit_max, replace=False))
    k = rc.n_neighbors if rc.n_neighbors is not None else default_n_neighbors(ok_rows.size)
    if k >= fit_rows.size:
        raise ValueError(f"reduce.n_neighbors={k} needs more than {fit_rows.size} fitted points")
    n, c = collect["activations"].shape
    params = {
        "n_neighbors": int(k), "min_dist": rc.min_dist, "metric": rc.metric, "pca": rc.pca,
        "init": choose_init(rc.init, int(fit_rows.size), rc.spectral_max), "n_epochs": rc.n_epochs,
        "n_fit": int(fit_rows.size), "fit_max": rc.fit_max, "exact_knn_max": rc.exact_knn_max,
        "knn_method": "exact" if fit_rows.size <= rc.exact_knn_max else "hnsw", "hnsw_m": rc.hnsw_m,
        "hnsw_ef_construction": rc.hnsw_ef_construction, "hnsw_ef_search": rc.hnsw_ef_search,
        "recall_queries": rc.recall_queries, "placement": rc.placement, "place_k": rc.place_k,
        "clip_percentile": rc.clip_percentile, "margin": rc.margin, "trust_sample": rc.trust_sample,
        "seed": cfg.seed, "n_rows": int(n), "ok_count": int(ok_rows.size), "chunk_rows": int(collect.attrs["chunk_rows"]),
        "collect": {k: collect.attrs.get(k) for k in ("model", "layer", "seed", "n_images")}
        | {"status_sha256": hashlib.sha256(status.tobytes()).hexdigest()[:16]},
    }
    plan = _Plan(int(n), int(c), int(collect.attrs["chunk_rows"]), status, fit_rows, params)
    plan.key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return plan


# --------------------------------------------------------------------------- context


@dataclass
class _Ctx:
    run: RunDir
    collect: zarr.Group
    plan: _Plan
    rc: ReduceConfig
    log: Logger
    _x: np.ndarray | None = None
    _knn: FaissKNN | None = None
    _pca: tuple[np.ndarray, np.ndarray] | None = field(default=None)

    def group(self) -> zarr.Group:
        return zarr.open_group(str(self.run.stage_path(STAGE)), mode="r+", zarr_format=3)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Apply the PCA fitted on the sample (identity without ``reduce.pca``)."""
        return x if self._pca is None else apply_pca(x, *self._pca)

    def fit_vectors(self) -> np.ndarray:
        """Activations of the fitted rows (after PCA): float32 [M, C or pca]."""
        if self._x is None:
            x = read_rows(self.collect["activations"], self.plan.fit_rows, self.plan.chunk_rows)
            if self.rc.pca is not None:
                self._pca = fit_pca(x, min(self.rc.pca, x.shape[1]))
            self._x = self.project(x)
        return self._x

    def index(self) -> FaissKNN:
        """faiss index over the fitted rows (rebuilt identically after a restart)."""
        if self._knn is None:
            p = self.plan.params
            self._knn = FaissKNN(p["n_neighbors"], metric=p["metric"], exact_max=self.rc.exact_knn_max,
                                 hnsw_m=self.rc.hnsw_m, ef_construction=self.rc.hnsw_ef_construction,
                                 ef_search=self.rc.hnsw_ef_search, recall_queries=self.rc.recall_queries,
                                 random_state=p["seed"]).fit(self.fit_vectors())
        return self._knn

    def done(self, unit: str, info: dict[str, Any] | None = None) -> None:
        self.run.mark_done(STAGE, unit, info)


# --------------------------------------------------------------------------- steps


def _reset(ctx: _Ctx) -> None:
    """Start over: markers first (setup first of all), then side data, then a fresh group."""
    run, plan = ctx.run, ctx.plan
    done = sorted(run.done_units(STAGE), key=lambda u: u != "setup")
    if done:
        ctx.log.info("reduce parameters differ from the previous attempt: starting over")
    for unit in done:
        run.clear_done(STAGE, unit)
    shutil.rmtree(run.state_path(STAGE) / "units", ignore_errors=True)
    g = zarr.open_group(str(run.stage_path(STAGE)), mode="w", zarr_format=3)
    n, r, m, k = plan.n_rows, plan.chunk_rows, plan.fit_rows.size, plan.params["n_neighbors"]
    for name in ("coords", "raw_coords"):
        g.create_array(name, shape=(n, 2), chunks=(r, 2), dtype="float32", fill_value=np.nan, dimension_names=("row", "xy"))
    g.create_array("knn_indices", shape=(m, k), chunks=(min(m, 65536), k), dtype="int64", fill_value=-1,
                   dimension_names=("fit_row", "neighbour"))
    g.create_array("knn_dists", shape=(m, k), chunks=(min(m, 65536), k), dtype="float32", fill_value=np.nan,
                   dimension_names=("fit_row", "neighbour"))
    g.create_array("fit_rows", shape=(m,), chunks=(min(m, 1 << 20),), dtype="int64", fill_value=-1,
                   dimension_names=("fit_row",))
    g.attrs.update({"params": plan.params, "complete": False})
    ctx.done("setup", {"key": plan.key, "n_chunks": plan.n_chunks})


def _setup(ctx: _Ctx) -> None:
    run = ctx.run
    if run.is_done(STAGE, "setup") and run.has_group(STAGE):
        if run.read_json(f"state/{STAGE}/done/setup").get("key") == ctx.plan.key:
            return
    _reset(ctx)


def _knn_step(ctx: _Ctx) -> None:
    if ctx.run.is_done(STAGE, "knn"):
        return
    t0 = time.perf_counter()
    knn = ctx.index()
    idx, dists = knn.neighbor_graph()
    g = ctx.group()
    g["knn_indices"][:] = idx
    g["knn_dists"][:] = dists
    g["fit_rows"][:] = ctx.plan.fit_rows
    secs = time.perf_counter() - t0
    recall = None if knn.recall_ is None else round(float(knn.recall_), 6)
    ctx.log.info("kNN graph of %d points (k=%d, %s): %.1f s%s", idx.shape[0], idx.shape[1], knn.method_, secs,
                 "" if recall is None else f", recall@k {recall:.4f}")
    ctx.done("knn", {"method": knn.method_, "recall": recall, "seconds": round(secs, 3)})


def _fit_step(ctx: _Ctx) -> None:
    if ctx.run.is_done(STAGE, "fit"):
        return
    t0 = time.perf_counter()
    p, g = ctx.plan.params, ctx.group()
    emb = fit_umap(ctx.fit_vectors(), g["knn_indices"][:], g["knn_dists"][:], n_neighbors=p["n_neighbors"],
                   min_dist=p["min_dist"], metric=p["metric"], init=p["init"], n_epochs=p["n_epochs"],
                   random_state=p["seed"])
    atomic_save_npz(ctx.run.unit_data_path(STAGE, "fit"), embedding=emb)
    secs = time.perf_counter() - t0
    ctx.log.info("UMAP fit on %d points (init %s): %.1f s", emb.shape[0], p["init"], secs)
    ctx.done("fit", {"seconds": round(secs, 3)})


def _place_rows(ctx: _Ctx, x: np.ndarray, emb: np.ndarray, chunk: int) -> np.ndarray:
    """Raw layout positions of new rows x: float32 [q, C] -> float32 [q, 2]."""
    p = ctx.plan.params
    if p["placement"] == "interpolate":
        idx, d = ctx.index().kneighbors(ctx.project(x), min(p["place_k"], emb.shape[0]))
        return interpolate_positions(idx, d, emb)
    idx, d = ctx.index().kneighbors(ctx.project(x), p["n_neighbors"])
    seed = (p["seed"] * 1_000_003 + chunk) % (2**32 - 1)
    return umap_transform(idx, d, emb, min_dist=p["min_dist"], n_epochs=None, random_state=seed)


def _place_chunk(ctx: _Ctx, g: zarr.Group, emb: np.ndarray, j: int) -> None:
    plan = ctx.plan
    lo, hi = j * plan.chunk_rows, min(plan.n_rows, (j + 1) * plan.chunk_rows)
    rows = np.arange(lo, hi, dtype=np.int64)
    ok = plan.status[lo:hi] == 1
    pos = np.searchsorted(plan.fit_rows, rows).clip(max=plan.fit_rows.size - 1)
    fitted = ok & (plan.fit_rows[pos] == rows)
    out = np.full((hi - lo, 2), np.nan, dtype=np.float32)
    out[fitted] = emb[pos[fitted]]
    todo = ok & ~fitted
    if todo.any():
        x = np.asarray(ctx.collect["activations"][lo:hi], dtype=np.float32)[todo]
        out[todo] = _place_rows(ctx, x, emb, j)
    g["raw_coords"][lo:hi] = out
    ctx.done(f"place-chunk-{j:06d}", {"placed": int(todo.sum()), "fitted": int(fitted.sum())})


def _place_step(ctx: _Ctx) -> None:
    pending = [j for j in range(ctx.plan.n_chunks) if not ctx.run.is_done(STAGE, f"place-chunk-{j:06d}")]
    if not pending:
        return
    t0 = time.perf_counter()
    emb = np.load(ctx.run.unit_data_path(STAGE, "fit"))["embedding"]
    g = ctx.group()
    for j in progress(pending, desc="reduce: place", unit="chunk"):
        _place_chunk(ctx, g, emb, j)
    ctx.log.info("placed %d chunks (%s): %.1f s", len(pending), ctx.plan.params["placement"],
                 time.perf_counter() - t0)


def _normalise_step(ctx: _Ctx) -> None:
    if ctx.run.is_done(STAGE, "normalise"):
        return
    p, g = ctx.plan.params, ctx.group()
    raw = np.asarray(g["raw_coords"][:])
    ok = ctx.plan.status == 1
    lo, hi = layout_bounds(raw[ok], p["clip_percentile"])
    coords = apply_bounds(raw, lo, hi, p["margin"])
    coords[~ok] = np.nan
    g["coords"][:] = coords
    ctx.done("normalise", {"lo": lo.tolist(), "hi": hi.tolist()})


def _trust(ctx: _Ctx, coords: zarr.Array) -> float | None:
    """Trustworthiness (k=10, reduce.metric) of the final coords on a seeded sample."""
    ok_rows = np.flatnonzero(ctx.plan.status == 1)
    m = min(ctx.rc.trust_sample, ok_rows.size)
    if m < 25:
        return None
    rng = np.random.default_rng([ctx.plan.params["seed"], 0x7857])
    sample = np.sort(rng.choice(ok_rows, size=m, replace=False))
    x = read_rows(ctx.collect["activations"], sample, ctx.plan.chunk_rows)
    xy = np.asarray(coords[:])[sample]
    return round(trustworthiness(x, xy, n_neighbors=10, metric=ctx.plan.params["metric"]), 6)


def _finish_step(ctx: _Ctx) -> None:
    if ctx.run.is_done(STAGE, "done"):
        return
    g = ctx.group()
    trust = _trust(ctx, g["coords"])
    knn_info = ctx.run.read_json(f"state/{STAGE}/done/knn")
    g.attrs.update({
        "params": ctx.plan.params, "init": ctx.plan.params["init"], "knn_method": knn_info["method"],
        "knn_recall": knn_info["recall"], "trustworthiness": trust, "trustworthiness_k": 10,
        "knn_indices_refer_to": "fit_rows (positions 0..M-1); fit_rows[i] is the collect row",
        "coords_axes": ["x", "y"], "complete": True,
    })
    ctx.log.info("trustworthiness (k=10, %d-point sample): %s; kNN %s%s", min(ctx.rc.trust_sample,
                 int((ctx.plan.status == 1).sum())), trust, knn_info["method"],
                 "" if knn_info["recall"] is None else f" (recall@k {knn_info['recall']})")
    ctx.done("done", {"trustworthiness": trust, "recall": knn_info["recall"]})


# --------------------------------------------------------------------------- entry points


def _set_threads(n: int | None) -> int:
    import numba

    threads = set_faiss_threads(n)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return threads


def run(cfg: Config, *, shard: tuple[int, int] = (0, 1)) -> None:
    """Compute (or resume) ``RUN/reduce`` from a complete ``RUN/collect``."""
    if tuple(shard) != (0, 1):
        raise ValueError(f"the reduce stage runs as one job (UMAP fits one layout); got --shard {shard[0]}/{shard[1]}")
    run_dir = RunDir(cfg.run_dir)
    collect = open_complete_collect(run_dir)
    log = stage_logger(run_dir.root, STAGE)
    save_run_config(cfg, run_dir)
    plan = _make_plan(cfg, collect)
    _set_threads(cfg.reduce.threads)
    with run_dir.stage_lock(STAGE):
        ctx = _Ctx(run_dir, collect, plan, cfg.reduce, log)
        _setup(ctx)
        for step in (_knn_step, _fit_step, _place_step, _normalise_step, _finish_step):
            step(ctx)


def status(run: RunDir) -> StageStatus:
    """Units: knn, fit, one per collect chunk placed, normalise, done."""
    done = run.done_units(STAGE)
    if "setup" not in done:
        return StageStatus(STAGE, 0, None)
    n_chunks = int(run.read_json(f"state/{STAGE}/done/setup")["n_chunks"])
    n_done = sum(u in done for u in _STEPS) + sum(u.startswith("place-chunk-") for u in done)
    detail: dict[str, Any] = {}
    for unit, keys in (("knn", ("method", "recall")), ("done", ("trustworthiness",))):
        if unit in done:
            info = run.read_json(f"state/{STAGE}/done/{unit}")
            detail.update({("knn_" + k if unit == "knn" else k): info.get(k) for k in keys})
    return StageStatus(STAGE, n_done, n_chunks + len(_STEPS), detail)


def finished(run: RunDir, cfg: Config | None = None) -> bool:
    """The stage is complete: its last marker is written (``cfg`` is not needed)."""
    return run.is_done(STAGE, "done")
