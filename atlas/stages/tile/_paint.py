"""The tile stage's units of work: tiles of a level of a grid's pyramid, icon sheets, class heat files,
example crops.

Each unit writes its files with one :class:`~atlas.store.DurableWriter` and makes them
durable before the runner writes its marker; outputs are deterministic (a redone unit writes
the same bytes)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr
from PIL import Image

from ...formats import GridOutput, RenderOutput, example_crop, run_manifest
from ...ops.canvas import density_fraction, paint_region, parse_colour, resize_icon
from ...ops.dzi import cell_edges, cells_in_span, level_size, supersample, tile_bounds, tile_bounds_1d, tile_counts
from ...progress import progress
from ...store import DurableWriter, atomic_save_npz, atomic_write_text
from ._context import HEAT_BLOCK, NAME, Context, dzi_name, sheet_cols
from ._inputs import class_block
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


def _load_icons(icons: zarr.Array[Any], wanted: np.ndarray, side: int | None = None) -> dict[int, np.ndarray]:
    """Icons ``wanted`` (sorted unique rows), read one chunk of the array at a time; with ``side``
    smaller than the icons, each is shrunk to ``side`` x ``side`` as it is read (a zoomed-out level
    needs no more), so holding every icon of a grid stays small."""
    out: dict[int, np.ndarray] = {}
    if wanted.size == 0:
        return out
    shrink = side is not None and side < int(icons.shape[1])
    step = int(icons.chunks[0])
    chunk = wanted // step
    cuts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1], True])
    for a, b in zip(cuts[:-1], cuts[1:]):
        lo = int(chunk[a]) * step
        block = np.asarray(icons[lo:min(lo + step, icons.shape[0])])
        for i in wanted[a:b]:
            icon = block[int(i) - lo, :, :, :3]
            out[int(i)] = resize_icon(icon, side, side) if shrink and side else np.array(icon, dtype=np.uint8)  # a copy
    return out


# --------------------------------------------------------------------------- tiles


def _level_grid(ctx: Context, s: int, level: int) -> tuple[int, np.ndarray]:
    """(supersampling k, cell edges in k-times-larger pixels) of level ``level`` of grid ``s``'s pyramid."""
    pyr = ctx.plan["pyramids"][str(s)]
    w, top = pyr["width"], pyr["max_level"]
    k = supersample(s, w, level, top)
    return k, cell_edges(s, w, (1 << level) * k, 1 << top)


def _density(ctx: Context, s: int) -> np.ndarray | None:
    """Icon side per cell as a fraction of the cell (``tile.density_scale``), else None."""
    if not ctx.cfg.tile.density_scale:
        return None
    cnt = ctx.inputs.count[s]
    filled = cnt[cnt >= ctx.inputs.min_count]
    return density_fraction(cnt, float(filled.mean()) if filled.size else 1.0)


