"""A located image's semantic dictionary picture (Building Blocks): each position of the layer drawn as
the icon of its strongest unit, beside ``atlas locate``'s activation grid of cell icons.

For each image ``atlas locate`` placed (``RUN/locate/index.json``), decoded as locate decodes it and
run through collect's module, every position's vector (rounded to collect's storage dtype, as locate
rounds it) gets its coefficients on the basis; the position shows the icon of the unit with the
largest positive coefficient among the units with an icon (the background where none is positive),
at ``locate.icon_px`` per position, the size of locate's ``activation-grid.png``. Written to
``RUN/units/located/<unit>/dictionary.png`` and ``dictionary.json`` (per position its three strongest
units and their coefficients). Images drawn before are kept: a later ``atlas units`` draws the newly
located ones only.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...formats import LocateOutput
from ...formats._units import units_folder
from ...ops.canvas import parse_colour
from ...ops.located import icon_grid
from ...store import DurableWriter
from ._context import Context

__all__ = ["located_units", "draw_located"]

PICTURE = "dictionary.png"


def located_units(run_root: Any) -> list[dict[str, Any]]:
    """The images ``atlas locate`` placed on this atlas (its index's entries), by unit name."""
    doc = LocateOutput(run_root).index()
    return sorted((dict(d) for d in (doc or {}).get("images") or []), key=lambda d: str(d["unit"]))


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _vectors(ctx: Context, source: str) -> tuple[np.ndarray, int, int] | None:
    from ...models import layer_grid
    from ...sources import BadInput, load_image

    try:
        image = load_image(source, size=ctx.collect.input_size, max_pixels=ctx.cfg.images.max_pixels,
                           min_side=ctx.cfg.images.min_side)
    except BadInput as e:
        ctx.log.warning("located image %s cannot be read again (%s): no dictionary picture", source, e.reason)
        return None
    sampler = ctx.sampler()
    grid, _ = layer_grid(sampler, sampler.net.preprocess(torch.from_numpy(image[None])))
    c, h, w = grid.shape[1:]
    vec = grid[0].permute(1, 2, 0).reshape(h * w, c).numpy().astype(ctx.collect.dtype).astype(np.float32)
    return vec, h, w


def draw_located(ctx: Context, icons: np.ndarray) -> dict[str, str]:
    """Draw the pictures of the located images that have none yet; returns unit -> picture path
    (relative to ``RUN/units``) of every located image with one. ``icons``: uint8 [n, P, P, 3]."""
    out, found = units_folder(ctx.run.root), {}
    basis, n = ctx.basis(), len(icons)
    bg = parse_colour(ctx.cfg.tile.background)
    writer = DurableWriter()
    for entry in located_units(ctx.run.root):
        unit = str(entry["unit"])
        rel = f"located/{unit}/{PICTURE}"
        if (out / rel).is_file():
            found[unit] = rel
            continue
        got = _vectors(ctx, str(entry["source"]))
        if got is None or n == 0:
            continue
        vec, h, w = got
        coef = basis.encode(vec)[:, :n]
        best = np.argmax(coef, axis=1)
        strongest = coef[np.arange(len(coef)), best]
        pictures: list[np.ndarray | None] = [icons[b] if v > 0 else None for b, v in zip(best.tolist(), strongest)]
        order = np.argsort(-coef, axis=1, kind="stable")[:, :3]
        doc = {"unit": unit, "name": entry.get("name"), "layer_grid": [h, w], "basis": ctx.cfg.units.basis,
               "positions": [[[int(u), round(float(coef[i, u]), 5)] for u in order[i] if coef[i, u] > 0]
                             for i in range(h * w)]}
        writer.put(out / rel, _png(icon_grid(pictures, h, w, ctx.cfg.locate.icon_px, bg)))
        writer.put(out / f"located/{unit}/dictionary.json", json.dumps(doc, indent=1).encode())
        found[unit] = rel
        ctx.log.info("%s: semantic dictionary picture, %d distinct units over %dx%d positions", unit,
                     len({b for b, p in zip(best.tolist(), pictures) if p is not None}), h, w)
    writer.sync()
    return found
