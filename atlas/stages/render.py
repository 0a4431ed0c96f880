"""Stage 4, render: one feature-visualisation icon per non-empty grid cell.

Each icon is optimised so that the layer's activation of it points along its cell's
mean activation v (Carter et al. 2019), by the kernel :func:`atlas.ops.inversion.render_icons`:
Lucid's decorrelated spectral parameterisation, first at a lower resolution
(``render.coarse``) then upsampled, random transforms that keep the icon's size, the
objective ``dot(h, v) * max(cos(h, v), 0.1)^p`` (p = 8), Adam for all icons of a batch at
once, and a final ``render.polish`` fraction of the steps without transforms (the icon is
optimised as it is stored and scored). These defaults are the measured winners of
``benchmarks/render.py`` (docs/benchmarks.md, "Icons: quality per step").

Unit of work: one batch of ``render.batch_size`` cells of one level,
``level-0016-batch-000003``; ``--shard i/n`` owns units ``i, i+n, ...`` of the list of
all units (levels in increasing size, batches in order). ``batch_size: auto`` is resolved
once, when the render group is created (from the free GPU memory), and recorded in it, so
every process plans the same units. A unit optimises ``batch_size * restarts`` images
together and keeps, per icon, the best restart. Its random numbers (initial spectra,
transform draws) come from a generator seeded by ``(seed, level, batch)``, so a rerun
after ``kill -9`` or any shard split gives the same pixels (on the same machine and
device). The unit writes its rows (one chunk of each array); the runner then writes its
done marker. Other settings on an existing render are refused (icons are the expensive
part of an atlas); a redone grid makes the render stale, and ``atlas run`` renders again.
``render.levels`` may grow between runs: the new levels' units are added to the finished ones.

A cell is rendered when its count is at least ``grid.min_count`` and its mean activation
is finite and not zero; cells are taken row-major, level by level.

Every icon is measured twice:

* ``cossim`` (faithfulness): the cosine between the activation of the final, quantised
  icon (no transforms, reduced as configured) and its cell's (unwhitened) mean activation;
* ``rank`` (distinctness): the rank of its own cell among all cell targets of its level by
  cosine to the icon's activation (1 = its own cell is the closest); retrieval@k = share
  of icons with rank <= k, per level in the log, the group's attributes and ``atlas status``.

``activation`` keeps each icon's reduced activation, so both can be recomputed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import Config
from ..formats import (
    CollectOutput,
    DecodeLimits,
    GridLevel,
    GridOutput,
    RenderOutput,
    RenderRows,
    create_render,
    example_crop,
    run_manifest,
    write_render_rows,
    write_render_summaries,
)
from ..ops.inversion import AUTO_UNITS, CPU_BATCH, RenderResult, auto_batch_size, fit_batch_size, render_icons
from ..ops.objectives import own_rank, retrieval_at
from ..progress import plural, progress
from ..store import RunDir, StoreError
from ._protocol import Job, Resources, StageBase

__all__ = ["STAGE", "RenderStage", "plan_units", "unit_name", "unit_seed", "faithfulness_summary",
           "distinctness_summary", "level_icon_sizes", "example_patches", "RenderResult"]

NAME = "render"

# Settings that change an icon's pixels: a rerun with other values would mix two runs.
_PIXEL_KEYS = ("icon_size", "steps", "batch_size", "restarts", "lr", "optimizer", "schedule", "warmup",
               "cossim_power", "whiten", "whiten_mix", "reduce", "cossim_floor", "param", "coarse", "coarse_scale",
               "pyramid_levels", "decay_power", "init_sd", "init", "transforms", "polish", "select", "icon_growth",
               "icon_sizes")


# --------------------------------------------------------------------------- grid input


@dataclass
class _Level:
    """The non-empty cells of one grid level: cells int32 [n, 2] (row, col), targets float32 [n, C]."""

    size: int
    cells: np.ndarray
    targets: np.ndarray
    examples: np.ndarray | None = None  # int64 [n]: each cell's best dataset example row (collect row)
    example_positions: np.ndarray | None = None  # int [n, 2]: its sampled (y, x) on the layer grid


@dataclass
class _Grid:
    levels: dict[int, _Level]
    whitening: np.ndarray | None
    channels: int


def _read_level(gl: GridLevel, min_count: int) -> _Level:
    count = np.asarray(gl.count[...])
    mean = np.asarray(gl.mean_activation[...], dtype=np.float32)
    keep = (count >= min_count) & np.isfinite(mean).all(axis=2) & (np.abs(mean).sum(axis=2) > 0)
    rows, cols = np.nonzero(keep)  # row-major: the order of icons in the level's arrays
    lvl = _Level(gl.size, np.stack([rows, cols], axis=1).astype(np.int32), mean[rows, cols])
    ex, pos = gl.examples, gl.example_positions
    if ex is not None and pos is not None:
        examples = np.asarray(ex[...])
        if examples.ndim == 3 and examples.shape[2] and (examples[rows, cols, 0] >= 0).all():
            lvl.examples = examples[rows, cols, 0].astype(np.int64)
            lvl.example_positions = np.asarray(pos[...])[rows, cols, 0]
    return lvl


def _read_grid(cfg: Config, run: RunDir) -> _Grid:
    """Non-empty cells and targets of every grid level (+ S when whitening)."""
    grid = GridOutput.open(run)
    sizes = grid.sizes
    missing = grid.missing()
    if missing:
        raise StoreError(f"{grid.path} lacks {', '.join(missing)}: finish `atlas grid` before `atlas render`")
    levels = {s: _read_level(grid.level(s), cfg.grid.min_count) for s in sizes}
    channels = int(grid.level(sizes[0]).mean_activation.shape[-1])
    whitening = None
    if cfg.render.whiten:
        w = grid.whitening
        if w is None:
            raise StoreError(f"{grid.path} has no `whitening` array; rerun `atlas grid` or set render.whiten=false")
        whitening = np.asarray(w[...], dtype=np.float64)
    return _Grid(levels, whitening, channels)


# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class _Unit:
    name: str
    level: int
    batch: int
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


def unit_name(level: int, batch: int) -> str:
    return f"level-{level:04d}-batch-{batch:06d}"


def plan_units(n_cells: dict[int, int], batch_size: int, levels: list[int] | None = None) -> list[_Unit]:
    """Units of the given levels (default all), levels in increasing size, batches in order."""
    out: list[_Unit] = []
    for s in sorted(n_cells if levels is None else levels):
        n = n_cells[s]
        out.extend(_Unit(unit_name(s, b), s, b, lo, min(lo + batch_size, n))
                   for b, lo in enumerate(range(0, n, batch_size)))
    return out


def unit_seed(seed: int, level: int, batch: int) -> int:
    """The 63-bit seed of unit (level, batch) of a run with ``seed``."""
    state = np.random.SeedSequence([int(seed) & (2**63 - 1), 0x52454E44, level, batch]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


# --------------------------------------------------------------------------- set-up


@dataclass
class _Context:
    cfg: Config
    run: RunDir
    grid: _Grid
    log: logging.Logger
    batch_size: int
    acts: Any = None
    _units: dict[str, _Unit] | None = None
    device: dict[str, Any] = field(default_factory=dict)  # device_record of this process (state/render/device.json)
    device_checked: bool = False

    @property
    def units(self) -> dict[str, _Unit]:
        """The units of the selected levels, planned with the batch size the render group records
        (so ``batch_size: auto`` gives every process the same units)."""
        if self._units is None:
            bs = RenderOutput.open(self.run).batch_size if RenderOutput.exists(self.run) else self.batch_size
            units = plan_units({s: len(lvl.cells) for s, lvl in self.grid.levels.items()}, bs,
                               _selected_levels(self.cfg, self.grid))
            self._units = {u.name: u for u in units}
        return self._units


def _settings(cfg: Config) -> dict[str, Any]:
    return {"seed": cfg.seed, "model": cfg.model.network_settings(), "render": cfg.render.model_dump(mode="json", include=set(_PIXEL_KEYS))}


def level_icon_sizes(cfg: Config, sizes: list[int]) -> dict[int, int]:
    """Icon side per grid size: ``render.icon_size`` at the finest grid, larger on coarser ones
    (``render.icon_growth``, ``render.icon_sizes``). Depends on the grid's sizes only, so levels
    added later to ``render.levels`` get the size they would have had."""
    unknown = sorted(set(cfg.render.icon_sizes or {}) - set(sizes))
    if unknown:
        raise ValueError(f"render.icon_sizes names grid sizes {unknown} that the grid does not have ({sorted(sizes)})")
    return {s: cfg.render.level_icon_size(s, max(sizes)) for s in sorted(sizes)}


def _resolve_batch_size(ctx: _Context) -> int:
    """``render.batch_size``, or for ``auto`` :func:`auto_batch_size` of the icons of the largest icon
    side that fit the free GPU memory (:func:`~atlas.ops.inversion.fit_batch_size`) and the grid's cells."""
    bs = ctx.cfg.render.batch_size
    if bs != "auto":
        return int(bs)
    if ctx.acts is None:
        ctx.acts = _layer_activations(ctx.cfg, ctx.grid)
    side = max(level_icon_sizes(ctx.cfg, list(ctx.grid.levels)).values())
    fit = fit_batch_size(ctx.acts, side, restarts=ctx.cfg.render.restarts)
    cells = sum(len(lvl.cells) for lvl in ctx.grid.levels.values())
    bs = auto_batch_size(fit, cells)
    ctx.log.info("render.batch_size auto: %d (%s; at most %d units' worth of %d cells)", bs,
                 f"{fit} icons fit the free GPU memory" if fit else f"{CPU_BATCH} off CUDA", AUTO_UNITS, cells)
    return bs


