"""``RUN/reduce``: the 2-D layout of the collected activations, written by :mod:`atlas.stages.reduce`.

Arrays (N collect rows, M fitted rows, k neighbours):

``coords``       [N, 2] float32, fill NaN: (x, y) in [margin, 1 - margin]; NaN for rows not ok
``raw_coords``   [N, 2] float32, fill NaN: the layout before normalisation
``knn_indices``  [M, k] int64, fill -1: neighbours of each fitted row, as positions 0..M-1 of ``fit_rows``
``knn_dists``    [M, k] float32, fill NaN: their distances
``fit_rows``     [M] int64, fill -1: the collect rows the layout was fitted on, sorted

Attributes: ``params`` (what decided the layout, see :mod:`atlas.stages.reduce`) and ``complete``
at creation; when finished also ``init``, ``knn_method``, ``bounds`` (per-axis lo, hi of the raw
layout), ``knn_recall``, ``trustworthiness`` (k = ``trustworthiness_k``) and two descriptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import zarr

from ..store import RunDir
from ._base import attr_bool, attr_dict, attr_opt, attr_str, group_array, open_output, output_exists

__all__ = ["REDUCE", "ReduceOutput", "ReduceSummary", "create_reduce"]

REDUCE = "reduce"


@dataclass(frozen=True)
class ReduceSummary:
    """What the finished stage adds to its attributes: the kNN method and recall (None when exact),
    the normalisation bounds (per-axis lo and hi of the raw layout, [x, y]) and the trustworthiness
    (None on too few points)."""

    knn_method: str
    knn_recall: float | None
    bounds_lo: list[float]
    bounds_hi: list[float]
    trustworthiness: float | None


class ReduceOutput:
    """``RUN/reduce`` read (and, opened ``r+``, written) through typed properties."""

    def __init__(self, run: RunDir, group: zarr.Group) -> None:
        self.run, self.group = run, group

    @classmethod
    def open(cls, run: RunDir, mode: Literal["r", "r+"] = "r") -> ReduceOutput:
        """The run's reduce output; a one-line StoreError naming ``atlas reduce`` when there is none."""
        return cls(run, open_output(run, REDUCE, mode))

    @staticmethod
    def exists(run: RunDir) -> bool:
        return output_exists(run, REDUCE)

    # ------------------------------------------------------------- attributes
    @property
    def params(self) -> dict[str, Any]:
        """The parameters that decided the layout (``n_neighbors``, ``metric``, ``pca``, ``margin``, ...)."""
        return attr_dict(self.group, "params")

    @property
    def complete(self) -> bool:
        return attr_bool(self.group, "complete")

    @property
    def init(self) -> str:
        return attr_str(self.group, "init")

    @property
    def knn_method(self) -> str:
        return attr_str(self.group, "knn_method")

    @property
    def knn_recall(self) -> float | None:
        v = attr_opt(self.group, "knn_recall")
        return None if v is None else float(v)

    @property
    def trustworthiness(self) -> float | None:
        v = attr_opt(self.group, "trustworthiness")
        return None if v is None else float(v)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The normalisation bounds (lo, hi), float64 [2] each (x, y); None for runs reduced before
        they were stored."""
        b = attr_opt(self.group, "bounds")
        if not b:
            return None
        return np.asarray(b["lo"], np.float64), np.asarray(b["hi"], np.float64)

    # ----------------------------------------------------------------- arrays
    @property
    def coords(self) -> zarr.Array[Any]:
        """[N, 2] float32: (x, y) atlas coordinates, NaN for rows not ok."""
        return group_array(self.group, "coords")

    @property
    def raw_coords(self) -> zarr.Array[Any]:
        """[N, 2] float32: the layout before normalisation."""
        return group_array(self.group, "raw_coords")

    @property
    def knn_indices(self) -> zarr.Array[Any]:
        """[M, k] int64: neighbours of each fitted row (positions into ``fit_rows``)."""
        return group_array(self.group, "knn_indices")

    @property
    def knn_dists(self) -> zarr.Array[Any]:
        """[M, k] float32: their distances."""
        return group_array(self.group, "knn_dists")

    @property
    def fit_rows(self) -> zarr.Array[Any]:
        """[M] int64: the fitted collect rows, sorted."""
        return group_array(self.group, "fit_rows")

    # -------------------------------------------------------------- writing
    def write_knn(self, indices: np.ndarray, dists: np.ndarray, fit_rows: np.ndarray) -> None:
        """The kNN graph: ``indices`` int64 [M, k], ``dists`` float32 [M, k], ``fit_rows`` int64 [M]."""
        self.knn_indices[:] = indices
        self.knn_dists[:] = dists
        self.fit_rows[:] = fit_rows

    def write_raw_coords(self, lo: int, xy: np.ndarray) -> None:
        """Raw layout rows ``lo .. lo + q``: float32 [q, 2]."""
        self.raw_coords[lo:lo + len(xy)] = xy

    def write_coords(self, coords: np.ndarray) -> None:
        """The normalised layout, float32 [N, 2]."""
        self.coords[:] = coords

    def write_summary(self, params: dict[str, Any], s: ReduceSummary) -> None:
        """The finished stage's attributes (``complete`` set last)."""
        self.group.attrs.update({
            "params": params, "init": params["init"], "knn_method": s.knn_method,
            "bounds": {"lo": s.bounds_lo, "hi": s.bounds_hi},
            "knn_recall": s.knn_recall, "trustworthiness": s.trustworthiness, "trustworthiness_k": 10,
            "knn_indices_refer_to": "fit_rows (positions 0..M-1); fit_rows[i] is the collect row",
            "coords_axes": ["x", "y"], "complete": True,
        })


def create_reduce(run: RunDir, n_rows: int, chunk_rows: int, n_fit: int, n_neighbors: int,
                  params: dict[str, Any]) -> ReduceOutput:
    """Create ``RUN/reduce`` (replacing any earlier group): the arrays for ``n_rows`` rows in chunks of
    ``chunk_rows`` and ``n_fit`` fitted rows of ``n_neighbors`` neighbours, ``params`` and ``complete: false``."""
    g = open_output(run, REDUCE, "w")
    n, r, m, k = n_rows, chunk_rows, n_fit, n_neighbors
    for name in ("coords", "raw_coords"):
        g.create_array(name, shape=(n, 2), chunks=(r, 2), dtype="float32", fill_value=np.nan, dimension_names=("row", "xy"))
    g.create_array("knn_indices", shape=(m, k), chunks=(min(m, 65536), k), dtype="int64", fill_value=-1,
                   dimension_names=("fit_row", "neighbour"))
    g.create_array("knn_dists", shape=(m, k), chunks=(min(m, 65536), k), dtype="float32", fill_value=np.nan,
                   dimension_names=("fit_row", "neighbour"))
    g.create_array("fit_rows", shape=(m,), chunks=(min(m, 1 << 20),), dtype="int64", fill_value=-1,
                   dimension_names=("fit_row",))
    g.attrs.update({"params": params, "complete": False})
    return ReduceOutput(run, g)
