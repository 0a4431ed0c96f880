"""Stage 5, tile: a Deep Zoom pyramid of the rendered icons, cell metadata and the web viewer -> ``RUN/tiles``.

Output (``RUN/tiles``, a self-contained static folder: open ``index.html`` from disk or
serve it with ``atlas serve RUN``)::

    atlas.dzi                       Deep Zoom descriptor (Format, Overlap, TileSize, Size)
    atlas_files/<level>/<col>_<row>.<fmt>
    atlas.json / atlas.js           model, layer, image count, sizes, LOD table, class names
    cells-<s>.json / cells-<s>.js   per non-empty cell of grid s: count, top classes, examples, cossim
    icons/<s>/<sheet>.<fmt>         every cell's icon at full size (the click panel), 256 per sheet
    examples/<row>.jpg              crop of collect row ``row`` around its sampled position
    index.html viewer.js viewer.css openseadragon/   the viewer

The ``.js`` twins assign the JSON to globals (``window.ATLAS``, ``window.ATLAS_CELLS_<s>``)
so the page works from ``file://``, where Chromium refuses ``fetch``.

Canvas. ``W = H = S * icon`` pixels for the finest rendered grid size ``S``; cell
(row, col) of grid ``s`` covers canvas ``[col, col + 1) * W / s`` in x (row 0 at the top).

Level of detail (:func:`atlas.ops.dzi.lod_grid_size`). DZI level ``L`` (scale
``2^(L - top)``) shows the finest rendered grid whose cells are at least
``tile.lod_fraction * icon`` pixels on that level, the coarsest grid below that. With
the default 1.0 the top level shows the finest grid, the level below the next coarser
grid, each at its icons' native resolution (no resampling), so zooming in one step
doubles the grid; levels below the coarsest grid show it shrunk.

Every level is painted directly from the grid (not by downsampling the level above): a
tile is painted from the cells whose rectangles meet it (:func:`atlas.ops.canvas.paint_region`),
so memory is one tile plus the icons of the unit's band of tile rows, whatever the
atlas size. Levels where a cell is smaller than a pixel are painted ``k`` times larger
(``k`` a power of two) and box-reduced, so every cell still contributes.

Units of work (``RUN/state/tile/done/<unit>``), split round robin over ``--shard i/n``
and leased while running:

``tiles-<LL>-<RRRRRR>``   a range of whole tile rows of DZI level LL (about ``tile.unit_tiles`` tiles)
``icons-<SSSS>-<KKKK>``   icon sheet k of grid s: the level's non-empty cells in row-major order,
                          256 per sheet, 16 per sheet row (a cell's sheet and slot are in cells-<s>.json)
``examples-<KKKKKK>``     ``tile.examples_per_unit`` example crops
``final``                 by whichever shard finishes last: metadata, viewer, descriptor, index.html

Files are written to a temporary name and renamed, fsynced before the unit's marker;
outputs are deterministic, so a unit redone after a ``kill -9`` writes the same bytes.
The plan (units and settings) is kept in ``RUN/state/tile/plan.json``; other settings or a
redone grid or render start the stage over (the runner's fingerprint).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from logging import Logger
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image

from ..config import Config
from ..ops.canvas import crop_box, density_fraction, paint_region, parse_colour, resize_icon
from ..ops.dzi import (cell_edges, cells_in_span, descriptor_xml, level_size, lod_grid_size, max_level,
                       supersample, tile_bounds, tile_bounds_1d, tile_counts)
from ..progress import progress
from ..store import RunDir, StoreError, atomic_save_npz, atomic_write_text, explain_oserror
from ._protocol import Job, Resources, StageBase

__all__ = ["STAGE", "TileStage", "OUTPUT", "openseadragon_dir", "viewer_source_dir"]

NAME = "tile"
OUTPUT = "tiles"
DZI_NAME = "atlas"
SHEET_COLS = 16          # icons per sheet row
ICONS_PER_SHEET = 256    # icons per sheet (one unit of work)
_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
_VIEWER_FILES = ("index.html", "viewer.js", "viewer.css")


# --------------------------------------------------------------------------- static files

from ..viewer_assets import openseadragon_dir, viewer_source_dir  # noqa: E402 - the packaged or checkout copy


# --------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """What the grid, render and collect stages left, reduced to what tiling needs (small)."""

    sizes: list[int]
    icon: int
    width: int
    height: int
    min_count: int
    index: dict[int, np.ndarray]      # s -> [s, s] int64 icon row of cell (row, col), -1 when empty
    count: dict[int, np.ndarray]      # s -> [s, s] int64
    collect_attrs: dict[str, Any]
    class_names: list[str]
    label_names: list[str]


def read_inputs(cfg: Config, run: RunDir) -> Inputs:
    """Open collect / grid / render (finished: the runner checked) and build the cell -> icon maps."""
    col, grid, render = run.open_group("collect"), run.open_group("grid"), run.open_group("render")
    grid_sizes = [int(s) for s in (grid.attrs.get("sizes") or cfg.grid.sizes)]
    sizes = sorted(s for s in grid_sizes if f"level-{s}" in render and "icons" in render[f"level-{s}"])
    if not sizes:
        raise StoreError(f"{run.stage_path('render')} has no rendered level among the grid sizes {grid_sizes}: "
                         "run `atlas render` first")
    min_count = int(grid.attrs.get("min_count", cfg.grid.min_count))
    index, count = {}, {}
    for s in sizes:
        rl, gl = render[f"level-{s}"], grid[f"level-{s}"]
        cells = np.asarray(rl["cells"][:], dtype=np.int64).reshape(-1, 2)
        shape = rl["icons"].shape
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[0] != len(cells):
            raise StoreError(f"render level-{s}: icons {shape} do not match cells {cells.shape} "
                             "(expected [cells, h, h, 3] uint8)")
        cnt = np.asarray(gl["count"][:], dtype=np.int64)
        idx = np.full((s, s), -1, np.int64)
        if len(cells) and (cells.min() < 0 or cells.max() >= s):
            raise StoreError(f"render level-{s}: cell coordinates outside the {s} x {s} grid")
        idx[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
        idx[cnt < min_count] = -1  # only non-empty cells are painted
        index[s], count[s] = idx, cnt
    icon = int(render[f"level-{sizes[-1]}"]["icons"].shape[1])
    ca = dict(col.attrs)
    keep = {k: ca.get(k) for k in ("model", "layer", "layer_shape", "input_size", "n_images", "ok_count")}
    class_names = list(grid.attrs.get("class_names") or ca.get("class_names") or [])
    label_names = list(grid.attrs.get("label_names") or ca.get("label_names") or [])
    return Inputs(sizes, icon, sizes[-1] * icon, sizes[-1] * icon, min_count, index, count, keep,
                  class_names, label_names)


# --------------------------------------------------------------------------- plan


def _settings(cfg: Config) -> dict[str, Any]:
    """Tile settings that change the output (not ``workers``)."""
    return cfg.tile.model_dump(mode="json", exclude={"workers"})


def example_sizes(sizes: list[int], example_levels: int | None) -> list[int]:
    """Grid sizes whose cells get example crops: the finest ``example_levels`` (None: all)."""
    if example_levels is None:
        return list(sizes)
    return list(sizes[len(sizes) - example_levels:]) if example_levels else []


def _example_rows(run: RunDir, inp: Inputs, ex_sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
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


def _plan(cfg: Config, run: RunDir, inp: Inputs) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(plan, example rows, their positions)."""
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
    rows_ex, pos_ex = _example_rows(run, inp, ex_sizes)
    for k in range(-(-len(rows_ex) // t.examples_per_unit)):
        units.append({"name": f"examples-{k:06d}", "part": k})
    plan = {"width": w, "height": h, "max_level": top, "sizes": inp.sizes, "icon_size": inp.icon,
            "lod": lod, "tiles": n_tiles, "example_sizes": ex_sizes, "n_examples": int(len(rows_ex)),
            "settings": _settings(cfg), "units": units}
    return plan, rows_ex, pos_ex


def _plan_path(run: RunDir) -> Path:
    return run.state_path(NAME) / "plan.json"


# --------------------------------------------------------------------------- writing


def _syncfs(path: Path) -> bool:
    """Linux ``syncfs`` of the filesystem holding ``path`` (one call flushes a whole unit's
    files; per-file fsync costs milliseconds each). False where unavailable."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return fn(fd) == 0
    finally:
        os.close(fd)


class _Writer:
    """Files written under a temporary name then renamed (a kill never leaves half a file);
    :meth:`sync` makes them durable (syncfs, else fsync of each file and folder) before the
    unit's marker is written."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.dirs: set[Path] = set()

    def put(self, path: Path, data: bytes) -> None:
        if path.parent not in self.dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.dirs.add(path.parent)
        tmp = path.with_name(f".{path.name}.tmp")  # one fixed name per file: a redo reuses it
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as e:
            raise explain_oserror(path, e) from None
        self.paths.append(path)

    def sync(self) -> None:
        if self.paths and not _syncfs(self.paths[0].parent):
            for p in self.paths + sorted(self.dirs):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self.paths, self.dirs = [], set()


def encode_image(arr: np.ndarray, fmt: str, quality: int) -> bytes:
    """uint8 [h, w, 3] -> bytes of a jpg / png / webp file (deterministic)."""
    img = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG", compress_level=6)
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality, method=4)
    else:  # pragma: no cover - validated by the config
        raise ValueError(f"unknown tile format {fmt!r}")
    return buf.getvalue()


# --------------------------------------------------------------------------- units


@dataclass
class _Context:
    cfg: Config
    run: RunDir
    plan: dict[str, Any]
    inputs: Inputs
    log: Logger

    examples: tuple[np.ndarray, np.ndarray] | None = None  # rows, positions (only until created)

    @property
    def out(self) -> Path:
        return self.run.stage_path(OUTPUT)


def _load_icons(icons: zarr.Array, wanted: np.ndarray) -> dict[int, np.ndarray]:
    """Icons ``wanted`` (sorted unique rows), read one chunk of the array at a time."""
    out: dict[int, np.ndarray] = {}
    if wanted.size == 0:
        return out
    step = int(icons.chunks[0])
    chunk = wanted // step
    cuts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1], True])
    for a, b in zip(cuts[:-1], cuts[1:]):
        lo = int(chunk[a]) * step
        block = np.asarray(icons[lo:min(lo + step, icons.shape[0])])
        for i in wanted[a:b]:
            out[int(i)] = np.array(block[int(i) - lo, :, :, :3], dtype=np.uint8)  # a copy: the chunk is freed
    return out


