"""Stage 4, render: one feature-visualisation icon per non-empty grid cell.

Each icon is optimised so that the layer's activation of it points along its cell's
mean activation v (Carter et al. 2019): Lucid's spectral, colour-decorrelated image
parameterisation (:mod:`atlas.ops.param`), Lucid's random transforms
(:mod:`atlas.ops.transforms`) and the objective ``dot(h, v) * max(cos(h, v), 0.1)^p``
(:mod:`atlas.ops.objectives`), maximised with Adam for all icons of a batch at once.
The last ``render.polish`` fraction of the steps runs without transforms, so the icon
is finally optimised as it is stored and scored (faithfulness 0.70 -> 0.77 at 256
steps on real Lite0 targets, with no visible change to the picture).

Unit of work: one batch of ``render.batch_size`` cells of one level,
``level-0016-batch-000003``; ``--shard i/n`` owns units ``i, i+n, ...`` of the list of
all units (levels in increasing size, batches in order). A unit optimises
``batch_size * restarts`` images together and keeps, per icon, the restart with the
best final objective. Its random numbers (initial spectra, transform draws) come from
a generator seeded by ``(seed, level, batch)``, so a rerun after ``kill -9`` or any
shard split gives the same pixels (on the same machine and device). The unit writes
its rows (one chunk of each array); the runner then writes its done marker. Other
settings on an existing render are refused (icons are the expensive part of an atlas); a
redone grid makes the render stale, and ``atlas run`` renders again. ``render.levels`` may
grow between runs: the new levels' units are added to the finished ones.

A cell is rendered when its count is at least ``grid.min_count`` and its mean activation
is finite and not zero; cells are taken row-major, level by level.

``faithfulness``: the cosine between the activation of the final, quantised icon (no
transforms, reduced as configured) and its cell's (unwhitened) mean activation.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr

from ..config import Config, RenderConfig
from ..ops.objectives import cosine, direction_cossim, whiten
from ..ops.param import fft_image
from ..ops.transforms import Transform, compose, standard_transforms
from ..progress import progress
from ..store import RunDir, StoreError
from ._protocol import Job, Resources, StageBase

__all__ = ["STAGE", "RenderStage", "plan_units", "unit_name", "unit_seed", "render_icons", "RenderResult",
           "make_transforms", "faithfulness_summary", "level_icon_sizes"]

NAME = "render"
GRID = "grid"

# Settings that change an icon's pixels: a rerun with other values would mix two runs.
_PIXEL_KEYS = ("icon_size", "steps", "batch_size", "restarts", "lr", "cossim_power", "whiten", "reduce",
               "cossim_floor", "decay_power", "init_sd", "transforms", "polish", "icon_growth", "icon_sizes")


# --------------------------------------------------------------------------- the renderer


@dataclass
class RenderResult:
    """Icons of one batch: icons uint8 [n, S, S, 3], objective float32 [n], cossim float32 [n]."""

    icons: np.ndarray
    objective: np.ndarray
    cossim: np.ndarray


def make_transforms(settings: RenderConfig) -> Transform:
    """The per-step random transforms that ``render.transforms`` names."""
    return compose(standard_transforms() if settings.transforms == "standard" else [])


def _directions(targets: torch.Tensor, whitening: torch.Tensor | None) -> torch.Tensor:
    """Unit-length directions the objective pushes along: targets [n, C] (whitened: S v) -> [n, C]."""
    v = targets if whitening is None else whiten(targets, whitening)
    return v / v.norm(dim=1, keepdim=True).clamp(min=1e-12)


def _score(acts: Any, images: torch.Tensor, v: torch.Tensor, raw: torch.Tensor,
           settings: RenderConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Untransformed images [m, 3, S, S] -> (objective [m], cosine to the raw targets [m])."""
    h = acts(acts.normalize(images)).float()
    obj = direction_cossim(h, v, power=settings.cossim_power, reduce=settings.reduce, floor=settings.cossim_floor)
    return obj, cosine(h, raw, settings.reduce)


