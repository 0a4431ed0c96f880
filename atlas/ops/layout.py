"""2-D layout kernels: UMAP fit on a precomputed k-NN graph, placement of new points,
normalisation to the unit square, PCA and trustworthiness. Pure array code, no I/O.

umap-learn is imported lazily (numba start-up is slow). With ``random_state`` set, umap's
SGD runs on one thread and is bit-reproducible.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

__all__ = [
    "default_n_neighbors",
    "choose_init",
    "fit_pca",
    "apply_pca",
    "fit_umap",
    "interpolate_positions",
    "umap_transform",
    "layout_bounds",
    "apply_bounds",
    "normalise_layout",
    "trustworthiness",
]

_INT32_MIN = np.iinfo(np.int32).min + 1
_INT32_MAX = np.iinfo(np.int32).max - 1


def default_n_neighbors(n_points: int) -> int:
    """Distill's 50 neighbours, or 20 for runs under 10,000 points (never more than n-1)."""
    k = 50 if n_points >= 10_000 else 20
    return max(2, min(k, n_points - 1))


def choose_init(init: str, n_fit: int, spectral_max: int) -> str:
    """Resolve ``auto``: spectral up to ``spectral_max`` fitted points, PCA beyond."""
    if init != "auto":
        return init
    return "spectral" if n_fit <= spectral_max else "pca"


