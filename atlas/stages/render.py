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
its rows (one chunk of each array), then its done marker.

A cell is rendered when its count is at least ``grid.min_count`` and its mean activation
is finite and not zero; cells are taken row-major, level by level.

``faithfulness``: the cosine between the activation of the final, quantised icon (no
transforms, reduced as configured) and its cell's (unwhitened) mean activation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr

from ..config import Config, RenderConfig
from ..ops.objectives import cosine, direction_cossim, whiten
from ..ops.param import fft_image
from ..ops.transforms import Transform, compose, standard_transforms
from ..progress import progress, stage_logger
from ..store import RunDir, StoreError
from ._base import StageStatus, my_units, save_run_config

__all__ = ["STAGE", "run", "status", "finished", "plan_units", "unit_name", "unit_seed", "render_icons", "RenderResult",
           "make_transforms", "check_settings", "faithfulness_summary"]

STAGE = "render"
GRID = "grid"

# Settings that change an icon's pixels: a rerun with other values would mix two runs.
_PIXEL_KEYS = ("icon_size", "steps", "batch_size", "restarts", "lr", "cossim_power", "whiten", "reduce",
               "cossim_floor", "decay_power", "init_sd", "transforms", "polish")


# --------------------------------------------------------------------------- the renderer


@dataclass
class RenderResult:
    """Icons of one batch: icons uint8 [n, S, S, 3], objective float32 [n], cossim float32 [n]."""

    icons: np.ndarray
    objective: np.ndarray
    cossim: np.ndarray


def check_settings(settings: RenderConfig) -> None:
    """ValueError naming the key for render settings out of range (the schema checks only types)."""
    if not 0.0 <= settings.polish <= 1.0:
        raise ValueError(f"render.polish must be a fraction in [0, 1], got {settings.polish}")
    if settings.lr <= 0 or settings.init_sd < 0 or settings.cossim_floor < 0:
        raise ValueError("render.lr must be positive and render.init_sd, render.cossim_floor not negative; "
                         f"got {settings.lr}, {settings.init_sd}, {settings.cossim_floor}")
    if settings.icon_size < 8:
        raise ValueError(f"render.icon_size must be at least 8 pixels, got {settings.icon_size}")


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
    check_settings(settings)
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
    digest: str


def _read_level(g: zarr.Group, size: int, min_count: int) -> _Level:
    count = np.asarray(g[f"level-{size}/count"][...])
    mean = np.asarray(g[f"level-{size}/mean_activation"][...], dtype=np.float32)
    keep = (count >= min_count) & np.isfinite(mean).all(axis=2) & (np.abs(mean).sum(axis=2) > 0)
    rows, cols = np.nonzero(keep)  # row-major: the order of icons in the level's arrays
    return _Level(size, np.stack([rows, cols], axis=1).astype(np.int32), mean[rows, cols])


def _read_grid(cfg: Config, run: RunDir) -> _Grid:
    """Non-empty cells and targets of every grid level (+ S when whitening), and their digest."""
    if not run.has_group(GRID) or not run.is_done(GRID, "done"):
        raise StoreError(f"{run.stage_path(GRID)} is missing or unfinished: run `atlas grid` before `atlas render`")
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
    h = hashlib.sha256()
    for s, lvl in levels.items():
        h.update(f"{s}:".encode() + lvl.cells.tobytes() + lvl.targets.tobytes())
    if whitening is not None:
        h.update(whitening.tobytes())
    return _Grid(levels, whitening, channels, h.hexdigest()[:16])


# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class _Unit:
    name: str
    level: int
    batch: int
    lo: int
    hi: int


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
    acts: Any = None

    @property
    def group(self) -> zarr.Group:
        return self.run.open_group(STAGE, mode="r+")


