"""``RUN_A/compare/<name>/``: a comparison of two networks over the same images (``atlas compare``),
its readers and its writers.

A comparison folder holds ``pair.json`` (the two runs, the images they share, the views) and two
*views*, each a run directory of its own (``layout-a``: A's layout and cells, B's activations of
the same rows; ``layout-b``: the reverse)::

    pair.json                      a, b (run folders, names, models, layers), images, sha256 of the
                                   shared manifest, views (folder, layout, network, pairing mode)
    layout-a/ layout-b/            the views: config.yaml, manifest, collect, reduce, grid, render,
                                   tiles (the usual stage outputs) and changes/ (below)

In a view, collect is the *paired* rows (the other network's activation of each row of the
layout's collect; its attribute ``compare`` is :class:`PairInfo`) and reduce a copy of the layout
run's layout. The ``compare`` analysis writes ``<view>/changes/``::

    summary.json / summary.js      window.ATLAS_COMPARE: the two networks and which one lays out the
                                   view, the figures' definitions, per grid size the cells compared,
                                   the mean of each figure and the cells changed most
    cells-<s>.json / cells-<s>.js  window.ATLAS_COMPARE_CELLS_<s>: per non-empty cell of grid s its
                                   row, col, count, coherence_layout, coherence_network,
                                   coherence_change, relation_change, class_shift, change, rank,
                                   the layout network's top classes and its icon (sheet, slot)
    icons/<s>/<k>.png              the layout network's icons of grid s, 16 to a sheet row (the
                                   viewer's A/B switch draws them in place)

Figures are rounded to 6 digits (None: not defined, e.g. no class attribution stored).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..store import DurableWriter, RunDir, StoreError, atomic_write_text
from ._base import attr_opt, open_output
from ._collect import COLLECT, CollectHeader, CollectOutput, create_collect
from ._reduce import ReduceOutput, ReduceSummary

__all__ = ["COMPARE", "CHANGES", "PAIR_FILE", "VIEWS", "PairInfo", "pair_info", "create_pair_collect", "copy_layout_rows",
           "copy_layout_knn", "finish_layout", "read_pair", "write_pair", "CompareOutput", "write_changes",
           "icon_sheet_path"]

COMPARE = "compare"
"""``RUN/compare``: the folder holding a run's comparisons (``atlas compare``), one folder each."""
CHANGES = "changes"
"""``<view>/changes``: the ``compare`` analysis's output in a view."""
PAIR_FILE = "pair.json"
VIEWS = ("layout-a", "layout-b")
"""The two views of a comparison: A's layout (B's activations on it) and B's layout (A's on it)."""
_FIGURES = ("coherence_layout", "coherence_network", "coherence_change", "relation_change", "class_shift", "change")


# --------------------------------------------------------------------------- a view's paired collect


@dataclass(frozen=True)
class PairInfo:
    """How a view's rows pair with its layout run's (collect attribute ``compare``): the two run
    folders, the pairing ``mode`` (``exact``: the same image positions, the other run's rows copied;
    ``mapped``: the other network run at the layout's positions mapped onto its grid) and both
    layer grids (H, W)."""

    layout: str
    network: str
    mode: str
    layout_grid: tuple[int, int]
    network_grid: tuple[int, int]

    def to_attrs(self) -> dict[str, Any]:
        return {**asdict(self), "layout_grid": list(self.layout_grid), "network_grid": list(self.network_grid)}


def pair_info(col: CollectOutput) -> PairInfo | None:
    """A view's pairing (collect's ``compare`` attribute); None in any other run."""
    d = attr_opt(col.group, COMPARE)
    if not isinstance(d, dict) or not d:
        return None
    try:
        lg, ng = (int(v) for v in d["layout_grid"]), (int(v) for v in d["network_grid"])
        return PairInfo(str(d["layout"]), str(d["network"]), str(d["mode"]), (next(lg), next(lg)), (next(ng), next(ng)))
    except (KeyError, TypeError, ValueError, StopIteration):
        raise StoreError(f"{col.path} has a `compare` attribute written by another version of atlas: redo the "
                         "comparison's collect") from None


def create_pair_collect(run: RunDir, header: CollectHeader, dtype: str, info: PairInfo) -> None:
    """A view's collect group: :func:`atlas.formats.create_collect`'s arrays and ``header``, plus the
    attribute ``compare`` = ``info`` (the view's set-up writes both before its first unit)."""
    create_collect(run, header, dtype)
    open_output(run, COLLECT, "r+").attrs.update({COMPARE: info.to_attrs()})


# --------------------------------------------------------------------------- a view's layout (a copy)


