"""``RUN/units``: the units analysis's output (``atlas units``), its reader and its writers.

A folder, not a Zarr group: the arrays are the Zarr group ``RUN/units/data`` and the viewer's files
lie beside it (the viewer loads them from ``../units/``)::

    data/                 Zarr group (arrays below)
    basis.json            the basis (kind, K, how it was learned, its reconstruction error and sparsity);
                          written last by the step that makes the basis (its presence: the basis is whole)
    stats.json            the pass over the collected rows (units' spreads, examples, cell means);
                          written last by that step (its presence: the pass is whole)
    index.json / .js      window.ATLAS_UNITS: the basis, its units (self-rank, spread, labels spanned),
                          the grid sizes, file patterns; written when the analysis finishes
    cells-<s>.js          window.ATLAS_UNITS_CELLS_<s>: each non-empty cell's dictionary at grid size s
    unit/<u>.js           window.ATLAS_UNITS_UNIT_<u>: unit u's heatmap at every grid size and its examples
    icons/<u>.<fmt>       unit u's icon (tile.format)
    examples/<row>.jpg    collect row ``row``'s crop around its sampled position (as tile's)
    located/<unit>/dictionary.png / .json   a located image's semantic dictionary (``atlas locate``)

Arrays of ``data/`` (K units, C channels, n = the units with an icon, N examples, T dictionary entries):

``directions``          [K, C] float32: each unit's unit-length direction (its icon's target)
``components``          [K, 2C] float64: NMF components on the sign split (``nmf:K`` only)
``w_enc`` ``b_enc`` ``w_dec`` ``b_dec``   [K, C], [K], [C, K], [C] float32: the autoencoder (``sae:K`` only)
``icons``               [n, P, P, 3] uint8; ``objective``, ``cossim`` [n] float32 (NaN: not rendered);
``activation``          [n, C] float32 (the icon's reduced activation); ``self_rank`` [n] int32 (0: not yet)
``unit_mean`` ``unit_std`` ``unit_max`` ``unit_active``   [K] float32: each unit's coefficient over the
                        collected rows (mean, standard deviation = its spread, largest, share of rows > 0)
``examples``            [K, N] int64 collect rows where the unit is strongest (-1 padded);
``example_positions``   [K, N, 2] int16; ``example_values`` [K, N] float32; ``example_labels`` [K, N] int32
level-<s>/``mean_coef``  [s, s, K] float32: each cell's mean coefficient (NaN in empty cells)
level-<s>/``top_units`` ``top_shares``  [s, s, T] int32 / float32: the cell's dictionary by share of its
                        positive mean coefficients (-1 / NaN)
level-<s>/``attr_units`` ``attr_shares``  [s, s, T]: by share of its top class's positive attribution;
level-<s>/``attr_class`` [s, s] int16: that class (-1 without)

Root attributes: ``basis``, ``kind``, ``n_units``, ``channels``, ``n_icons``, ``icon_size``, ``batch_size``,
``sizes``, ``dictionary``, ``examples``, ``model``, ``layer``, ``seed``, the pixel settings, and when
finished ``self_rank`` (summary) and ``seconds_per_icon``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import zarr

from ..ops.units import Basis, SAEParams, channel_basis, nmf_basis, sae_basis
from ..store import DurableWriter, RunDir, StoreError, atomic_write_text
from ._base import attr_int, attr_list, attr_str

ZArray: TypeAlias = "zarr.Array[Any]"

__all__ = ["UNITS", "UnitsOutput", "UnitsLevel", "UnitStats", "create_units", "heat_doc", "write_units_json_js",
           "units_folder", "units_finished"]

UNITS = "units"
DATA = "data"
BASIS_FILE = "basis.json"
STATS_FILE = "stats.json"
INDEX = "index.json"

_SAE = ("w_enc", "b_enc", "w_dec", "b_dec")
_ICON_ARRAYS = ("icons", "objective", "cossim", "activation", "self_rank")
_STAT_ARRAYS = ("unit_mean", "unit_std", "unit_max", "unit_active")


def _a(g: zarr.Group, name: str) -> ZArray:
    """The array ``name`` of a group being written."""
    arr = g[name]
    assert isinstance(arr, zarr.Array), name
    return arr


def _g(g: zarr.Group, name: str) -> zarr.Group:
    sub = g[name]
    assert isinstance(sub, zarr.Group), name
    return sub


def level_name(size: int) -> str:
    return f"level-{size}"


@dataclass(frozen=True)
class UnitStats:
    """The pass over the collected rows (K units, N examples, T entries): per unit ``mean``, ``std``,
    ``max``, ``active`` float [K]; ``examples`` int64 [K, N], ``example_positions`` int [K, N, 2],
    ``example_values`` float [K, N], ``example_labels`` int [K, N]; per grid size ``mean_coef``
    float [s, s, K], ``top_units`` int [s, s, T], ``top_shares`` float [s, s, T]; ``info`` (stats.json)."""

    mean: np.ndarray
    std: np.ndarray
    max: np.ndarray
    active: np.ndarray
    examples: np.ndarray
    example_positions: np.ndarray
    example_values: np.ndarray
    example_labels: np.ndarray
    mean_coef: Mapping[int, np.ndarray]
    top_units: Mapping[int, np.ndarray]
    top_shares: Mapping[int, np.ndarray]
    info: Mapping[str, Any]


@dataclass(frozen=True)
class UnitsLevel:
    """``data/level-<s>`` (arrays: index them to read)."""

    group: zarr.Group
    size: int

    def _get(self, name: str) -> ZArray:
        arr = self.group.get(name)
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.group.store_path} has no `{name}` array: redo `atlas units`")
        return arr

    @property
    def mean_coef(self) -> ZArray:
        """float32 [s, s, K]: each cell's mean coefficient of every unit (NaN in empty cells)."""
        return self._get("mean_coef")

    @property
    def top_units(self) -> ZArray:
        """int32 [s, s, T]: the cell's dictionary, units by share of its positive mean coefficients (-1)."""
        return self._get("top_units")

    @property
    def top_shares(self) -> ZArray:
        """float32 [s, s, T]: their shares (NaN)."""
        return self._get("top_shares")

    @property
    def has_attribution(self) -> bool:
        return isinstance(self.group.get("attr_units"), zarr.Array)

    @property
    def attr_units(self) -> ZArray:
        """int32 [s, s, T]: units by share of the cell's top class's positive attribution (-1)."""
        return self._get("attr_units")

    @property
    def attr_shares(self) -> ZArray:
        """float32 [s, s, T]: their shares (NaN)."""
        return self._get("attr_shares")

    @property
    def attr_class(self) -> ZArray:
        """int16 [s, s]: the class attributed (the cell's top class; -1)."""
        return self._get("attr_class")


