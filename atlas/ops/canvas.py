"""Painting atlas tiles from cell icons, and cropping dataset examples. Arrays in, arrays out.

A tile is painted from the cells whose rectangles meet it (:func:`paint_region`), never
from a full canvas, so memory is one tile plus the icons it shows. Icons are resized to
their cell rectangle (Lanczos; a no-op when the rectangle is the icon's own size).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np
from PIL import Image

from .dzi import cells_in_span

__all__ = ["parse_colour", "density_fraction", "paint_region", "resize_icon", "crop_box", "inset_rect", "icon_mosaic"]

_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")

# Icon side under ``density_scale`` (Distill): sqrt(count / mean count of the grid's non-empty
# cells), clipped to [DENSITY_MIN, 1].
DENSITY_MIN = 0.4


def parse_colour(text: str) -> tuple[int, int, int]:
    """``#rrggbb`` / ``#rgb`` (leading # optional) -> (r, g, b)."""
    m = _HEX.match(text.strip())
    if not m:
        raise ValueError(f"colour must be #rrggbb or #rgb, got {text!r}")
    h = m[1]
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def density_fraction(count: np.ndarray, mean_count: float) -> np.ndarray:
    """Icon side as a fraction of its cell, as in Distill's atlas: ``sqrt(count / mean_count)``
    clipped to [0.4, 1] (``mean_count``: the mean count of the grid's non-empty cells)."""
    c = np.asarray(count, dtype=np.float64)
    return np.clip(np.sqrt(c / max(float(mean_count), 1e-12)), DENSITY_MIN, 1.0)


def inset_rect(x0: int, y0: int, x1: int, y1: int, fraction: float) -> tuple[int, int, int, int]:
    """The centred sub-rectangle of ``fraction`` of the side (at least 1 px), integer."""
    if fraction >= 1.0:
        return x0, y0, x1, y1
    w, h = x1 - x0, y1 - y0
    iw, ih = max(1, int(round(w * fraction))), max(1, int(round(h * fraction)))
    ox, oy = (w - iw) // 2, (h - ih) // 2
    return x0 + ox, y0 + oy, x0 + ox + iw, y0 + oy + ih


def resize_icon(icon: np.ndarray, w: int, h: int) -> np.ndarray:
    """uint8 [h, w, 3] from an icon of any size (returned as is when already that size)."""
    if icon.shape[0] == h and icon.shape[1] == w:
        return icon
    img = Image.fromarray(np.ascontiguousarray(icon[..., :3]))
    return np.asarray(img.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=2.0))


def paint_region(box: tuple[int, int, int, int], edges_x: np.ndarray, edges_y: np.ndarray,
                 icon_index: np.ndarray, icon_at: Callable[[int, int, int], np.ndarray],
                 background: tuple[int, int, int], fraction: np.ndarray | None = None) -> np.ndarray:
    """Paint the pixels ``box = (x0, y0, x1, y1)`` of a level whose cell edges are given.

    ``icon_index`` [s, s] int: the icon of cell (row, col), -1 for an empty cell.
    ``icon_at(i, w, h)`` returns icon ``i`` resized to w x h (uint8 [h, w, 3]).
    ``fraction`` [s, s] (optional): icon side as a fraction of its cell (density scaling).
    Returns uint8 [y1 - y0, x1 - x0, 3]; pixels outside every icon are ``background``.
    """
    x0, y0, x1, y1 = box
    out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
    out[...] = np.asarray(background, np.uint8)
    c_lo, c_hi = cells_in_span(edges_x, x0, x1)
    r_lo, r_hi = cells_in_span(edges_y, y0, y1)
    sub = icon_index[r_lo:r_hi, c_lo:c_hi]
    for dr, dc in zip(*np.nonzero(sub >= 0)):
        r, c = r_lo + int(dr), c_lo + int(dc)
        rx0, rx1, ry0, ry1 = int(edges_x[c]), int(edges_x[c + 1]), int(edges_y[r]), int(edges_y[r + 1])
        if fraction is not None:
            rx0, ry0, rx1, ry1 = inset_rect(rx0, ry0, rx1, ry1, float(fraction[r, c]))
        ix0, ix1, iy0, iy1 = max(rx0, x0), min(rx1, x1), max(ry0, y0), min(ry1, y1)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        icon = icon_at(int(sub[dr, dc]), rx1 - rx0, ry1 - ry0)
        out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = icon[iy0 - ry0:iy1 - ry0, ix0 - rx0:ix1 - rx0]
    return out


def crop_box(y: int, x: int, layer_h: int, layer_w: int, size: int, window: float) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the input-image window around layer cell (y, x).

    The cell's centre maps to ``((y + 0.5) * size / layer_h, (x + 0.5) * size / layer_w)``;
    the window is ``window`` layer cells wide (``window * size / layer_h`` pixels, at most
    the image), shifted (not shrunk) to stay inside the ``size x size`` image.
    """
    def axis(p: int, n: int) -> tuple[int, int]:
        side = min(size, max(1, int(round(window * size / n))))
        centre = (p + 0.5) * size / n
        start = int(math.floor(centre - side / 2 + 0.5))
        start = min(max(start, 0), size - side)
        return start, start + side

    top, bottom = axis(int(y), int(layer_h))
    left, right = axis(int(x), int(layer_w))
    return top, left, bottom, right


def icon_mosaic(icons: np.ndarray, cells: np.ndarray, size: int, background: int = 255) -> np.ndarray:
    """Icons pasted at their cells of a ``size x size`` grid.

    icons [n, px, px, 3] uint8, cells [n, 2] (row, col) -> [size * px, size * px, 3] uint8;
    cells without an icon are ``background``.
    """
    px = icons.shape[1] if icons.ndim == 4 else 1
    out = np.full((size * px, size * px, 3), background, np.uint8)
    for icon, (r, c) in zip(icons, cells):
        out[r * px:(r + 1) * px, c * px:(c + 1) * px] = icon
    return out