class _Painter:
    """Paints pixel boxes of level ``level`` of grid ``s``'s pyramid from the cells of the pixel rows
    ``y0 .. y1 - 1``: their icons are read once (shrunk as they are read where the level's cells are
    smaller than the icons) and resized per cell rectangle as needed."""

    def __init__(self, ctx: Context, s: int, level: int, y0: int, y1: int) -> None:
        self.k, self.edges = _level_grid(ctx, s, level)
        self.index = ctx.inputs.index[s]
        self.fraction = _density(ctx, s)
        self.background = parse_colour(ctx.cfg.tile.background)
        rlo, rhi = cells_in_span(self.edges, y0 * self.k, y1 * self.k)
        wanted = np.unique(self.index[rlo:rhi][self.index[rlo:rhi] >= 0])
        side = int(np.diff(self.edges).max())
        self.icons = _load_icons(RenderOutput.open(ctx.run).level(s).icons, wanted, side)
        self.resized: dict[tuple[int, int, int], np.ndarray] = {}

    def _icon_at(self, i: int, w: int, h: int) -> np.ndarray:
        key = (i, w, h)
        if key not in self.resized:
            self.resized[key] = resize_icon(self.icons[i], w, h)
        return self.resized[key]

    def paint(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """uint8 [y1 - y0, x1 - x0, 3]: the level's pixels in that box."""
        k = self.k
        arr = paint_region((x0 * k, y0 * k, x1 * k, y1 * k), self.edges, self.edges, self.index, self._icon_at,
                           self.background, self.fraction)
        return np.asarray(Image.fromarray(arr).reduce(k)) if k > 1 else arr


def _tiles_unit(ctx: Context, unit: dict[str, Any], writer: DurableWriter, bar: Any) -> int:
    """Tile rows ``rows`` of level ``level`` of grid ``size``'s pyramid, each tile painted from the cells
    that meet it (memory: one tile plus the band's icons). A ``base`` unit paints its whole level (at most
    ``BASE_PX`` wide) and then every level below by halving it: there every cell of the grid meets every
    tile, so painting each level from the icons would read them all again."""
    t = ctx.cfg.tile
    s, level, (r0, r1) = unit["size"], unit["level"], unit["rows"]
    w = ctx.plan["pyramids"][str(s)]["width"]
    lw, lh = level_size(w, w, level)
    cols, _ = tile_counts(lw, lh, t.tile_size)
    y0, y1 = tile_bounds_1d(r0, lh, t.tile_size, t.overlap)[0], tile_bounds_1d(r1 - 1, lh, t.tile_size, t.overlap)[1]
    painter = _Painter(ctx, s, level, y0, y1)

    def put(lv: int, col: int, row: int, arr: np.ndarray) -> None:
        writer.put(ctx.out / f"{dzi_name(s)}_files" / str(lv) / f"{col}_{row}.{t.format}", encode_image(arr, t.format, t.quality))
        bar.update(1)

    if not unit.get("base"):
        for row in range(r0, r1):
            for col in range(cols):
                put(level, col, row, painter.paint(*tile_bounds(col, row, lw, lh, t.tile_size, t.overlap)))
        return int((r1 - r0) * cols)
    whole, n = painter.paint(0, 0, lw, lh), 0
    for lv in range(level, -1, -1):
        if lv < level:
            whole = np.asarray(Image.fromarray(whole).reduce(2))  # ceil(w / 2): the DZI level size
        lw, lh = level_size(w, w, lv)
        assert whole.shape[:2] == (lh, lw), (whole.shape, lw, lh)
        cols, rows = tile_counts(lw, lh, t.tile_size)
        for row in range(rows):
            for col in range(cols):
                x0, ty0, x1, ty1 = tile_bounds(col, row, lw, lh, t.tile_size, t.overlap)
                put(lv, col, row, whole[ty0:ty1, x0:x1])
        n += cols * rows
    return n


# --------------------------------------------------------------------------- icon sheets


def _icons_unit(ctx: Context, unit: dict[str, Any], writer: DurableWriter, bar: Any) -> int:
    """Icon sheet ``part`` of grid ``size``: slots in row-major order of the non-empty cells,
    ``sheet_cols(icon)`` per sheet row and as many rows."""
    s, part, t = unit["size"], unit["part"], ctx.cfg.tile
    icon = ctx.inputs.icon_sizes[s]
    cols_per_row = sheet_cols(icon)
    per_sheet = cols_per_row ** 2
    index = ctx.inputs.index[s]
    rows, cols = np.nonzero(index >= 0)
    ids = index[rows, cols][part * per_sheet:(part + 1) * per_sheet]
    icons = _load_icons(RenderOutput.open(ctx.run).level(s).icons, np.unique(ids))
    n = len(ids)
    sheet = np.empty((-(-n // cols_per_row) * icon, cols_per_row * icon, 3), np.uint8)
    sheet[...] = np.asarray(parse_colour(t.background), np.uint8)
    for j, i in enumerate(ids.tolist()):
        y, x = (j // cols_per_row) * icon, (j % cols_per_row) * icon
        sheet[y:y + icon, x:x + icon] = resize_icon(icons[i], icon, icon)
    writer.put(ctx.out / "icons" / str(s) / f"{part}.{t.format}", encode_image(sheet, t.format, t.quality))
    return n


# --------------------------------------------------------------------------- class heatmap


def heat_values(v: np.ndarray) -> tuple[np.ndarray, float]:
    """One class's values over a level's cells, float [n] -> (uint8 [n], scale): ``round(255 v / scale)``
    with ``scale`` the largest value; 0 where v <= 0, at least 1 where v > 0."""
    vmax = float(v.max()) if v.size else 0.0
    if vmax <= 0:
        return np.zeros(v.shape, np.uint8), 0.0
    q = np.clip(np.rint(v / vmax * 255.0), 1, 255)
    return np.where(v > 0, q, 0).astype(np.uint8), vmax


def heat_doc(s: int, k: int, q: np.ndarray, vmax: float) -> dict[str, Any]:
    """The heat file's document: ``dense`` (base64 of the s * s uint8 values, row-major) or, when
    shorter, ``sparse`` (base64 of the non-zero cells' uint32 little-endian indices, and their values)."""
    nz = np.flatnonzero(q)
    doc: dict[str, Any] = {"size": s, "class": k, "max": float(f"{vmax:.6g}"), "cells": int(nz.size)}
    if nz.size * 5 < q.size:
        doc |= {"encoding": "sparse", "index": base64.b64encode(nz.astype("<u4").tobytes()).decode(),
                "values": base64.b64encode(q[nz].tobytes()).decode()}
    else:
        doc |= {"encoding": "dense", "values": base64.b64encode(q.tobytes()).decode()}
    return doc


def _heat_unit(ctx: Context, unit: dict[str, Any], writer: DurableWriter, bar: Any) -> int:
    """Classes ``part * HEAT_BLOCK ..`` of grid ``size``: one ``heat/<s>/<k>.js`` per class with a positive
    value somewhere, and the side data the metadata needs (``RUN/state/tile/units/<unit>.npz``): per cell the
    sum of positive values and the best class and value of the block; per class its positive cells and maximum."""
    s, inp = unit["size"], ctx.inputs
    k0 = unit["part"] * HEAT_BLOCK
    k1 = min(inp.n_classes, k0 + HEAT_BLOCK)
    gl = GridOutput.open(ctx.run).level(s)
    vals = class_block(gl, inp.class_kind, k0, k1, inp.count[s], inp.min_count).reshape(s * s, k1 - k0)
    n_pos = (vals > 0).sum(axis=0)
    for j in np.flatnonzero(n_pos).tolist():
        q, vmax = heat_values(vals[:, j])
        var = f"ATLAS_HEAT_{s}_{k0 + j}"
        text = f"window.{var} = {json.dumps(heat_doc(s, k0 + j, q, vmax), separators=(',', ':'))};\n"
        writer.put(ctx.out / "heat" / str(s) / f"{k0 + j}.js", text.encode())
    best = vals.argmax(axis=1) if vals.size else np.zeros(s * s, np.int64)
    atomic_save_npz(ctx.run.unit_data_path(NAME, unit["name"]),
                    pos_sum=np.maximum(vals, 0).sum(axis=1, dtype=np.float64),
                    best_class=(best + k0).astype(np.int32),
                    best_value=vals[np.arange(s * s), best] if vals.size else np.zeros(s * s, np.float32),
                    n_pos=n_pos.astype(np.int64), vmax=vals.max(axis=0) if vals.size else np.zeros(0, np.float32))
    return int(np.count_nonzero(n_pos))


# --------------------------------------------------------------------------- example crops


def _examples_unit(ctx: Context, unit: dict[str, Any], writer: DurableWriter, bar: Any) -> int:
    """Example crops ``part``: each image read again and cropped around its sampled position;
    images that cannot be read are listed in the unit's side file (``RUN/state/tile/units``)."""
    cfg, t = ctx.cfg, ctx.cfg.tile
    with np.load(ctx.run.state_path(NAME) / "examples.npz") as z:
        sel = slice(unit["part"] * t.examples_per_unit, (unit["part"] + 1) * t.examples_per_unit)
        rows, pos = z["rows"][sel], z["positions"][sel]
    manifest = run_manifest(ctx.run.root)
    _, lh, lw = ctx.inputs.collect.layer_shape
    size = ctx.inputs.collect.input_size
    failed: list[dict[str, Any]] = []
    for row, (y, x) in zip(rows.tolist(), pos.tolist()):
        crop = example_crop(manifest, row, (y, x), (lh, lw), size, t.example_window, cfg.images)
        if crop.pixels is None:
            failed.append({"row": row, "reason": crop.reason})
            continue
        writer.put(ctx.out / "examples" / f"{row}.jpg", encode_image(crop.pixels, "jpg", t.quality))
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
    func = {"tiles": _tiles_unit, "icons": _icons_unit, "heat": _heat_unit, "examples": _examples_unit}[kind]
    n = func(ctx, unit, writer, bar)
    writer.sync()
    return {"items": n}


def run_units(ctx: Context, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Units ``names`` in this process, each yielded (and so marked done) when durable. The runner's
    bar and log count the units; the tiles painted show as the bar's detail."""
    by_name = {u["name"]: u for u in ctx.plan["units"]}
    todo = [by_name[n] for n in names]
    with progress(total=sum(unit_tile_count(ctx.plan, u) for u in todo), desc="tile", unit="tile") as bar:
        for unit in todo:
            yield unit["name"], run_unit(ctx, unit, bar)
