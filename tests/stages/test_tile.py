"""The tile stage on synthetic atlases with known icons: pyramid rules (one Deep Zoom pyramid per
grid, each with that grid's own icon size), icon placement, metadata, example crops, viewer files;
the stage contract (rerun, resume after kill -9, shards, inputs) through the CLI on the tiny demo
atlas."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image

from atlas.config import load_config
from atlas.ops.canvas import crop_box
from atlas.ops.dzi import grid_for_zoom, grid_switch_px, level_size, max_level, tile_bounds, tile_counts
from atlas.sources import load_image
from atlas.stages import get_stage, run_stage, stage_status, tile
from atlas.stages.tile._viewer import page_files, static_files
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
SIZES, TILE, OVERLAP = (2, 4), 24, 1
# Each grid's own icon size, coarser grids larger: round(16 * (4 / 2) ** 0.5) = 23, render's default
# icon_growth; 2 * 23 = 46 px is no multiple of the tile size and halves to odd level sizes.
ICONS = {2: 23, 4: 16}
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


def _tiny_atlas(run_dir: Path) -> dict:
    return make_atlas(run_dir, sizes=SIZES, icon=ICONS[SIZES[-1]], icon_sizes=ICONS)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    info = _tiny_atlas(run_dir)
    _run(run_dir)
    return run_dir, info


def _files(tiles: Path, s: int) -> Path:
    """Grid s's tile folder, ``grid-<s>_files``."""
    return tiles / f"{tile.dzi_name(s)}_files"


def _stitch(tiles: Path, s: int, level: int, w: int, h: int) -> np.ndarray:
    """Level ``level`` of grid s's pyramid reassembled from its tiles; overlapping pixels must agree."""
    out = np.full((h, w, 3), -1, np.int64)
    cols, rows = tile_counts(w, h, TILE)
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = tile_bounds(c, r, w, h, TILE, OVERLAP)
            arr = np.asarray(Image.open(_files(tiles, s) / str(level) / f"{c}_{r}.png").convert("RGB")).astype(np.int64)
            assert arr.shape == (y1 - y0, x1 - x0, 3), (s, level, c, r)
            region = out[y0:y1, x0:x1]
            seen = region[..., 0] >= 0
            assert (region[seen] == arr[seen]).all(), f"tiles disagree in their overlap at level {level} of grid {s}"
            region[...] = arr
    assert (out >= 0).all()
    return out


# --------------------------------------------------------------------------- pyramids


