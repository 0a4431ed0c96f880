"""Whitening matrix from the uncentred second moment."""

from __future__ import annotations

import numpy as np
import pytest

from atlas.ops.whitening import whiten, whitening_matrix


def test_diagonal_second_moment_exact() -> None:
    d = np.array([1.0, 2.0, 3.0, 6.0])
    n = 10
    s = whitening_matrix(np.diag(d) * n, n, eps=0.5)
    ridge = 0.5 * d.mean()  # eps relative to the mean eigenvalue (trace / C)
    np.testing.assert_allclose(s, np.diag(1.0 / (d + ridge)), rtol=1e-12, atol=1e-15)


def test_matches_inverse_and_is_symmetric_positive_definite() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    m = a.T @ a
    s = whitening_matrix(m, 200, eps=1e-2)
    ref = np.linalg.inv(m / 200 + 1e-2 * np.trace(m / 200) / 6 * np.eye(6))
    np.testing.assert_allclose(s, ref, rtol=1e-9)
    np.testing.assert_array_equal(s, s.T)
    assert np.linalg.eigvalsh(s).min() > 0


def test_relative_eps_is_scale_free_and_handles_rank_deficiency() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 5))  # rank 3 < C = 5: plain inverse would not exist
    m = a.T @ a
    s1 = whitening_matrix(m, 3, eps=1e-2)
    s2 = whitening_matrix(m * 100.0, 3, eps=1e-2)
    np.testing.assert_allclose(s2 * 100.0, s1, rtol=1e-9)
    assert np.isfinite(s1).all()
    np.testing.assert_allclose(whiten(np.eye(5), s1), s1)


@pytest.mark.parametrize(("n", "eps", "shape", "match"), [(0, 1e-2, (3, 3), "n must"), (3, 0.0, (3, 3), "eps must"),
                                                          (3, 1e-2, (3, 2), "square")])
def test_bad_arguments(n: int, eps: float, shape: tuple[int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        whitening_matrix(np.ones(shape), n, eps)