def _create_group(ctx: _Context) -> None:
    cfg, run, grid = ctx.cfg, ctx.run, ctx.grid
    r = cfg.render
    bs = _resolve_batch_size(ctx)
    sides = level_icon_sizes(cfg, list(grid.levels))
    cells = {s: lvl.cells for s, lvl in grid.levels.items()}
    create_render(run, cells, sides, grid.channels, bs, {
        "model": cfg.model.name, "layer": cfg.model.layer, "seed": cfg.seed, "sizes": list(grid.levels),
        "n_cells": {str(s): len(lvl.cells) for s, lvl in grid.levels.items()}, "channels": grid.channels,
        **{k: getattr(r, k) for k in _PIXEL_KEYS if k not in ("icon_sizes", "batch_size")}, "batch_size": bs,
        "batch_size_setting": r.batch_size, "min_count": cfg.grid.min_count,
        "icon_sizes": {str(s): px for s, px in sides.items()},
    })
    ctx._units = None


def _selected_levels(cfg: Config, grid: _Grid) -> list[int]:
    if cfg.render.levels is None:
        return sorted(grid.levels)
    bad = [s for s in cfg.render.levels if s not in grid.levels]
    if bad:
        raise ValueError(f"render.levels {bad} are not grid levels; the grid has {sorted(grid.levels)} "
                         "(set render.levels to some of them, or null for all)")
    return sorted(set(cfg.render.levels))


