"""The tile stage's plan: settings, the units of work (their names), the example rows, and the
:class:`~._context.Context` a job opens with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config
from ...ops.dzi import level_size, lod_grid_size, max_level, tile_counts
from ...store import RunDir, atomic_save_npz, atomic_write_text
from ...viewer_assets import openseadragon_dir
from .._protocol import Job
from ._context import ICONS_PER_SHEET, NAME, Context
from ._inputs import Inputs, read_inputs


def output_settings(cfg: Config) -> dict[str, Any]:
    """Tile settings that change the output (not ``workers``)."""
    return cfg.tile.model_dump(mode="json", exclude={"workers"})


def example_sizes(sizes: list[int], example_levels: int | None) -> list[int]:
    """Grid sizes whose cells get example crops: the finest ``example_levels`` (None: all)."""
    if example_levels is None:
        return list(sizes)
    return list(sizes[len(sizes) - example_levels:]) if example_levels else []


def example_rows(run: RunDir, inp: Inputs, ex_sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique collect rows shown as examples (non-empty cells of ``ex_sizes``) and their (y, x)."""
    grid = run.open_group("grid")
    rows_l, pos_l = [np.zeros(0, np.int64)], [np.zeros((0, 2), np.int64)]
    for s in ex_sizes:
        ex = np.asarray(grid[f"level-{s}"]["examples"][:], dtype=np.int64)
        pos = np.asarray(grid[f"level-{s}"]["example_positions"][:], dtype=np.int64)
        keep = (inp.count[s] >= inp.min_count)[:, :, None] & (ex >= 0)
        rows_l.append(ex[keep])
        pos_l.append(pos[keep])
    rows, pos = np.concatenate(rows_l), np.concatenate(pos_l)
    uniq, first = np.unique(rows, return_index=True)
    return uniq, pos[first]


def make_plan(cfg: Config, run: RunDir, inp: Inputs) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(plan, example rows, their positions). The plan's units, in order: ``tiles-<LL>-<RRRRRR>``
    (top level first), ``icons-<SSSS>-<KKKK>``, ``examples-<KKKKKK>``."""
    t = cfg.tile
    w, h = inp.width, inp.height
    top = max_level(w, h)
    lod = [lod_grid_size(inp.sizes, lv, top, t.lod_fraction) for lv in range(top + 1)]
    units: list[dict[str, Any]] = []
    n_tiles = 0
    for lv in range(top, -1, -1):
        lw, lh = level_size(w, h, lv)
        cols, rows = tile_counts(lw, lh, t.tile_size)
        n_tiles += cols * rows
        per = max(1, t.unit_tiles // cols)
        for r0 in range(0, rows, per):
            units.append({"name": f"tiles-{lv:02d}-{r0:06d}", "level": lv, "rows": [r0, min(rows, r0 + per)]})
    for s in inp.sizes:
        n_icons = int((inp.index[s] >= 0).sum())
        for k in range(-(-n_icons // ICONS_PER_SHEET)):
            units.append({"name": f"icons-{s:04d}-{k:04d}", "size": s, "part": k})
    ex_sizes = example_sizes(inp.sizes, t.example_levels)
    rows_ex, pos_ex = example_rows(run, inp, ex_sizes)
    for k in range(-(-len(rows_ex) // t.examples_per_unit)):
        units.append({"name": f"examples-{k:06d}", "part": k})
    plan = {"width": w, "height": h, "max_level": top, "sizes": inp.sizes, "icon_size": inp.icon,
            "lod": lod, "tiles": n_tiles, "example_sizes": ex_sizes, "n_examples": int(len(rows_ex)),
            "settings": output_settings(cfg), "units": units}
    return plan, rows_ex, pos_ex


def unit_tile_count(plan: dict[str, Any], unit: dict[str, Any]) -> int:
    """How many tiles a unit paints (0 for icon sheets and examples)."""
    if "level" not in unit:
        return 0
    lw, lh = level_size(plan["width"], plan["height"], unit["level"])
    cols, _ = tile_counts(lw, lh, plan["settings"]["tile_size"])
    return (unit["rows"][1] - unit["rows"][0]) * cols


def plan_path(run: RunDir) -> Path:
    return run.state_path(NAME) / "plan.json"


def open_context(job: Job) -> Context:
    """Read the inputs and plan the units (the viewer's files checked first: fail before any work)."""
    openseadragon_dir()  # fail before any work when the viewer cannot be assembled
    inp = read_inputs(job.cfg, job.run)
    plan, rows, pos = make_plan(job.cfg, job.run, inp)
    return Context(job.cfg, job.run, plan, inp, job.log, (rows, pos))


def save_plan(ctx: Context) -> None:
    """Keep the example rows (``examples.npz``) and the plan (``plan.json``) in ``RUN/state/tile``."""
    assert ctx.examples is not None
    rows, pos = ctx.examples
    atomic_save_npz(ctx.run.state_path(NAME) / "examples.npz", rows=rows, positions=pos)
    atomic_write_text(plan_path(ctx.run), json.dumps(ctx.plan, indent=1, sort_keys=True))


def load_plan(run: RunDir) -> dict[str, Any]:
    """The plan a finished (or started) stage kept."""
    return json.loads(plan_path(run).read_text())