def copy_layout_rows(dst: ReduceOutput, src: ReduceOutput, lo: int, hi: int) -> None:
    """Rows ``lo .. hi - 1`` of ``coords`` and ``raw_coords`` copied from the layout run's reduce."""
    dst.coords[lo:hi] = np.asarray(src.coords[lo:hi])
    dst.raw_coords[lo:hi] = np.asarray(src.raw_coords[lo:hi])


def copy_layout_knn(dst: ReduceOutput, src: ReduceOutput) -> None:
    """The layout run's kNN graph and fitted rows."""
    dst.write_knn(np.asarray(src.knn_indices[...]), np.asarray(src.knn_dists[...]), np.asarray(src.fit_rows[...]))


def finish_layout(dst: ReduceOutput, src: ReduceOutput) -> None:
    """The finished copy's attributes: the layout run's parameters, bounds and quality figures."""
    b = src.bounds
    lo, hi = ([float(v) for v in b[0]], [float(v) for v in b[1]]) if b is not None else ([], [])
    dst.write_summary(src.params, ReduceSummary(src.knn_method, src.knn_recall, lo, hi, src.trustworthiness))


# --------------------------------------------------------------------------- the comparison folder


def read_pair(folder: str | Path) -> dict[str, Any] | None:
    """``<comparison>/pair.json``; None when the folder is no comparison (or it cannot be read)."""
    try:
        doc = json.loads((Path(folder) / PAIR_FILE).read_text())
    except (OSError, ValueError):
        return None
    return dict(doc) if isinstance(doc, dict) else None


def write_pair(folder: str | Path, doc: dict[str, Any]) -> None:
    """``<comparison>/pair.json`` (atomically; nothing written when it holds ``doc`` already)."""
    path = Path(folder) / PAIR_FILE
    text = json.dumps(doc, indent=1, sort_keys=True)
    if not path.is_file() or path.read_text() != text:
        atomic_write_text(path, text)


# --------------------------------------------------------------------------- a view's change figures


def icon_sheet_path(size: int, sheet: int | str) -> str:
    """A layout icon sheet's path relative to ``<view>/changes`` (``sheet`` ``"{sheet}"``: the URL template)."""
    return f"icons/{size}/{sheet}.png"


class CompareOutput:
    """``<view>/changes`` read back (JSON files, not a Zarr group): ``CompareOutput(view).figures(16)``."""

    def __init__(self, run_root: str | Path) -> None:
        self.path = Path(run_root) / CHANGES

    def summary(self) -> dict[str, Any] | None:
        """``summary.json``; None before the analysis first finished."""
        try:
            doc = json.loads((self.path / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        return dict(doc) if isinstance(doc, dict) else None

    def cells(self, size: int) -> list[dict[str, Any]]:
        """``cells-<s>.json``'s cells; a one-line StoreError when there is none."""
        path = self.path / f"cells-{size}.json"
        try:
            return list(json.loads(path.read_text())["cells"])
        except (OSError, ValueError, KeyError):
            raise StoreError(f"{path} is missing: run `atlas compare` to finish the comparison") from None

    def figures(self, size: int) -> dict[str, np.ndarray]:
        """Every figure of grid ``size`` as float64 [s, s] (NaN: empty cell or not defined), plus
        ``rank`` int64 [s, s] (0: not ranked) and ``count`` int64 [s, s]."""
        out = {k: np.full((size, size), np.nan) for k in _FIGURES}
        rank, count = np.zeros((size, size), np.int64), np.zeros((size, size), np.int64)
        for c in self.cells(size):
            r, col = int(c["row"]), int(c["col"])
            for k in _FIGURES:
                out[k][r, col] = np.nan if c.get(k) is None else float(c[k])
            rank[r, col], count[r, col] = int(c.get("rank") or 0), int(c["count"])
        return {**out, "rank": rank, "count": count}


def _js(var: str, doc: Any) -> str:
    return f"window.{var} = {json.dumps(doc, separators=(',', ':'), sort_keys=True)};\n"


def write_changes(run_root: str | Path, summary: dict[str, Any], cells: dict[int, list[dict[str, Any]]],
                  writer: DurableWriter) -> None:
    """``cells-<s>.json`` / ``.js`` per grid size, then ``summary.json`` / ``.js`` (last: it marks the
    output finished), through ``writer``."""
    out = Path(run_root) / CHANGES
    for s, doc in sorted(cells.items()):
        body = {"size": s, "cells": doc}
        writer.put(out / f"cells-{s}.json", json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
        writer.put(out / f"cells-{s}.js", _js(f"ATLAS_COMPARE_CELLS_{s}", body).encode())
    writer.put(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True).encode())
    writer.put(out / "summary.js", _js("ATLAS_COMPARE", summary).encode())
