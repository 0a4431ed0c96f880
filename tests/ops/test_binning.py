"""Binning kernels: exact values on tiny inputs and hypothesis properties of the pyramid."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from atlas.ops.binning import (
    add_partial,
    add_partials,
    cell_ids,
    cell_similarity,
    chunk_partial,
    dense_cell_block,
    dense_from_keys,
    empty_accumulator,
    key_sums,
    level_means,
    merge_key_sums,
    parent_ids,
    pool2x2,
    pool_keys,
    purity,
    pyramid,
    rank_in_groups,
    scatter_counts,
    scatter_sums,
    top_per_cell,
    top_rows_per_cell,
    unit_rows,
)

SIZES = [2, 4, 8]

unit = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 0.25, 0.75, 1 - 1e-9]),
                 st.floats(0.0, 1.0, allow_nan=False, width=32))


@st.composite
def layouts(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 60))
    xy = draw(arrays(np.float64, (n, 2), elements=unit))
    vals = draw(arrays(np.float64, (n, 3), elements=st.floats(-100, 100, allow_nan=False)))
    return xy, vals


def _levels(xy: np.ndarray, vals: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
    acc = empty_accumulator(SIZES[-1], vals.shape[1])
    add_partial(acc, chunk_partial(xy, vals, np.ones(len(xy), bool), SIZES[-1]))
    return pyramid(acc, SIZES, 0, 0)


# ----------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_every_level_conserves_points_and_sums(data: tuple[np.ndarray, np.ndarray]) -> None:
    xy, vals = data
    for s, lev in _levels(xy, vals).items():
        assert lev["count"].shape == (s, s)
        assert lev["count"].sum() == len(xy)
        np.testing.assert_allclose(lev["act_sum"].sum(axis=(0, 1)), vals.sum(axis=0), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_parent_is_count_weighted_mean_of_children(data: tuple[np.ndarray, np.ndarray]) -> None:
    xy, vals = data
    levels = _levels(xy, vals)
    for s in SIZES[:-1]:
        child, parent = levels[2 * s], levels[s]
        cm = level_means(child["act_sum"], child["count"], 1).astype(np.float64)
        cc = child["count"].astype(np.float64)
        for r in range(s):
            for c in range(s):
                kids = (slice(2 * r, 2 * r + 2), slice(2 * c, 2 * c + 2))
                assert parent["count"][r, c] == child["count"][kids].sum()
                if parent["count"][r, c] == 0:
                    continue
                w = cc[kids][..., None]
                expected = np.nansum(np.where(w > 0, cm[kids], 0.0) * w, axis=(0, 1)) / w.sum()
                got = level_means(parent["act_sum"], parent["count"], 1)[r, c]
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 50), st.just(2)), elements=unit))
def test_cells_are_aligned_across_levels(xy: np.ndarray) -> None:
    for s in SIZES[:-1]:
        fine = cell_ids(xy, 2 * s)
        np.testing.assert_array_equal(parent_ids(fine, 2 * s), cell_ids(xy, s))
        r, c = cell_ids(xy, s) // s, cell_ids(xy, s) % s
        fr, fc = fine // (2 * s), fine % (2 * s)
        np.testing.assert_array_equal(fr // 2, r)
        np.testing.assert_array_equal(fc // 2, c)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.floats(-5, 5, allow_nan=False)), max_size=40),
       st.integers(0, 40))
def test_key_sums_split_anywhere_then_merge_equals_whole(pairs: list[tuple[int, float]], cut: int) -> None:
    keys = np.array([p[0] for p in pairs], dtype=np.int64)
    vals = np.array([p[1] for p in pairs], dtype=np.float64)
    whole = key_sums(keys, vals)
    merged = merge_key_sums(*key_sums(keys[:cut], vals[:cut]), *key_sums(keys[cut:], vals[cut:]))
    np.testing.assert_array_equal(whole[0], merged[0])
    np.testing.assert_allclose(whole[1], merged[1], atol=1e-9)


# ----------------------------------------------------------------- exact values


def test_cell_ids_edges_and_nan() -> None:
    xy = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.49, 0.51], [np.nan, 0.2]])
    # cell (r, c) = (floor(y s), floor(x s)); id = r * s + c; 1.0 lands in the last cell
    np.testing.assert_array_equal(cell_ids(xy, 2), [0, 3, 1, 2, 3, 2, -1])
    np.testing.assert_array_equal(cell_ids(xy, 4), [0, 15, 3, 12, 10, 9, -1])


def test_three_point_layout_known_means() -> None:
    xy = np.array([[0.1, 0.1], [0.2, 0.3], [0.9, 0.9]])
    vals = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0]])
    lev = _levels(xy, vals)
    np.testing.assert_array_equal(lev[2]["count"], [[2, 0], [0, 1]])
    means = level_means(lev[2]["act_sum"], lev[2]["count"], 1)
    np.testing.assert_array_equal(means[0, 0], [2.0, 20.0])
    np.testing.assert_array_equal(means[1, 1], [5.0, 50.0])
    assert np.isnan(means[0, 1]).all() and np.isnan(means[1, 0]).all()
    # with min_count 2 the single-point cell is empty
    assert np.isnan(level_means(lev[2]["act_sum"], lev[2]["count"], 2)[1, 1]).all()
    # at size 8: (0.1,0.1)->(0,0), (0.2,0.3)->(2,1), (0.9,0.9)->(7,7)
    assert lev[8]["count"][0, 0] == 1 and lev[8]["count"][2, 1] == 1 and lev[8]["count"][7, 7] == 1


def test_scatter_and_pool_exact() -> None:
    ids = np.array([0, 3, 3, -1, 1])
    np.testing.assert_array_equal(scatter_counts(ids, 4), [1, 1, 0, 2])
    np.testing.assert_array_equal(scatter_sums(ids, np.array([1.0, 2, 3, 100, 4]), 4), [1, 4, 0, 5])
    g = np.arange(16).reshape(4, 4)
    np.testing.assert_array_equal(pool2x2(g), [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])
    with pytest.raises(ValueError, match="even side"):
        pool2x2(np.zeros((3, 3)))


def test_pool_keys_and_top_per_cell() -> None:
    n_classes = 10
    # size 4: cells 0, 1, 4, 5 share parent 0 at size 2; cell 15 -> parent 3
    keys = np.array([0 * n_classes + 7, 1 * n_classes + 7, 5 * n_classes + 2, 15 * n_classes + 1])
    pk, ps = pool_keys(keys, np.array([1.0, 2.0, 0.5, 4.0]), 4, n_classes)
    np.testing.assert_array_equal(pk, [0 * n_classes + 2, 0 * n_classes + 7, 3 * n_classes + 1])
    np.testing.assert_array_equal(ps, [0.5, 3.0, 4.0])
    cls, val = top_per_cell(pk, ps, 4, n_classes, 2)
    np.testing.assert_array_equal(cls, [[7, 2], [-1, -1], [-1, -1], [1, -1]])
    np.testing.assert_array_equal(val[0], [3.0, 0.5])
    assert np.isnan(val[1]).all() and val[3, 0] == 4.0 and np.isnan(val[3, 1])
    # ties: lower class first
    cls, _ = top_per_cell(np.array([5, 3, 4]), np.array([1.0, 1.0, 1.0]), 1, 10, 2)
    np.testing.assert_array_equal(cls, [[3, 4]])


def test_purity_and_dense_labels() -> None:
    lc = dense_from_keys(np.array([0 * 3 + 0, 0 * 3 + 1, 1 * 3 + 2, 2 * 3 + 0]), np.array([3, 1, 2, 5]), 3, 3)
    np.testing.assert_array_equal(lc, [[3, 1, 0], [0, 0, 2], [5, 0, 0]])
    assert purity(lc, np.array([True, True, False])) == pytest.approx((3 + 2) / 6)
    assert np.isnan(purity(lc, np.zeros(3, bool)))


def test_examples_kernels() -> None:
    np.testing.assert_array_equal(rank_in_groups(np.array([3, 3, 5, 7, 7, 7])), [0, 1, 0, 0, 1, 2])
    cells = np.array([1, 1, 1, 0, 0])
    rows = np.array([10, 11, 12, 13, 14])
    scores = np.array([0.5, 0.9, 0.9, 0.1, 0.2])
    keep = top_rows_per_cell(cells, rows, scores, 2)
    np.testing.assert_array_equal(rows[keep], [14, 13, 11, 12])  # by cell, score desc, row asc on ties
    means = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    sim = cell_similarity(unit_rows(np.array([[2.0, 0.0], [1.0, 1.0], [5.0, 5.0]])), np.array([0, 1, -1]), means)
    np.testing.assert_allclose(sim[:2], [1.0, np.sqrt(0.5)])
    assert sim[2] == -np.inf


def test_chunked_partials_equal_one_pass() -> None:
    rng = np.random.default_rng(0)
    n, size, n_classes = 500, 8, 20
    xy = rng.random((n, 2))
    act = rng.normal(size=(n, 4))
    ok = rng.random(n) > 0.1
    cls = np.stack([rng.permutation(n_classes)[:3] for _ in range(n)])
    val = rng.random((n, 3))
    lab = rng.integers(-1, 4, n)
    kw = {"n_classes": n_classes, "n_labels": 4}
    parts = [chunk_partial(xy[lo:lo + 64], act[lo:lo + 64], ok[lo:lo + 64], size, attr_classes=cls[lo:lo + 64],
                           attr_values=val[lo:lo + 64], labels=lab[lo:lo + 64], **kw) for lo in range(0, n, 64)]
    acc, batched = empty_accumulator(size, 4), empty_accumulator(size, 4)
    for part in parts:
        add_partial(acc, part)
    for lo in range(0, len(parts), 3):
        add_partials(batched, parts[lo:lo + 3])
    for key in acc:
        np.testing.assert_allclose(batched[key], acc[key], atol=1e-12)
    ids = np.where(ok, cell_ids(xy, size), -1)
    np.testing.assert_array_equal(acc["count"], scatter_counts(ids, size * size))
    np.testing.assert_allclose(acc["act_sum"], scatter_sums(ids, act, size * size), atol=1e-12)
    dense_attr = np.zeros((size * size, n_classes))
    for i in np.flatnonzero(ok):
        dense_attr[ids[i], cls[i]] += val[i]
    np.testing.assert_allclose(dense_from_keys(acc["attr_keys"], acc["attr_sums"], size * size, n_classes, float),
                               dense_attr, atol=1e-12)
    dense_lab = np.zeros((size * size, 4), np.int64)
    for i in np.flatnonzero(ok & (lab >= 0)):
        dense_lab[ids[i], lab[i]] += 1
    np.testing.assert_array_equal(dense_from_keys(acc["label_keys"], acc["label_counts"], size * size, 4), dense_lab)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 35), st.integers(0, 6), st.floats(-5, 5, allow_nan=False)), max_size=80),
       st.integers(1, 36))
def test_dense_cell_blocks_make_the_dense_matrix(triples: list[tuple[int, int, float]], block: int) -> None:
    """Blocks of cell rows cut from the sorted sparse sums, stacked, are the dense [cells, classes] matrix."""
    n_cells, n_classes = 36, 7
    keys, sums = key_sums(np.array([c * n_classes + k for c, k, _ in triples], np.int64),
                          np.array([v for *_, v in triples], np.float64))
    dense = dense_from_keys(keys, sums, n_cells, n_classes, np.float64)
    blocks = [dense_cell_block(keys, sums, lo, min(n_cells, lo + block), n_classes) for lo in range(0, n_cells, block)]
    np.testing.assert_array_equal(np.concatenate(blocks), dense)
    assert dense_cell_block(keys, sums, 5, 5, n_classes).shape == (0, n_classes)
