"""Placing new points on a fitted 2-D layout: what reduce does with the rows outside its UMAP
sample, and what ``atlas locate`` does with every position of a new image. Pure array code,
no I/O.

The steps, shared so both give the same coordinates for the same vectors:

1. :func:`fit_projection` / :func:`project`: the optional PCA fitted on the fitted sample;
2. :func:`placement_knn`: the faiss index over the fitted sample (exact or HNSW, built on
   one thread: the same input always gives the same index);
3. :func:`place_rows`: each new point at the weighted mean of its nearest fitted points'
   layout positions (``interpolate``), or umap-learn's transform on those neighbours
   (``transform``), in raw layout units;
4. :func:`atlas.ops.layout.apply_bounds`: the normalisation (percentile clip + scale into
   [margin, 1 - margin]) with the bounds reduce measured on the whole layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .knn import FaissKNN
from .layout import apply_pca, fit_pca, interpolate_positions, umap_transform

__all__ = ["fit_projection", "project", "placement_knn", "placement_seed", "place_rows"]

Projection = tuple[np.ndarray, np.ndarray] | None
"""A fitted PCA (mean float64 [d], components float64 [p, d]), or None for none."""


def fit_projection(x_fit: np.ndarray, pca: int | None) -> Projection:
    """The PCA of ``reduce.pca`` components fitted on the sample x_fit: float [m, d] (None: no PCA;
    at most d components)."""
    return None if pca is None else fit_pca(x_fit, min(int(pca), x_fit.shape[1]))


def project(x: np.ndarray, projection: Projection) -> np.ndarray:
    """x: float [n, d] -> float32 [n, p] through the fitted PCA (x itself without one)."""
    return x if projection is None else apply_pca(x, *projection)


def placement_knn(params: Mapping[str, Any]) -> FaissKNN:
    """The (unfitted) faiss index reduce searches, from its stored ``params``: ``n_neighbors``,
    ``metric``, ``exact_knn_max``, ``hnsw_m``, ``hnsw_ef_construction``, ``hnsw_ef_search``,
    ``recall_queries`` and ``seed``. Fit it on the projected sample: ``.fit(project(x_fit, ...))``."""
    p = params
    return FaissKNN(int(p["n_neighbors"]), metric=str(p["metric"]), exact_max=int(p["exact_knn_max"]),
                    hnsw_m=int(p["hnsw_m"]), ef_construction=int(p["hnsw_ef_construction"]),
                    ef_search=int(p["hnsw_ef_search"]), recall_queries=int(p["recall_queries"]),
                    random_state=int(p["seed"]))


def placement_seed(seed: int, salt: int) -> int:
    """The seed of ``placement: transform`` for one batch of new points (reduce: salt = chunk)."""
    return (int(seed) * 1_000_003 + int(salt)) % (2**32 - 1)


def place_rows(knn: FaissKNN, x: np.ndarray, embedding: np.ndarray, params: Mapping[str, Any],
               salt: int = 0) -> np.ndarray:
    """Raw layout positions of new points.

    knn: :func:`placement_knn` fitted on the projected sample; x: float32 [q, p] projected
    new points; embedding: float32 [m, 2] the sample's layout (row i = the index's point i);
    params: reduce's ``placement``, ``place_k``, ``n_neighbors``, ``min_dist``, ``seed``;
    salt: seeds ``placement: transform`` (reduce: the chunk). Returns float32 [q, 2].
    """
    p = params
    if p["placement"] == "interpolate":
        idx, d = knn.kneighbors(x, min(int(p["place_k"]), embedding.shape[0]))
        return interpolate_positions(idx, d, embedding)
    idx, d = knn.kneighbors(x, int(p["n_neighbors"]))
    return umap_transform(idx, d, embedding, min_dist=float(p["min_dist"]), n_epochs=None,
                          random_state=placement_seed(int(p["seed"]), salt))