def _open(job: Job) -> _Context:
    from ..models import pin_threads, resolve_device
    from ._device import device_record

    cfg = job.cfg
    pin_threads(cfg.render.threads)
    grid = _read_grid(cfg, job.run)
    _selected_levels(cfg, grid)  # a bad render.levels fails here, before any work
    bs = CPU_BATCH if cfg.render.batch_size == "auto" else int(cfg.render.batch_size)
    device = device_record(resolve_device(cfg.model.device), autocast=True)  # LayerActivations' bf16 autocast on CUDA
    return _Context(cfg, job.run, grid, job.log, bs, device=device)


def _layer_activations(cfg: Config, grid: _Grid) -> Any:
    from ..models import load_network, resolve_device
    from ..models._activations import LayerActivations

    net = load_network(cfg.model)
    device = resolve_device(cfg.model.device)
    acts = LayerActivations(net, cfg.model.layer, device, channels_last=device.type == "cuda")
    if acts.shape[0] != grid.channels:
        raise StoreError(f"the grid holds {grid.channels}-channel directions but layer `{cfg.model.layer}` of "
                         f"`{cfg.model.name}` has {acts.shape[0]} channels: render with the model and layer the grid was built from")
    return acts


# --------------------------------------------------------------------------- feature accentuation


def example_patches(run: RunDir, rows: np.ndarray, positions: np.ndarray, size: int, *, window: float,
                    images: DecodeLimits) -> tuple[torch.Tensor, list[int]]:
    """Each cell's dataset-example patch: collect row ``rows[i]``'s crop (:func:`atlas.formats.example_crop`,
    the crop the viewer shows: ``window`` layer cells around its sampled position ``positions[i]`` (y, x),
    decoded with the run's ``images`` limits) resized to ``size``: float32 [n, 3, size, size] in [0, 1],
    and the indices whose image could not be read (those are mid-grey)."""
    from PIL import Image

    col = CollectOutput.open(run)
    (lh, lw), in_size = col.layer_grid, col.input_size
    manifest = run_manifest(run.root)
    out, failed = np.full((len(rows), size, size, 3), 0.5, np.float32), list[int]()
    for i, (row, (y, x)) in enumerate(zip(rows.tolist(), positions.tolist())):
        crop = example_crop(manifest, int(row), (int(y), int(x)), (lh, lw), in_size, window, images)
        if crop.pixels is None:  # a source gone since collect: start that icon from grey
            failed.append(i)
            continue
        patch = Image.fromarray(crop.pixels).resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(patch, dtype=np.float32) / 255.0
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), failed


