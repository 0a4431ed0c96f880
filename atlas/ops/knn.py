"""k-nearest neighbours with faiss: exact (``IndexFlat*``) or HNSW, recall measured.

For the cosine metric vectors are L2-normalised, so inner product = cosine similarity and
the cosine distance umap-learn expects is ``1 - ip``. Pure array code: no I/O, nothing from the project.

Determinism: flat search is exact and deterministic. HNSW graph construction with several
OpenMP threads depends on thread timing, so the index is *built* on one thread (faiss's
own fixed level seed) and *searched* on all threads (each query is independent): the same
input always gives the same neighbours.
"""

from __future__ import annotations

import os
from typing import Any

import faiss
import numpy as np

__all__ = [
    "l2_normalise",
    "set_faiss_threads",
    "self_first",
    "recall_at_k",
    "exact_search",
    "FaissKNN",
]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero).

    x: float [n, d] -> float32 [n, d], C-contiguous (what faiss wants).
    """
    x = np.asarray(x, dtype=np.float32)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    norm[norm == 0] = 1.0
    return np.ascontiguousarray(x / norm[:, None])


def set_faiss_threads(n: int | None) -> int:
    """Set faiss's OpenMP threads (None = the CPUs this process may use); returns the number."""
    if n is None:
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    faiss.omp_set_num_threads(int(n))
    return int(n)