def fit_pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA by eigendecomposition of the float64 covariance (deterministic; signs fixed so
    the largest-magnitude loading of each component is positive).

    x: float [n, d] -> (mean float64 [d], components float64 [p, d]), p = n_components.
    """
    if not 1 <= n_components <= x.shape[1]:
        raise ValueError(f"pca must be between 1 and the {x.shape[1]} channels, got {n_components}")
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=0)
    cov = (x64 - mean).T @ (x64 - mean) / max(1, x.shape[0] - 1)
    vals, vecs = np.linalg.eigh(cov)
    comps = vecs[:, ::-1][:, :n_components].T
    sign = np.sign(comps[np.arange(n_components), np.abs(comps).argmax(axis=1)])
    return mean, comps * sign[:, None]


def apply_pca(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    """Project x: float [n, d] with mean [d], components [p, d] -> float32 [n, p]."""
    out: np.ndarray = (np.asarray(x, dtype=np.float64) - mean) @ components.T
    return out.astype(np.float32)


def fit_umap(x: np.ndarray, knn_indices: np.ndarray, knn_dists: np.ndarray, *, n_neighbors: int,
             min_dist: float, metric: str, init: str, n_epochs: int | None, random_state: int) -> np.ndarray:
    """UMAP embedding of x from its precomputed k-NN graph.

    x: float32 [m, d]; knn_indices: int64 [m, k] (row i's own id in column 0);
    knn_dists: float32 [m, k] distances in ``metric`` (cosine: 1 - cos), k >= n_neighbors.
    Returns float32 [m, 2].
    """
    import umap

    model = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric=metric, init=init,
                      n_epochs=n_epochs, random_state=random_state,
                      precomputed_knn=(knn_indices[:, :n_neighbors], knn_dists[:, :n_neighbors]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(knn_search_index|n_jobs value|overridden).*")
        emb = model.fit_transform(np.asarray(x, dtype=np.float32))
    return np.asarray(emb, dtype=np.float32)


def interpolate_positions(indices: np.ndarray, dists: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """Nearest-sample interpolation: each new point goes to the weighted mean of the layout
    positions of its k nearest fitted points, weights ``exp(-(d - d_1) / s)`` with d_1 the
    nearest distance and s the row's mean excess distance (a sharp, scale-free kernel).

    indices: int [q, k] ids into embedding; dists: float [q, k] ascending;
    embedding: float32 [m, 2] -> float32 [q, 2].
    """
    d = np.asarray(dists, dtype=np.float64)
    excess = d - d[:, :1]
    scale = excess.mean(axis=1, keepdims=True)
    scale[scale <= 0] = 1.0
    w = np.exp(-excess / scale)
    w /= w.sum(axis=1, keepdims=True)
    pos: np.ndarray = np.einsum("qk,qkc->qc", w, embedding[indices].astype(np.float64))
    return pos.astype(np.float32)


def _membership(indices: np.ndarray, dists: np.ndarray, local_connectivity: float) -> np.ndarray:
    """umap's bipartite membership strengths: float32 [q, k] (0 where index < 0)."""
    from umap.umap_ import compute_membership_strengths, smooth_knn_dist

    d = np.ascontiguousarray(dists, dtype=np.float32)
    sigmas, rhos = smooth_knn_dist(d, float(d.shape[1]), local_connectivity=float(local_connectivity))
    _, _, vals, _ = compute_membership_strengths(indices, d, sigmas, rhos, bipartite=True)
    return np.asarray(vals, dtype=np.float32).reshape(indices.shape)


def _transform_init(indices: np.ndarray, w: np.ndarray, embedding: np.ndarray) -> np.ndarray:
    """umap's ``init_graph_transform``, vectorised: a point with a strength-1 neighbour starts
    on it; others at the strength-weighted mean; rows without strength on the nearest."""
    q = indices.shape[0]
    exact = np.asarray(w >= 1.0)
    first = np.where(exact.any(axis=1), exact.argmax(axis=1), 0)
    total = w.sum(axis=1, keepdims=True, dtype=np.float64)
    mean = np.einsum("qk,qkc->qc", w / np.where(total > 0, total, 1.0), embedding[indices].astype(np.float64))
    keep = np.asarray(exact.any(axis=1))[:, None] | (total == 0)
    out = np.asarray(np.where(keep, embedding[indices[np.arange(q), first]], mean), dtype=np.float32)
    return out


def umap_transform(indices: np.ndarray, dists: np.ndarray, embedding: np.ndarray, *, min_dist: float,
                   n_epochs: int | None = None, random_state: int = 0, **umap_kw: Any) -> np.ndarray:
    """umap-learn's ``UMAP.transform`` given the new points' neighbours among the fitted ones
    (found with faiss instead of umap's NNDescent index): membership strengths, init at the
    weighted mean, then SGD with the fitted layout fixed (100 epochs for <= 10,000 points,
    else 30, as umap-learn).

    indices: int64 [q, k] ids into embedding; dists: float32 [q, k] metric distances;
    embedding: float32 [m, 2] -> float32 [q, 2].
    """
    import scipy.sparse
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import find_ab_params, make_epochs_per_sample

    q, m = indices.shape[0], embedding.shape[0]
    a, b = find_ab_params(umap_kw.get("spread", 1.0), min_dist)
    w = _membership(indices, dists, max(0.0, umap_kw.get("local_connectivity", 1.0) - 1.0))
    init = _transform_init(indices, w, embedding)
    epochs = n_epochs if n_epochs is not None else (100 if q <= 10_000 else 30)
    rows = np.repeat(np.arange(q, dtype=np.int32), indices.shape[1])
    graph = scipy.sparse.coo_matrix((w.ravel(), (rows, indices.ravel().astype(np.int32))), shape=(q, m))
    graph.data[graph.data < graph.data.max() / float(epochs)] = 0.0
    graph.eliminate_zeros()
    rng_state = np.random.RandomState(random_state).randint(_INT32_MIN, _INT32_MAX, 3).astype(np.int64)
    return np.asarray(optimize_layout_euclidean(
        init, embedding.astype(np.float32, copy=True), graph.row, graph.col, epochs, m,
        make_epochs_per_sample(graph.data, epochs), a, b, rng_state,
        umap_kw.get("repulsion_strength", 1.0), umap_kw.get("learning_rate", 1.0) / 4.0,
        umap_kw.get("negative_sample_rate", 5), False,
    ), dtype=np.float32)


def layout_bounds(xy: np.ndarray, clip_percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis [p, 100 - p] percentiles of the finite rows of xy: float [n, 2] ->
    (lo float64 [2], hi float64 [2])."""
    if not 0.0 <= clip_percentile < 50.0:
        raise ValueError(f"clip_percentile must be in [0, 50), got {clip_percentile}")
    finite = xy[np.isfinite(xy).all(axis=1)].astype(np.float64)
    if finite.shape[0] == 0:
        raise ValueError("layout has no finite point to normalise")
    lo = np.percentile(finite, clip_percentile, axis=0)
    hi = np.percentile(finite, 100.0 - clip_percentile, axis=0)
    return lo, hi


def apply_bounds(xy: np.ndarray, lo: np.ndarray, hi: np.ndarray, margin: float) -> np.ndarray:
    """Clip xy: float [n, 2] to [lo, hi] per axis, scale into [margin, 1 - margin].

    A degenerate axis (hi == lo) maps to 0.5. NaN rows stay NaN. Returns float32 [n, 2].
    """
    if not 0.0 <= margin < 0.5:
        raise ValueError(f"margin must be in [0, 0.5), got {margin}")
    span = np.asarray(hi, np.float64) - np.asarray(lo, np.float64)
    unit = (np.clip(xy.astype(np.float64), lo, hi) - lo) / np.where(span > 0, span, 1.0)
    unit = np.where((span > 0) | np.isnan(xy), unit, 0.5)
    out = margin + (1.0 - 2.0 * margin) * unit
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def normalise_layout(xy: np.ndarray, clip_percentile: float, margin: float) -> np.ndarray:
    """:func:`layout_bounds` then :func:`apply_bounds`: float [n, 2] -> float32 [n, 2] in [0, 1]."""
    lo, hi = layout_bounds(xy, clip_percentile)
    return apply_bounds(xy, lo, hi, margin)


def trustworthiness(x: np.ndarray, xy: np.ndarray, n_neighbors: int = 10, metric: str = "cosine") -> float:
    """sklearn's trustworthiness of layout xy: [n, 2] for vectors x: [n, d] (in [0, 1])."""
    from sklearn.manifold import trustworthiness as _tw

    return float(_tw(np.asarray(x, np.float64), np.asarray(xy, np.float64), n_neighbors=n_neighbors, metric=metric))
