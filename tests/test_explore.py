"""atlas.explore: exact values on tiny arrays, and a real run read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from atlas.explore import AtlasRun, child_cells
from atlas.ops.canvas import crop_box, icon_mosaic


def test_icon_mosaic_places_each_icon_at_its_cell() -> None:
    icons = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (10, 20)])
    out = icon_mosaic(icons, np.array([[0, 1], [1, 0]]), 2, background=255)
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[..., 0], [[255, 255, 10, 10], [255, 255, 10, 10],
                                                [20, 20, 255, 255], [20, 20, 255, 255]])


def test_child_cells() -> None:
    assert child_cells(1, 2) == [(2, 4), (2, 5), (3, 4), (3, 5)]


@pytest.mark.slow
def test_a_real_run_read_back(whole_run: Path) -> None:
    run = AtlasRun(whole_run)
    render = zarr.open_group(str(whole_run / "render"), mode="r")
    icons, cells = render["level-8/icons"][:], render["level-8/cells"][:]
    img = run.level_image(8)
    px = icons.shape[1]
    r, c = cells[0]
    np.testing.assert_array_equal(img[r * px:(r + 1) * px, c * px:(c + 1) * px], icons[0])
    np.testing.assert_array_equal(run.icon(8, int(r), int(c)), icons[0])

    grid = zarr.open_group(str(whole_run / "grid"), mode="r")
    count4 = grid["level-4/count"][:]
    empty = np.argwhere(grid["level-8/count"][:] < grid.attrs["min_count"])[0]
    assert run.icon(8, *map(int, empty)) is None
    pr, pc = map(int, np.argwhere(count4 >= grid.attrs["min_count"])[0])
    parent = run.cell(4, pr, pc)
    assert parent["count"] == sum(run.cell(8, *rc)["count"] for rc in child_cells(pr, pc))
    assert parent["icon"] is not None and 0 < parent["cossim"] <= 1 and parent["examples"]
    assert parent["top_classes"] and isinstance(parent["top_classes"][0][0], str)

    crop = run.example_crop(parent["examples"][0])
    col = zarr.open_group(str(whole_run / "collect"), mode="r")
    y, x = col["positions"][parent["examples"][0]]
    top, left, bottom, right = crop_box(int(y), int(x), *col.attrs["layer_shape"][1:], col.attrs["input_size"], 3.0)
    assert crop.shape == (bottom - top, right - left, 3)
