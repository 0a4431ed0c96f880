"""The tile stage on synthetic atlases with known icons: pyramid rules, icon placement,
metadata, example crops, viewer files; the stage contract (rerun, resume after kill -9,
shards, inputs) through the CLI on the tiny demo atlas."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from atlas.config import load_config
from atlas.ops.canvas import crop_box
from atlas.ops.dzi import level_size, lod_grid_size, max_level, tile_bounds, tile_counts
from atlas.sources import load_image
from atlas.stages import get_stage, run_stage, stage_status, tile
from atlas.store import RunDir, StoreError
from tests.cluster.util import status
from tests.stages.contract import (
    FAST_RENDER,
    StageContract,
    copy_run,
    mark_finished,
    one_line_error,
    prepared_run,
    run_killed,
    stage_cli,
)
from tests.synthetic_atlas import INPUT_SIZE, LAYER_HW, class_name, icon_colour
from tests.synthetic_atlas import make_atlas as _make_atlas

STAGE = get_stage("tile")
SIZES, ICON, TILE, OVERLAP = (2, 4), 16, 24, 1
NS = "{http://schemas.microsoft.com/deepzoom/2008}"


def _overrides(run_dir: Path, *more: str) -> list[str]:
    return [f"run_dir={run_dir}", "grid.sizes=[2, 4]", "grid.min_count=2", "tile.format=png",
            f"tile.tile_size={TILE}", f"tile.overlap={OVERLAP}", "tile.unit_tiles=2", "tile.examples_per_unit=16",
            *more]


def _run(run_dir: Path, *more: str, shard: tuple[int, int] = (0, 1)) -> bool:
    return run_stage(STAGE, load_config(None, _overrides(run_dir, *more)), shard)


def make_atlas(run_dir: Path, **kw: Any) -> dict:
    """A synthetic atlas whose collect, grid and render the runner takes as finished."""
    info = _make_atlas(run_dir, **kw)
    mark_finished(run_dir, "collect", "reduce", "grid", "render")
    return info


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    info = make_atlas(run_dir, sizes=SIZES, icon=ICON)
    _run(run_dir)
    return run_dir, info


def _stitch(tiles: Path, level: int, w: int, h: int, fmt: str = "png") -> np.ndarray:
    """The level reassembled from its tiles; overlapping pixels must agree."""
    out = np.full((h, w, 3), -1, np.int64)
    cols, rows = tile_counts(w, h, TILE)
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = tile_bounds(c, r, w, h, TILE, OVERLAP)
            arr = np.asarray(Image.open(tiles / "atlas_files" / str(level) / f"{c}_{r}.{fmt}").convert("RGB")).astype(np.int64)
            assert arr.shape == (y1 - y0, x1 - x0, 3), (level, c, r)
            region = out[y0:y1, x0:x1]
            seen = region[..., 0] >= 0
            assert (region[seen] == arr[seen]).all(), f"tiles disagree in their overlap at level {level}"
            region[...] = arr
    assert (out >= 0).all()
    return out


# --------------------------------------------------------------------------- pyramid


def test_pyramid_follows_the_dzi_rules(tiny):
    run_dir, _ = tiny
    tiles = run_dir / "tiles"
    root = ET.parse(tiles / "atlas.dzi").getroot()
    assert root.attrib == {"Format": "png", "Overlap": str(OVERLAP), "TileSize": str(TILE)}
    size = root.find(f"{NS}Size").attrib
    w, h = int(size["Width"]), int(size["Height"])
    assert (w, h) == (SIZES[-1] * ICON, SIZES[-1] * ICON)
    top = max_level(w, h)
    assert sorted(int(p.name) for p in (tiles / "atlas_files").iterdir()) == list(range(top + 1))
    for lv in range(top + 1):
        lw, lh = level_size(w, h, lv)
        cols, rows = tile_counts(lw, lh, TILE)
        names = {p.name for p in (tiles / "atlas_files" / str(lv)).iterdir()}
        assert names == {f"{c}_{r}.png" for c in range(cols) for r in range(rows)}, lv
        for c in range(cols):
            for r in range(rows):
                x0, y0, x1, y1 = tile_bounds(c, r, lw, lh, TILE, OVERLAP)
                with Image.open(tiles / "atlas_files" / str(lv) / f"{c}_{r}.png") as im:
                    assert im.size == (x1 - x0, y1 - y0)
        _stitch(tiles, lv, lw, lh)  # overlaps agree on every level


def _expected_level(info: dict, s: int, cell: int, background=(255, 255, 255)) -> np.ndarray:
    count = info["count"][s]
    out = np.zeros((s * cell, s * cell, 3), np.int64)
    for r in range(s):
        for c in range(s):
            colour = icon_colour(s, r, c) if count[r, c] >= 2 else background
            out[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = colour
    return out


def test_every_icon_lands_at_its_grid_position_and_empty_cells_are_blank(tiny):
    run_dir, info = tiny
    tiles, w = run_dir / "tiles", SIZES[-1] * ICON
    top = max_level(w, w)
    count = info["count"][SIZES[-1]]
    assert (count < 2).any() and (count >= 2).any()  # the fixture has empty and non-empty cells
    assert ((count > 0) & (count < 2)).any()  # ... including one below min_count
    full = _stitch(tiles, top, w, w)
    np.testing.assert_array_equal(full, _expected_level(info, SIZES[-1], ICON))
    # one level down the coarser grid is shown at the icons' native size (lod_fraction 1)
    assert lod_grid_size(list(SIZES), top - 1, top) == SIZES[0]
    half = _stitch(tiles, top - 1, w // 2, w // 2)
    np.testing.assert_array_equal(half, _expected_level(info, SIZES[0], ICON))
    atlas = json.loads((tiles / "atlas.json").read_text())
    assert atlas["lod"] == [lod_grid_size(list(SIZES), lv, top) for lv in range(top + 1)]


def test_lower_levels_are_shrunk_coarsest_grids(tiny):
    run_dir, info = tiny
    tiles, w = run_dir / "tiles", SIZES[-1] * ICON
    top = max_level(w, w)
    for lv in range(top - 1):  # below the coarsest grid's native level: the same picture, smaller
        lw, _ = level_size(w, w, lv)
        arr = _stitch(tiles, lv, lw, lw)
        want = np.asarray(Image.fromarray(_expected_level(info, SIZES[0], ICON).astype(np.uint8)).resize(
            (lw, lw), Image.Resampling.BOX)).astype(np.int64)
        assert np.abs(arr - want).mean() < 12, lv
    one = np.asarray(Image.open(tiles / "atlas_files" / "0" / "0_0.png").convert("RGB"))
    assert one.shape == (1, 1, 3)


# --------------------------------------------------------------------------- metadata, icons, examples


def test_cell_metadata_matches_the_grid_arrays(tiny):
    run_dir, info = tiny
    tiles = run_dir / "tiles"
    for s in SIZES:
        doc = json.loads((tiles / f"cells-{s}.json").read_text())
        js = (tiles / f"cells-{s}.js").read_text()
        m = re.fullmatch(rf"window\.ATLAS_CELLS_{s} = (.*);\n", js, re.S)
        assert m and json.loads(m[1]) == doc
        count = info["count"][s]
        assert doc["size"] == s
        got = {(c["row"], c["col"]): c for c in doc["cells"]}
        assert set(got) == {(int(r), int(c)) for r, c in np.argwhere(count >= 2)}
        cls = info["top_classes"][s]
        for (r, c), cell in got.items():
            assert cell["count"] == count[r, c]
            assert [t["class"] for t in cell["top"]] == cls[r, c].tolist()
            assert [t["name"] for t in cell["top"]] == [class_name(k) for k in cls[r, c]]
            values = [t["value"] for t in cell["top"]]
            assert values == sorted(values, reverse=True) and len(values) == 5
            assert cell["examples"] == [e for e in info["examples"][s][r, c].tolist() if e >= 0]
            assert cell["icon"] is not None and 0.3 <= cell["cossim"] <= 0.9
    atlas = json.loads((tiles / "atlas.json").read_text())
    assert atlas["model"] == "synthetic-net" and atlas["layer"] == "blocks.5"
    assert atlas["n_images"] == info["n"] and atlas["sizes"] == list(SIZES) and atlas["icon_size"] == ICON
    assert atlas["class_names"][:3] == [class_name(0), class_name(1), class_name(2)]
    present = {t["class"] for s in SIZES for c in json.loads((tiles / f"cells-{s}.json").read_text())["cells"]
               for t in c["top"]}
    assert atlas["search_classes"] == sorted(present)
    js = (tiles / "atlas.js").read_text()
    assert js.startswith("window.ATLAS = ") and json.loads(js[len("window.ATLAS = "):-2]) == atlas


def test_icon_sheets_hold_each_cells_icon_at_full_size(tiny):
    run_dir, info = tiny
    for s in SIZES:
        doc = json.loads((run_dir / "tiles" / f"cells-{s}.json").read_text())
        cells = info["cells"][s]  # row-major non-empty cells = sheet slot order
        n_sheets = -(-len(cells) // tile.ICONS_PER_SHEET)
        assert {p.name for p in (run_dir / "tiles" / "icons" / str(s)).iterdir()} == {f"{k}.png" for k in range(n_sheets)}
        sheets = {k: np.asarray(Image.open(run_dir / "tiles" / "icons" / str(s) / f"{k}.png")) for k in range(n_sheets)}
        assert doc["icon_size"] == ICON and doc["icon_sheet_cols"] == tile.SHEET_COLS
        by_cell = {(c["row"], c["col"]): c["icon"] for c in doc["cells"]}
        for j, (r, c) in enumerate(cells.tolist()):
            sheet, slot = by_cell[(r, c)]
            assert (sheet, slot) == divmod(j, tile.ICONS_PER_SHEET)
            y, x = (slot // tile.SHEET_COLS) * ICON, (slot % tile.SHEET_COLS) * ICON
            assert (sheets[sheet][y:y + ICON, x:x + ICON] == icon_colour(s, r, c)).all()


def test_example_crops_are_the_image_regions_around_the_sampled_positions(tiny):
    run_dir, info = tiny
    from atlas.sources import read_manifest

    manifest = read_manifest(run_dir)
    want_rows = set()
    for s in SIZES:
        ex = info["examples"][s][info["count"][s] >= 2]
        want_rows |= {int(e) for e in ex.ravel() if e >= 0}
    files = {p.name for p in (run_dir / "tiles" / "examples").iterdir()}
    assert files == {f"{r}.jpg" for r in want_rows}  # one per collect row, deduplicated across cells
    import zarr

    pos = zarr.open_group(str(run_dir / "collect"), mode="r")["positions"][:]
    for row in sorted(want_rows)[:12]:
        img = load_image(manifest.locations[row], size=INPUT_SIZE, max_pixels=10 ** 8, min_side=1)
        top, left, bottom, right = crop_box(int(pos[row, 0]), int(pos[row, 1]), *LAYER_HW, INPUT_SIZE, 3.0)
        want = img[top:bottom, left:right].astype(np.int64)
        got = np.asarray(Image.open(run_dir / "tiles" / "examples" / f"{row}.jpg").convert("RGB")).astype(np.int64)
        assert got.shape == want.shape == (24, 24, 3)  # 3 layer cells of 56 / 7 = 8 px
        assert np.abs(got - want).mean() < 6


def test_viewer_files_are_relative_and_complete(tiny):
    run_dir, _ = tiny
    tiles = run_dir / "tiles"
    for name in ("index.html", "viewer.js", "viewer.css", "atlas.js", "openseadragon/openseadragon.min.js",
                 "openseadragon/images/zoomin_rest.png", "openseadragon/LICENSE.txt"):
        assert (tiles / name).is_file(), name
    html = (tiles / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(not re.match(r"^(/|[a-z]+://)", r) for r in refs if not r.startswith("data:")), refs
    for r in refs:
        if not r.startswith("data:"):
            assert (tiles / r).is_file(), r
    assert "http://" not in (tiles / "viewer.js").read_text().replace("http://schemas.microsoft.com", "")


def test_status_reports_done(tiny):
    run_dir, _ = tiny
    st = stage_status(STAGE, RunDir(run_dir))
    assert st.state == "done" and st.done == st.total and st.detail["tiles"] > 0
    assert st.detail["grids"] == list(SIZES) and st.detail["output"] == str(run_dir / "tiles")


# --------------------------------------------------------------------------- reruns, settings


def test_index_html_comes_last_and_viewer_files_are_refreshed(tiny, tmp_path):
    ref, _ = tiny
    run_dir = tmp_path / "run"
    make_atlas(run_dir, sizes=SIZES, icon=ICON)
    assert not _run(run_dir, shard=(0, 2))
    assert not (run_dir / "tiles" / "index.html").exists()  # half the units: not finished
    assert _run(run_dir, shard=(1, 2))
    assert _tree(run_dir / "tiles") == _tree(ref / "tiles")
    # a finished folder gets the installed viewer's files back when they differ (newer atlas)
    (run_dir / "tiles" / "viewer.css").write_text("/* old */")
    _run(run_dir)
    assert _tree(run_dir / "tiles") == _tree(ref / "tiles")


def test_other_settings_start_over(tiny, tmp_path):
    run_dir = tmp_path / "run"
    make_atlas(run_dir, sizes=SIZES, icon=ICON)
    _run(run_dir)
    _run(run_dir, "tile.tile_size=40", "tile.format=jpg")
    tiles = run_dir / "tiles"
    assert 'TileSize="40"' in (tiles / "atlas.dzi").read_text()
    assert not list(tiles.rglob("*.png")) or all("openseadragon" in str(p) for p in tiles.rglob("*.png"))
    assert {p.name for p in (tiles / "atlas_files" / "6").iterdir()} == {"0_0.jpg", "0_1.jpg", "1_0.jpg", "1_1.jpg"}


def test_only_rendered_levels_are_tiled(tmp_path):
    run_dir = tmp_path / "run"
    info = make_atlas(run_dir, sizes=(2, 4, 8), icon=8)
    shutil.rmtree(run_dir / "render" / "level-4")  # as with render.levels: [2, 8]
    _run(run_dir, "grid.sizes=[2, 4, 8]", "tile.example_levels=1")
    tiles = run_dir / "tiles"
    atlas = json.loads((tiles / "atlas.json").read_text())
    assert atlas["sizes"] == [2, 8] and set(atlas["lod"]) == {2, 8} and atlas["width"] == 64
    assert not (tiles / "cells-4.json").exists() and not (tiles / "icons" / "4").exists()
    assert json.loads((tiles / "cells-2.json").read_text())["cells"][0]["examples"] == []  # finest level only
    want = {int(e) for e in info["examples"][8][info["count"][8] >= 2].ravel() if e >= 0}
    assert {p.name for p in (tiles / "examples").iterdir()} == {f"{r}.jpg" for r in want}


def test_density_scale_shrinks_sparse_cells(tmp_path):
    run_dir = tmp_path / "run"
    info = make_atlas(run_dir, sizes=SIZES, icon=ICON)
    _run(run_dir, "tile.density_scale=true", "tile.background='#000000'", "tile.example_levels=0")
    w = SIZES[-1] * ICON
    full = _stitch(run_dir / "tiles", max_level(w, w), w, w)
    count = info["count"][SIZES[-1]]
    dense = np.unravel_index(np.argmax(count), count.shape)
    sparse = min((tuple(rc) for rc in np.argwhere(count >= 2)), key=lambda rc: count[rc])
    r, c = dense
    assert (full[r * ICON:(r + 1) * ICON, c * ICON:(c + 1) * ICON] == icon_colour(SIZES[-1], r, c)).all()
    r, c = sparse
    block = full[r * ICON:(r + 1) * ICON, c * ICON:(c + 1) * ICON]
    assert (block[0, 0] == 0).all() and (block[ICON // 2, ICON // 2] == icon_colour(SIZES[-1], r, c)).all()
    assert not (run_dir / "tiles" / "examples").exists()


def test_missing_inputs_and_missing_openseadragon_are_explained(tmp_path, monkeypatch):
    import atlas.viewer_assets as assets

    with pytest.raises(StoreError, match=r"needs a finished `collect`, which is not started .*`atlas collect "):
        _run(tmp_path / "empty")
    make_atlas(tmp_path / "run", sizes=SIZES, icon=ICON)
    monkeypatch.setattr(assets, "PACKAGED_OPENSEADRAGON", tmp_path / "nowhere")
    monkeypatch.setattr(assets, "CHECKOUT_ROOT", tmp_path)
    monkeypatch.delenv("ATLAS_OPENSEADRAGON", raising=False)
    with pytest.raises(FileNotFoundError, match=r"make setup.*npm ci --prefix viewer"):
        _run(tmp_path / "run")
    assert not (tmp_path / "run" / "tiles").exists()  # refused before any work


# --------------------------------------------------------------------------- contract, through the CLI


class TestTileContract(StageContract):
    stage = "tile"
    overrides = FAST_RENDER  # the render contract's runs: its reference is this class's inputs
    output_kind = "files"
    redo = ("grid", "grid.top_classes=3")  # render becomes stale: tile refuses it
    slow = ("test_refuses_unfinished_or_stale_inputs",)  # redoes grid, render and tile


def test_a_render_killed_after_one_unit_is_refused(whole_run, tmp_path_factory, tmp_path):
    """kill -9 render after its first unit: `atlas tile` says in one line to finish render first."""
    run_dir = copy_run(prepared_run(whole_run, tmp_path_factory, "grid", FAST_RENDER), tmp_path / "run")
    assert run_killed("render", run_dir, FAST_RENDER, after=1).returncode == -9
    units = json.loads((run_dir / "state" / "render" / "units.json").read_text())
    p = stage_cli("tile", run_dir, FAST_RENDER, check=False)
    one_line_error(p, f"needs a finished `render`, which is 1/{len(units)} units done", "atlas render ")
    states = status(run_dir)
    assert states["render"]["state"] == "partial" and states["render"]["done"] == 1, states["render"]
    assert states["tile"]["state"] == "not started" and not (run_dir / "tiles").exists(), states["tile"]
