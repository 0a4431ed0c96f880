"""A complete synthetic ``RUN/collect`` group (docs/formats.md) for stage tests and benchmarks.

The activations are clustered (a two-level mixture with low-rank structure inside each
cluster), so UMAP layouts, grid purity and examples are meaningful. Everything is a pure
function of ``(seed, row)`` chunk by chunk, so a large run directory is written without
holding all activations in memory.

Usage::

    from tests.synthetic_collect import make_collect, make_layout
    make_collect(tmp_path / "run", n=2000, c=16, chunk_rows=256, seed=0, bad_rows=[3, 7])
    make_layout(tmp_path / "run", seed=0)   # a finished RUN/reduce without running UMAP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from atlas.ops.sampling import sample_positions

__all__ = ["make_collect", "make_layout", "clustered_activations", "cluster_of_rows", "STATUS_CODES"]

STATUS_CODES = {"0": "not done", "1": "ok", "2": "unreadable", "3": "too small", "4": "too large", "5": "missing"}
_N_SUPER = 10
_N_SUB = 8
_LAYER_HW = (14, 14)


def _centres(c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster centres [S*B, c] and per-cluster low-rank bases [S*B, 4, c] for ``seed``."""
    rng = np.random.default_rng([seed, 7919])
    offset = rng.normal(0.0, 1.0, size=c)  # shared offset: cosine geometry is not trivial
    supers = offset + 3.0 * rng.normal(size=(_N_SUPER, c))
    subs = np.repeat(supers, _N_SUB, axis=0) + 1.0 * rng.normal(size=(_N_SUPER * _N_SUB, c))
    bases = rng.normal(size=(_N_SUPER * _N_SUB, 4, c)) / np.sqrt(c)
    return subs, bases


def cluster_of_rows(rows: np.ndarray, seed: int) -> np.ndarray:
    """Cluster id in [0, 80) of each global row index (a hash: order independent). int64 [n]."""
    h = np.random.default_rng([seed, 104729]).permutation(1 << 16)
    return (h[np.asarray(rows, dtype=np.int64) % (1 << 16)] * 2654435761 % (1 << 32)) % (_N_SUPER * _N_SUB)


def clustered_activations(rows: np.ndarray, c: int, seed: int) -> np.ndarray:
    """Clustered activations of the given global rows: float32 [n, c].

    Row i depends only on (seed, i) and on the other rows of the same call only through
    the noise stream, which is seeded by the first row: call it chunk by chunk.
    """
    rows = np.asarray(rows, dtype=np.int64)
    subs, bases = _centres(c, seed)
    cl = cluster_of_rows(rows, seed)
    first = int(rows[0]) if rows.size else 0
    rng = np.random.default_rng([seed, 31, first])
    latent = rng.normal(size=(rows.size, 4)) * 2.5
    x = subs[cl] + np.einsum("nr,nrc->nc", latent, bases[cl]) * np.sqrt(c) * 0.35
    x += 1.0 * rng.normal(size=x.shape)
    return x.astype(np.float32)