class UnitsOutput:
    """``RUN/units`` read back and written: ``UnitsOutput.open(run).basis().encode(x)``."""

    def __init__(self, run: RunDir, group: zarr.Group | None) -> None:
        self.run = run
        self.path = run.stage_path(UNITS)
        self._group = group

    @classmethod
    def open(cls, run: RunDir, mode: str = "r") -> UnitsOutput:
        """The units of ``run``; a one-line StoreError naming the command when there are none."""
        data = run.stage_path(UNITS) / DATA
        if not (data / "zarr.json").is_file():
            raise StoreError(f"{run.stage_path(UNITS)} holds no units: run `atlas units {run.root / 'config.yaml'}` first")
        return cls(run, zarr.open_group(str(data), mode="r+" if mode == "r+" else "r", zarr_format=3))

    @classmethod
    def files(cls, run: RunDir) -> UnitsOutput:
        """The folder only (its JSON files), whether or not the arrays exist."""
        return cls(run, None)

    @staticmethod
    def exists(run: RunDir) -> bool:
        return (run.stage_path(UNITS) / DATA / "zarr.json").is_file()

    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            raise StoreError(f"{self.path} holds no units: run `atlas units {self.run.root / 'config.yaml'}` first")
        return self._group

    def _array(self, name: str) -> ZArray:
        arr = self.group.get(name)
        if not isinstance(arr, zarr.Array):
            raise StoreError(f"{self.path / DATA} has no `{name}` array: redo `atlas units`")
        return arr

    # ------------------------------------------------------------------ attributes
    @property
    def basis_spec(self) -> str:
        return attr_str(self.group, "basis")

    @property
    def kind(self) -> str:
        return attr_str(self.group, "kind")

    @property
    def n_units(self) -> int:
        return attr_int(self.group, "n_units")

    @property
    def n_icons(self) -> int:
        """Units with an icon: the first ``n_icons`` (``units.limit``)."""
        return attr_int(self.group, "n_icons")

    @property
    def channels(self) -> int:
        return attr_int(self.group, "channels")

    @property
    def icon_size(self) -> int:
        return attr_int(self.group, "icon_size")

    @property
    def batch_size(self) -> int:
        return attr_int(self.group, "batch_size")

    @property
    def sizes(self) -> list[int]:
        return sorted(int(str(s)) for s in attr_list(self.group, "sizes"))

    def attrs(self) -> dict[str, Any]:
        """Every root attribute (JSON)."""
        return dict(self.group.attrs)

    # ------------------------------------------------------------------ arrays
    def array(self, name: str) -> ZArray:
        """A root array by the name the module docstring gives it (``icons``, ``unit_std``, ``examples``, ...)."""
        return self._array(name)

    def level(self, size: int) -> UnitsLevel:
        sub = self.group.get(level_name(size))
        if not isinstance(sub, zarr.Group):
            raise StoreError(f"{self.path / DATA} has no level {size}: redo `atlas units`")
        return UnitsLevel(sub, size)

    def basis(self) -> Basis:
        """The basis as :class:`atlas.ops.units.Basis` (needs ``basis.json``: the basis is whole)."""
        info = self.basis_info()
        if info is None:
            raise StoreError(f"{self.path} has no whole basis yet: rerun `atlas units` to resume it")
        kind = self.kind
        if kind == "channels":
            return channel_basis(self.channels)
        if kind == "nmf":
            return nmf_basis(np.asarray(self._array("components")[...]), int(info["nmf_iter"]))
        params = SAEParams.from_arrays({k: np.asarray(self._array(k)[...]) for k in _SAE})
        return sae_basis(params, float(info["scale"]))

    def stats(self) -> UnitStats:
        info = self.stats_info()
        if info is None:
            raise StoreError(f"{self.path} has no pass over the rows yet: rerun `atlas units` to resume it")
        a = {k: np.asarray(self._array(k)[...]) for k in (*_STAT_ARRAYS, "examples", "example_positions",
                                                          "example_values", "example_labels")}
        lv = {s: self.level(s) for s in self.sizes}
        return UnitStats(a["unit_mean"], a["unit_std"], a["unit_max"], a["unit_active"], a["examples"],
                         a["example_positions"], a["example_values"], a["example_labels"],
                         {s: np.asarray(v.mean_coef[...]) for s, v in lv.items()},
                         {s: np.asarray(v.top_units[...]) for s, v in lv.items()},
                         {s: np.asarray(v.top_shares[...]) for s, v in lv.items()}, info)

    # ------------------------------------------------------------------ JSON files
    def _json(self, name: str) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return None
        return dict(doc) if isinstance(doc, dict) else None

    def basis_info(self) -> dict[str, Any] | None:
        """``basis.json``; None until the basis is whole."""
        return self._json(BASIS_FILE)

    def stats_info(self) -> dict[str, Any] | None:
        """``stats.json``; None until the pass over the rows is whole."""
        return self._json(STATS_FILE)

    def index(self) -> dict[str, Any] | None:
        """``index.json``; None before the analysis first finished."""
        return self._json(INDEX)

    def n_finished(self) -> int:
        """Units listed by ``index.json`` (0 before the analysis finished): the atlases index's ``units``."""
        doc = self.index()
        return int(doc.get("n_units") or 0) if doc else 0

    # ------------------------------------------------------------------ writing
    def _writable(self) -> zarr.Group:
        return zarr.open_group(str(self.path / DATA), mode="r+", zarr_format=3)


    def write_basis(self, basis: Basis, info: Mapping[str, Any]) -> None:
        """The basis's arrays, then ``basis.json`` (atomically: the basis is whole once it is there)."""
        g = self._writable()
        _a(g, "directions")[...] = basis.directions
        if basis.kind == "nmf" and basis.components is not None:
            _a(g, "components")[...] = basis.components
        if basis.kind == "sae" and basis.sae is not None:
            for k, v in basis.sae.arrays().items():
                _a(g, k)[...] = v
        atomic_write_text(self.path / BASIS_FILE, json.dumps(dict(info), indent=1, sort_keys=True))

    def write_stats(self, st: UnitStats) -> None:
        """The pass's arrays, then ``stats.json`` (atomically)."""
        g = self._writable()
        for name, data in (("unit_mean", st.mean), ("unit_std", st.std), ("unit_max", st.max), ("unit_active", st.active),
                           ("examples", st.examples), ("example_positions", st.example_positions),
                           ("example_values", st.example_values), ("example_labels", st.example_labels)):
            _a(g, name)[...] = data
        for s in st.mean_coef:
            sub = _g(g, level_name(s))
            _a(sub, "mean_coef")[...] = st.mean_coef[s]
            _a(sub, "top_units")[...] = st.top_units[s]
            _a(sub, "top_shares")[...] = st.top_shares[s]
        atomic_write_text(self.path / STATS_FILE, json.dumps(dict(st.info), indent=1, sort_keys=True))

    def write_icons(self, lo: int, hi: int, icons: np.ndarray, objective: np.ndarray, cossim: np.ndarray,
                    activation: np.ndarray) -> None:
        """Icons ``lo .. hi - 1`` (one unit of work: one chunk of each array)."""
        g = self._writable()
        for name, data in (("icons", icons), ("objective", objective), ("cossim", cossim), ("activation", activation)):
            _a(g, name)[lo:hi] = data

    def write_finish(self, self_rank: np.ndarray, attribution: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
                     attrs: Mapping[str, Any]) -> None:
        """The self-ranks [n], each level's attribution dictionary (units, shares, class) and the
        summaries (root attributes)."""
        g = self._writable()
        _a(g, "self_rank")[...] = self_rank
        for s, (units, shares, cls) in attribution.items():
            sub = _g(g, level_name(s))
            _a(sub, "attr_units")[...] = units
            _a(sub, "attr_shares")[...] = shares
            _a(sub, "attr_class")[...] = cls
        g.attrs.update(dict(attrs))


