"""The tile stage on synthetic atlases with known icons: pyramid rules, icon placement,
metadata, example crops, resume after kill -9, idempotent rerun, shard split."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas.config import load_config
from atlas.ops.canvas import crop_box
from atlas.ops.dzi import level_size, lod_grid_size, max_level, tile_bounds, tile_counts
from atlas.sources import load_image
from atlas.stages import tile
from atlas.store import RunDir, StoreError
from tests.stages import contract
from tests.synthetic_atlas import INPUT_SIZE, LAYER_HW, class_name, icon_colour, make_atlas

SIZES, ICON, TILE, OVERLAP = (2, 4), 16, 24, 1
NS = "{http://schemas.microsoft.com/deepzoom/2008}"


def _overrides(run_dir: Path, *more: str) -> list[str]:
    return [f"run_dir={run_dir}", "grid.sizes=[2, 4]", "grid.min_count=2", "tile.format=png",
            f"tile.tile_size={TILE}", f"tile.overlap={OVERLAP}", "tile.unit_tiles=2", "tile.examples_per_unit=16",
            *more]


def _run(run_dir: Path, *more: str, shard: tuple[int, int] = (0, 1)) -> None:
    tile.run(load_config(None, _overrides(run_dir, *more)), shard=shard)


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
    st = tile.status(RunDir(run_dir))
    assert st.state == "done" and st.detail["complete"] is True and st.done == st.total


# --------------------------------------------------------------------------- contract


def test_rerun_of_a_finished_stage_changes_nothing(tiny):
    run_dir, _ = tiny
    files = [p for p in sorted((run_dir / "tiles").rglob("*")) + sorted((run_dir / "state" / "tile").rglob("*"))
             if p.is_file() and "locks" not in p.parts]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    _run(run_dir)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    assert before == after
    assert set(_tree(run_dir / "tiles")) == {str(p.relative_to(run_dir / "tiles")) for p in files
                                             if (run_dir / "tiles") in p.parents}


def test_two_shards_equal_one_run(tiny, tmp_path):
    ref, _ = tiny
    run_dir = tmp_path / "run"
    make_atlas(run_dir, sizes=SIZES, icon=ICON)
    _run(run_dir, shard=(0, 2))
    assert not (run_dir / "tiles" / "index.html").exists()  # half the units: not finished
    _run(run_dir, shard=(1, 2))
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
    with pytest.raises(StoreError, match="run `atlas collect` first"):
        _run(tmp_path / "empty")
    monkeypatch.setattr(tile, "_REPO", tmp_path)
    monkeypatch.delenv("ATLAS_OPENSEADRAGON", raising=False)
    with pytest.raises(FileNotFoundError, match=r"make setup.*npm ci --prefix viewer"):
        _run(tmp_path / "empty")


def test_resume_after_kill_gives_identical_files(tmp_path):
    """kill -9 the real CLI mid-stage (polling RUN/state/tile/done), rerun: byte-identical output."""
    sizes = (4, 8, 16)
    over = [f"grid.sizes={list(sizes)}", "tile.tile_size=32", "tile.unit_tiles=1", "tile.examples_per_unit=8",
            "tile.format=jpg"]
    ref = tmp_path / "ref"
    make_atlas(ref, sizes=sizes, icon=32, pattern="texture")
    tile.run(load_config(None, [f"run_dir={ref}", *over]))
    n_units = len(json.loads((ref / "state" / "tile" / "plan.json").read_text())["units"])
    assert n_units >= 60

    run_dir = tmp_path / "run"
    make_atlas(run_dir, sizes=sizes, icon=32, pattern="texture")
    seen = contract.kill_when("tile", [f"run_dir={run_dir}", *over], run_dir, min_done=3)
    done = RunDir(run_dir).done_units("tile")
    assert 3 <= seen <= len(done) < n_units and "final" not in done  # killed mid-way
    assert not (run_dir / "tiles" / "index.html").exists()
    tile.run(load_config(None, [f"run_dir={run_dir}", *over]))  # resume
    got, want = _tree(run_dir / "tiles"), _tree(ref / "tiles")
    assert sorted(got) == sorted(want)  # no stray temporary files either
    assert got == want
