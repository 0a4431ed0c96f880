"""Stage 2, reduce: a 2-D UMAP layout of the collected activations -> ``RUN/reduce``.

Units, run in order by one process, each finished by a done marker in
``RUN/state/reduce/done/`` (a rerun skips the finished ones and produces bit-identical
arrays; other parameters, or a redone collect, start the stage over):

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
``final`` (the runner's last step)
    trustworthiness (k=10, on a seeded sample) measured; parameters, quality and the
    normalisation's ``bounds`` (per-axis lo, hi of the raw layout) in attrs: with
    ``fit_rows`` and ``raw_coords`` they place new points (:mod:`atlas.ops.placement`, as
    ``atlas locate`` does) exactly as the ``place-chunk-*`` units placed rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from logging import Logger
from typing import Any

import numpy as np
import zarr

from ..config import Config, ReduceConfig
from ..formats import CollectOutput, ReduceOutput, ReduceSummary, create_reduce
from ..ops.knn import FaissKNN, set_faiss_threads
from ..ops.layout import apply_bounds, choose_init, default_n_neighbors, fit_umap, layout_bounds, trustworthiness
from ..ops.placement import Projection, fit_projection, place_rows, placement_knn, project
from ..progress import plural, progress
from ..store import RunDir, atomic_save_npz
from ._protocol import Job, Resources, Stage, StageBase

__all__ = ["STAGE", "ReduceStage"]

NAME = "reduce"


# --------------------------------------------------------------------------- plan


@dataclass
class _Plan:
    """Everything resolved before the steps run; ``params`` decide the output."""

    n_rows: int
    n_channels: int
    chunk_rows: int
    status: np.ndarray  # uint8 [N]
    fit_rows: np.ndarray  # int64 [M], sorted
    params: dict[str, Any]

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)


def _make_plan(cfg: Config, collect: CollectOutput) -> _Plan:
    rc = cfg.reduce
    status = collect.status_all()
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
    n, c, chunk_rows = collect.n_rows, collect.n_channels, collect.chunk_rows
    params = {
        "n_neighbors": int(k), "min_dist": rc.min_dist, "metric": rc.metric, "pca": rc.pca,
        "init": choose_init(rc.init, int(fit_rows.size), rc.spectral_max), "n_epochs": rc.n_epochs,
        "n_fit": int(fit_rows.size), "fit_max": rc.fit_max, "exact_knn_max": rc.exact_knn_max,
        "knn_method": "exact" if fit_rows.size <= rc.exact_knn_max else "hnsw", "hnsw_m": rc.hnsw_m,
        "hnsw_ef_construction": rc.hnsw_ef_construction, "hnsw_ef_search": rc.hnsw_ef_search,
        "recall_queries": rc.recall_queries, "placement": rc.placement, "place_k": rc.place_k,
        "clip_percentile": rc.clip_percentile, "margin": rc.margin, "trust_sample": rc.trust_sample,
        "seed": cfg.seed, "n_rows": int(n), "ok_count": int(ok_rows.size), "chunk_rows": chunk_rows,
        "collect": {"model": collect.model, "layer": collect.layer, "seed": collect.seed, "n_images": collect.n_images,
                    "status_sha256": hashlib.sha256(status.tobytes()).hexdigest()[:16]},
    }
    return _Plan(n, c, chunk_rows, status, fit_rows, params)


# --------------------------------------------------------------------------- context


@dataclass
class _Ctx:
    run: RunDir
    collect: CollectOutput
    plan: _Plan
    rc: ReduceConfig
    log: Logger
    done: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # the runner's unit records (Job.done)
    _x: np.ndarray | None = None
    _knn: FaissKNN | None = None
    _pca: Projection = field(default=None)

    def group(self) -> ReduceOutput:
        """The run's reduce group, opened for writing."""
        return ReduceOutput.open(self.run, mode="r+")

    def project(self, x: np.ndarray) -> np.ndarray:
        """Apply the PCA fitted on the sample (identity without ``reduce.pca``)."""
        return project(x, self._pca)

    def fit_vectors(self) -> np.ndarray:
        """Activations of the fitted rows (after PCA): float32 [M, C or pca]."""
        if self._x is None:
            x = self.collect.read_activations(self.plan.fit_rows)
            self._pca = fit_projection(x, self.rc.pca)
            self._x = self.project(x)
        return self._x

    def index(self) -> FaissKNN:
        """faiss index over the fitted rows (rebuilt identically after a restart)."""
        if self._knn is None:
            self._knn = placement_knn(self.plan.params).fit(self.fit_vectors())
        return self._knn


