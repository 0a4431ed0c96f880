"""One unit: one image, decoded as collect decodes, every position of the layer placed on the
atlas, and its files written (``RUN/locate/<unit>/``)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...ops.canvas import parse_colour
from ...ops.located import atlas_legend, cell_colours, hex_colours, icon_grid, side_by_side, tint_positions
from ...store import DurableWriter
from ._context import NAME, Context
from ._images import ImageRef

__all__ = ["run_unit", "FILES"]

FILES = ("located.json", "positions.npy", "overlay.png", "activation-grid.png", "points.js")
_TOP = 5
_GAP = 8


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _forward(ctx: Context, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int], np.ndarray | None]:
    """uint8 [S, S, 3] -> (vectors float32 [H * W, C], rounded as collect stores them, row-major;
    the layer grid (H, W); logits float32 [K] or None)."""
    from ...models import layer_grid

    sampler = ctx.sampler()
    grid, logits = layer_grid(sampler, sampler.net.preprocess(torch.from_numpy(image[None])))
    c, h, w = grid.shape[1:]
    vec = grid[0].permute(1, 2, 0).reshape(h * w, c).numpy()
    vec = vec.astype(ctx.collect.dtype).astype(np.float32)
    return vec, (h, w), None if logits is None else logits[0].numpy()


def _top_classes(ctx: Context, logits: np.ndarray | None) -> list[dict[str, Any]]:
    if logits is None:
        return []
    z = logits.astype(np.float64)
    prob = np.exp(z - z.max())
    prob /= prob.sum()
    names = ctx.collect.class_names
    order = np.argsort(-z, kind="stable")[:_TOP]
    return [{"class": int(k), "name": names[k] if k < len(names) else f"class {k}",
             "probability": round(float(prob[k]), 6), "logit": round(float(z[k]), 4)} for k in order]


def _pictures(ctx: Context, image: np.ndarray, xy: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """overlay.png and activation-grid.png as uint8 arrays."""
    lc, s = ctx.cfg.locate, ctx.level
    cells = ctx.grid.cells(xy, s)
    colours = cell_colours(s)[cells[:, 0], cells[:, 1]].reshape(h, w, 3)
    hits = np.zeros((s, s), np.int64)
    np.add.at(hits, (cells[:, 0], cells[:, 1]), 1)
    occupied = ctx.grid.counts[s] >= ctx.grid.min_count
    bg = parse_colour(ctx.cfg.tile.background)
    overlay = side_by_side(tint_positions(image, colours, lc.overlay_alpha, lc.picture_px),
                           atlas_legend(cell_colours(s), occupied, hits, lc.picture_px), _GAP, bg)
    icons = [ctx.icons.icon_for(p, s) for p in xy]
    return overlay, icon_grid(icons, h, w, lc.icon_px, bg)


def _doc(ctx: Context, ref: ImageRef, xy: np.ndarray, h: int, w: int, logits: np.ndarray | None) -> dict[str, Any]:
    """located.json."""
    sizes = ctx.grid.sizes
    cells = {s: ctx.grid.cells(xy, s) for s in sizes}
    positions = [{"y": i // w, "x": i % w, "xy": [round(float(v), 6) for v in xy[i]],
                  "cells": {str(s): [int(v) for v in cells[s][i]] for s in sizes}} for i in range(h * w)]
    return {
        "unit": ref.unit, "name": ref.name, "source": ref.location, "model": ctx.collect.model,
        "layer": ctx.collect.layer, "input_size": ctx.collect.input_size, "layer_grid": [h, w],
        "sizes": sizes, "level": ctx.level, "top_classes": _top_classes(ctx, logits),
        "coordinates": "xy: (x, y) in [0, 1] of the atlas square, placed as reduce places rows outside its "
                       "fitted sample; cells: (row, col) = (floor(y s), floor(x s)) at grid size s",
        "positions": positions,
        "cells_hit": {str(s): int(np.unique(cells[s][:, 0] * s + cells[s][:, 1]).size) for s in sizes},
    }


def _points_js(ctx: Context, doc: dict[str, Any], xy: np.ndarray) -> str:
    """points.js for the viewer: the positions' atlas points in their cells' colours at ``level``."""
    s = ctx.level
    cells = ctx.grid.cells(xy, s)
    colours = hex_colours(cell_colours(s)[cells[:, 0], cells[:, 1]])
    pts = {"unit": doc["unit"], "name": doc["name"], "grid": doc["layer_grid"], "level": s,
           "points": [[round(float(p[0]), 5), round(float(p[1]), 5), c] for p, c in zip(xy, colours)],
           "overlay": f"{doc['unit']}/overlay.png", "activation_grid": f"{doc['unit']}/activation-grid.png",
           "top_classes": [t["name"] for t in doc["top_classes"]]}
    return f"window.ATLAS_LOCATED_POINTS = {json.dumps(pts, separators=(',', ':'), sort_keys=True)};\n"


def run_unit(ctx: Context, unit: str) -> dict[str, Any]:
    """Locate one image; returns what its done marker records (a bad image: its status and reason)."""
    from ...sources import BadInput, load_image

    ref = ctx.refs[unit]
    try:
        image = load_image(ref.location, size=ctx.collect.input_size, max_pixels=ctx.cfg.images.max_pixels,
                           min_side=ctx.cfg.images.min_side)
    except BadInput as e:
        ctx.log.warning("skipped %s: %s (status %d); it is listed in %s", ref.location, e.reason, e.status,
                        ctx.run.stage_path(NAME) / "bad_inputs.tsv")
        return {"source": ref.location, "name": ref.name, "status": int(e.status), "reason": e.reason}
    vec, (h, w), logits = _forward(ctx, image)
    salt = int(unit.rsplit("-", 1)[-1], 16)
    xy = ctx.placer().coords(vec, salt)
    doc = _doc(ctx, ref, xy, h, w, logits)
    overlay, mosaic = _pictures(ctx, image, xy, h, w)
    out, writer = ctx.run.stage_path(NAME) / unit, DurableWriter()
    writer.put(out / "positions.npy", _npy(xy.reshape(h, w, 2)))
    writer.put(out / "overlay.png", _png(overlay))
    writer.put(out / "activation-grid.png", _png(mosaic))
    writer.put(out / "points.js", _points_js(ctx, doc, xy).encode())
    writer.put(out / "located.json", json.dumps(doc, indent=1).encode())
    writer.sync()
    ctx.log.info("%s: %dx%d positions in %d cells of the %dx%d grid; top class %s", ref.name, h, w,
                 doc["cells_hit"][str(ctx.level)], ctx.level, ctx.level,
                 doc["top_classes"][0]["name"] if doc["top_classes"] else "-")
    return {"source": ref.location, "name": ref.name, "status": 1, "reason": ""}
