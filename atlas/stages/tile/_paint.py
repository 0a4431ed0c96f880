"""The tile stage's units of work: tiles of a DZI level, icon sheets, example crops.

Each unit writes its files with one :class:`~atlas.store.DurableWriter` and makes them
durable before the runner writes its marker; outputs are deterministic (a redone unit writes
the same bytes)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr
from PIL import Image

from ...ops.canvas import crop_box, density_fraction, paint_region, parse_colour, resize_icon
from ...ops.dzi import cell_edges, cells_in_span, level_size, supersample, tile_bounds, tile_bounds_1d, tile_counts
from ...progress import progress
from ...store import DurableWriter, RunDir, atomic_write_text
from ._context import DZI_NAME, ICONS_PER_SHEET, NAME, SHEET_COLS, Context
from ._plan import unit_tile_count


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


# --------------------------------------------------------------------------- tiles


def _level_grid(ctx: Context, level: int) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(grid size, supersampling k, x edges, y edges) of a DZI level, edges in k-times-larger pixels."""
    p = ctx.plan
    top, s = p["max_level"], p["lod"][level]
    k = max(supersample(s, p["width"], level, top), supersample(s, p["height"], level, top))
    ex = cell_edges(s, p["width"], (1 << level) * k, 1 << top)
    ey = cell_edges(s, p["height"], (1 << level) * k, 1 << top)
    return s, k, ex, ey


def _tiles_unit(ctx: Context, unit: dict[str, Any], writer: DurableWriter, bar: Any) -> int:
    """Tile rows ``rows`` of DZI level ``level``, painted from the cells that meet each tile."""
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


# --------------------------------------------------------------------------- icon sheets


def _icons_unit(ctx: Context, unit: dict[str, Any], writer: DurableWriter, bar: Any) -> int:
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


# --------------------------------------------------------------------------- example crops


_MANIFEST: dict[str, Any] = {}


def _manifest(run: RunDir) -> Any:
    """The run's image manifest, read once per process (the last run's only)."""
    from ...sources import read_manifest

    key = str(run.root.resolve())
    if key not in _MANIFEST:
        _MANIFEST.clear()
        _MANIFEST[key] = read_manifest(run.root)
    return _MANIFEST[key]


def _examples_unit(ctx: Context, unit: dict[str, Any], writer: DurableWriter, bar: Any) -> int:
    """Example crops ``part``: each image read again and cropped around its sampled position;
    images that cannot be read are listed in the unit's side file (``RUN/state/tile/units``)."""
    from ...sources import BadInput, load_image

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


# --------------------------------------------------------------------------- running units


def run_unit(ctx: Context, unit: dict[str, Any], bar: Any) -> dict[str, Any]:
    """Write one unit's files and make them durable; returns what its marker records."""
    writer = DurableWriter()
    kind = unit["name"].split("-")[0]
    func = {"tiles": _tiles_unit, "icons": _icons_unit, "examples": _examples_unit}[kind]
    n = func(ctx, unit, writer, bar)
    writer.sync()
    return {"items": n}


def run_units(ctx: Context, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Units ``names`` in this process, each yielded (and so marked done) when durable."""
    by_name = {u["name"]: u for u in ctx.plan["units"]}
    todo = [by_name[n] for n in names]
    bar = progress(total=sum(unit_tile_count(ctx.plan, u) for u in todo), desc="tile", unit="tile")
    t0 = time.time()
    for done, unit in enumerate(todo, 1):
        yield unit["name"], run_unit(ctx, unit, bar)
        if done % 20 == 0 or done == len(todo):
            rate = done / max(time.time() - t0, 1e-9)
            ctx.log.info("%d/%d units of this window done (%.1f units/s, ETA %.0f s)", done, len(todo), rate,
                         (len(todo) - done) / max(rate, 1e-9))
    bar.close()
