"""Pictures of one image located on the atlas: a 2-D colour map of the atlas square, the image
with its layer positions tinted by their cells' colours, a thumbnail legend of the atlas, and
the activation grid of icons (Building Blocks' semantic dictionary view). Arrays in, arrays out.

Colours. A point (x, y) of the atlas square gets the CIELAB colour L* = 68,
a* = 110 (x - 0.5), b* = 110 (y - 0.5) (clipped into sRGB): the colour changes smoothly over
the atlas, so neighbouring cells have similar colours, and the corners are blue, violet,
green and orange; the centre is grey.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .canvas import resize_icon

__all__ = ["atlas_colours", "cell_colours", "tint_positions", "atlas_legend", "icon_grid", "side_by_side", "hex_colours"]

_L, _CHROMA = 68.0, 110.0
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65
_XYZ_TO_RGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                        [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB float [..., 3] -> sRGB uint8 [..., 3] (clipped into the gamut)."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > 6.0 / 29.0, f**3, 3.0 * (6.0 / 29.0) ** 2 * (f - 4.0 / 29.0)) * _WHITE
    lin = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    rgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    out: np.ndarray = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def atlas_colours(xy: np.ndarray) -> np.ndarray:
    """The colour of atlas points: xy float [..., 2] (x, y) in [0, 1] -> uint8 [..., 3]."""
    xy = np.clip(np.asarray(xy, dtype=np.float64), 0.0, 1.0)
    lab = np.stack([np.full(xy.shape[:-1], _L), _CHROMA * (xy[..., 0] - 0.5), _CHROMA * (xy[..., 1] - 0.5)], axis=-1)
    return _lab_to_srgb(lab)


def cell_colours(size: int) -> np.ndarray:
    """The colour of every cell of grid ``size`` (its centre's): uint8 [size, size, 3], indexed (row, col)."""
    centre = (np.arange(size) + 0.5) / size
    xx, yy = np.meshgrid(centre, centre)  # xx[r, c] = x of column c, yy[r, c] = y of row r
    return atlas_colours(np.stack([xx, yy], axis=-1))


def hex_colours(rgb: np.ndarray) -> list[str]:
    """uint8 [n, 3] -> ``#rrggbb`` strings."""
    return [f"#{int(r):02x}{int(g):02x}{int(b):02x}" for r, g, b in np.asarray(rgb).reshape(-1, 3)]


def _edges(n: int, side: int) -> np.ndarray:
    """Pixel edges of n equal bands over ``side`` pixels: int [n + 1]."""
    return np.round(np.arange(n + 1) * side / n).astype(np.int64)


def tint_positions(image: np.ndarray, colours: np.ndarray, alpha: float, side: int) -> np.ndarray:
    """The image resized to ``side`` with each layer position's square blended with its colour.

    image: uint8 [S, S, 3]; colours: uint8 [H, W, 3] (position (i, j) covers rows i/H..(i+1)/H
    and columns j/W..(j+1)/W of the image); alpha in [0, 1]. A 1-px line in the colour
    separates the squares. Returns uint8 [side, side, 3].
    """
    img = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((side, side), Image.Resampling.BILINEAR),
                     dtype=np.float64)
    h, w = colours.shape[:2]
    ey, ex = _edges(h, side), _edges(w, side)
    over = np.asarray(colours, np.float64)[np.searchsorted(ey, np.arange(side), "right") - 1][
        :, np.searchsorted(ex, np.arange(side), "right") - 1]
    out = (1.0 - alpha) * img + alpha * over
    line = np.zeros((side, side), bool)
    line[np.minimum(ey[1:-1], side - 1), :] = True
    line[:, np.minimum(ex[1:-1], side - 1)] = True
    out[line] = over[line]
    return np.round(out).astype(np.uint8)


def atlas_legend(colours: np.ndarray, occupied: np.ndarray, hits: np.ndarray, side: int) -> np.ndarray:
    """A thumbnail of the atlas's cells at one grid: the cells the image's positions land on in
    their full colour with a black outline, the atlas's other non-empty cells paler, empty cells grey.

    colours: uint8 [s, s, 3]; occupied: bool [s, s] (non-empty cells); hits: int [s, s]
    (positions per cell). Returns uint8 [side, side, 3].
    """
    s = colours.shape[0]
    e = _edges(s, side)
    pale = np.round(0.4 * colours + 0.6 * 255.0).astype(np.uint8)
    out = np.full((side, side, 3), 236, np.uint8)
    border = max(1, side // (12 * s)) if s <= 16 else 1
    for r in range(s):
        for c in range(s):
            y0, y1, x0, x1 = e[r], e[r + 1], e[c], e[c + 1]
            if hits[r, c] > 0:
                out[y0:y1, x0:x1] = 20
                out[y0 + border:y1 - border, x0 + border:x1 - border] = colours[r, c]
            elif occupied[r, c]:
                out[y0:y1, x0:x1] = pale[r, c]
    return out


def icon_grid(icons: list[np.ndarray | None], h: int, w: int, px: int, background: tuple[int, int, int]) -> np.ndarray:
    """The activation grid: position (i, j)'s icon (``icons[i * w + j]``, any size, resized to px)
    or the background: uint8 [h * px, w * px, 3]."""
    out = np.empty((h * px, w * px, 3), np.uint8)
    out[...] = np.asarray(background, np.uint8)
    for k, icon in enumerate(icons):
        if icon is not None:
            i, j = divmod(k, w)
            out[i * px:(i + 1) * px, j * px:(j + 1) * px] = resize_icon(np.asarray(icon, np.uint8), px, px)
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int, background: tuple[int, int, int]) -> np.ndarray:
    """Two uint8 [h, w_i, 3] pictures of one height next to each other with ``gap`` pixels between."""
    h = max(left.shape[0], right.shape[0])
    out = np.empty((h, left.shape[1] + gap + right.shape[1], 3), np.uint8)
    out[...] = np.asarray(background, np.uint8)
    out[:left.shape[0], :left.shape[1]] = left
    out[:right.shape[0], left.shape[1] + gap:] = right
    return out