def _init_images(ctx: _Context, unit: _Unit, side: int) -> torch.Tensor | None:
    """The unit's starting images for ``render.init: example`` (None for noise)."""
    if ctx.cfg.render.init != "example":
        return None
    lvl = ctx.grid.levels[unit.level]
    if lvl.examples is None:
        raise StoreError(f"{GridOutput.open(ctx.run).path} has no dataset examples (grid.examples = 0): "
                         "set render.init=noise or rerun `atlas grid` with examples")
    assert lvl.example_positions is not None  # read with the examples
    rows, pos = lvl.examples[unit.lo:unit.hi], lvl.example_positions[unit.lo:unit.hi]
    init, failed = example_patches(ctx.run, rows, pos, side, window=ctx.cfg.tile.example_window,
                                   images=ctx.cfg.images)
    if failed:
        ctx.log.warning("%s: %d example images could not be read; those icons start from grey", unit.name, len(failed))
    return init


# --------------------------------------------------------------------------- running


def _run_unit(ctx: _Context, unit: _Unit, on_step: Callable[[int], None]) -> dict[str, Any]:
    cfg, lvl = ctx.cfg, ctx.grid.levels[unit.level]
    t0 = time.time()
    gen = torch.Generator().manual_seed(unit_seed(cfg.seed, unit.level, unit.batch))
    s = None if ctx.grid.whitening is None else torch.from_numpy(ctx.grid.whitening)
    side = level_icon_sizes(cfg, list(ctx.grid.levels))[unit.level]
    res = render_icons(ctx.acts, torch.from_numpy(lvl.targets[unit.lo:unit.hi]), cfg.render, generator=gen,
                       whitening=s, on_step=on_step, init_images=_init_images(ctx, unit, side), icon_size=side)
    ranks = own_rank(torch.from_numpy(res.activation), torch.from_numpy(lvl.targets),
                     torch.arange(unit.lo, unit.hi)).numpy().astype(np.int32)
    write_render_rows(ctx.run, unit.level, unit.lo, unit.hi,
                      RenderRows(res.icons, res.objective, res.cossim, ranks, res.activation))
    return {"level": unit.level, "batch": unit.batch, "cells": [unit.lo, unit.hi],
            "median_cossim": float(np.median(res.cossim)), "retrieval@1": float(np.mean(ranks <= 1)),
            "seconds": round(time.time() - t0, 3)}