def _arr(g: zarr.Group, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, fill: Any,
         dims: tuple[str, ...]) -> None:
    g.create_array(name, shape=shape, chunks=tuple(max(1, c) for c in chunks), dtype=dtype, fill_value=fill,
                   dimension_names=dims)


def create_units(run: RunDir, *, kind: str, n_units: int, channels: int, n_icons: int, icon_size: int,
                 batch_size: int, examples: int, top: int, sizes: list[int], attribution: bool,
                 attrs: Mapping[str, Any]) -> None:
    """Create ``RUN/units`` whole (a temporary folder renamed over it) with the empty arrays of the
    module docstring and the root attributes ``attrs``."""
    tmp = run.root / f".{UNITS}.creating"
    shutil.rmtree(tmp, ignore_errors=True)
    g = zarr.open_group(str(tmp / DATA), mode="w", zarr_format=3)
    k, c, n, p, bs, e = n_units, channels, n_icons, icon_size, batch_size, examples
    _arr(g, "directions", (k, c), (k, c), "float32", 0.0, ("unit", "channel"))
    if kind == "nmf":
        _arr(g, "components", (k, 2 * c), (k, 2 * c), "float64", 0.0, ("unit", "split_channel"))
    if kind == "sae":
        _arr(g, "w_enc", (k, c), (k, c), "float32", 0.0, ("unit", "channel"))
        _arr(g, "b_enc", (k,), (k,), "float32", 0.0, ("unit",))
        _arr(g, "w_dec", (c, k), (c, k), "float32", 0.0, ("channel", "unit"))
        _arr(g, "b_dec", (c,), (c,), "float32", 0.0, ("channel",))
    _arr(g, "icons", (n, p, p, 3), (bs, p, p, 3), "uint8", 0, ("icon", "y", "x", "rgb"))
    for name in ("objective", "cossim"):
        _arr(g, name, (n,), (bs,), "float32", np.nan, ("icon",))
    _arr(g, "activation", (n, c), (bs, c), "float32", np.nan, ("icon", "channel"))
    _arr(g, "self_rank", (n,), (max(n, 1),), "int32", 0, ("icon",))
    for name in _STAT_ARRAYS:
        _arr(g, name, (k,), (k,), "float32", np.nan, ("unit",))
    _arr(g, "examples", (k, e), (k, e), "int64", -1, ("unit", "example"))
    _arr(g, "example_positions", (k, e, 2), (k, e, 2), "int16", -1, ("unit", "example", "yx"))
    _arr(g, "example_values", (k, e), (k, e), "float32", np.nan, ("unit", "example"))
    _arr(g, "example_labels", (k, e), (k, e), "int32", -1, ("unit", "example"))
    for s in sizes:
        sub = g.create_group(level_name(s))
        rows = min(s, 64)
        _arr(sub, "mean_coef", (s, s, k), (rows, rows, min(k, 256)), "float32", np.nan, ("cell_row", "cell_col", "unit"))
        _arr(sub, "top_units", (s, s, top), (rows, rows, top), "int32", -1, ("cell_row", "cell_col", "top"))
        _arr(sub, "top_shares", (s, s, top), (rows, rows, top), "float32", np.nan, ("cell_row", "cell_col", "top"))
        if attribution:
            _arr(sub, "attr_units", (s, s, top), (rows, rows, top), "int32", -1, ("cell_row", "cell_col", "top"))
            _arr(sub, "attr_shares", (s, s, top), (rows, rows, top), "float32", np.nan, ("cell_row", "cell_col", "top"))
            _arr(sub, "attr_class", (s, s), (rows, rows), "int16", -1, ("cell_row", "cell_col"))
        sub.attrs.update({"size": s})
    g.attrs.update({**dict(attrs), "kind": kind, "n_units": k, "channels": c, "n_icons": n, "icon_size": p,
                    "batch_size": bs, "examples": e, "dictionary": top, "sizes": list(sizes)})
    out = run.stage_path(UNITS)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # the folder appears whole or not at all


