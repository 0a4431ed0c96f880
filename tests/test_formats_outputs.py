"""atlas.formats readers of the grid and render outputs (exact values against the stored arrays of
the shared whole run) and the one example crop (exact boxes and pixels on a tiny image)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from atlas._cache import clear_cache
from atlas.config import ImagesConfig
from atlas.formats import GridOutput, RenderOutput, example_crop, run_manifest
from atlas.sources import Manifest, write_manifest
from atlas.store import RunDir, StoreError

# --------------------------------------------------------------------------- the example crop

SIDE = 8  # the tiny image: 8 x 8, pixel (y, x) = (10 y + x, 100 + y, 200 - x)


def _pixels(side: int = SIDE) -> np.ndarray:
    y, x = np.mgrid[0:side, 0:side]
    return np.stack([10 * y + x, 100 + y, 200 - x], axis=2).astype(np.uint8)


@pytest.fixture
def tiny_run(tmp_path: Path) -> tuple[Path, Manifest]:
    """A run folder whose manifest lists: 0 the tiny image, 1 a missing file, 2 a file that is no
    image, 3 a 6 x 6 image (below the default ``images.min_side``)."""
    clear_cache("manifest")
    (tmp_path / "src").mkdir()
    good, small, junk = tmp_path / "src" / "good.png", tmp_path / "src" / "small.png", tmp_path / "src" / "junk.png"
    Image.fromarray(_pixels()).save(good)
    Image.fromarray(_pixels(6)).save(small)
    junk.write_bytes(b"this is not an image")
    locs = [str(good), str(tmp_path / "src" / "gone.png"), str(junk), str(small)]
    write_manifest(Manifest("list", str(tmp_path / "src"), locs, np.full(4, -1, np.int32), []), tmp_path)
    return tmp_path, run_manifest(tmp_path)


@pytest.mark.parametrize(("pos", "grid", "window", "box"), [
    ((0, 0), (4, 4), 2.0, (0, 0, 4, 4)),     # a 4-pixel window at the top left edge: shifted, not shrunk
    ((3, 3), (4, 4), 2.0, (4, 4, 8, 8)),     # at the bottom right edge
    ((1, 2), (4, 4), 2.0, (1, 3, 5, 7)),     # inside: centred on the cell's centre (3, 5)
    ((1, 3), (2, 4), 1.0, (4, 6, 8, 8)),     # a non-square layer grid: 4 rows, 2 columns of pixels
    ((2, 2), (4, 4), 10.0, (0, 0, 8, 8)),    # a window wider than the image: the whole image
])
def test_example_crop_box_and_pixels(tiny_run: tuple[Path, Manifest], pos: tuple[int, int], grid: tuple[int, int],
                                     window: float, box: tuple[int, int, int, int]) -> None:
    _, manifest = tiny_run
    crop = example_crop(manifest, 0, pos, grid, SIDE, window, ImagesConfig(min_side=1))
    assert crop.ok and crop.reason is None and crop.row == 0
    assert crop.box == box
    top, left, bottom, right = box
    assert crop.pixels is not None and crop.pixels.dtype == np.uint8
    np.testing.assert_array_equal(crop.pixels, _pixels()[top:bottom, left:right])


@pytest.mark.parametrize(("row", "why"), [(1, "gone.png|not exist|missing|no such"), (2, "not an image"),
                                          (3, "small|6"), (9, "not in the run's manifest")])
def test_a_bad_image_gives_no_pixels_and_a_reason(tiny_run: tuple[Path, Manifest], row: int, why: str) -> None:
    _, manifest = tiny_run
    crop = example_crop(manifest, row, (1, 2), (4, 4), SIDE, 2.0, ImagesConfig())  # the default min_side (16)
    assert not crop.ok and crop.pixels is None
    assert crop.reason and re.search(why, crop.reason, flags=re.IGNORECASE), crop.reason
    assert crop.box == (1, 3, 5, 7)  # the box does not depend on the image


def test_the_run_images_limits_decide(tiny_run: tuple[Path, Manifest]) -> None:
    """One treatment of ``images.min_side`` / ``max_pixels``: the limits passed are the ones applied."""
    _, manifest = tiny_run
    assert not example_crop(manifest, 3, (0, 0), (2, 2), 6, 1.0, ImagesConfig(min_side=7)).ok
    small = example_crop(manifest, 3, (0, 0), (2, 2), 6, 1.0, ImagesConfig(min_side=6))
    assert small.pixels is not None and small.box == (0, 0, 3, 3)
    np.testing.assert_array_equal(small.pixels, _pixels(6)[:3, :3])
    assert not example_crop(manifest, 0, (0, 0), (4, 4), SIDE, 2.0, ImagesConfig(min_side=1, max_pixels=63)).ok
    assert example_crop(manifest, 0, (0, 0), (4, 4), SIDE, 2.0, ImagesConfig(min_side=1, max_pixels=64)).ok


def test_the_manifest_is_read_once_and_again_when_it_changes(tiny_run: tuple[Path, Manifest]) -> None:
    root, manifest = tiny_run
    assert run_manifest(root) is manifest
    write_manifest(Manifest("list", "x", ["a", "b"], np.full(2, -1, np.int32), []), root)
    again = run_manifest(root)
    assert again is not manifest and again.locations == ["a", "b"]


# --------------------------------------------------------------------------- grid and render readers


@pytest.mark.slow
def test_grid_reader_matches_the_stored_arrays(whole_run: Path) -> None:
    raw = zarr.open_group(str(whole_run / "grid"), mode="r")
    grid = GridOutput.open(RunDir(whole_run))
    assert grid.sizes == sorted(raw.attrs["sizes"]) and grid.min_count == raw.attrs["min_count"]
    assert grid.class_names == list(raw.attrs["class_names"]) and grid.label_names == list(raw.attrs["label_names"])
    assert grid.purity == {k: float(v) for k, v in raw.attrs["purity"].items()}
    assert grid.whitening is not None
    np.testing.assert_array_equal(grid.whitening[...], raw["whitening"][...])
    for s in grid.sizes:
        gl, rl = grid.level(s), raw[f"level-{s}"]
        assert gl.size == s and gl.count.shape == (s, s) and gl.count.dtype == np.int64
        assert gl.empty_cells == int((rl["count"][...] < grid.min_count).sum())
        for name in ("count", "mean_activation", "examples", "example_positions", "top_classes", "top_values",
                     "class_attribution", "label_counts"):
            arr = getattr(gl, name)
            assert (arr is None) == (name not in rl), name
            if arr is not None:
                np.testing.assert_array_equal(arr[...], rl[name][...], err_msg=name)
    assert grid.missing() == []
    with pytest.raises(StoreError, match="no level 3 .*atlas grid"):
        grid.level(3)


@pytest.mark.slow
def test_render_reader_matches_the_stored_arrays(whole_run: Path) -> None:
    raw = zarr.open_group(str(whole_run / "render"), mode="r")
    render = RenderOutput.open(RunDir(whole_run))
    assert render.sizes == sorted(int(k.split("-")[1]) for k, _ in raw.groups())
    assert render.batch_size == raw.attrs["batch_size"] and render.icon_size == raw.attrs["icon_size"]
    assert render.n_cells == {int(k): v for k, v in raw.attrs["n_cells"].items()}
    for s in render.sizes:
        lvl, rl = render.level(s), raw[f"level-{s}"]
        assert render.has_level(s) and lvl.icons.dtype == np.uint8 and lvl.icons.shape[3] == 3
        for name in ("icons", "cells", "objective", "cossim", "rank", "activation"):
            np.testing.assert_array_equal(getattr(lvl, name)[...], rl[name][...], err_msg=name)
        cells = rl["cells"][...]
        idx = lvl.cell_index()
        assert idx.shape == (s, s) and (idx >= 0).sum() == len(cells)
        np.testing.assert_array_equal(idx[cells[:, 0], cells[:, 1]], np.arange(len(cells)))
    assert not render.has_level(3)
    with pytest.raises(StoreError, match="no level 3"):
        render.level(3)


def test_a_missing_output_is_a_one_line_error(tmp_path: Path) -> None:
    for reader, stage in ((GridOutput, "grid"), (RenderOutput, "render")):
        assert not reader.exists(RunDir(tmp_path))
        with pytest.raises(StoreError, match=f"run `atlas {stage}` first") as e:
            reader.open(RunDir(tmp_path))
        assert "\n" not in str(e.value)