def _optimise(acts: Any, params: list[torch.Tensor], image_fn: Callable[[], torch.Tensor], v: torch.Tensor,
              settings: RenderConfig, generator: torch.Generator, on_step: Callable[[int], None] | None) -> None:
    """Adam on the image parameters, maximising the summed objective against directions v [m, C]."""
    opt = torch.optim.Adam(params, lr=settings.lr)
    transform = make_transforms(settings)
    plain_from = settings.steps - round(settings.polish * settings.steps)  # last steps: no transforms
    for step in range(settings.steps):
        opt.zero_grad(set_to_none=True)
        img = image_fn()
        h = acts(acts.normalize(transform(img, generator) if step < plain_from else img)).float()
        obj = direction_cossim(h, v, power=settings.cossim_power, reduce=settings.reduce, floor=settings.cossim_floor)
        (-obj.sum()).backward()
        opt.step()
        if on_step is not None:
            on_step(step)


def render_icons(acts: Any, targets: torch.Tensor, settings: RenderConfig, *, generator: torch.Generator,
                 whitening: torch.Tensor | None = None,
                 on_step: Callable[[int], None] | None = None) -> RenderResult:
    """Optimise one icon per target direction, all in one batch (x ``settings.restarts``).

    acts: a :class:`~atlas.models._activations.LayerActivations` (images -> layer output);
    targets float [n, C] (cell mean activations); whitening [C, C] or None;
    generator: a CPU generator for the initial spectra and the transform draws.
    Image j of the batch of n * restarts renders icon j % n; per icon, the restart with
    the best objective of its final, quantised image is kept.
    """
    device = acts.device
    n, k = targets.shape[0], settings.restarts
    raw = targets.to(device, torch.float32).repeat(k, 1)  # [n * k, C]
    v = _directions(raw, None if whitening is None else whitening.to(device, torch.float32))
    params, image_fn = fft_image(n * k, settings.icon_size, settings.icon_size, decay_power=settings.decay_power,
                                 sd=settings.init_sd, generator=generator, device=device)
    _optimise(acts, params, image_fn, v, settings, generator, on_step)
    with torch.no_grad():
        quantised = torch.round(image_fn() * 255.0) / 255.0
        obj, cos = _score(acts, quantised, v, raw, settings)
    best = obj.view(k, n).argmax(dim=0) * n + torch.arange(n, device=device)
    icons = (quantised[best] * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    return RenderResult(icons.cpu().numpy(), obj[best].cpu().numpy().astype(np.float32),
                        cos[best].cpu().numpy().astype(np.float32))


# --------------------------------------------------------------------------- grid input


@dataclass
class _Level:
    """The non-empty cells of one grid level: cells int32 [n, 2] (row, col), targets float32 [n, C]."""

    size: int
    cells: np.ndarray
    targets: np.ndarray


@dataclass
class _Grid:
    levels: dict[int, _Level]
    whitening: np.ndarray | None
    channels: int


def _read_level(g: zarr.Group, size: int, min_count: int) -> _Level:
    count = np.asarray(g[f"level-{size}/count"][...])
    mean = np.asarray(g[f"level-{size}/mean_activation"][...], dtype=np.float32)
    keep = (count >= min_count) & np.isfinite(mean).all(axis=2) & (np.abs(mean).sum(axis=2) > 0)
    rows, cols = np.nonzero(keep)  # row-major: the order of icons in the level's arrays
    return _Level(size, np.stack([rows, cols], axis=1).astype(np.int32), mean[rows, cols])


def _read_grid(cfg: Config, run: RunDir) -> _Grid:
    """Non-empty cells and targets of every grid level (+ S when whitening)."""
    g = run.open_group(GRID)
    sizes = [int(s) for s in g.attrs.get("sizes", cfg.grid.sizes)]
    missing = [f"level-{s}/{a}" for s in sizes for a in ("count", "mean_activation") if f"level-{s}/{a}" not in g]
    if missing:
        raise StoreError(f"{run.stage_path(GRID)} lacks {', '.join(missing)}: finish `atlas grid` before `atlas render`")
    levels = {s: _read_level(g, s, cfg.grid.min_count) for s in sorted(sizes)}
    channels = int(np.asarray(g[f"level-{sizes[0]}/mean_activation"].shape)[-1])
    whitening = None
    if cfg.render.whiten:
        if "whitening" not in g:
            raise StoreError(f"{run.stage_path(GRID)} has no `whitening` array; rerun `atlas grid` or set render.whiten=false")
        whitening = np.asarray(g["whitening"][...], dtype=np.float64)
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
    out = []
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
    units: dict[str, _Unit]
    acts: Any = None

    @property
    def group(self) -> zarr.Group:
        return self.run.open_group(NAME, mode="r+")


def _settings(cfg: Config) -> dict[str, Any]:
    model = cfg.model.model_dump(mode="json", exclude={"device"})
    return {"seed": cfg.seed, "model": model, "render": cfg.render.model_dump(mode="json", include=set(_PIXEL_KEYS))}


def level_icon_sizes(cfg: Config, sizes: list[int]) -> dict[int, int]:
    """Icon side per grid size: ``render.icon_size`` at the finest grid, larger on coarser ones
    (``render.icon_growth``, ``render.icon_sizes``). Depends on the grid's sizes only, so levels
    added later to ``render.levels`` get the size they would have had."""
    unknown = sorted(set(cfg.render.icon_sizes or {}) - set(sizes))
    if unknown:
        raise ValueError(f"render.icon_sizes names grid sizes {unknown} that the grid does not have ({sorted(sizes)})")
    return {s: cfg.render.level_icon_size(s, max(sizes)) for s in sorted(sizes)}


def _create_group(ctx: _Context) -> None:
    cfg, run, grid = ctx.cfg, ctx.run, ctx.grid
    r, bs = cfg.render, cfg.render.batch_size
    sides = level_icon_sizes(cfg, list(grid.levels))
    tmp = run.root / f".{NAME}.creating"
    shutil.rmtree(tmp, ignore_errors=True)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for s, lvl in grid.levels.items():
        n, s_px = len(lvl.cells), sides[s]
        sub = g.create_group(f"level-{s}")
        sub.create_array("icons", shape=(n, s_px, s_px, 3), chunks=(bs, s_px, s_px, 3), dtype="uint8", fill_value=0,
                         dimension_names=("icon", "y", "x", "rgb"))
        cells = sub.create_array("cells", shape=(n, 2), chunks=(bs, 2), dtype="int32", fill_value=-1,
                                 dimension_names=("icon", "rc"))
        sub.create_array("objective", shape=(n,), chunks=(bs,), dtype="float32", fill_value=np.nan, dimension_names=("icon",))
        sub.create_array("cossim", shape=(n,), chunks=(bs,), dtype="float32", fill_value=np.nan, dimension_names=("icon",))
        if n:
            cells[...] = lvl.cells
        sub.attrs.update({"grid_size": s, "n_cells": n, "n_units": -(-n // bs), "icon_size": s_px})
    g.attrs.update({
        "model": cfg.model.name, "layer": cfg.model.layer, "seed": cfg.seed, "sizes": list(grid.levels),
        "n_cells": {str(s): len(lvl.cells) for s, lvl in grid.levels.items()}, "channels": grid.channels,
        **{k: getattr(r, k) for k in _PIXEL_KEYS if k != "icon_sizes"}, "min_count": cfg.grid.min_count,
        "icon_sizes": {str(s): px for s, px in sides.items()},
    })
    os.replace(tmp, run.stage_path(NAME))  # the group appears whole or not at all


def _selected_levels(cfg: Config, grid: _Grid) -> list[int]:
    if cfg.render.levels is None:
        return sorted(grid.levels)
    bad = [s for s in cfg.render.levels if s not in grid.levels]
    if bad:
        raise ValueError(f"render.levels {bad} are not grid levels; the grid has {sorted(grid.levels)} "
                         "(set render.levels to some of them, or null for all)")
    return sorted(set(cfg.render.levels))


def _open(job: Job) -> _Context:
    from ..models import pin_threads

    cfg = job.cfg
    pin_threads(cfg.render.threads)
    grid = _read_grid(cfg, job.run)
    units = plan_units({s: len(lvl.cells) for s, lvl in grid.levels.items()}, cfg.render.batch_size,
                       _selected_levels(cfg, grid))
    return _Context(cfg, job.run, grid, job.log, {u.name: u for u in units})


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


# --------------------------------------------------------------------------- running


def _run_unit(ctx: _Context, unit: _Unit, on_step: Callable[[int], None]) -> dict[str, Any]:
    cfg, lvl = ctx.cfg, ctx.grid.levels[unit.level]
    t0 = time.time()
    gen = torch.Generator().manual_seed(unit_seed(cfg.seed, unit.level, unit.batch))
    s = None if ctx.grid.whitening is None else torch.from_numpy(ctx.grid.whitening)
    side = level_icon_sizes(cfg, list(ctx.grid.levels))[unit.level]
    res = render_icons(ctx.acts, torch.from_numpy(lvl.targets[unit.lo:unit.hi]),
                       cfg.render.model_copy(update={"icon_size": side}), generator=gen, whitening=s, on_step=on_step)
    sub = ctx.group[f"level-{unit.level}"]
    sub["icons"][unit.lo:unit.hi] = res.icons
    sub["objective"][unit.lo:unit.hi] = res.objective
    sub["cossim"][unit.lo:unit.hi] = res.cossim
    return {"level": unit.level, "batch": unit.batch, "cells": [unit.lo, unit.hi],
            "median_cossim": float(np.median(res.cossim)), "seconds": round(time.time() - t0, 3)}


def _run_units(ctx: _Context, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    todo = [ctx.units[n] for n in names]
    steps = ctx.cfg.render.steps
    bar = progress(total=sum(u.size for u in todo), desc="render", unit="icon")
    if ctx.acts is None:
        ctx.acts = _layer_activations(ctx.cfg, ctx.grid)
    t0, icons = time.time(), 0
    for unit in todo:
        m = unit.size  # the bar advances by whole icons, spread over the steps
        info = _run_unit(ctx, unit, lambda step, m=m: bar.update((step + 1) * m // steps - step * m // steps))
        icons += m
        ctx.log.info("%s done: %d icons, median cossim %.3f (%.2f icons/s)", unit.name, m,
                     info["median_cossim"], icons / max(time.time() - t0, 1e-9))
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


def _summarize(ctx: _Context) -> dict[str, Any]:
    """Store the faithfulness of every level with rendered icons and log it."""
    g = ctx.group
    summary = {str(s): faithfulness_summary(np.asarray(g[f"level-{s}/cossim"][...]))
               for s in sorted({u.level for u in ctx.units.values()})}
    g.attrs["faithfulness"] = summary
    for s, st in summary.items():
        if st["n"]:
            ctx.log.info("level %s: %d icons, faithfulness cossim median %.3f (p10 %.3f, p90 %.3f)",
                         s, st["n"], st["median"], st["p10"], st["p90"])
    return {"median_cossim": {s: st["median"] for s, st in summary.items()}}


class RenderStage(StageBase):
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

    def scope(self, cfg: Config) -> list[int] | None:
        """The levels asked for (``render.levels``): more may be added later without a redo."""
        return None if cfg.render.levels is None else sorted(set(cfg.render.levels))

    def open(self, job: Job) -> _Context:
        return _open(job)

    def create(self, ctx: _Context) -> None:
        _create_group(ctx)

    def units(self, ctx: _Context) -> list[str]:
        return list(ctx.units)

    def run_units(self, ctx: _Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from _run_units(ctx, units)

    def finish(self, ctx: _Context) -> dict[str, Any]:
        return _summarize(ctx)

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Icons, icon size, units done per level, median faithfulness per level."""
        g = run.open_group(NAME)
        n_cells = {int(s): int(n) for s, n in g.attrs["n_cells"].items()}
        units = plan_units(n_cells, int(g.attrs["batch_size"]))
        done = run.done_units(NAME)
        level_units, median = {}, {}
        for s in sorted(n_cells):
            mine = [u for u in units if u.level == s]
            level_units[str(s)] = f"{sum(u.name in done for u in mine)}/{len(mine)}"
            median[str(s)] = faithfulness_summary(np.asarray(g[f"level-{s}/cossim"][...]))["median"]
        return {"icons": sum(n_cells.values()), "icon_size": g.attrs["icon_size"], "level_units": level_units,
                "median_cossim": median}


STAGE = RenderStage()
