"""Deep Zoom (DZI) pyramid arithmetic and the grid-cell -> pixel-rectangle mapping.

Pure integer arithmetic, no I/O. Conventions are those of the Deep Zoom format (and of
OpenSeadragon's ``DziTileSource``):

* a W x H image has ``max_level = ceil(log2(max(W, H)))``, levels ``0 .. max_level``
  (``level_count = max_level + 1``); level ``L`` is the image scaled by
  ``2^(L - max_level)``, of size ``ceil(W / 2^(max_level - L)) x ceil(H / 2^(max_level - L))``;
* level ``L`` is cut into ``ceil(w / tile) x ceil(h / tile)`` tiles; tile ``(col, row)``
  covers ``[col * tile - overlap, (col + 1) * tile + overlap)`` (and the same in y), clipped
  to the level: tiles on the left/top edge have no leading overlap, tiles on the
  right/bottom edge are smaller;
* files are ``<name>_files/<level>/<col>_<row>.<format>``.

Grid cells. Each grid size ``s`` has its own pyramid, ``W = s * icon_s`` pixels wide for
its icons of ``icon_s`` pixels (coarser grids have larger icons); cell ``(row, col)``
covers x in ``[col, col + 1) * W / s`` of it (every pyramid spans the same atlas square).
On a level drawn at scale ``num / den`` (a power of two, possibly times a supersampling
factor) its edges are ``edge(k) = ceil(k * W * num / (s * den))``: a monotone integer
partition of ``[0, ceil(W * num / den))``, so every cell lands in exactly one rectangle,
rectangles never overlap and leave no gaps, and once the cell is at least one pixel wide
no rectangle is empty.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "max_level",
    "level_count",
    "level_size",
    "level_sizes",
    "tile_counts",
    "tile_bounds",
    "tile_bounds_1d",
    "descriptor_xml",
    "cell_edges",
    "cells_in_span",
    "grid_for_zoom",
    "grid_switch_px",
    "supersample",
]

DZI_XMLNS = "http://schemas.microsoft.com/deepzoom/2008"


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1 x 1, got {width} x {height}")


def max_level(width: int, height: int) -> int:
    """``ceil(log2(max(width, height)))``: the index of the full-resolution level (exact)."""
    _check_size(width, height)
    return (max(width, height) - 1).bit_length()


def level_count(width: int, height: int) -> int:
    """Number of levels of the pyramid: ``ceil(log2(max(W, H))) + 1``."""
    return max_level(width, height) + 1


def _ceil_shift(n: int, k: int) -> int:
    """``ceil(n / 2^k)`` for n >= 0, k >= 0."""
    return (n + (1 << k) - 1) >> k


def level_size(width: int, height: int, level: int) -> tuple[int, int]:
    """(w, h) of ``level``: ``ceil(W / 2^(max_level - level))`` and the same for H."""
    top = max_level(width, height)
    if not 0 <= level <= top:
        raise ValueError(f"level {level} outside 0..{top} for a {width} x {height} image")
    k = top - level
    return _ceil_shift(width, k), _ceil_shift(height, k)


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """Every level's (w, h), level 0 first."""
    return [level_size(width, height, lv) for lv in range(level_count(width, height))]