def self_first(indices: np.ndarray, dists: np.ndarray,
               rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Put each query's own id in column 0 (distance 0), keeping the others in order.

    indices: int64 [q, k] neighbours of base points ``rows`` (int [q]; None = 0..q-1, i.e.
    query i is base point i); dists: float32 [q, k] their distances. A row that missed
    itself (approximate search, duplicate vectors) drops its last neighbour.
    Returns int64 [q, k], float32 [q, k].
    """
    q, k = indices.shape
    rows = np.arange(q, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    is_self = indices == rows[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")[:, : k - 1]  # non-self first, in order
    idx = np.concatenate([rows[:, None], np.take_along_axis(indices, order, axis=1)], axis=1)
    dist = np.concatenate([np.zeros((q, 1), np.float32), np.take_along_axis(dists, order, axis=1)], axis=1)
    return idx, dist


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact k neighbours found by the approximate search.

    approx, exact: int [q, k] neighbour ids of the same q queries.
    """
    q, k = exact.shape
    hits = sum(np.intersect1d(a, e).size for a, e in zip(approx, exact))
    return float(hits) / float(q * k) if q else 1.0


def _to_dists(raw: np.ndarray, metric: str) -> np.ndarray:
    """faiss scores -> metric distances: cosine 1 - ip, euclidean sqrt(L2^2); float32, >= 0."""
    out: np.ndarray = np.maximum(1.0 - raw, 0.0) if metric == "cosine" else np.sqrt(np.maximum(raw, 0.0))
    return out.astype(np.float32)


def exact_search(base: np.ndarray, queries: np.ndarray, k: int,
                 metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Exact search (``IndexFlatIP`` for cosine on unit rows, ``IndexFlatL2`` for euclidean).

    base: float32 [n, d]; queries: float32 [q, d] (unit rows for cosine) ->
    (int64 [q, k] ids, float32 [q, k] metric distances), nearest first.
    """
    index = faiss.IndexFlatIP(base.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    raw, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return idx.astype(np.int64), _to_dists(raw, metric)


class FaissKNN:
    """k-NN over a fixed base set with faiss, umap-learn style.

    Parameters: ``n_neighbors`` (k, self included in the graph), ``metric`` (``cosine``:
    rows L2-normalised, inner product; ``euclidean``: L2), ``exact_max`` (flat search up to
    this many base points, HNSW beyond), ``hnsw_m``, ``ef_construction``, ``ef_search``,
    ``recall_queries`` (seeded sample of queries checked against exact search) and
    ``random_state`` (that sample's seed).

    Fitted attributes: ``method_`` ("exact" or "hnsw"), ``recall_`` (None until
    :meth:`neighbor_graph` measured it on the HNSW path), ``n_base_``.
    """

    def __init__(self, n_neighbors: int = 50, *, metric: str = "cosine", exact_max: int = 200_000,
                 hnsw_m: int = 32, ef_construction: int = 64, ef_search: int = 64,
                 recall_queries: int = 1000, random_state: int = 0) -> None:
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.exact_max = exact_max
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.recall_queries = recall_queries
        self.random_state = random_state

    def _validate(self, n: int) -> None:
        if not isinstance(self.n_neighbors, int) or self.n_neighbors < 2:
            raise ValueError(f"n_neighbors must be an integer >= 2, got {self.n_neighbors!r}")
        if self.n_neighbors > n:
            raise ValueError(f"n_neighbors={self.n_neighbors} exceeds the {n} points to search")
        if self.metric not in ("cosine", "euclidean"):
            raise ValueError(f"metric must be 'cosine' or 'euclidean', got {self.metric!r}")
        for name in ("exact_max", "hnsw_m", "ef_construction", "ef_search", "recall_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    def _prep(self, x: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            return l2_normalise(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    def fit(self, x: np.ndarray) -> FaissKNN:
        """Index the base vectors x: float [n, d]."""
        self._validate(x.shape[0])
        self._base = self._prep(x)
        n, d = self._base.shape
        self.n_base_ = n
        self.method_ = "exact" if n <= self.exact_max else "hnsw"
        self.recall_: float | None = None
        if self.method_ == "exact":
            self._index: Any = faiss.IndexFlatIP(d) if self.metric == "cosine" else faiss.IndexFlatL2(d)
            self._index.add(self._base)
        else:
            self._index = self._build_hnsw(self._base)
        return self

    def _build_hnsw(self, base: np.ndarray) -> faiss.Index:
        faiss_metric = faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2
        index = faiss.IndexHNSWFlat(base.shape[1], self.hnsw_m, faiss_metric)
        index.hnsw.efConstruction = self.ef_construction
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # deterministic graph
        try:
            index.add(base)
        finally:
            faiss.omp_set_num_threads(threads)
        return index

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.method_ == "hnsw":
            self._index.hnsw.efSearch = max(self.ef_search, k)
        raw, idx = self._index.search(q, k)
        idx, dists = idx.astype(np.int64), _to_dists(raw, self.metric)
        bad = np.flatnonzero((idx < 0).any(axis=1))  # HNSW found fewer than k: redo exactly
        if bad.size:
            idx[bad], dists[bad] = exact_search(self._base, q[bad], k, self.metric)
        return idx, dists

    def kneighbors(self, queries: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of new points among the base set.

        queries: float [q, d] -> (int64 [q, k] ids into the base, float32 [q, k] metric
        distances, cosine = 1 - cos), nearest first.
        """
        return self._search(self._prep(queries), self.n_neighbors if k is None else k)

    def neighbor_graph(self) -> tuple[np.ndarray, np.ndarray]:
        """The k-NN graph of the base set, self in column 0 (distance 0), as umap-learn wants.

        Returns (int64 [n, k], float32 [n, k] metric distances). On the HNSW path
        ``recall_`` is measured on a seeded sample of queries against exact search.
        """
        idx, dists = self_first(*self._search(self._base, self.n_neighbors))
        if self.method_ == "hnsw":
            self.recall_ = self._measure_recall(idx)
        return idx, dists

    def _measure_recall(self, graph_idx: np.ndarray) -> float:
        n = self.n_base_
        rng = np.random.default_rng(self.random_state)
        sample = np.sort(rng.choice(n, size=min(self.recall_queries, n), replace=False))
        ex_idx, ex_d = exact_search(self._base, self._base[sample], self.n_neighbors, self.metric)
        ex_idx, _ = self_first(ex_idx, ex_d, sample)
        return recall_at_k(graph_idx[sample], ex_idx)
