"""atlas.ops.compare: pairing positions across layer grids and the change figures, exact values on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest

from atlas.ops.compare import (
    cell_cosine_sums,
    change_rank,
    change_score,
    class_shift,
    coherence,
    map_positions,
    reference_cells,
    relation_change,
)


def test_map_positions_keeps_the_relative_location() -> None:
    p = np.array([[0, 0], [1, 2], [3, 3], [-1, -1]])
    assert map_positions(p, (4, 4), (4, 4)).tolist() == [[0, 0], [1, 2], [3, 3], [-1, -1]]  # the same grid
    assert map_positions(p, (4, 4), (2, 2)).tolist() == [[0, 0], [0, 1], [1, 1], [-1, -1]]
    assert map_positions(p, (4, 4), (8, 8)).tolist() == [[1, 1], [3, 5], [7, 7], [-1, -1]]  # the centre's cell
    # 7 x 7 -> 4 x 4: the centre of cell y lies at (y + 0.5) / 7 of the side
    ys = np.stack([np.arange(7), np.zeros(7, int)], axis=1)
    assert map_positions(ys, (7, 7), (4, 4))[:, 0].tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert map_positions(np.array([[0, 6]]), (1, 7), (3, 2)).tolist() == [[1, 1]]  # rows and columns apart
    assert map_positions(p, (4, 4), (2, 2)).dtype == np.int16
    with pytest.raises(ValueError, match="non-empty"):
        map_positions(p, (0, 4), (2, 2))


def test_cell_cosine_sums_and_coherence() -> None:
    x = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [0.0, 0.0], [5.0, 5.0]])
    ids = np.array([0, 0, 1, 1, -1])
    means = np.array([[1.0, 1.0], [3.0, 4.0], [np.nan, np.nan]])
    sums, counts = cell_cosine_sums(x, ids, means)
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(sums, [2 * r, 1.0, 0.0], rtol=0, atol=1e-15)  # a zero row counts with cosine 0
    assert counts.tolist() == [2, 2, 0]
    np.testing.assert_allclose(coherence(sums, counts), [r, 0.5, np.nan], rtol=0, atol=1e-15)
    empty_sums, empty_counts = cell_cosine_sums(x, np.full(5, -1), means)
    assert empty_sums.tolist() == [0, 0, 0] and empty_counts.tolist() == [0, 0, 0]


def test_class_shift_is_the_jaccard_distance() -> None:
    a = np.array([[1, 2, 3], [1, 2, -1], [4, 5, 6], [-1, -1, -1], [7, -1, -1]])
    b = np.array([[3, 2, 1], [2, 3, -1], [7, 8, 9], [-1, -1, -1], [-1, -1, -1]])
    out = class_shift(a, b)
    np.testing.assert_allclose(out[[0, 1, 2, 4]], [0.0, 1 - 1 / 3, 1.0, 1.0], rtol=0, atol=1e-15)
    assert np.isnan(out[3])  # nothing to compare


def test_relation_change_is_zero_for_one_network_and_sees_a_moved_cell() -> None:
    rng = np.random.default_rng(0)
    m = rng.normal(size=(6, 5))
    assert np.array_equal(relation_change(m, m), np.zeros(6))  # exactly: the same profiles
    np.testing.assert_allclose(relation_change(m, 3 * m), np.zeros(6), atol=1e-12)  # scale does not change a cosine
    q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    np.testing.assert_allclose(relation_change(m, m @ q), np.zeros(6), atol=1e-12)  # nor a rotation of the space
    moved = m.copy()
    moved[2] = rng.normal(size=5)
    out = relation_change(m, moved)
    assert out[2] == out.max() and out[2] > 0.3
    # by hand: 3 cells; cell 0's profile (cos(0,1), cos(0,2)) is (.71, 0) in a and (0, .71) in b: r = -1; cells 1
    # and 2 have a constant profile in one network (both others at cosine .71) and not in the other: uncorrelated
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(relation_change(a, b), [2.0, 1.0, 1.0], atol=1e-12)
    assert np.isnan(relation_change(a[:2], b[:2])).all()  # one other cell: no profile
    flat = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert relation_change(flat, flat).tolist() == [0.0, 0.0, 0.0, 0.0]  # constant profiles agree
    assert relation_change(flat, a[[0, 1, 2, 0]])[0] == 1.0  # only one constant: uncorrelated


def test_reference_cells_and_blocks() -> None:
    assert reference_cells(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert reference_cells(10, 4).tolist() == [0, 3, 6, 9]
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    np.testing.assert_array_equal(relation_change(a, b, block=2), relation_change(a, b))  # blocks: the same numbers
    refs = reference_cells(9, 5)
    part = relation_change(a, b, refs)
    assert np.isfinite(part).all() and not np.array_equal(part, relation_change(a, b))


def test_change_score_and_rank() -> None:
    dcoh = np.array([0.25, -0.5, 0.0, np.nan, 0.5])
    rel = np.array([0.5, 0.125, np.nan, 0.25, 0.25])
    score = change_score(dcoh, rel)
    np.testing.assert_array_equal(score, [0.75, 0.625, np.nan, 0.25, 0.75])
    assert change_rank(score).tolist() == [1, 3, 0, 4, 2]  # ties keep cell order; NaN not ranked
    assert change_rank(np.array([])).tolist() == []