# --------------------------------------------------------------------------- steps


def _create(ctx: _Ctx) -> None:
    """The group and its arrays (the runner has removed any earlier attempt)."""
    plan = ctx.plan
    create_reduce(ctx.run, plan.n_rows, plan.chunk_rows, int(plan.fit_rows.size), int(plan.params["n_neighbors"]),
                  plan.params)


def _knn_step(ctx: _Ctx) -> dict[str, Any]:
    t0 = time.perf_counter()
    knn = ctx.index()
    idx, dists = knn.neighbor_graph()
    ctx.group().write_knn(idx, dists, ctx.plan.fit_rows)
    secs = time.perf_counter() - t0
    recall = None if knn.recall_ is None else round(float(knn.recall_), 6)
    ctx.log.info("kNN graph of %d points (k=%d, %s): %.1f s%s", idx.shape[0], idx.shape[1], knn.method_, secs,
                 "" if recall is None else f", recall@k {recall:.4f}")
    return {"method": knn.method_, "recall": recall, "seconds": round(secs, 3)}


def _fit_step(ctx: _Ctx) -> dict[str, Any]:
    t0 = time.perf_counter()
    p, g = ctx.plan.params, ctx.group()
    emb = fit_umap(ctx.fit_vectors(), np.asarray(g.knn_indices[:]), np.asarray(g.knn_dists[:]), n_neighbors=p["n_neighbors"],
                   min_dist=p["min_dist"], metric=p["metric"], init=p["init"], n_epochs=p["n_epochs"],
                   random_state=p["seed"])
    atomic_save_npz(ctx.run.unit_data_path(NAME, "fit"), embedding=emb)
    secs = time.perf_counter() - t0
    ctx.log.info("UMAP fit on %d points (init %s): %.1f s", emb.shape[0], p["init"], secs)
    return {"seconds": round(secs, 3)}


def _place_rows(ctx: _Ctx, x: np.ndarray, emb: np.ndarray, chunk: int) -> np.ndarray:
    """Raw layout positions of new rows x: float32 [q, C] -> float32 [q, 2] (the kernel `atlas locate` shares)."""
    return place_rows(ctx.index(), ctx.project(x), emb, ctx.plan.params, salt=chunk)


def _place_chunk(ctx: _Ctx, g: ReduceOutput, emb: np.ndarray, j: int) -> dict[str, Any]:
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
        x = np.asarray(ctx.collect.activations[lo:hi], dtype=np.float32)[todo]
        out[todo] = _place_rows(ctx, x, emb, j)
    g.write_raw_coords(lo, out)
    return {"placed": int(todo.sum()), "fitted": int(fitted.sum())}


