"""Deep Zoom arithmetic, the cell -> rectangle mapping and tile painting (atlas.ops.dzi / canvas)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.config import RenderConfig
from atlas.ops.canvas import crop_box, density_fraction, inset_rect, paint_region, parse_colour
from atlas.ops.dzi import (
    cell_edges,
    cells_in_span,
    descriptor_xml,
    grid_for_zoom,
    grid_switch_px,
    level_count,
    level_size,
    level_sizes,
    max_level,
    supersample,
    tile_bounds,
    tile_bounds_1d,
    tile_counts,
)

FAST = settings(max_examples=150, deadline=None)
SLOW = settings(max_examples=40, deadline=None)


# --------------------------------------------------------------------------- levels


@pytest.mark.parametrize("w,h,count", [(1, 1, 1), (2, 1, 2), (3, 3, 3), (256, 256, 9), (257, 10, 10),
                                       (768, 768, 11), (12800, 12800, 15), (1000, 3000, 13)])
def test_level_count_examples(w, h, count):
    assert level_count(w, h) == count
    assert max_level(w, h) == count - 1


@FAST
@given(st.integers(1, 200_000), st.integers(1, 200_000))
def test_level_sizes_follow_the_dzi_rule(w, h):
    top = max_level(w, h)
    assert top == math.ceil(math.log2(max(w, h))) or (max(w, h) == 1 and top == 0)
    assert 2 ** top >= max(w, h) and (top == 0 or 2 ** (top - 1) < max(w, h))
    sizes = level_sizes(w, h)
    assert len(sizes) == top + 1
    assert sizes[-1] == (w, h) and sizes[0] == (1, 1)
    for lv, (lw, lh) in enumerate(sizes):
        assert (lw, lh) == (math.ceil(w / 2 ** (top - lv)), math.ceil(h / 2 ** (top - lv)))
        if lv:  # each level is the previous one doubled, give or take the rounding
            pw, ph = sizes[lv - 1]
            assert pw == math.ceil(lw / 2) and ph == math.ceil(lh / 2)
    with pytest.raises(ValueError):
        level_size(w, h, top + 1)


@FAST
@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 600), st.integers(0, 8))
def test_tiles_cover_each_level_with_overlap(lw, lh, tile, overlap):
    overlap = min(overlap, tile - 1)
    cols, rows = tile_counts(lw, lh, tile)
    assert cols == math.ceil(lw / tile) and rows == math.ceil(lh / tile)
    covered = np.zeros(lw, np.int64)
    for c in range(cols):
        x0, x1 = tile_bounds_1d(c, lw, tile, overlap)
        assert 0 <= x0 < x1 <= lw
        assert x0 == max(0, c * tile - overlap) and x1 == min(lw, (c + 1) * tile + overlap)
        core0, core1 = c * tile, min(lw, (c + 1) * tile)
        covered[core0:core1] += 1
        if 0 < c < cols - 1:  # interior tiles are tile + 2 overlap wide (unless the level ends first)
            assert x1 - x0 == min(tile + 2 * overlap, lw - x0)
        if c == cols - 1:  # the edge tile is smaller: it stops at the level's edge
            assert x1 == lw and x1 - x0 <= tile + overlap
        if c == 0:
            assert x0 == 0 and x1 - x0 == min(lw, tile + overlap)
    assert (covered == 1).all()  # tile cores partition the level
    x0, y0, x1, y1 = tile_bounds(cols - 1, rows - 1, lw, lh, tile, overlap)
    assert (x1, y1) == (lw, lh)


def test_descriptor_is_a_deep_zoom_xml():
    root = ET.fromstring(descriptor_xml(1000, 700, 254, 1, "jpg"))
    assert root.tag == "{http://schemas.microsoft.com/deepzoom/2008}Image"
    assert root.attrib == {"Format": "jpg", "Overlap": "1", "TileSize": "254"}
    size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert size.attrib == {"Width": "1000", "Height": "700"}


# --------------------------------------------------------------------------- cells


@st.composite
def atlases(draw, max_base: int = 12, max_levels: int = 5, max_icon: int = 40):
    """(sizes, icon, canvas): grids doubling up to the finest, canvas = finest * icon."""
    base = draw(st.integers(1, max_base))
    n = draw(st.integers(1, max_levels))
    sizes = [base * 2 ** i for i in range(n)]
    icon = draw(st.integers(1, max_icon))
    return sizes, icon, sizes[-1] * icon


@FAST
@given(atlases(), st.data())
def test_cell_edges_partition_every_level(atlas, data):
    sizes, icon, canvas = atlas
    top = max_level(canvas, canvas)
    lv = data.draw(st.integers(0, top))
    s = data.draw(st.sampled_from(sizes))
    lw, _ = level_size(canvas, canvas, lv)
    edges = cell_edges(s, canvas, 1 << lv, 1 << top)
    assert edges[0] == 0 and edges[-1] == lw  # the cells tile the whole level, no gap, no overlap
    assert (np.diff(edges) >= 0).all()
    exact = np.array([math.ceil(k * canvas * 2 ** lv / (s * 2 ** top)) for k in range(s + 1)])
    np.testing.assert_array_equal(edges, exact)
    if canvas * 2 ** lv >= s * 2 ** top:  # cells at least one pixel wide: none vanishes
        assert (np.diff(edges) >= 1).all()
    k = supersample(s, canvas, lv, top)
    fine = cell_edges(s, canvas, (1 << lv) * k, 1 << top)
    assert (np.diff(fine) >= 1).all()
    assert k == 1 or canvas * (k // 2) * 2 ** lv < s * 2 ** top  # the smallest such power of two
    if lv == top:  # the top level: cell c of the finest grid is exactly [c * icon, (c + 1) * icon)
        np.testing.assert_array_equal(cell_edges(sizes[-1], canvas, 1, 1), np.arange(sizes[-1] + 1) * icon)


@FAST
@given(st.integers(1, 64), st.integers(1, 4000), st.integers(0, 5000), st.integers(1, 600))
def test_cells_in_span_returns_exactly_the_cells_that_meet_it(s, canvas, start, length):
    edges = cell_edges(s, canvas)
    stop = start + length
    lo, hi = cells_in_span(edges, start, stop)
    meets = [c for c in range(s) if edges[c] < edges[c + 1] and edges[c] < stop and edges[c + 1] > start]
    got = [c for c in range(lo, hi) if edges[c] < edges[c + 1]]
    assert got == meets


@st.composite
def icon_ladders(draw):
    """(sizes, icon side per size): grids doubling, icons growing towards coarse grids by the render rule."""
    base, n = draw(st.integers(1, 8)), draw(st.integers(1, 6))
    sizes = [base * 2 ** i for i in range(n)]
    cfg = RenderConfig(icon_size=draw(st.integers(8, 120)), icon_growth=draw(st.floats(0.0, 1.0)))
    return sizes, {s: cfg.level_icon_size(s, sizes[-1]) for s in sizes}


@FAST
@given(icon_ladders(), st.floats(0.05, 1.0), st.floats(1.0, 1e6))
def test_lod_rule(ladder, fraction, atlas_px):
    sizes, icons = ladder
    s = grid_for_zoom(sizes, icons, atlas_px, fraction)
    cell_px = atlas_px / s
    assert s in sizes
    if s != sizes[0]:
        assert cell_px >= fraction * icons[s] - 1e-9  # its cells are big enough on screen ...
    if s != sizes[-1]:
        assert atlas_px / (2 * s) < fraction * icons[2 * s] + 1e-9  # ... and the next finer grid's are not
    assert grid_for_zoom(sizes, icons, atlas_px * 1.5, fraction) >= s  # zooming in never shows a coarser grid
    switch = grid_switch_px(sizes, icons, fraction)
    assert s == max(g for g in sizes if atlas_px >= switch[g])


def test_lod_examples():
    # the demo's shape: grids 4, 8, 16 with 48-px finest icons grown by sqrt(2) per coarser grid
    icons = {s: RenderConfig(icon_size=48).level_icon_size(s, 16) for s in (4, 8, 16)}
    assert icons == {4: 96, 8: 68, 16: 48}
    assert grid_switch_px([4, 8, 16], icons) == {4: 0.0, 8: 544.0, 16: 768.0}
    assert [grid_for_zoom([4, 8, 16], icons, px) for px in (100, 543, 544, 767, 768, 4000)] == [4, 4, 8, 8, 16, 16]
    assert grid_for_zoom([4, 8, 16], icons, 300, 0.5) == 8  # a smaller fraction: finer grids earlier
    # one size for every grid (icon_growth 0): each zoom step of 2 doubles the grid, as in the first atlases
    flat = {s: RenderConfig(icon_size=48, icon_growth=0).level_icon_size(s, 16) for s in (4, 8, 16)}
    assert [grid_for_zoom([4, 8, 16], flat, px) for px in (383, 384, 767, 768)] == [4, 8, 8, 16]
    # a per-level override
    assert RenderConfig(icon_size=48, icon_sizes={4: 200}).level_icon_size(4, 16) == 200


def _id_colour(i: int) -> np.ndarray:
    i += 1
    return np.array([i % 256, (i // 256) % 256, 255 - (i % 97)], np.uint8)


@SLOW
@given(atlases(max_base=6, max_levels=3, max_icon=12), st.integers(8, 70), st.integers(0, 3), st.data())
def test_each_nonempty_cell_is_painted_once_per_level(atlas, tile, overlap, data):
    """Paint every level tile by tile with one flat colour per cell id: every non-empty cell
    occupies exactly its own rectangle (one place), empty cells stay background, and the
    overlapping tiles agree where they overlap."""
    sizes, icon, canvas = atlas
    top = max_level(canvas, canvas)
    lv = data.draw(st.integers(0, top))
    s = data.draw(st.sampled_from(sizes))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 16)))
    occupied = rng.random((s, s)) < 0.7
    index = np.where(occupied, np.arange(s * s).reshape(s, s), -1)
    overlap = min(overlap, tile - 1)
    lw, lh = level_size(canvas, canvas, lv)
    k = supersample(s, canvas, lv, top)
    edges = cell_edges(s, canvas, (1 << lv) * k, 1 << top)

    def icon_at(i, w, h):
        return np.broadcast_to(_id_colour(i), (h, w, 3))

    full = np.full((lh * k, lw * k, 3), -1, np.int64)
    cols, rows = tile_counts(lw, lh, tile)
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = tile_bounds(c, r, lw, lh, tile, overlap)
            box = (x0 * k, y0 * k, x1 * k, y1 * k)
            part = paint_region(box, edges, edges, index, icon_at, (0, 0, 0)).astype(np.int64)
            region = full[box[1]:box[3], box[0]:box[2]]
            seen = region[..., 0] >= 0
            assert (region[seen] == part[seen]).all()  # overlapping tiles agree
            region[...] = part
    assert (full >= 0).all()
    for r in range(s):
        for c in range(s):
            rect = full[edges[r]:edges[r + 1], edges[c]:edges[c + 1]]
            want = _id_colour(int(index[r, c])) if occupied[r, c] else np.zeros(3, np.uint8)
            assert rect.size and (rect == want).all()
    ids = set()
    for colour in np.unique(full.reshape(-1, 3), axis=0):
        if colour.any():
            ids.add(tuple(colour))
    assert len(ids) == int(occupied.sum())  # no cell painted anywhere else


def test_density_and_inset():
    # Distill: sqrt(count / mean count), clipped to [0.4, 1]
    f = density_fraction(np.array([0, 9, 25, 100, 400]), 100)
    np.testing.assert_allclose(f, [0.4, 0.4, 0.5, 1.0, 1.0])
    assert inset_rect(0, 0, 10, 10, 1.0) == (0, 0, 10, 10)
    assert inset_rect(0, 0, 10, 10, 0.5) == (2, 2, 7, 7)


def test_parse_colour():
    assert parse_colour("#ffffff") == (255, 255, 255)
    assert parse_colour("102030") == (16, 32, 48)
    assert parse_colour("#abc") == (170, 187, 204)
    with pytest.raises(ValueError):
        parse_colour("white")


@FAST
@given(st.integers(2, 40), st.integers(2, 40), st.integers(16, 600), st.floats(0.5, 8.0), st.data())
def test_crop_box_is_inside_the_image_and_centred_when_it_can_be(h, w, size, window, data):
    y, x = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
    top, left, bottom, right = crop_box(y, x, h, w, size, window)
    assert 0 <= top < bottom <= size and 0 <= left < right <= size
    assert bottom - top == min(size, max(1, round(window * size / h)))
    assert right - left == min(size, max(1, round(window * size / w)))
    cy = (y + 0.5) * size / h
    if top > 0 and bottom < size:  # not clamped: centred on the cell (to the pixel)
        assert abs((top + bottom) / 2 - cy) <= 1.0
    assert top <= cy <= bottom  # the sampled cell is always inside its crop