# --------------------------------------------------------------------------- the viewer's files


def heat_doc(q: np.ndarray, vmax: float) -> dict[str, Any]:
    """One grid's heat values q uint8 [s * s] (row-major) as the class heat files encode them:
    ``max``, ``cells`` (non-zero), ``encoding`` ``dense`` (base64 of the bytes) or ``sparse`` (base64
    of the non-zero cells' uint32 little-endian indices, ``index``, and their bytes), whichever is shorter."""
    nz = np.flatnonzero(q)
    doc: dict[str, Any] = {"max": float(np.float32(vmax)), "cells": int(nz.size)}
    if nz.size * 5 < q.size:
        doc |= {"encoding": "sparse", "index": base64.b64encode(nz.astype("<u4").tobytes()).decode(),
                "values": base64.b64encode(q[nz].tobytes()).decode()}
    else:
        doc |= {"encoding": "dense", "values": base64.b64encode(q.tobytes()).decode()}
    return doc


def write_units_json_js(writer: DurableWriter, path: Path, name: str, doc: Any, *, json_twin: bool = False) -> None:
    """``path`` (.js) assigning ``doc`` to ``window.<name>`` (compact, keys sorted), and its ``.json``
    twin when asked."""
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    writer.put(path, f"window.{name} = {text};\n".encode())
    if json_twin:
        writer.put(path.with_suffix(".json"), json.dumps(doc, indent=1, sort_keys=True).encode())


def units_folder(run_root: str | Path) -> Path:
    """``RUN/units``."""
    return Path(run_root) / UNITS


def units_finished(run_root: str | Path) -> int:
    """The units ``RUN/units/index.json`` lists (0 before ``atlas units`` finished): what the run's
    atlas index tells a viewer, so it asks for ``../units/index.js`` only when there is one."""
    try:
        doc = json.loads((units_folder(run_root) / INDEX).read_text())
    except (OSError, ValueError):
        return 0
    return int(doc.get("n_units") or 0) if isinstance(doc, dict) else 0