def _place_steps(ctx: _Ctx, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The ``place-chunk-*`` units among ``units``, in order."""
    pending = [u for u in units if u.startswith(_PLACE)]
    if not pending:
        return
    t0 = time.perf_counter()
    with np.load(ctx.run.unit_data_path(NAME, "fit")) as z:
        emb = z["embedding"]
    g = ctx.group()
    for u in progress(pending, desc="reduce: place", unit="chunk"):
        yield u, _place_chunk(ctx, g, emb, int(u[len(_PLACE):]))
    ctx.log.info("placed %s (%s): %.1f s", plural(len(pending), "chunk"), ctx.plan.params["placement"],
                 time.perf_counter() - t0)


def _normalise_step(ctx: _Ctx) -> dict[str, Any]:
    p, g = ctx.plan.params, ctx.group()
    raw = np.asarray(g.raw_coords[:])
    ok = ctx.plan.status == 1
    lo, hi = layout_bounds(raw[ok], p["clip_percentile"])
    coords = apply_bounds(raw, lo, hi, p["margin"])
    coords[~ok] = np.nan
    g.write_coords(coords)
    return {"lo": lo.tolist(), "hi": hi.tolist()}


def _trust(ctx: _Ctx, coords: zarr.Array[Any]) -> float | None:
    """Trustworthiness (k=10, reduce.metric) of the final coords on a seeded sample."""
    ok_rows = np.flatnonzero(ctx.plan.status == 1)
    m = min(ctx.rc.trust_sample, ok_rows.size)
    if m < 25:
        return None
    rng = np.random.default_rng([ctx.plan.params["seed"], 0x7857])
    sample = np.sort(rng.choice(ok_rows, size=m, replace=False))
    x = ctx.collect.read_activations(sample)
    xy = np.asarray(coords[:])[sample]
    return round(trustworthiness(x, xy, n_neighbors=10, metric=ctx.plan.params["metric"]), 6)


def _finish(ctx: _Ctx) -> dict[str, Any]:
    g = ctx.group()
    trust = _trust(ctx, g.coords)
    knn_info, bounds = ctx.done["knn"], ctx.done["normalise"]  # what those units recorded
    g.write_summary(ctx.plan.params, ReduceSummary(knn_method=knn_info["method"], knn_recall=knn_info["recall"],
                                                   bounds_lo=bounds["lo"], bounds_hi=bounds["hi"],
                                                   trustworthiness=trust))
    ctx.log.info("trustworthiness (k=10, %d-point sample): %s; kNN %s%s", min(ctx.rc.trust_sample,
                 int((ctx.plan.status == 1).sum())), trust, knn_info["method"],
                 "" if knn_info["recall"] is None else f" (recall@k {knn_info['recall']})")
    return {"trustworthiness": trust, "recall": knn_info["recall"]}


# --------------------------------------------------------------------------- the stage

_PLACE = "place-chunk-"


def _set_threads(n: int | None) -> int:
    import numba

    threads = set_faiss_threads(n)
    numba_config: Any = numba.config  # its settings are set at import time, untyped
    numba.set_num_threads(min(threads, int(numba_config.NUMBA_NUM_THREADS)))
    return threads


def _open(job: Job) -> _Ctx:
    collect = CollectOutput.open(job.run)
    plan = _make_plan(job.cfg, collect)
    _set_threads(job.cfg.reduce.threads)
    return _Ctx(job.run, collect, plan, job.cfg.reduce, job.log, job.done)


class ReduceStage(StageBase[_Ctx]):
    """Stage 2: faiss kNN + UMAP, a 2-D layout of the collected activations -> ``RUN/reduce``."""

    name = NAME
    inputs = ("collect",)
    execution = "single"
    lease_window = 1 << 30  # one process runs every unit, in order
    resources = Resources(tasks=1, time="04:00:00", cpus=16, mem="64G", gpus=0)

    def for_config(self, cfg: Config) -> Stage[Any]:
        """In a comparison's view (``compare.layout`` set): the layout run's layout, copied."""
        if cfg.compare.layout is not None:
            from ._pair import view_stage

            return view_stage(NAME, cfg)
        return self

    def settings(self, cfg: Config) -> dict[str, Any]:
        return {"seed": cfg.seed, "reduce": cfg.reduce.model_dump(mode="json", exclude={"threads"})}

    def open(self, job: Job) -> _Ctx:
        return _open(job)

    def create(self, ctx: _Ctx) -> None:
        _create(ctx)

    def units(self, ctx: _Ctx) -> list[str]:
        return ["knn", "fit", *(f"{_PLACE}{j:06d}" for j in range(ctx.plan.n_chunks)), "normalise"]

    def run_units(self, ctx: _Ctx, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        steps: dict[str, Callable[[_Ctx], dict[str, Any]]] = {"knn": _knn_step, "fit": _fit_step}
        for u in (u for u in units if u in steps):
            yield u, steps[u](ctx)
        yield from _place_steps(ctx, units)
        if "normalise" in units:
            yield "normalise", _normalise_step(ctx)

    def finish(self, ctx: _Ctx) -> dict[str, Any]:
        return _finish(ctx)

    def detail(self, run: RunDir) -> dict[str, Any]:
        """kNN method and recall, trustworthiness."""
        out: dict[str, Any] = {}
        done = run.done_units(NAME)
        if "knn" in done:
            info = run.read_json(f"state/{NAME}/done/knn")
            out |= {"knn_method": info.get("method"), "knn_recall": info.get("recall")}
        if "final" in done:
            out["trustworthiness"] = run.read_json(f"state/{NAME}/done/final").get("trustworthiness")
        return {k: v for k, v in out.items() if v is not None}


STAGE = ReduceStage()
