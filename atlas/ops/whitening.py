"""Whitening from the activations' uncentred second moment. Pure numpy, no I/O.

Activation atlases render a cell's direction v as ``S v`` with
``S = inv(A^T A / N + eps I)``: directions that are common in the data are damped.
Here ``eps`` is *relative*: the ridge added is ``eps * mean eigenvalue`` of
``A^T A / N`` (= eps * trace / C), so one setting works whatever the layer's scale.
"""

from __future__ import annotations

import numpy as np

__all__ = ["whitening_matrix", "whiten"]


def whitening_matrix(second_moment: np.ndarray, n: int, eps: float) -> np.ndarray:
    """S = inv(M + eps * mean_eig(M) * I) with M = second_moment / n.

    second_moment: float64 [C, C], the sum over n rows of a a^T; n > 0; eps > 0 ->
    float64 [C, C], symmetric positive definite (computed by eigendecomposition).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    m = np.asarray(second_moment, dtype=np.float64) / float(n)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"second_moment must be square [C, C], got shape {m.shape}")
    m = 0.5 * (m + m.T)
    vals, vecs = np.linalg.eigh(m)
    ridge = eps * max(float(np.trace(m)) / m.shape[0], np.finfo(np.float64).tiny)
    inv = 1.0 / (np.maximum(vals, 0.0) + ridge)
    s: np.ndarray = (vecs * inv) @ vecs.T
    out: np.ndarray = 0.5 * (s + s.T)
    return out


def whiten(v: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Apply S to directions: v float [..., C], s [C, C] -> float64 [..., C]."""
    out: np.ndarray = np.asarray(v, dtype=np.float64) @ s
    return out
