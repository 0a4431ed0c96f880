"""Layout kernels: normalisation, placement of new points, PCA, parameter defaults."""

from __future__ import annotations

import numpy as np
import pytest

from atlas.ops.layout import (
    apply_bounds,
    apply_pca,
    choose_init,
    default_n_neighbors,
    fit_pca,
    interpolate_positions,
    layout_bounds,
    normalise_layout,
    trustworthiness,
    umap_transform,
)


def test_three_point_layout_normalised_exactly() -> None:
    xy = np.array([[0.0, 10.0], [1.0, 20.0], [2.0, 30.0]])
    np.testing.assert_allclose(normalise_layout(xy, 0.0, 0.0), [[0, 0], [0.5, 0.5], [1, 1]])
    np.testing.assert_allclose(normalise_layout(xy, 0.0, 0.1), [[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])


def test_clipping_nan_and_degenerate_axis() -> None:
    xy = np.r_[np.c_[np.arange(101.0), np.zeros(101)], [[1e6, 0.0], [np.nan, np.nan]]]
    lo, hi = layout_bounds(xy, 5.0)
    assert lo[0] == pytest.approx(np.percentile(np.r_[np.arange(101.0), 1e6], 5))
    out = apply_bounds(xy, lo, hi, 0.02)
    assert out.dtype == np.float32
    assert np.nanmin(out) >= 0.02 - 1e-7 and np.nanmax(out) <= 0.98 + 1e-7
    assert out[101, 0] == pytest.approx(0.98)  # the outlier is clipped onto the edge
    assert (out[:102, 1] == 0.5).all()  # constant axis -> middle
    assert np.isnan(out[102]).all()


@pytest.mark.parametrize(("p", "m"), [(50.0, 0.0), (-1.0, 0.0), (1.0, 0.5)])
def test_normalise_rejects_bad_parameters(p: float, m: float) -> None:
    with pytest.raises(ValueError, match="clip_percentile|margin"):
        normalise_layout(np.random.default_rng(0).random((10, 2)), p, m)


def test_interpolation_weights() -> None:
    emb = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], np.float32)
    equal = interpolate_positions(np.array([[0, 1, 2]]), np.array([[0.2, 0.2, 0.2]]), emb)
    np.testing.assert_allclose(equal, [[10 / 3, 10 / 3]], rtol=1e-6)
    # distances 0, 1, 2: excess mean 1 -> weights e^0, e^-1, e^-2
    w = np.exp(-np.array([0.0, 1.0, 2.0]))
    w /= w.sum()
    got = interpolate_positions(np.array([[0, 1, 2]]), np.array([[0.0, 1.0, 2.0]]), emb)
    np.testing.assert_allclose(got, [[10 * w[1], 10 * w[2]]], rtol=1e-6)


def test_umap_transform_places_copies_next_to_their_originals() -> None:
    rng = np.random.default_rng(0)
    emb = np.r_[rng.normal(0, 1, (100, 2)), rng.normal(20, 1, (100, 2))].astype(np.float32)
    # new points whose neighbours are all in the second blob (distances small, sorted)
    idx = np.tile(np.arange(100, 115), (5, 1))
    dists = np.tile(np.linspace(0.01, 0.2, 15, dtype=np.float32), (5, 1))
    out = umap_transform(idx, dists, emb, min_dist=0.05, random_state=0)
    assert out.shape == (5, 2) and out.dtype == np.float32
    assert np.linalg.norm(out - emb[100:].mean(axis=0), axis=1).max() < 8.0
    np.testing.assert_array_equal(out, umap_transform(idx, dists, emb, min_dist=0.05, random_state=0))


def test_pca_exact_on_a_line() -> None:
    t = np.linspace(-1, 1, 50)
    x = np.c_[t, 2 * t, np.zeros_like(t)] + np.array([1.0, 2.0, 3.0])
    mean, comps = fit_pca(x, 1)
    np.testing.assert_allclose(mean, [1, 2, 3], atol=1e-12)
    np.testing.assert_allclose(comps[0], np.array([1, 2, 0]) / np.sqrt(5), atol=1e-12)
    np.testing.assert_allclose(apply_pca(x, mean, comps)[:, 0], t * np.sqrt(5), rtol=1e-6)
    with pytest.raises(ValueError, match="pca"):
        fit_pca(x, 4)


def test_defaults() -> None:
    assert default_n_neighbors(9_999) == 20 and default_n_neighbors(10_000) == 50 and default_n_neighbors(5) == 4
    assert choose_init("auto", 10, 100) == "spectral" and choose_init("auto", 1000, 100) == "pca"
    assert choose_init("random", 10, 100) == "random"


def test_trustworthiness_perfect_for_identity() -> None:
    x = np.random.default_rng(0).random((60, 2)) + 1.0
    assert trustworthiness(x, x, n_neighbors=5, metric="euclidean") == pytest.approx(1.0)