def test_every_grids_pyramid_follows_the_dzi_rules(tiny):
    run_dir, _ = tiny
    tiles = run_dir / "tiles"
    # one pyramid per grid and nothing else: no single atlas.dzi any more
    assert sorted(p.name for p in tiles.glob("*.dzi")) == sorted(f"{tile.dzi_name(s)}.dzi" for s in SIZES)
    assert sorted(p.name for p in tiles.glob("*_files")) == sorted(_files(tiles, s).name for s in SIZES)
    for s in SIZES:
        root = ET.parse(tiles / f"{tile.dzi_name(s)}.dzi").getroot()
        assert root.attrib == {"Format": "png", "Overlap": str(OVERLAP), "TileSize": str(TILE)}
        size = root.find(f"{NS}Size").attrib
        w, h = int(size["Width"]), int(size["Height"])
        assert (w, h) == (s * ICONS[s], s * ICONS[s])  # the grid's icons at native size
        top = max_level(w, h)
        assert sorted(int(p.name) for p in _files(tiles, s).iterdir()) == list(range(top + 1))
        for lv in range(top + 1):
            lw, lh = level_size(w, h, lv)
            cols, rows = tile_counts(lw, lh, TILE)
            names = {p.name for p in (_files(tiles, s) / str(lv)).iterdir()}
            assert names == {f"{c}_{r}.png" for c in range(cols) for r in range(rows)}, (s, lv)
            for c in range(cols):
                for r in range(rows):
                    x0, y0, x1, y1 = tile_bounds(c, r, lw, lh, TILE, OVERLAP)
                    with Image.open(_files(tiles, s) / str(lv) / f"{c}_{r}.png") as im:
                        assert im.size == (x1 - x0, y1 - y0), (s, lv, c, r)
            _stitch(tiles, s, lv, lw, lh)  # overlaps agree on every level


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
    tiles = run_dir / "tiles"
    count = info["count"][SIZES[-1]]
    assert (count < 2).any() and (count >= 2).any()  # the fixture has empty and non-empty cells
    assert ((count > 0) & (count < 2)).any()  # ... including one below min_count
    atlas = json.loads((tiles / "atlas.json").read_text())
    grids = {g["size"]: g for g in atlas["grids"]}
    assert [g["size"] for g in atlas["grids"]] == list(SIZES)
    for s in SIZES:
        # the top level of grid s's own pyramid: each icon at its native size at its cell
        w = s * ICONS[s]
        top = max_level(w, w)
        full = _stitch(tiles, s, top, w, w)
        np.testing.assert_array_equal(full, _expected_level(info, s, ICONS[s]))
        # the grids table describes that pyramid: icon size, canvas, levels, files
        g = grids[s]
        assert (g["icon_size"], g["width"], g["height"], g["max_level"]) == (ICONS[s], w, w, top)
        assert (tiles / g["dzi"]).is_file() and (tiles / g["dzi"]).name == f"{tile.dzi_name(s)}.dzi"
        assert (tiles / g["tiles_url"]).resolve() == _files(tiles, s).resolve()
        assert (tiles / g["cells"]).is_file() and g["cell_count"] == int((info["count"][s] >= 2).sum())
    # the zoom range of each grid: it is shown from the zoom where its pyramid's top level is at
    # native size (lod_fraction 1) until the next finer grid's is; the home view shows the coarsest
    icons = {g["size"]: g["icon_size"] for g in atlas["grids"]}
    frac = atlas["lod_fraction"]
    switch = grid_switch_px(atlas["sizes"], icons, frac)
    assert [switch[s] for s in SIZES] == sorted(switch.values()) and len(set(switch.values())) == len(SIZES)
    assert grid_for_zoom(atlas["sizes"], icons, 1.0, frac) == SIZES[0]
    for s in SIZES:
        assert grid_for_zoom(atlas["sizes"], icons, frac * grids[s]["width"], frac) == s
    finest = grids[SIZES[-1]]
    assert finest["width"] == atlas["width"] and finest["icon_size"] == atlas["icon_size"]
    assert grid_for_zoom(atlas["sizes"], icons, atlas["max_zoom"] * finest["width"], frac) == SIZES[-1]


