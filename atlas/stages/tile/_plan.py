"""The tile stage's plan: settings, the units of work (their names), the example rows, and the
:class:`~._context.Context` a job opens with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config
from ...formats import GridLevel, GridOutput
from ...ops.dzi import level_size, max_level, tile_counts
from ...store import RunDir, atomic_save_npz, atomic_write_text
from ...viewer_assets import openseadragon_dir
from .._protocol import Job
from ._context import BASE_PX, HEAT_BLOCK, NAME, Context, sheet_cols
from ._inputs import Inputs, read_inputs


def output_settings(cfg: Config) -> dict[str, Any]:
    """Tile settings that change the output (every ``tile.*`` key)."""
    return cfg.tile.model_dump(mode="json")


def example_sizes(sizes: list[int], example_levels: int | None) -> list[int]:
    """Grid sizes whose cells get example crops: the finest ``example_levels`` (None: all)."""
    if example_levels is None:
        return list(sizes)
    return list(sizes[len(sizes) - example_levels:]) if example_levels else []


def level_examples(gl: GridLevel) -> tuple[np.ndarray, np.ndarray]:
    """Grid level ``gl``'s examples int64 [s, s, E] and their positions int64 [s, s, E, 2] (E = 0 when
    the grid stored none)."""
    ex, pos = gl.examples, gl.example_positions
    if ex is None or pos is None:
        s = gl.size
        return np.zeros((s, s, 0), np.int64), np.zeros((s, s, 0, 2), np.int64)
    return np.asarray(ex[:], dtype=np.int64), np.asarray(pos[:], dtype=np.int64)


def example_rows(run: RunDir, inp: Inputs, ex_sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique collect rows shown as examples (non-empty cells of ``ex_sizes``) and their (y, x)."""
    grid = GridOutput.open(run)
    rows_l, pos_l = [np.zeros(0, np.int64)], [np.zeros((0, 2), np.int64)]
    for s in ex_sizes:
        ex, pos = level_examples(grid.level(s))
        keep = (inp.count[s] >= inp.min_count)[:, :, None] & (ex >= 0)
        rows_l.append(ex[keep])
        pos_l.append(pos[keep])
    rows, pos = np.concatenate(rows_l), np.concatenate(pos_l)
    uniq, first = np.unique(rows, return_index=True)
    return uniq, pos[first]


def make_plan(cfg: Config, run: RunDir, inp: Inputs) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(plan, example rows, their positions). The plan's units, in order: ``tiles-<SSSS>-<LL>-<RRRRRR>``
    (grid s, its pyramid's level LL, first tile row; finest grid and top levels first; per grid the
    last one paints its base level, the highest at most ``BASE_PX`` wide, and every level below),
    ``icons-<SSSS>-<KKKK>``, ``heat-<SSSS>-<KKKK>``, ``examples-<KKKKKK>``."""
    t = cfg.tile
    units: list[dict[str, Any]] = []
    n_tiles = 0
    pyramids: dict[str, dict[str, int]] = {}
    for s in reversed(inp.sizes):
        w = inp.canvas(s)
        top = max_level(w, w)
        base = next(lv for lv in range(top, -1, -1) if level_size(w, w, lv)[0] <= BASE_PX)
        pyramids[str(s)] = {"width": w, "height": w, "max_level": top, "icon_size": inp.icon_sizes[s], "base_level": base}
        n_tiles += sum(tile_counts(*level_size(w, w, lv), t.tile_size)[0] * tile_counts(*level_size(w, w, lv), t.tile_size)[1]
                       for lv in range(top + 1))
        for lv in range(top, base, -1):
            lw, lh = level_size(w, w, lv)
            cols, rows = tile_counts(lw, lh, t.tile_size)
            per = max(1, t.unit_tiles // cols)
            for r0 in range(0, rows, per):
                units.append({"name": f"tiles-{s:04d}-{lv:02d}-{r0:06d}", "size": s, "level": lv,
                              "rows": [r0, min(rows, r0 + per)]})
        _, rows = tile_counts(*level_size(w, w, base), t.tile_size)  # the base level and every level below it
        units.append({"name": f"tiles-{s:04d}-{base:02d}-000000", "size": s, "level": base, "rows": [0, rows],
                      "base": True})
    for s in inp.sizes:
        n_icons = int((inp.index[s] >= 0).sum())
        for k in range(-(-n_icons // sheet_cols(inp.icon_sizes[s]) ** 2)):
            units.append({"name": f"icons-{s:04d}-{k:04d}", "size": s, "part": k})
    for s in inp.sizes:
        for k in range(-(-inp.n_classes // HEAT_BLOCK)):
            units.append({"name": f"heat-{s:04d}-{k:04d}", "size": s, "part": k})
    ex_sizes = example_sizes(inp.sizes, t.example_levels)
    rows_ex, pos_ex = example_rows(run, inp, ex_sizes)
    for k in range(-(-len(rows_ex) // t.examples_per_unit)):
        units.append({"name": f"examples-{k:06d}", "part": k})
    plan = {"width": inp.width, "height": inp.height, "sizes": inp.sizes, "icon_size": inp.icon,
            "icon_sizes": {str(s): inp.icon_sizes[s] for s in inp.sizes}, "pyramids": pyramids,
            "levels": sum(p["max_level"] + 1 for p in pyramids.values()), "tiles": n_tiles,
            "class_kind": inp.class_kind, "n_classes": inp.n_classes, "heat_block": HEAT_BLOCK,
            "example_sizes": ex_sizes, "n_examples": int(len(rows_ex)),
            "settings": output_settings(cfg), "units": units}
    return plan, rows_ex, pos_ex


def unit_tile_count(plan: dict[str, Any], unit: dict[str, Any]) -> int:
    """How many tiles a unit paints (0 for icon sheets, heat and examples)."""
    if not unit["name"].startswith("tiles-"):
        return 0
    w, tile = plan["pyramids"][str(unit["size"])]["width"], plan["settings"]["tile_size"]
    cols, _ = tile_counts(*level_size(w, w, unit["level"]), tile)
    n = int((unit["rows"][1] - unit["rows"][0]) * cols)
    if unit.get("base"):
        n += sum(c * r for c, r in (tile_counts(*level_size(w, w, lv), tile) for lv in range(unit["level"])))
    return n


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
    plan: dict[str, Any] = json.loads(plan_path(run).read_text())
    return plan
