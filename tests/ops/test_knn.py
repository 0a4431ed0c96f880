"""faiss k-NN helpers: normalisation, self-first graphs, HNSW recall and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from atlas.ops.knn import FaissKNN, exact_search, l2_normalise, recall_at_k, self_first, set_faiss_threads
from tests.synthetic_collect import clustered_activations


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return clustered_activations(np.arange(3000), 24, seed=0)


def test_l2_normalise_keeps_zero_rows() -> None:
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32 and out.flags.c_contiguous


def test_self_first_moves_or_inserts_self() -> None:
    idx = np.array([[1, 0, 2], [0, 2, 3], [2, 1, 0]])
    d = np.array([[0.0, 0.0, 0.5], [0.1, 0.2, 0.3], [0.0, 0.4, 0.6]], np.float32)
    i2, d2 = self_first(idx, d)
    np.testing.assert_array_equal(i2, [[0, 1, 2], [1, 0, 2], [2, 1, 0]])  # row 1 missed itself
    np.testing.assert_allclose(d2, [[0.0, 0.0, 0.5], [0.0, 0.1, 0.2], [0.0, 0.4, 0.6]])
    i3, _ = self_first(np.array([[5, 9]]), np.zeros((1, 2), np.float32), rows=np.array([9]))
    np.testing.assert_array_equal(i3, [[9, 5]])


def test_recall_at_k() -> None:
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[2, 1], [3, 5]])) == 0.75


def test_exact_graph_is_cosine_and_self_first(x: np.ndarray) -> None:
    knn = FaissKNN(10, exact_max=10_000).fit(x)
    idx, dists = knn.neighbor_graph()
    assert knn.method_ == "exact" and knn.recall_ is None
    np.testing.assert_array_equal(idx[:, 0], np.arange(len(x)))
    assert (dists[:, 0] == 0).all() and (np.diff(dists[:, 1:], axis=1) >= -1e-6).all()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(dists[:, 1:], 1 - np.einsum("nd,nkd->nk", u, u[idx[:, 1:]]), atol=1e-5)


def test_duplicates_still_put_self_first() -> None:
    x = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # every vector three times
    idx, _ = FaissKNN(3).fit(x).neighbor_graph()
    np.testing.assert_array_equal(idx[:, 0], np.arange(12))


def test_hnsw_recall_and_determinism(x: np.ndarray) -> None:
    set_faiss_threads(2)
    a = FaissKNN(15, exact_max=100, recall_queries=300, random_state=1).fit(x)
    ia, da = a.neighbor_graph()
    ib, db = FaissKNN(15, exact_max=100, recall_queries=300, random_state=1).fit(x).neighbor_graph()
    assert a.method_ == "hnsw" and a.recall_ is not None and a.recall_ > 0.95
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(da, db)
    np.testing.assert_array_equal(ia[:, 0], np.arange(len(x)))


def test_queries_and_euclidean(x: np.ndarray) -> None:
    base, queries = x[:2000], x[2000:2100]
    knn = FaissKNN(5, metric="euclidean").fit(base)
    idx, d = knn.kneighbors(queries, 4)
    full = np.linalg.norm(queries[:, None, :] - base[None, :, :], axis=2)
    np.testing.assert_allclose(d, np.sort(full, axis=1)[:, :4], rtol=1e-4)
    ei, _ = exact_search(l2_normalise(base), l2_normalise(queries), 4)
    ci, _ = FaissKNN(5).fit(base).kneighbors(queries, 4)
    np.testing.assert_array_equal(ci, ei)


@pytest.mark.parametrize(("kw", "match"), [({"n_neighbors": 1}, "n_neighbors"), ({"n_neighbors": 3, "metric": "l1"}, "metric"),
                                           ({"n_neighbors": 3, "ef_search": 0}, "ef_search"),
                                           ({"n_neighbors": 50}, "exceeds")])
def test_validation_names_the_parameter(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FaissKNN(**kw).fit(np.ones((10, 3), np.float32))