def _attribution(cl: np.ndarray, rng: np.random.Generator, n_classes: int, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-K classes [n, K] int16 (distinct, by decreasing value) and values [n, K] float32."""
    n = cl.size
    k = min(top_k, n_classes)
    pref = (cl[:, None] * 7 + np.arange(k)[None, :] * 3) % n_classes  # cluster-specific classes
    noise_cls = rng.integers(0, n_classes, size=(n, k))
    use_noise = rng.random((n, k)) < 0.2
    cls = np.where(use_noise, noise_cls, pref)
    for j in range(1, k):  # make classes distinct within a row
        dup = (cls[:, j : j + 1] == cls[:, :j]).any(axis=1)
        cls[dup, j] = pref[dup, j]
        dup = (cls[:, j : j + 1] == cls[:, :j]).any(axis=1)
        while dup.any():
            cls[dup, j] = (cls[dup, j] + 1) % n_classes
            dup = (cls[:, j : j + 1] == cls[:, :j]).any(axis=1)
    vals = np.sort(rng.gamma(2.0, 1.0, size=(n, k)), axis=1)[:, ::-1]
    return cls.astype(np.int16), np.ascontiguousarray(vals, dtype=np.float32)


def _create_arrays(g: zarr.Group, n: int, c: int, r: int, top_k: int) -> None:
    spec = {
        "activations": ((n, c), (r, c), "float16", 0),
        "positions": ((n, 2), (r, 2), "int16", -1),
        "index": ((n,), (r,), "int64", 0),
        "status": ((n,), (r,), "uint8", 0),
        "labels": ((n,), (r,), "int32", -1),
        "attr_classes": ((n, top_k), (r, top_k), "int16", 0),
        "attr_values": ((n, top_k), (r, top_k), "float32", 0),
    }
    for name, (shape, chunks, dtype, fill) in spec.items():
        g.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill)


def _write_chunk(g: zarr.Group, j: int, n: int, c: int, r: int, seed: int, bad: set[int],
                 n_classes: int, top_k: int, n_labels: int) -> np.ndarray:
    """Write chunk j; return its second-moment contribution [c, c] float64."""
    lo, hi = j * r, min(n, (j + 1) * r)
    rows = np.arange(lo, hi, dtype=np.int64)
    ok = ~np.isin(rows, np.fromiter(bad, dtype=np.int64, count=len(bad)))
    status = np.where(ok, 1, 2 + rows % 4).astype(np.uint8)
    act = clustered_activations(rows, c, seed).astype(np.float16)
    act[~ok] = 0
    cl = cluster_of_rows(rows, seed)
    rng = np.random.default_rng([seed, 53, j])
    cls, vals = _attribution(cl, rng, n_classes, top_k)
    cls[~ok], vals[~ok] = 0, 0
    pos = sample_positions(seed, rows, *_LAYER_HW, 1)
    pos[~ok] = -1
    if n_labels > 0:
        noisy = rng.random(rows.size) < 0.1
        labels = np.where(noisy, rng.integers(0, n_labels, rows.size), (cl // _N_SUB) % n_labels)
    else:
        labels = np.full(rows.size, -1)
    g["activations"][lo:hi] = act
    g["positions"][lo:hi] = pos
    g["index"][lo:hi] = rows
    g["status"][lo:hi] = status
    g["labels"][lo:hi] = labels.astype(np.int32)
    g["attr_classes"][lo:hi] = cls
    g["attr_values"][lo:hi] = vals
    a = act[ok].astype(np.float64)
    return a.T @ a


def make_collect(run_root: Path, n: int, c: int, *, chunk_rows: int, seed: int, n_classes: int = 1000,
                 top_k: int = 5, bad_rows: Sequence[int] = (), n_labels: int = 0) -> None:
    """Write a complete ``run_root/collect`` Zarr v3 group plus ``state/collect/done`` markers.

    n rows of c channels in chunks of ``chunk_rows``; rows in ``bad_rows`` get a status in
    2..5 and zeros; ``n_labels`` > 0 gives cluster-correlated labels (10% noise) with names
    ``label-<i>``, else labels are -1. Attribution is always stored (``top_k`` classes of
    ``n_classes``). ``second_moment`` and ``ok_count`` are written last, as collect does.
    """
    run_root = Path(run_root)
    g = zarr.open_group(str(run_root / "collect"), mode="w", zarr_format=3)
    _create_arrays(g, n, c, chunk_rows, top_k)
    g.attrs.update({
        "model": "synthetic", "layer": "blocks.5", "layer_shape": [c, *_LAYER_HW], "input_size": 224,
        "seed": seed, "border": 1, "n_images": n, "chunk_rows": chunk_rows, "attribution": True,
        "top_k": top_k, "class_names": [f"class-{i}" for i in range(n_classes)],
        "label_names": [f"label-{i}" for i in range(n_labels)], "status_codes": STATUS_CODES,
    })
    bad = {int(b) for b in bad_rows}
    moment = np.zeros((c, c), dtype=np.float64)
    done = run_root / "state" / "collect" / "done"
    done.mkdir(parents=True, exist_ok=True)
    n_chunks = -(-n // chunk_rows)
    for j in range(n_chunks):
        moment += _write_chunk(g, j, n, c, chunk_rows, seed, bad, n_classes, top_k, n_labels)
        (done / f"chunk-{j:06d}").write_text(json.dumps({"rows": min(n, (j + 1) * chunk_rows) - j * chunk_rows}))
    g.create_array("second_moment", shape=(c, c), chunks=(c, c), dtype="float64", fill_value=0)
    g["second_moment"][...] = moment
    g.attrs["ok_count"] = int(n - len({b for b in bad if 0 <= b < n}))


def make_layout(run_root: Path, seed: int = 0) -> np.ndarray:
    """Write a finished ``run_root/reduce`` (``coords`` only, plus its ``setup``/``done`` markers)
    whose layout follows the clusters of :func:`make_collect`'s rows, without running UMAP.

    Returns the coords: float32 [N, 2] in [0, 1], NaN for rows whose status is not 1.
    """
    run_root = Path(run_root)
    col = zarr.open_group(str(run_root / "collect"), mode="r")
    n, r = col["status"].shape[0], int(col.attrs["chunk_rows"])
    rows = np.arange(n)
    rng = np.random.default_rng([seed, 11])
    supers = rng.uniform(0.15, 0.85, size=(_N_SUPER, 2))  # sub-clusters stay near their super-cluster
    centres = np.repeat(supers, _N_SUB, axis=0) + rng.normal(0, 0.04, size=(_N_SUPER * _N_SUB, 2))
    xy = centres[cluster_of_rows(rows, int(col.attrs["seed"]))]
    xy = np.clip(xy + np.random.default_rng([seed, 12]).normal(0, 0.02, size=(n, 2)), 0.0, 1.0)
    xy[:3] = [[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]]  # exact edges
    xy = xy.astype(np.float32)
    xy[col["status"][:] != 1] = np.nan
    g = zarr.open_group(str(run_root / "reduce"), mode="w", zarr_format=3)
    g.create_array("coords", shape=(n, 2), chunks=(r, 2), dtype="float32", fill_value=np.nan)
    g["coords"][...] = xy
    g.attrs.update({"synthetic": True, "complete": True})
    done = run_root / "state" / "reduce" / "done"
    done.mkdir(parents=True, exist_ok=True)
    (done / "setup").write_text(json.dumps({"key": f"synthetic-{seed}", "n_chunks": -(-n // r)}))
    (done / "done").write_text(json.dumps({"trustworthiness": None}))
    return xy