def _fingerprint(cfg: Config, grid: _Grid) -> str:
    model = {k: v for k, v in vars(cfg.model).items() if k != "device"}
    d = {"seed": cfg.seed, "model": model, "grid": grid.digest,
         "render": {k: getattr(cfg.render, k) for k in _PIXEL_KEYS}}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _create_group(cfg: Config, run: RunDir, grid: _Grid) -> None:
    r, s_px, bs = cfg.render, cfg.render.icon_size, cfg.render.batch_size
    tmp = run.root / f".{STAGE}.creating"
    shutil.rmtree(tmp, ignore_errors=True)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for s, lvl in grid.levels.items():
        n = len(lvl.cells)
        sub = g.create_group(f"level-{s}")
        sub.create_array("icons", shape=(n, s_px, s_px, 3), chunks=(bs, s_px, s_px, 3), dtype="uint8", fill_value=0,
                         dimension_names=("icon", "y", "x", "rgb"))
        cells = sub.create_array("cells", shape=(n, 2), chunks=(bs, 2), dtype="int32", fill_value=-1,
                                 dimension_names=("icon", "rc"))
        sub.create_array("objective", shape=(n,), chunks=(bs,), dtype="float32", fill_value=np.nan, dimension_names=("icon",))
        sub.create_array("cossim", shape=(n,), chunks=(bs,), dtype="float32", fill_value=np.nan, dimension_names=("icon",))
        if n:
            cells[...] = lvl.cells
        sub.attrs.update({"grid_size": s, "n_cells": n, "n_units": -(-n // bs)})
    g.attrs.update({
        "model": cfg.model.name, "layer": cfg.model.layer, "seed": cfg.seed, "sizes": list(grid.levels),
        "n_cells": {str(s): len(lvl.cells) for s, lvl in grid.levels.items()}, "channels": grid.channels,
        **{k: getattr(r, k) for k in _PIXEL_KEYS}, "min_count": cfg.grid.min_count,
        "fingerprint": _fingerprint(cfg, grid), "grid_digest": grid.digest,
    })
    os.replace(tmp, run.stage_path(STAGE))  # the group appears whole or not at all


def _selected_levels(cfg: Config, grid: _Grid) -> list[int]:
    if cfg.render.levels is None:
        return sorted(grid.levels)
    bad = [s for s in cfg.render.levels if s not in grid.levels]
    if bad:
        raise ValueError(f"render.levels {bad} are not grid levels; the grid has {sorted(grid.levels)} "
                         "(set render.levels to some of them, or null for all)")
    return sorted(set(cfg.render.levels))


def _prepare(cfg: Config, run: RunDir, shard: tuple[int, int]) -> _Context:
    log = stage_logger(run.root, STAGE, shard)
    grid = _read_grid(cfg, run)
    with run.stage_lock(STAGE):
        if run.has_group(STAGE):
            if run.open_group(STAGE).attrs.get("fingerprint") != _fingerprint(cfg, grid):
                raise StoreError(
                    f"{run.stage_path(STAGE)} was rendered with other settings (seed, model, grid, or render "
                    f"{'/'.join(_PIXEL_KEYS)} differ); use a new run_dir, or delete that folder to render again")
        else:
            if not (run.root / "config.yaml").exists():  # keep the provenance earlier stages wrote
                save_run_config(cfg, run)
            _create_group(cfg, run, grid)
    return _Context(cfg, run, grid, log)


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
    res = render_icons(ctx.acts, torch.from_numpy(lvl.targets[unit.lo:unit.hi]), cfg.render, generator=gen,
                       whitening=s, on_step=on_step)
    sub = ctx.group[f"level-{unit.level}"]
    sub["icons"][unit.lo:unit.hi] = res.icons
    sub["objective"][unit.lo:unit.hi] = res.objective
    sub["cossim"][unit.lo:unit.hi] = res.cossim
    info = {"level": unit.level, "batch": unit.batch, "cells": [unit.lo, unit.hi],
            "median_cossim": float(np.median(res.cossim)), "seconds": round(time.time() - t0, 3)}
    ctx.run.mark_done(STAGE, unit.name, info)
    return info


def _run_units(ctx: _Context, todo: list[_Unit]) -> None:
    steps = ctx.cfg.render.steps
    bar = progress(total=sum(u.hi - u.lo for u in todo), desc="render", unit="icon")
    t0, icons = time.time(), 0
    for unit in todo:
        with ctx.run.lease(STAGE, unit.name) as mine:
            if not mine or ctx.run.is_done(STAGE, unit.name):
                ctx.log.info("%s is held by another process or done; skipping", unit.name)
                bar.total -= unit.hi - unit.lo
                continue
            if ctx.acts is None:
                ctx.acts = _layer_activations(ctx.cfg, ctx.grid)
            m = unit.hi - unit.lo  # the bar advances by whole icons, spread over the steps
            info = _run_unit(ctx, unit, lambda step: bar.update((step + 1) * m // steps - step * m // steps))
        icons += m
        rate = icons / max(time.time() - t0, 1e-9)
        ctx.log.info("%s done: %d icons, median cossim %.3f (%.2f icons/s)", unit.name, m,
                     info["median_cossim"], rate)
    bar.close()


def faithfulness_summary(cossim: np.ndarray) -> dict[str, Any]:
    """n, median, p10, p90 and mean of the rendered icons' cosines (NaN = not rendered, ignored)."""
    c = cossim[np.isfinite(cossim)].astype(np.float64)
    if c.size == 0:
        return {"n": 0, "median": None, "p10": None, "p90": None, "mean": None}
    p10, med, p90 = np.percentile(c, [10, 50, 90])
    return {"n": int(c.size), "median": round(float(med), 6), "p10": round(float(p10), 6),
            "p90": round(float(p90), 6), "mean": round(float(c.mean()), 6)}


def _summarize(ctx: _Context) -> None:
    """Store the faithfulness of every level whose units are all done (once) and log it."""
    n_cells = {s: len(lvl.cells) for s, lvl in ctx.grid.levels.items()}
    with ctx.run.stage_lock(STAGE):
        done = ctx.run.done_units(STAGE)
        g = ctx.group
        summary = dict(g.attrs.get("faithfulness", {}))
        new = {}
        for s in sorted(n_cells):
            if str(s) in summary or not all(u.name in done for u in plan_units(n_cells, ctx.cfg.render.batch_size, [s])):
                continue
            new[str(s)] = faithfulness_summary(np.asarray(g[f"level-{s}/cossim"][...]))
        if new:
            g.attrs["faithfulness"] = {**summary, **new}
            summary.update(new)
    for s, st in sorted(summary.items(), key=lambda kv: int(kv[0])):
        if st["n"]:
            ctx.log.info("level %s: %d icons, faithfulness cossim median %.3f (p10 %.3f, p90 %.3f)",
                         s, st["n"], st["median"], st["p10"], st["p90"])


def run(cfg: Config, *, shard: tuple[int, int] = (0, 1)) -> None:
    """Render this shard's unfinished units; store the faithfulness of each finished level."""
    check_settings(cfg.render)
    run_dir = RunDir(cfg.run_dir)
    from ..models import pin_threads

    pin_threads(cfg.render.threads)
    ctx = _prepare(cfg, run_dir, shard)
    levels = _selected_levels(cfg, ctx.grid)
    units = plan_units({s: len(lvl.cells) for s, lvl in ctx.grid.levels.items()}, cfg.render.batch_size, levels)
    mine = my_units(units, shard)
    done = run_dir.done_units(STAGE)
    todo = [u for u in mine if u.name not in done]
    ctx.log.info("shard %d/%d: %d of its %d units to do (levels %s, %d icons of %d px, %d steps, restarts %d)",
                 shard[0], shard[1], len(todo), len(mine), levels, sum(u.hi - u.lo for u in todo),
                 cfg.render.icon_size, cfg.render.steps, cfg.render.restarts)
    if todo:
        _run_units(ctx, todo)
    _summarize(ctx)


def status(run: RunDir) -> StageStatus:
    """Units done / total and the median faithfulness (cossim) of the rendered icons per level."""
    if not run.has_group(STAGE):
        return StageStatus(STAGE, 0, None)
    g = run.open_group(STAGE)
    n_cells = {int(s): int(n) for s, n in g.attrs["n_cells"].items()}
    units = plan_units(n_cells, int(g.attrs["batch_size"]))
    done = run.done_units(STAGE)
    level_units, median = {}, {}
    for s in sorted(n_cells):
        mine = [u for u in units if u.level == s]
        level_units[str(s)] = f"{sum(u.name in done for u in mine)}/{len(mine)}"
        median[str(s)] = faithfulness_summary(np.asarray(g[f"level-{s}/cossim"][...]))["median"]
    detail = {"icons": sum(n_cells.values()), "icon_size": g.attrs["icon_size"], "level_units": level_units,
              "median_cossim": median}
    return StageStatus(STAGE, sum(u.name in done for u in units), len(units), detail)


def finished(run: RunDir, cfg: Config | None = None) -> bool:
    """Every unit of the levels ``cfg.render.levels`` selects (all without ``cfg``) is done."""
    if not run.has_group(STAGE):
        return False
    g = run.open_group(STAGE)
    n_cells = {int(s): int(n) for s, n in g.attrs["n_cells"].items()}
    levels = None if cfg is None or cfg.render.levels is None else [s for s in cfg.render.levels if s in n_cells]
    done = run.done_units(STAGE)
    return all(u.name in done for u in plan_units(n_cells, int(g.attrs["batch_size"]), levels))
