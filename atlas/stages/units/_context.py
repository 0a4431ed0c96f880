"""What every part of the units analysis shares: its settings, its units of work, the context of a
process (the atlas read, the basis and the pass over the rows loaded on first use)."""

from __future__ import annotations

import logging
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...config import Config
from ...formats import CollectOutput, GridOutput
from ...formats._units import UnitsOutput, UnitStats
from ...ops.inversion import CPU_BATCH
from ...ops.units import Basis, parse_basis
from ...store import RunDir, StoreError

__all__ = ["NAME", "Context", "Plan", "open_context", "settings", "unit_seed", "render_settings", "kind_of"]

NAME = "units"
EXAMPLE_UNITS = 128  # units whose example crops one `examples-NNNNNN` unit cuts
TITLES = {"channels": "channel", "nmf": "neuron group", "sae": "feature"}

# The render settings an icon's pixels depend on (render's own list, icon_size and batch_size aside).
_RENDER_KEYS = ("steps", "restarts", "lr", "optimizer", "schedule", "warmup", "cossim_power", "reduce",
                "cossim_floor", "param", "coarse", "coarse_scale", "pyramid_levels", "decay_power", "init_sd",
                "transforms", "polish", "select", "icon_size")


def kind_of(cfg: Config, channels: int) -> tuple[str, int]:
    """(kind, K): the basis of ``units.basis`` on a layer of ``channels`` channels."""
    kind, k = parse_basis(cfg.units.basis)
    return kind, channels if k is None else k


def render_settings(cfg: Config) -> types.SimpleNamespace:
    """The renderer's settings for unit icons: render's, with the ``units.*`` values that are set."""
    r, u = cfg.render, cfg.units
    base = {k: getattr(r, k) for k in _RENDER_KEYS}
    base.update({"whiten": False, "init": "noise"})
    for key in ("steps", "cossim_power", "reduce", "icon_size"):
        value = getattr(u, key)
        if value is not None:
            base[key] = value
    return types.SimpleNamespace(**base)


def settings(cfg: Config) -> dict[str, Any]:
    """What decides the analysis's outputs besides its inputs' (``threads`` and the checkpoint interval do not)."""
    rs = vars(render_settings(cfg))
    batch = cfg.units.batch_size if cfg.units.batch_size is not None else cfg.render.batch_size
    return {"seed": cfg.seed, "model": cfg.model.network_settings(),
            "units": cfg.units.model_dump(mode="json", exclude={"threads", "sae_checkpoint_s", "steps", "cossim_power",
                                                                 "reduce", "icon_size", "batch_size"}),
            "render": {k: rs[k] for k in sorted(rs)}, "batch_size": batch,
            "images": {"max_pixels": cfg.images.max_pixels, "min_side": cfg.images.min_side},
            "tile": {"example_window": cfg.tile.example_window, "format": cfg.tile.format, "quality": cfg.tile.quality,
                     "background": cfg.tile.background},
            "locate": {"icon_px": cfg.locate.icon_px}}