def test_lower_levels_of_each_pyramid_are_its_grid_shrunk(tiny):
    run_dir, info = tiny
    tiles = run_dir / "tiles"
    for s in SIZES:
        w = s * ICONS[s]
        top = max_level(w, w)
        grid_px = _expected_level(info, s, ICONS[s]).astype(np.uint8)
        for lv in range(top):  # every level below the top: the same picture, smaller
            lw, _ = level_size(w, w, lv)
            arr = _stitch(tiles, s, lv, lw, lw)
            want = np.asarray(Image.fromarray(grid_px).resize((lw, lw), Image.Resampling.BOX)).astype(np.int64)
            assert np.abs(arr - want).mean() < 12, (s, lv)
        one = np.asarray(Image.open(_files(tiles, s) / "0" / "0_0.png").convert("RGB"))
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
    assert atlas["format"] == 2
    assert atlas["model"] == "synthetic-net" and atlas["layer"] == "blocks.5"
    assert atlas["n_images"] == info["n"] and atlas["sizes"] == list(SIZES)
    assert atlas["icon_size"] == ICONS[SIZES[-1]] and atlas["icon_sizes"] == {str(s): ICONS[s] for s in SIZES}
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
        icon, cols = ICONS[s], tile.sheet_cols(ICONS[s])
        per_sheet = cols ** 2
        cells = info["cells"][s]  # row-major non-empty cells = sheet slot order
        n_sheets = -(-len(cells) // per_sheet)
        assert {p.name for p in (run_dir / "tiles" / "icons" / str(s)).iterdir()} == {f"{k}.png" for k in range(n_sheets)}
        sheets = {k: np.asarray(Image.open(run_dir / "tiles" / "icons" / str(s) / f"{k}.png")) for k in range(n_sheets)}
        assert doc["icon_size"] == icon and doc["icon_sheet_cols"] == cols
        assert doc["icon_url"] == f"icons/{s}/{{sheet}}.png"
        by_cell = {(c["row"], c["col"]): c["icon"] for c in doc["cells"]}
        for j, (r, c) in enumerate(cells.tolist()):
            sheet, slot = by_cell[(r, c)]
            assert (sheet, slot) == divmod(j, per_sheet)
            y, x = (slot // cols) * icon, (slot % cols) * icon
            assert (sheets[sheet][y:y + icon, x:x + icon] == icon_colour(s, r, c)).all()
        last = sheets[n_sheets - 1]  # as many slot rows as the last sheet needs, at this grid's icon size
        assert last.shape[0] % icon == 0 and last.shape[1] == cols * icon


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

    pos = zarr.open_group(str(run_dir / "collect"), mode="r")["positions"][:]
    for row in sorted(want_rows)[:12]:
        img = load_image(manifest.locations[row], size=INPUT_SIZE, max_pixels=10 ** 8, min_side=1)
        top, left, bottom, right = crop_box(int(pos[row, 0]), int(pos[row, 1]), *LAYER_HW, INPUT_SIZE, 3.0)
        want = img[top:bottom, left:right].astype(np.int64)
        got = np.asarray(Image.open(run_dir / "tiles" / "examples" / f"{row}.jpg").convert("RGB")).astype(np.int64)
        assert got.shape == want.shape == (24, 24, 3)  # 3 layer cells of 56 / 7 = 8 px
        assert np.abs(got - want).mean() < 6


def _relative(ref: str) -> bool:
    return not re.match(r"^(/|[a-z]+:)", ref)


def test_viewer_files_are_relative_and_complete(tiny):
    run_dir, _ = tiny
    tiles = run_dir / "tiles"
    for name in ("index.html", "viewer.js", "viewer.css", "atlas.js", "openseadragon/openseadragon.min.js",
                 "openseadragon/images/zoomin_rest.png", "openseadragon/LICENSE.txt",
                 *(f"{tile.dzi_name(s)}.dzi" for s in SIZES), *(f"cells-{s}.js" for s in SIZES)):
        assert (tiles / name).is_file(), name
    html = (tiles / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(not re.match(r"^(/|[a-z]+://)", r) for r in refs if not r.startswith("data:")), refs
    for r in refs:
        if not r.startswith("data:"):
            assert (tiles / r).is_file(), r
    assert "http://" not in (tiles / "viewer.js").read_text().replace("http://schemas.microsoft.com", "")
    for part in page_files(tile.viewer_source_dir()):  # every part of the viewer: nothing from the network
        assert (tiles / part).is_file() and "http://" not in (tiles / part).read_text().replace("http://schemas.microsoft.com", "")
    # everything atlas.json points the viewer at is relative and there: pyramids, cells, icons, heat, examples
    atlas = json.loads((tiles / "atlas.json").read_text())
    for g in atlas["grids"]:
        s = g["size"]
        for ref in (g["dzi"], g["tiles_url"], g["cells"]):
            assert _relative(ref) and (tiles / ref).exists(), ref
        doc = json.loads((tiles / f"cells-{s}.json").read_text())
        assert _relative(doc["icon_url"]) and _relative(doc["example_url"])
        for cell in doc["cells"]:
            assert (tiles / doc["icon_url"].format(sheet=cell["icon"][0])).is_file()
            for row in cell["examples"]:
                assert (tiles / doc["example_url"].format(row=row)).is_file()
        for i, k in enumerate(atlas["search_classes"]):
            path = tiles / atlas["heat_url"].format(size=s, **{"class": k})
            assert path.is_file() == (atlas["class_cells"][str(s)][i] > 0), path
    assert _relative(atlas["heat_url"])


def test_the_viewer_files_are_the_ones_index_html_loads(tmp_path):
    """One list of the viewer's parts, index.html's: it loads every script of atlas/viewer (core.js
    first, the extensions after viewer.js), and tile copies exactly those, index.html last."""
    src = tile.viewer_source_dir()
    parts = page_files(src)
    scripts = [p for p in parts if p.endswith(".js")]
    assert sorted(scripts) == sorted(p.name for p in src.glob("*.js")) and "viewer.css" in parts
    assert scripts[0] == "core.js" and scripts.index("viewer.js") < scripts.index("located.js")
    assert scripts.index("viewer.js") < scripts.index("atlases.js")
    files = static_files()
    assert list(files)[-1] == "index.html" and all(files[p] == src / p for p in parts)
    assert not [f for f in files if "eslint" in f or f.startswith("node_modules")]  # the lint is development only
    # a part index.html loads but the install lacks: one line naming it
    broken = tmp_path / "viewer"
    shutil.copytree(src, broken)
    (broken / "index.html").write_text((src / "index.html").read_text().replace(
        '<script src="viewer.js">', '<script src="heatmaps.js"></script>\n<script src="viewer.js">'))
    with pytest.raises(FileNotFoundError, match=r"loads heatmaps\.js, missing from"):
        page_files(broken)


def test_status_reports_done(tiny):
    run_dir, _ = tiny
    st = stage_status(STAGE, RunDir(run_dir))
    assert st.state == "done" and st.done == st.total and st.detail["tiles"] > 0
    assert st.detail["grids"] == list(SIZES) and st.detail["output"] == str(run_dir / "tiles")
    assert st.detail["icon_sizes"] == {str(s): ICONS[s] for s in SIZES}
    w = SIZES[-1] * ICONS[SIZES[-1]]
    assert st.detail["size"] == f"{w}x{w}"  # the finest grid's pyramid
    # the counts are those of every grid's pyramid
    tiles = run_dir / "tiles"
    assert st.detail["tiles"] == sum(1 for s in SIZES for p in _files(tiles, s).rglob("*.png"))
    assert st.detail["levels"] == sum(max_level(s * ICONS[s], s * ICONS[s]) + 1 for s in SIZES)


# --------------------------------------------------------------------------- reruns, settings


def test_index_html_comes_last_and_viewer_files_are_refreshed(tiny, tmp_path):
    ref, _ = tiny
    run_dir = tmp_path / "run"
    _tiny_atlas(run_dir)
    assert not _run(run_dir, shard=(0, 2))
    assert not (run_dir / "tiles" / "index.html").exists()  # half the units: not finished
    assert not (run_dir / "tiles" / "atlas.json").exists()
    assert _run(run_dir, shard=(1, 2))
    assert _tree(run_dir / "tiles") == _tree(ref / "tiles")
    # a finished folder gets the installed viewer's files back when they differ (newer atlas)
    (run_dir / "tiles" / "viewer.css").write_text("/* old */")
    _run(run_dir)
    assert _tree(run_dir / "tiles") == _tree(ref / "tiles")


def test_local_processes_and_the_dask_engine_write_the_same_bytes(tiny, tmp_path):
    """cluster.processes: units on spawned processes, gone when the shard ends; the dask engine
    (a LocalCluster of worker processes): the shards as tasks. Both: the in-process bytes."""
    import psutil
    from dask.distributed import get_task_stream

    from atlas.cluster import dask_client, run_stage_on_dask

    ref, _ = tiny
    run_dir = tmp_path / "pool"
    _tiny_atlas(run_dir)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert _run(run_dir, "cluster.processes=2")
    assert _tree(run_dir / "tiles") == _tree(ref / "tiles")
    assert "tasks on 2 spawned processes" in (run_dir / "logs" / "tile-0of1.log").read_text()
    left = [p for p in psutil.Process().children(recursive=True)
            if p.pid not in before and "resource_tracker" not in " ".join(p.cmdline())]
    assert not left, [p.cmdline() for p in left]
    run_dir = tmp_path / "dask"
    _tiny_atlas(run_dir)
    cfg = load_config(None, _overrides(run_dir, "cluster.engine=dask", "cluster.workers=2", "cluster.tasks=3",
                                       "cluster.processes=2"))  # ignored on dask: its tasks are the parallelism
    with dask_client(cfg.cluster, cfg.run_dir) as client, get_task_stream(client) as stream:
        run_stage_on_dask(client, "tile", cfg)
    assert len({t["worker"] for t in stream.data}) >= 1 and len(stream.data) >= 3
    assert _tree(run_dir / "tiles") == _tree(ref / "tiles")
    assert "spawned processes" not in (run_dir / "logs" / "tile-0of3.log").read_text()


def test_other_settings_start_over(tmp_path):
    run_dir = tmp_path / "run"
    info = _tiny_atlas(run_dir)
    _run(run_dir)
    _run(run_dir, "tile.tile_size=40", "tile.format=jpg")
    tiles = run_dir / "tiles"
    assert not list(tiles.rglob("*.png")) or all("openseadragon" in str(p) for p in tiles.rglob("*.png"))
    atlas = json.loads((tiles / "atlas.json").read_text())
    assert atlas["dzi"] == {"format": "jpg", "tile_size": 40, "overlap": OVERLAP}
    for s in SIZES:
        root = ET.parse(tiles / f"{tile.dzi_name(s)}.dzi").getroot()
        assert (root.attrib["TileSize"], root.attrib["Format"]) == ("40", "jpg")
        w = s * ICONS[s]
        top = max_level(w, w)
        assert sorted(int(p.name) for p in _files(tiles, s).iterdir()) == list(range(top + 1))
        cols, rows = tile_counts(w, w, 40)
        assert (cols, rows) == (2, 2)  # 46 and 64 px: 2 x 2 tiles of 40 (4 x 4 and 3 x 3 of 24 before)
        assert {p.name for p in (_files(tiles, s) / str(top)).iterdir()} == \
            {f"{c}_{r}.jpg" for c in range(cols) for r in range(rows)}
        assert {p.name for p in (tiles / "icons" / str(s)).iterdir()} == {"0.jpg"}
        want = _expected_level(info, s, ICONS[s])
        for c in range(cols):  # each new tile: its bounds under the new tile size, the grid's pixels there
            for r in range(rows):
                x0, y0, x1, y1 = tile_bounds(c, r, w, w, 40, OVERLAP)
                got = np.asarray(Image.open(_files(tiles, s) / str(top) / f"{c}_{r}.jpg").convert("RGB")).astype(np.int64)
                assert got.shape == (y1 - y0, x1 - x0, 3), (s, c, r)
                assert np.abs(got - want[y0:y1, x0:x1]).mean() < 8, (s, c, r)  # jpg: close, not exact


def test_only_rendered_levels_are_tiled(tmp_path):
    run_dir = tmp_path / "run"
    info = make_atlas(run_dir, sizes=(2, 4, 8), icon=8, icon_sizes={2: 16, 4: 11, 8: 8})
    shutil.rmtree(run_dir / "render" / "level-4")  # as with render.levels: [2, 8]
    _run(run_dir, "grid.sizes=[2, 4, 8]", "tile.example_levels=1")
    tiles = run_dir / "tiles"
    atlas = json.loads((tiles / "atlas.json").read_text())
    assert atlas["sizes"] == [2, 8] and atlas["width"] == 64
    assert [(g["size"], g["icon_size"], g["width"]) for g in atlas["grids"]] == [(2, 16, 32), (8, 8, 64)]
    assert atlas["icon_sizes"] == {"2": 16, "8": 8} and set(atlas["cells"]) == set(atlas["class_cells"]) == {"2", "8"}
    assert sorted(p.name for p in tiles.glob("*.dzi")) == ["grid-2.dzi", "grid-8.dzi"]
    assert not (tiles / "grid-4_files").exists() and not (tiles / "heat" / "4").exists()
    assert not (tiles / "cells-4.json").exists() and not (tiles / "icons" / "4").exists()
    assert json.loads((tiles / "cells-2.json").read_text())["cells"][0]["examples"] == []  # finest level only
    want = {int(e) for e in info["examples"][8][info["count"][8] >= 2].ravel() if e >= 0}
    assert {p.name for p in (tiles / "examples").iterdir()} == {f"{r}.jpg" for r in want}


def _lit_box(cell: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) of the non-black pixels of a cell (the icon on a black background)."""
    ys, xs = np.nonzero(cell.sum(axis=2) > 0)
    return (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1) if ys.size else None


def test_density_scale_shrinks_sparse_cells(tmp_path):
    run_dir = tmp_path / "run"
    info = _tiny_atlas(run_dir)
    # one very dense cell raises grid 4's mean count so far that its sparsest cells reach the 0.4 floor
    cnt = zarr.open_group(str(run_dir / "grid"), mode="r+")["level-4/count"]
    count4 = np.asarray(cnt[...])
    count4[1, 1] = 200
    cnt[...] = count4
    info["count"][4] = count4
    _run(run_dir, "tile.density_scale=true", "tile.background='#000000'", "tile.example_levels=0")
    seen = set()
    for s in SIZES:
        icon, w = ICONS[s], s * ICONS[s]
        full = _stitch(run_dir / "tiles", s, max_level(w, w), w, w)
        count = info["count"][s]
        mean = count[count >= 2].mean()  # the mean over the grid's non-empty cells
        for r, c in np.argwhere(count >= 2).tolist():
            block = full[r * icon:(r + 1) * icon, c * icon:(c + 1) * icon]
            ratio = np.sqrt(count[r, c] / mean)
            side = icon * min(max(ratio, 0.4), 1.0)
            seen.add("full" if ratio >= 1 else "floor" if ratio < 0.4 else "sqrt")
            y0, x0, y1, x1 = _lit_box(block)
            assert abs((x1 - x0) - side) <= 1 and abs((y1 - y0) - side) <= 1, (s, r, c, (y0, x0, y1, x1), side)
            assert abs(x0 - (icon - x1)) <= 1 and abs(y0 - (icon - y1)) <= 1, (s, r, c)  # centred in its cell
            assert (block[y0:y1, x0:x1] == icon_colour(s, r, c)).all(), (s, r, c)  # the icon, whole
            if side <= icon - 1:  # a sparse cell: a whole pixel smaller, background around
                assert (block[0, 0] == 0).all() and (block[-1, -1] == 0).all() and x1 - x0 < icon, (s, r, c)
        for r, c in np.argwhere(count < 2).tolist():
            assert (full[r * icon:(r + 1) * icon, c * icon:(c + 1) * icon] == 0).all()  # empty cells stay blank
    assert seen == {"full", "sqrt", "floor"}
    assert not (run_dir / "tiles" / "examples").exists()


def test_missing_inputs_and_missing_openseadragon_are_explained(tmp_path, monkeypatch):
    import atlas.viewer_assets as assets

    with pytest.raises(StoreError, match=r"needs a finished `collect`, which is not started .*`atlas collect "):
        _run(tmp_path / "empty")
    _tiny_atlas(tmp_path / "run")
    for name in ("packaged", "checkout"):
        (tmp_path / name).mkdir()
    monkeypatch.setattr(assets, "PACKAGED_OPENSEADRAGON", tmp_path / "packaged")
    monkeypatch.setattr(assets, "CHECKOUT_ROOT", tmp_path / "checkout")
    monkeypatch.delenv("ATLAS_OPENSEADRAGON", raising=False)
    with pytest.raises(assets.ViewerAssetsMissing, match=r"make setup.*npm ci --prefix viewer.*reinstall") as e:
        _run(tmp_path / "run")
    assert str(tmp_path / "packaged") in str(e.value) and str(tmp_path / "checkout") in str(e.value)  # where it looked
    assert not (tmp_path / "run" / "tiles").exists()  # refused before any work
    state = tmp_path / "run" / "state" / "tile"
    assert not (state / "done").exists() and not (state / "plan.json").exists()


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