def _level_grid(ctx: _Context, level: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(grid size, supersampling k, x edges, y edges) of a DZI level, edges in k-times-larger pixels."""
    p = ctx.plan
    top, s = p["max_level"], p["lod"][level]
    k = max(supersample(s, p["width"], level, top), supersample(s, p["height"], level, top))
    ex = cell_edges(s, p["width"], (1 << level) * k, 1 << top)
    ey = cell_edges(s, p["height"], (1 << level) * k, 1 << top)
    return s, k, ex, ey


def _tiles_unit(ctx: _Context, unit: dict[str, Any], writer: _Writer, bar: Any) -> int:
    p, t = ctx.plan, ctx.cfg.tile
    level, (r0, r1) = unit["level"], unit["rows"]
    lw, lh = level_size(p["width"], p["height"], level)
    cols, _ = tile_counts(lw, lh, t.tile_size)
    s, k, ex, ey = _level_grid(ctx, level)
    index = ctx.inputs.index[s]
    fraction = None
    if t.density_scale:
        cnt = ctx.inputs.count[s]
        fraction = density_fraction(cnt, int(cnt.max()) if cnt.size else 1)
    band = (tile_bounds_1d(r0, lh, t.tile_size, t.overlap)[0] * k, tile_bounds_1d(r1 - 1, lh, t.tile_size, t.overlap)[1] * k)
    rlo, rhi = cells_in_span(ey, *band)
    wanted = np.unique(index[rlo:rhi][index[rlo:rhi] >= 0])
    icons = _load_icons(ctx.run.open_group("render")[f"level-{s}"]["icons"], wanted)
    resized: dict[tuple[int, int, int], np.ndarray] = {}

    def icon_at(i: int, w: int, h: int) -> np.ndarray:
        key = (i, w, h)
        if key not in resized:
            resized[key] = resize_icon(icons[i], w, h)
        return resized[key]

    bg = parse_colour(t.background)
    folder = ctx.out / f"{DZI_NAME}_files" / str(level)
    for row in range(r0, r1):
        for col in range(cols):
            x0, y0, x1, y1 = tile_bounds(col, row, lw, lh, t.tile_size, t.overlap)
            arr = paint_region((x0 * k, y0 * k, x1 * k, y1 * k), ex, ey, index, icon_at, bg, fraction)
            if k > 1:
                arr = np.asarray(Image.fromarray(arr).reduce(k))
            writer.put(folder / f"{col}_{row}.{t.format}", encode_image(arr, t.format, t.quality))
            bar.update(1)
    return (r1 - r0) * cols


def _icons_unit(ctx: _Context, unit: dict[str, Any], writer: _Writer, bar: Any) -> int:
    """Icon sheet ``part`` of grid ``size``: slots in row-major order of the non-empty cells."""
    s, part, t = unit["size"], unit["part"], ctx.cfg.tile
    index = ctx.inputs.index[s]
    rows, cols = np.nonzero(index >= 0)
    ids = index[rows, cols][part * ICONS_PER_SHEET:(part + 1) * ICONS_PER_SHEET]
    icons = _load_icons(ctx.run.open_group("render")[f"level-{s}"]["icons"], np.unique(ids))
    n, icon = len(ids), ctx.inputs.icon
    sheet = np.empty((-(-n // SHEET_COLS) * icon, SHEET_COLS * icon, 3), np.uint8)
    sheet[...] = np.asarray(parse_colour(t.background), np.uint8)
    for j, i in enumerate(ids.tolist()):
        y, x = (j // SHEET_COLS) * icon, (j % SHEET_COLS) * icon
        sheet[y:y + icon, x:x + icon] = resize_icon(icons[i], icon, icon)
    writer.put(ctx.out / "icons" / str(s) / f"{part}.{t.format}", encode_image(sheet, t.format, t.quality))
    return n


_MANIFEST: dict[str, Any] = {}


def _manifest(run: RunDir) -> Any:
    from ..sources import read_manifest

    key = str(run.root.resolve())
    if key not in _MANIFEST:
        _MANIFEST.clear()
        _MANIFEST[key] = read_manifest(run.root)
    return _MANIFEST[key]


def _examples_unit(ctx: _Context, unit: dict[str, Any], writer: _Writer, bar: Any) -> int:
    from ..sources import BadInput, load_image

    cfg, t = ctx.cfg, ctx.cfg.tile
    with np.load(ctx.run.state_path(NAME) / "examples.npz") as z:
        sel = slice(unit["part"] * t.examples_per_unit, (unit["part"] + 1) * t.examples_per_unit)
        rows, pos = z["rows"][sel], z["positions"][sel]
    manifest = _manifest(ctx.run)
    _, lh, lw = (int(v) for v in ctx.inputs.collect_attrs["layer_shape"])
    size = int(ctx.inputs.collect_attrs["input_size"])
    failed = []
    for row, (y, x) in zip(rows.tolist(), pos.tolist()):
        try:
            img = load_image(manifest.locations[row], size=size, max_pixels=cfg.images.max_pixels,
                             min_side=cfg.images.min_side)
        except (BadInput, IndexError) as e:
            failed.append({"row": row, "reason": getattr(e, "reason", str(e))})
            continue
        top, left, bottom, right = crop_box(y, x, lh, lw, size, t.example_window)
        writer.put(ctx.out / "examples" / f"{row}.jpg", encode_image(img[top:bottom, left:right], "jpg", t.quality))
    atomic_write_text(ctx.run.unit_data_path(NAME, unit["name"], ".json"), json.dumps(failed))
    if failed:
        ctx.log.info("%s: %d example images could not be read again (first: row %d, %s)", unit["name"],
                     len(failed), failed[0]["row"], failed[0]["reason"])
    return len(rows)


def _run_unit(ctx: _Context, unit: dict[str, Any], bar: Any) -> dict[str, Any]:
    """Write one unit's files and make them durable; returns what its marker records."""
    writer = _Writer()
    kind = unit["name"].split("-")[0]
    func = {"tiles": _tiles_unit, "icons": _icons_unit, "examples": _examples_unit}[kind]
    n = func(ctx, unit, writer, bar)
    writer.sync()
    return {"items": n}


def _run_units(ctx: _Context, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    by_name = {u["name"]: u for u in ctx.plan["units"]}
    todo = [by_name[n] for n in names]
    bar = progress(total=sum(_unit_tiles(ctx.plan, u) for u in todo), desc="tile", unit="tile")
    t0 = time.time()
    for done, unit in enumerate(todo, 1):
        yield unit["name"], _run_unit(ctx, unit, bar)
        if done % 20 == 0 or done == len(todo):
            rate = done / max(time.time() - t0, 1e-9)
            ctx.log.info("%d/%d units of this window done (%.1f units/s, ETA %.0f s)", done, len(todo), rate,
                         (len(todo) - done) / max(rate, 1e-9))
    bar.close()


def _unit_tiles(plan: dict[str, Any], unit: dict[str, Any]) -> int:
    if "level" not in unit:
        return 0
    lw, lh = level_size(plan["width"], plan["height"], unit["level"])
    cols, _ = tile_counts(lw, lh, plan["settings"]["tile_size"])
    return (unit["rows"][1] - unit["rows"][0]) * cols


# --------------------------------------------------------------------------- final


def _r(x: float, digits: int = 5) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else float(f"{x:.{digits}g}")


def _cells_doc(ctx: _Context, s: int, failed: set[int]) -> dict[str, Any]:
    inp, t = ctx.inputs, ctx.cfg.tile
    gl = ctx.run.open_group("grid")[f"level-{s}"]
    rl = ctx.run.open_group("render")[f"level-{s}"]
    count = inp.count[s]
    examples = np.asarray(gl["examples"][:], dtype=np.int64)
    show_examples = s in ctx.plan["example_sizes"]
    objective, cossim = np.asarray(rl["objective"][:]), np.asarray(rl["cossim"][:])
    icon_of = np.full((s, s), -1, np.int64)
    cells = np.asarray(rl["cells"][:], dtype=np.int64).reshape(-1, 2)
    icon_of[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
    if "top_classes" in gl:
        top_c, top_v = np.asarray(gl["top_classes"][:], np.int64), np.asarray(gl["top_values"][:], np.float64)
        names, kind = inp.class_names, "attribution"
    elif "label_counts" in gl:
        lc = np.asarray(gl["label_counts"][:], np.int64)
        top_c = np.argsort(-lc, axis=2, kind="stable")[:, :, :5]
        top_v = np.take_along_axis(lc, top_c, axis=2).astype(np.float64)
        top_c = np.where(top_v > 0, top_c, -1)
        names, kind = inp.label_names, "labels"
    else:
        top_c, top_v, names, kind = np.full((s, s, 0), -1), np.zeros((s, s, 0)), [], "none"
    slot = np.full((s, s), -1, np.int64)  # position of the cell's icon in the level's sheets
    painted = np.nonzero(inp.index[s] >= 0)
    slot[painted] = np.arange(len(painted[0]))
    out = []
    for r, c in zip(*np.nonzero(count >= inp.min_count)):
        r, c = int(r), int(c)
        top = [{"class": int(k), "name": names[k] if 0 <= k < len(names) else str(k), "value": _r(v)}
               for k, v in zip(top_c[r, c].tolist(), top_v[r, c].tolist()) if k >= 0 and np.isfinite(v)]
        i = int(icon_of[r, c])
        cell: dict[str, Any] = {"row": r, "col": c, "count": int(count[r, c]), "top": top,
                                "examples": [e for e in examples[r, c].tolist() if e >= 0 and e not in failed]
                                if show_examples else [],
                                "icon": [int(slot[r, c]) // ICONS_PER_SHEET, int(slot[r, c]) % ICONS_PER_SHEET]
                                if slot[r, c] >= 0 else None,
                                "cossim": _r(cossim[i]) if i >= 0 else None,
                                "objective": _r(objective[i]) if i >= 0 else None}
        out.append(cell)
    return {"size": s, "cell_px": ctx.plan["width"] // s, "top_kind": kind, "top_k": int(top_c.shape[2]),
            "icon_url": f"icons/{s}/{{sheet}}.{t.format}", "icon_sheet_cols": SHEET_COLS, "icon_size": inp.icon,
            "example_url": "examples/{row}.jpg",
            "examples": show_examples, "cells": out}


def _atlas_doc(ctx: _Context, kinds: set[str], present: set[int], counts: dict[int, int]) -> dict[str, Any]:
    p, t, inp = ctx.plan, ctx.cfg.tile, ctx.inputs
    ca = inp.collect_attrs
    kind = "attribution" if "attribution" in kinds else "labels" if "labels" in kinds else "none"
    names = inp.class_names if kind == "attribution" else inp.label_names if kind == "labels" else []
    return {
        "format": 1, "model": ca.get("model"), "layer": ca.get("layer"), "layer_shape": ca.get("layer_shape"),
        "input_size": ca.get("input_size"), "n_images": ca.get("n_images"), "ok_images": ca.get("ok_count"),
        "sizes": p["sizes"], "icon_size": p["icon_size"], "width": p["width"], "height": p["height"],
        "max_level": p["max_level"], "lod": p["lod"], "lod_fraction": t.lod_fraction,
        "background": t.background, "density_scale": t.density_scale,
        "dzi": {"url": f"{DZI_NAME}.dzi", "tiles_url": f"{DZI_NAME}_files/", "format": t.format,
                "tile_size": t.tile_size, "overlap": t.overlap},
        "cells": {str(s): f"cells-{s}.json" for s in p["sizes"]},
        "cell_counts": {str(s): n for s, n in counts.items()},
        "example_sizes": p["example_sizes"], "top_kind": kind,
        "class_names": names, "search_classes": sorted(present),
    }


def _js(var: str, doc: Any) -> str:
    return f"window.{var} = {json.dumps(doc, separators=(',', ':'), sort_keys=True)};\n"


def _static_files() -> dict[str, Path]:
    """The viewer's static files: destination (relative to RUN/tiles) -> source. index.html last."""
    osd, src = openseadragon_dir(), viewer_source_dir()
    files = {f"openseadragon/images/{f.name}": f for f in sorted((osd / "images").iterdir()) if f.is_file()}
    files["openseadragon/openseadragon.min.js"] = osd / "openseadragon.min.js"
    lic = osd.parents[1] / "LICENSE.txt"
    if lic.is_file():
        files["openseadragon/LICENSE.txt"] = lic
    for name in _VIEWER_FILES[1:] + _VIEWER_FILES[:1]:  # index.html last: its presence means "complete"
        files[name] = src / name
    return files


def _finalize(ctx: _Context) -> dict[str, Any]:
    """Metadata (JSON + JS twins, one level at a time), the descriptor, the viewer (index.html
    last), then the marker."""
    out, t, p = ctx.out, ctx.cfg.tile, ctx.plan
    failed: set[int] = set()
    for u in p["units"]:
        if u["name"].startswith("examples-"):
            failed |= {f["row"] for f in json.loads(ctx.run.unit_data_path(NAME, u["name"], ".json").read_text())}
    writer = _Writer()
    kinds, present, counts = set(), set(), {}
    for s in p["sizes"]:
        doc = _cells_doc(ctx, s, failed)
        kinds.add(doc["top_kind"])
        present |= {k["class"] for cell in doc["cells"] for k in cell["top"]}
        counts[s] = len(doc["cells"])
        writer.put(out / f"cells-{s}.json", json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())
        writer.put(out / f"cells-{s}.js", _js(f"ATLAS_CELLS_{s}", doc).encode())
        del doc
    atlas = _atlas_doc(ctx, kinds, present, counts)
    writer.put(out / "atlas.json", json.dumps(atlas, indent=1, sort_keys=True).encode())
    writer.put(out / "atlas.js", _js("ATLAS", atlas).encode())
    writer.put(out / f"{DZI_NAME}.dzi", descriptor_xml(p["width"], p["height"], t.tile_size, t.overlap, t.format).encode())
    for rel, src in _static_files().items():
        writer.put(out / rel, src.read_bytes())
    writer.sync()
    ctx.log.info("tiles complete: %d tiles on %d levels, %d x %d px; view with `atlas serve %s`", p["tiles"],
                 p["max_level"] + 1, p["width"], p["height"], ctx.run.root)
    return {"tiles": p["tiles"], "levels": p["max_level"] + 1}


def _refresh_viewer(job: Job) -> None:
    """A finished folder gets the installed viewer's files when they changed (a newer atlas or
    OpenSeadragon); nothing is written when they are the same."""
    writer, out = _Writer(), job.run.stage_path(OUTPUT)
    for rel, src in _static_files().items():
        data, dst = src.read_bytes(), out / rel
        if not dst.is_file() or dst.read_bytes() != data:
            writer.put(dst, data)
    if writer.paths:
        job.log.info("updated %d viewer files in %s", len(writer.paths), out)
        writer.sync()


# --------------------------------------------------------------------------- the stage


def _open(job: Job) -> _Context:
    openseadragon_dir()  # fail before any work when the viewer cannot be assembled
    inp = read_inputs(job.cfg, job.run)
    plan, rows, pos = _plan(job.cfg, job.run, inp)
    return _Context(job.cfg, job.run, plan, inp, job.log, (rows, pos))


def _create(ctx: _Context) -> None:
    assert ctx.examples is not None
    rows, pos = ctx.examples
    atomic_save_npz(ctx.run.state_path(NAME) / "examples.npz", rows=rows, positions=pos)
    atomic_write_text(_plan_path(ctx.run), json.dumps(ctx.plan, indent=1, sort_keys=True))


_WORKER_CTX: dict[str, _Context] = {}


def _worker_unit(cfg: Config, name: str, ppid: int) -> tuple[str, dict[str, Any]]:
    """A pool worker: one unit (leased by the parent), with a context built once per process."""
    _die_with_parent()
    if os.getppid() != ppid:
        raise StoreError("the tile process that started this worker has gone")
    if cfg.run_dir not in _WORKER_CTX:
        from ..progress import stage_logger

        run = RunDir(cfg.run_dir)
        _WORKER_CTX[cfg.run_dir] = _open(Job(cfg, run, (0, 1), stage_logger(run.root, NAME, (0, 1))))
    ctx = _WORKER_CTX[cfg.run_dir]
    unit = next(u for u in ctx.plan["units"] if u["name"] == name)
    return name, _run_unit(ctx, unit, progress(total=0, disable=True))


def _die_with_parent() -> None:
    """Linux: ask the kernel to SIGKILL this worker when its parent dies (a killed shard stops its workers)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pool_units(ctx: _Context, names: list[str], workers: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Units on ``workers`` spawned processes; each is yielded (and so marked done) as it completes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    mp = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp) as pool:
        futures = [pool.submit(_worker_unit, ctx.cfg, n, os.getpid()) for n in names]
        bar = progress(as_completed(futures), total=len(futures), desc="tile", unit="unit")
        for fut in bar:
            yield fut.result()


def _workers(ctx: _Context, n_units: int) -> int:
    import multiprocessing

    workers = min(ctx.cfg.tile.workers, n_units)
    if workers > 1 and multiprocessing.current_process().daemon:
        ctx.log.info("running in a daemonic process (a dask worker?): tiling in-process instead of %d workers", workers)
        return 1
    return workers


class TileStage(StageBase):
    """Stage 5: Deep Zoom pyramid, cell metadata and the web viewer -> ``RUN/tiles``."""

    name = NAME
    inputs = ("collect", "grid", "render")
    output = OUTPUT
    execution = "shards"
    lease_window = 256
    resources = Resources(tasks=4, time="02:00:00", cpus=4, mem="16G", gpus=0)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return _settings(cfg)

    def open(self, job: Job) -> _Context:
        return _open(job)

    def create(self, ctx: _Context) -> None:
        _create(ctx)

    def units(self, ctx: _Context) -> list[str]:
        return [u["name"] for u in ctx.plan["units"]]

    def run_units(self, ctx: _Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        workers = _workers(ctx, len(units))
        yield from (_pool_units(ctx, units, workers) if workers > 1 else _run_units(ctx, units))

    def finish(self, ctx: _Context) -> dict[str, Any]:
        return _finalize(ctx)

    def refresh(self, job: Job) -> None:
        _refresh_viewer(job)

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Tiles, levels, canvas size, grids and the output folder."""
        plan = json.loads(_plan_path(run).read_text())
        return {"tiles": plan["tiles"], "levels": plan["max_level"] + 1, "size": f"{plan['width']}x{plan['height']}",
                "grids": plan["sizes"], "output": str(run.stage_path(OUTPUT))}


STAGE = TileStage()