def unit_seed(seed: int, batch: int) -> int:
    """The 63-bit seed of icon batch ``batch`` of a run with ``seed``."""
    state = np.random.SeedSequence([int(seed) & (2**63 - 1), 0x554E4954, batch]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@dataclass(frozen=True)
class Plan:
    """The units of work: ``basis`` (learned bases), ``stats``, ``icons-NNNNNN`` (one per batch of
    ``batch_size`` units with icons), ``examples-NNNNNN`` (one per :data:`EXAMPLE_UNITS` units: every unit
    gets its examples), ``attribution-NNNNNN`` (batches of example rows)."""

    learned: bool
    n_icons: int
    batch_size: int
    attribution_batches: int
    n_units: int = 0

    def example_batches(self) -> list[tuple[int, int]]:
        return [(lo, min(lo + EXAMPLE_UNITS, self.n_units)) for lo in range(0, self.n_units, EXAMPLE_UNITS)]

    def icon_batches(self) -> list[tuple[int, int]]:
        return [(lo, min(lo + self.batch_size, self.n_icons)) for lo in range(0, self.n_icons, self.batch_size)]

    def names(self) -> list[str]:
        out = (["basis"] if self.learned else []) + ["stats"]
        out += [f"icons-{b:06d}" for b in range(len(self.icon_batches()))]
        out += [f"examples-{b:06d}" for b in range(len(self.example_batches()))]
        return out + [f"attribution-{b:06d}" for b in range(self.attribution_batches)]


@dataclass
class Pairs:
    """The attribution pass's work: per example row (sorted) its position and the classes it is
    attributed to: ``rows`` int64 [m], ``positions`` int [m, 2], ``classes`` int64 [m, J] (-1 padded)."""

    rows: np.ndarray
    positions: np.ndarray
    classes: np.ndarray

    def batch(self, b: int, size: int) -> slice:
        return slice(b * size, min((b + 1) * size, len(self.rows)))


@dataclass
class Context:
    """What a process needs to run the units analysis."""

    cfg: Config
    run: RunDir
    log: logging.Logger
    collect: CollectOutput
    sizes: list[int]
    counts: dict[int, np.ndarray]          # grid count per level [s, s]
    min_count: int
    kind: str
    n_units: int
    channels: int
    n_icons: int
    icon_size: int
    pairs: Pairs | None                    # None: no attribution dictionary
    done: Mapping[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    batch_size: int = CPU_BATCH
    device: dict[str, Any] = field(default_factory=dict)
    device_checked: bool = False
    _basis: Basis | None = field(default=None, repr=False)
    _stats: UnitStats | None = field(default=None, repr=False)
    _acts: Any = field(default=None, repr=False)
    _sampler: Any = field(default=None, repr=False)

    @property
    def plan(self) -> Plan:
        bs = UnitsOutput.open(self.run).batch_size if UnitsOutput.exists(self.run) else self.batch_size
        nb = 0 if self.pairs is None else -(-len(self.pairs.rows) // self.cfg.units.attribution_batch)
        return Plan(self.kind != "channels", self.n_icons, bs, nb, self.n_units)

    def output(self) -> UnitsOutput:
        return UnitsOutput.open(self.run)

    def basis(self) -> Basis:
        """The basis, learned first by this process (under a lock) when no process has finished it."""
        if self._basis is None:
            from ._basis import ensure_basis

            self._basis = ensure_basis(self)
        return self._basis

    def stats(self) -> UnitStats:
        """The pass over the collected rows, made first by this process (under a lock) when needed."""
        if self._stats is None:
            from ._stats import ensure_stats

            self._stats = ensure_stats(self)
        return self._stats

    def activations(self) -> Any:
        """The render stage's differentiable layer (LayerActivations), loaded once."""
        if self._acts is None:
            from ...models import LayerActivations, load_network, pin_threads, resolve_device

            pin_threads(self.cfg.units.threads)
            net = load_network(self.cfg.model)
            device = resolve_device(self.cfg.model.device)
            self._acts = LayerActivations(net, self.cfg.model.layer, device, channels_last=device.type == "cuda")
            if self._acts.shape[0] != self.channels:
                raise StoreError(f"layer `{self.cfg.model.layer}` of `{self.cfg.model.name}` has {self._acts.shape[0]} "
                                 f"channels but the atlas in {self.run.root} has {self.channels}: run `atlas units` with "
                                 f"the run's own config, `atlas units {self.run.root / 'config.yaml'}`")
        return self._acts

    def sampler(self) -> Any:
        """collect's LayerSampler (its module: the same copy, memory format and folding), loaded once."""
        if self._sampler is None:
            from ...models import LayerSampler, load_network, pin_threads, resolve_device

            pin_threads(self.cfg.units.threads)
            net = load_network(self.cfg.model)
            device = resolve_device(self.cfg.model.device)
            self._sampler = LayerSampler(net, self.cfg.model.layer, attribution=False, device=device,
                                         channels_last=self.cfg.collect.channels_last, fold_bn=self.cfg.collect.fold_bn,
                                         autocast=device.type == "cuda")
        return self._sampler


def _pairs(cfg: Config, grid: GridOutput, col: CollectOutput, sizes: list[int], min_count: int) -> Pairs | None:
    """Every level's cells' first ``units.attribution_examples`` example rows, each with the cell's top class."""
    e = cfg.units.attribution_examples
    if e == 0 or not col.has_attribution:
        return None
    found: dict[int, tuple[tuple[int, int], set[int]]] = {}
    for s in sizes:
        lvl = grid.level(s)
        if lvl.top_classes is None or lvl.examples is None or lvl.example_positions is None:
            return None
        top = np.asarray(lvl.top_classes[...])[:, :, 0]
        ex = np.asarray(lvl.examples[...])[:, :, :e]
        pos = np.asarray(lvl.example_positions[...])[:, :, :e]
        cnt = np.asarray(lvl.count[...])
        for r, c in zip(*np.nonzero((cnt >= min_count) & (top >= 0))):
            for i in range(ex.shape[2]):
                row = int(ex[r, c, i])
                if row < 0:
                    continue
                entry = found.setdefault(row, ((int(pos[r, c, i, 0]), int(pos[r, c, i, 1])), set()))
                entry[1].add(int(top[r, c]))
    if not found:
        return None
    rows = np.array(sorted(found), np.int64)
    width = max(len(v[1]) for v in found.values())
    classes = np.full((len(rows), width), -1, np.int64)
    for i, row in enumerate(rows.tolist()):
        ks = sorted(found[row][1])
        classes[i, :len(ks)] = ks
    positions = np.array([found[row][0] for row in rows.tolist()], np.int64)
    return Pairs(rows, positions, classes)


def open_context(cfg: Config, run: RunDir, log: logging.Logger, done: Mapping[str, dict[str, Any]]) -> Context:
    """The atlas read (collect's header, the grid's levels and counts), the model checked."""
    from ...models import pin_threads, resolve_device
    from .._device import device_record

    col = CollectOutput.open(run)
    if (col.model, col.layer) != (cfg.model.name, cfg.model.layer):
        raise StoreError(f"the atlas in {run.root} was collected with model {col.model} layer {col.layer}, not "
                         f"{cfg.model.name} layer {cfg.model.layer}: run `atlas units {run.root / 'config.yaml'}`")
    pin_threads(cfg.units.threads)
    grid = GridOutput.open(run)
    sizes = grid.sizes
    counts = {s: np.asarray(grid.level(s).count[...]) for s in sizes}
    channels = col.n_channels
    kind, k = kind_of(cfg, channels)
    n_icons = min(cfg.units.limit or k, k)
    icon_size = int(render_settings(cfg).icon_size)
    bs = cfg.units.batch_size if cfg.units.batch_size is not None else cfg.render.batch_size
    device = device_record(resolve_device(cfg.model.device), autocast=True)
    return Context(cfg, run, log, col, sizes, counts, grid.min_count, kind, k, channels, n_icons, icon_size,
                   _pairs(cfg, grid, col, sizes, grid.min_count), done,
                   CPU_BATCH if bs == "auto" else int(bs), device=device)