def _step_counter(bar: Any, m: int, steps: int) -> Callable[[int], None]:
    """An ``on_step`` callback advancing ``bar`` by ``m`` icons spread over ``steps`` steps."""
    def on_step(step: int) -> None:
        bar.update((step + 1) * m // steps - step * m // steps)

    return on_step


def _run_units(ctx: _Context, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    todo = [ctx.units[n] for n in names]
    steps = ctx.cfg.render.steps
    bar = progress(total=sum(u.size for u in todo), desc="render", unit="icon")
    if ctx.acts is None:
        ctx.acts = _layer_activations(ctx.cfg, ctx.grid)
    t0, icons = time.time(), 0
    for unit in todo:
        m = unit.size  # the bar advances by whole icons, spread over the steps
        info = _run_unit(ctx, unit, _step_counter(bar, m, steps))
        icons += m
        ctx.log.info("%s done: %s, median faithfulness %.3f, retrieval@1 %.2f (%.2f icons/s)", unit.name,
                     plural(m, "icon"), info["median_cossim"], info["retrieval@1"], icons / max(time.time() - t0, 1e-9))
        yield unit.name, info
    bar.close()


def faithfulness_summary(cossim: np.ndarray) -> dict[str, Any]:
    """n, median, p10, p90 and mean of the rendered icons' cosines (NaN = not rendered, ignored)."""
    c = cossim[np.isfinite(cossim)].astype(np.float64)
    if c.size == 0:
        return {"n": 0, "median": None, "p10": None, "p90": None, "mean": None}
    p10, med, p90 = np.percentile(c, [10, 50, 90])
    return {"n": int(c.size), "median": round(float(med), 6), "p10": round(float(p10), 6),
            "p90": round(float(p90), 6), "mean": round(float(c.mean()), 6)}


def distinctness_summary(rank: np.ndarray) -> dict[str, Any]:
    """n, retrieval@1, retrieval@5 and median rank of the rendered icons' own-cell ranks
    (rank int [n], 0 = not rendered, ignored), out of ``candidates`` cells."""
    r = torch.from_numpy(rank[rank > 0].astype(np.int64))
    if r.numel() == 0:
        return {"n": 0, "candidates": int(rank.size), "retrieval@1": None, "retrieval@5": None, "median_rank": None}
    return {"n": int(r.numel()), "candidates": int(rank.size), "retrieval@1": round(retrieval_at(r, 1), 6),
            "retrieval@5": round(retrieval_at(r, 5), 6), "median_rank": float(r.double().median())}


def _rank(render: RenderOutput, s: int) -> np.ndarray:
    """int32 [n]: level ``s``'s ranks (empty in a render made before they were stored)."""
    rank = render.level(s).rank
    return np.zeros(0, np.int32) if rank is None else np.asarray(rank[...])


def _level_summaries(render: RenderOutput, sizes: list[int]) -> tuple[dict[str, Any], dict[str, Any]]:
    faith = {str(s): faithfulness_summary(np.asarray(render.level(s).cossim[...])) for s in sizes}
    dist = {str(s): distinctness_summary(_rank(render, s)) for s in sizes}
    return faith, dist


def _summarize(ctx: _Context) -> dict[str, Any]:
    """Store the faithfulness and distinctness of every level with rendered icons and log them."""
    faith, dist = _level_summaries(RenderOutput.open(ctx.run), sorted({u.level for u in ctx.units.values()}))
    write_render_summaries(ctx.run, faith, dist)
    for s, st in faith.items():
        if st["n"]:
            d = dist[s]
            ctx.log.info("level %s: %d icons, faithfulness median %.3f (p10 %.3f, p90 %.3f), distinctness among %d "
                         "cells: retrieval@1 %.2f, @5 %.2f", s, st["n"], st["median"], st["p10"], st["p90"],
                         d["candidates"], d["retrieval@1"], d["retrieval@5"])
    return {"median_cossim": {s: st["median"] for s, st in faith.items()},
            "retrieval@1": {s: d["retrieval@1"] for s, d in dist.items()}}


class RenderStage(StageBase[_Context]):
    """Stage 4: feature inversion, one icon per non-empty grid cell -> ``RUN/render``."""

    name = NAME
    inputs = ("grid",)
    execution = "shards"
    wants_gpu = True
    on_change = "refuse"
    lease_window = 1
    resources = Resources(tasks=16, time="08:00:00", cpus=8, mem="32G", gpus=1)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return _settings(cfg)

    def scope(self, cfg: Config, done: frozenset[str]) -> list[int] | None:
        """The levels asked for (``render.levels``): more may be added later without a redo."""
        return None if cfg.render.levels is None else sorted(set(cfg.render.levels))

    def open(self, job: Job) -> _Context:
        return _open(job)

    def create(self, ctx: _Context) -> None:
        _create_group(ctx)

    def units(self, ctx: _Context) -> list[str]:
        return list(ctx.units)

    def run_units(self, ctx: _Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        if not ctx.device_checked:  # before this process writes icons: no bf16-rendered icons among float32 ones
            from ._device import check_device

            check_device(ctx.run, NAME, ctx.device, ctx.log, ctx.cfg)
            ctx.device_checked = True
        yield from _run_units(ctx, units)

    def provenance(self, ctx: _Context) -> dict[str, Any]:
        return {"render_device": ctx.device}

    def finish(self, ctx: _Context) -> dict[str, Any]:
        return _summarize(ctx)

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Icons, icon size, units done per level, median faithfulness and retrieval@1 per level."""
        render = RenderOutput.open(run)
        n_cells = render.n_cells
        units = plan_units(n_cells, render.batch_size)
        done = run.done_units(NAME)
        level_units = {}
        for s in sorted(n_cells):
            mine = [u for u in units if u.level == s]
            level_units[str(s)] = f"{sum(u.name in done for u in mine)}/{len(mine)}"
        faith, dist = _level_summaries(render, sorted(n_cells))
        return {"icons": sum(n_cells.values()), "icon_size": render.icon_size, "level_units": level_units,
                "median_cossim": {s: st["median"] for s, st in faith.items()},
                "retrieval@1": {s: d["retrieval@1"] for s, d in dist.items()},
                "retrieval@5": {s: d["retrieval@5"] for s, d in dist.items()}}


STAGE = RenderStage()