def tile_counts(level_w: int, level_h: int, tile: int) -> tuple[int, int]:
    """(columns, rows) of tiles on a level of ``level_w x level_h`` pixels."""
    if tile < 1:
        raise ValueError(f"tile size must be positive, got {tile}")
    return -(-level_w // tile), -(-level_h // tile)


def tile_bounds_1d(index: int, length: int, tile: int, overlap: int) -> tuple[int, int]:
    """[start, stop) along one axis of the tile ``index`` on a level ``length`` pixels long."""
    start = index * tile - (overlap if index > 0 else 0)
    stop = min(length, (index + 1) * tile + overlap)
    return start, stop


def tile_bounds(col: int, row: int, level_w: int, level_h: int, tile: int, overlap: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in level pixels of tile (col, row), overlap included, clipped to the level."""
    x0, x1 = tile_bounds_1d(col, level_w, tile, overlap)
    y0, y1 = tile_bounds_1d(row, level_h, tile, overlap)
    return x0, y0, x1, y1


def descriptor_xml(width: int, height: int, tile: int, overlap: int, fmt: str) -> str:
    """The ``.dzi`` descriptor (Deep Zoom 2008 schema)."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Image xmlns="{DZI_XMLNS}" Format="{fmt}" Overlap="{overlap}" TileSize="{tile}">\n'
        f'  <Size Width="{width}" Height="{height}"/>\n'
        "</Image>\n"
    )


# --------------------------------------------------------------------------- grid cells


def cell_edges(s: int, canvas: int, num: int = 1, den: int = 1) -> np.ndarray:
    """Pixel edges [s + 1] int64 of the s cells along a canvas ``canvas`` pixels long, drawn
    at scale ``num / den``: ``edge(k) = ceil(k * canvas * num / (s * den))``."""
    if s < 1 or canvas < 1 or num < 1 or den < 1:
        raise ValueError(f"cell_edges needs positive s, canvas, num, den; got {s}, {canvas}, {num}, {den}")
    k = np.arange(s + 1, dtype=np.int64)
    return -((-k * (canvas * num)) // (s * den))


def cells_in_span(edges: np.ndarray, start: int, stop: int) -> tuple[int, int]:
    """[lo, hi): the cells whose non-empty rectangle [edges[c], edges[c + 1]) meets [start, stop)."""
    lo = int(np.searchsorted(edges, start, side="right")) - 1
    hi = int(np.searchsorted(edges, stop, side="left"))
    return max(lo, 0), min(hi, len(edges) - 1)


def grid_for_zoom(sizes: list[int] | tuple[int, ...], icon_sizes: dict[int, int], atlas_px: float,
                  fraction: float = 1.0) -> int:
    """The grid size shown when the atlas is ``atlas_px`` screen pixels wide (level of detail rule).

    Each grid ``s`` has its own icons, ``icon_sizes[s]`` pixels square, and its own pyramid of
    ``s * icon_sizes[s]`` pixels, whose top level shows them at native resolution. A cell of
    grid ``s`` is ``atlas_px / s`` screen pixels wide; the rule shows the *finest* grid whose
    cells are at least ``fraction * icon_sizes[s]`` pixels (its icons at native size or larger,
    for ``fraction = 1``) and the coarsest grid when none is (zoomed out). Zooming in, grid
    ``s`` takes over at ``atlas_px = fraction * s * icon_sizes[s]`` (:func:`grid_switch_px`).
    The viewer (``lod.js``) applies the same rule, reading each grid's ``switch_px`` in ``atlas.json``.
    """
    ordered = sorted(sizes)
    for s in reversed(ordered):
        if atlas_px >= fraction * s * icon_sizes[s]:
            return s
    return ordered[0]


def grid_switch_px(sizes: list[int] | tuple[int, ...], icon_sizes: dict[int, int], fraction: float = 1.0) -> dict[int, float]:
    """Atlas width in screen pixels at which each grid takes over when zooming in (the coarsest: 0)."""
    ordered = sorted(sizes)
    return {s: 0.0 if s == ordered[0] else fraction * s * icon_sizes[s] for s in ordered}


def supersample(s: int, canvas: int, level: int, top: int) -> int:
    """Smallest power of two ``k`` such that cells of grid ``s`` are at least one pixel wide
    when level ``level`` is painted ``k`` times larger (then box-reduced by ``k``)."""
    k = 1
    # cell width at level = canvas / s * 2^(level - top); need canvas * k * 2^level >= s * 2^top
    while canvas * k * (1 << level) < s * (1 << top):
        k *= 2
    return k
