"""The tile stage's level of detail, class heatmap and panel data on synthetic atlases: one
Deep Zoom pyramid per grid with that grid's own icon size, at native resolution on its top
level; the grids table and switch rule in atlas.json; heat files that decode to the grid's
class attribution; example outline boxes and labels; the top class's share; the class kinds
a grid without class attribution falls back to; Distill's density rule; shards agree."""

from __future__ import annotations

import base64
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image

from atlas.config import load_config
from atlas.ops.canvas import crop_box
from atlas.ops.dzi import grid_for_zoom, level_size, max_level, tile_bounds, tile_counts
from atlas.stages import get_stage, run_stage
from atlas.stages.tile import dzi_name, example_box, heat_doc, heat_values, sheet_cols
from tests.stages.contract import mark_finished
from tests.synthetic_atlas import INPUT_SIZE, LAYER_HW, icon_colour, label_name, make_atlas

STAGE = get_stage("tile")
SIZES, TILE, OVERLAP = (2, 4, 8), 32, 1
ICONS = {2: 40, 4: 28, 8: 20}  # coarser grids, larger icons
NS = "{http://schemas.microsoft.com/deepzoom/2008}"


def _tile(run_dir: Path, *more: str, shard: tuple[int, int] = (0, 1)) -> bool:
    over = [f"run_dir={run_dir}", f"grid.sizes={list(SIZES)}", "grid.min_count=2", "tile.format=png",
            f"tile.tile_size={TILE}", f"tile.overlap={OVERLAP}", "tile.unit_tiles=3", *more]
    return run_stage(STAGE, load_config(None, over), shard)


def _atlas(run_dir: Path, **kw: Any) -> dict:
    kw = {"sizes": SIZES, "icon": ICONS[SIZES[-1]], "icon_sizes": ICONS, "examples": 3, "n_labels": 3, **kw}
    info = make_atlas(run_dir, **kw)
    mark_finished(run_dir, "collect", "reduce", "grid", "render")
    return info


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("lod") / "run"
    info = _atlas(run_dir)
    _tile(run_dir)
    return run_dir, info


def _stitch(tiles: Path, s: int, level: int, w: int, h: int) -> np.ndarray:
    out = np.full((h, w, 3), -1, np.int64)
    cols, rows = tile_counts(w, h, TILE)
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = tile_bounds(c, r, w, h, TILE, OVERLAP)
            arr = np.asarray(Image.open(tiles / f"{dzi_name(s)}_files" / str(level) / f"{c}_{r}.png").convert("RGB"))
            region = out[y0:y1, x0:x1]
            seen = region[..., 0] >= 0
            assert (region[seen] == arr[seen]).all(), "tiles disagree in their overlap"
            region[...] = arr
    assert (out >= 0).all()
    return out


def _expected(info: dict, s: int, cell: int) -> np.ndarray:
    out = np.full((s * cell, s * cell, 3), 255, np.int64)
    for r, c in info["cells"][s]:
        out[r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = icon_colour(s, int(r), int(c))
    return out


def _js_doc(path: Path, var: str) -> dict:
    m = re.fullmatch(rf"window\.{var} = (.*);\n", path.read_text(), re.S)
    assert m, path
    return json.loads(m[1])


def _heat(doc: dict) -> np.ndarray:
    """A heat file's values, uint8 [s * s] (as the viewer's data.js decodes them)."""
    out = np.zeros(doc["size"] ** 2, np.uint8)
    values = np.frombuffer(base64.b64decode(doc["values"]), np.uint8)
    if doc["encoding"] == "sparse":
        out[np.frombuffer(base64.b64decode(doc["index"]), "<u4")] = values
    else:
        out[:] = values
    return out


# --------------------------------------------------------------------------- pyramids


def test_one_pyramid_per_grid_at_its_icons_native_size(built):
    run_dir, info = built
    tiles = run_dir / "tiles"
    assert not (tiles / "atlas.dzi").exists()
    for s in SIZES:
        w = s * ICONS[s]
        root = ET.parse(tiles / f"{dzi_name(s)}.dzi").getroot()
        assert root.attrib == {"Format": "png", "Overlap": str(OVERLAP), "TileSize": str(TILE)}
        assert root.find(f"{NS}Size").attrib == {"Width": str(w), "Height": str(w)}
        top = max_level(w, w)
        assert sorted(int(p.name) for p in (tiles / f"{dzi_name(s)}_files").iterdir()) == list(range(top + 1))
        # the top level: every icon at its native size, at its cell
        np.testing.assert_array_equal(_stitch(tiles, s, top, w, w), _expected(info, s, ICONS[s]))
        # one level down: the same grid, shrunk
        lw, _ = level_size(w, w, top - 1)
        want = np.asarray(Image.fromarray(_expected(info, s, ICONS[s]).astype(np.uint8)).resize((lw, lw), Image.Resampling.BOX))
        assert np.abs(_stitch(tiles, s, top - 1, lw, lw) - want).mean() < 10


def test_atlas_json_describes_the_grids_and_the_switch_rule(built):
    run_dir, info = built
    atlas = json.loads((run_dir / "tiles" / "atlas.json").read_text())
    assert atlas["format"] == 2 and atlas["sizes"] == list(SIZES)
    assert atlas["icon_size"] == ICONS[SIZES[-1]] and atlas["icon_sizes"] == {str(s): ICONS[s] for s in SIZES}
    assert [(g["size"], g["icon_size"], g["width"], g["dzi"], g["cells"]) for g in atlas["grids"]] == \
        [(s, ICONS[s], s * ICONS[s], f"grid-{s}.dzi", f"cells-{s}.js") for s in SIZES]
    assert atlas["width"] == SIZES[-1] * ICONS[SIZES[-1]]
    assert (atlas["lod_fraction"], atlas["home_cell_px"], atlas["max_zoom"], atlas["label_min_share"]) == (1.0, 100, 2.0, 0.0)
    # zooming in, grid s takes over when its cells reach its icon size
    for s in SIZES[1:]:
        assert grid_for_zoom(SIZES, ICONS, s * ICONS[s] - 1) < s <= grid_for_zoom(SIZES, ICONS, s * ICONS[s])
    for s in SIZES:
        doc = json.loads((run_dir / "tiles" / f"cells-{s}.json").read_text())
        assert doc["icon_size"] == doc["cell_px"] == ICONS[s] and doc["icon_sheet_cols"] == sheet_cols(ICONS[s])
        sheet = np.asarray(Image.open(run_dir / "tiles" / "icons" / str(s) / "0.png").convert("RGB"))
        first = doc["cells"][0]
        assert first["icon"] == [0, 0]
        assert (sheet[:ICONS[s], :ICONS[s]] == icon_colour(s, first["row"], first["col"])).all()
    assert sheet_cols(80) == 16 and sheet_cols(453) == 4  # large coarse icons: smaller sheets


# --------------------------------------------------------------------------- class heatmap


def test_heat_files_decode_to_the_class_attribution(built):
    run_dir, info = built
    tiles = run_dir / "tiles"
    atlas = json.loads((tiles / "atlas.json").read_text())
    assert atlas["top_kind"] == "attribution" and atlas["values"]["unit"] == "logit"
    assert atlas["heat_url"] == "heat/{size}/{class}.js" and atlas["search_classes"] == list(range(20))
    for s in SIZES:
        count = info["count"][s]
        ca = np.nan_to_num(info["class_attribution"][s].astype(np.float32), nan=0.0)
        ca[count < 2] = 0
        for i, k in enumerate(atlas["search_classes"]):
            v = ca[:, :, k].ravel()
            n_pos = int((v > 0).sum())
            assert atlas["class_cells"][str(s)][i] == n_pos
            path = tiles / "heat" / str(s) / f"{k}.js"
            assert path.exists() == (n_pos > 0)
            if not n_pos:
                continue
            doc = _js_doc(path, f"ATLAS_HEAT_{s}_{k}")
            assert doc["size"] == s and doc["class"] == k and doc["cells"] == n_pos
            assert doc["max"] == pytest.approx(float(v.max()), rel=1e-5)
            q = _heat(doc)
            assert ((q > 0) == (v > 0)).all()
            np.testing.assert_allclose(q[v > 0] / 255.0, v[v > 0] / v.max(), atol=1 / 255 + 1e-6)  # tiny values: 1
        # the count of cells where each class is the top one adds up to the non-empty cells
        assert sum(atlas["class_top"][str(s)]) == int((count >= 2).sum())
    # a graded map: the finest grid's heat for a class holds many levels, not on / off
    doc = _js_doc(tiles / "heat" / str(SIZES[-1]) / "3.js", f"ATLAS_HEAT_{SIZES[-1]}_3")
    assert len(np.unique(_heat(doc)[_heat(doc) > 0])) > 5


def test_heat_encoding_is_the_shorter_of_dense_and_sparse():
    v = np.zeros(256, np.float32)
    v[[3, 40]] = [0.5, 2.0]
    q, vmax = heat_values(v)
    assert vmax == 2.0 and q[3] == 64 and q[40] == 255 and q.sum() == 64 + 255
    doc = heat_doc(16, 7, q, vmax)
    assert doc["encoding"] == "sparse" and (_heat(doc) == q).all()
    dense = heat_doc(16, 7, np.full(256, 9, np.uint8), 1.0)
    assert dense["encoding"] == "dense" and (_heat(dense) == 9).all()
    tiny, _ = heat_values(np.array([1e-9, 1.0, -1.0]))
    assert tiny.tolist() == [1, 255, 0]  # any positive value stays visible; negatives are 0


# --------------------------------------------------------------------------- the click panel's data


def test_examples_carry_their_position_and_label_and_cells_their_top_share(built):
    run_dir, info = built
    lh, lw = LAYER_HW
    pos = np.asarray(zarr.open_group(str(run_dir / "collect"), mode="r")["positions"][...])
    atlas = json.loads((run_dir / "tiles" / "atlas.json").read_text())
    assert atlas["label_names"] == [label_name(k) for k in range(3)] and atlas["example_window"] == 3.0
    assert atlas["layer_shape"] == [16, lh, lw] and atlas["input_size"] == INPUT_SIZE
    for s in SIZES:
        doc = json.loads((run_dir / "tiles" / f"cells-{s}.json").read_text())
        ca = np.nan_to_num(info["class_attribution"][s].astype(np.float32), nan=0.0)
        for cell in doc["cells"]:
            assert len(cell["example_positions"]) == len(cell["example_labels"]) == len(cell["examples"]) > 0
            for row, yx, label in zip(cell["examples"], cell["example_positions"], cell["example_labels"]):
                assert yx == pos[row].tolist() and label == int(info["labels"][row])
            v = ca[cell["row"], cell["col"]]
            assert cell["share"] == pytest.approx(v.max() / v[v > 0].sum(), abs=6e-4)  # 3 digits
    # the outline: the input-image patch of the sampled position, inside its crop
    y, x = 3, 1
    top, left, bottom, right = crop_box(y, x, lh, lw, INPUT_SIZE, 3.0)
    box = example_box(y, x, [16, lh, lw], INPUT_SIZE, 3.0)
    assert box == pytest.approx([(y * 8 - top) / (bottom - top), (x * 8 - left) / (right - left),
                                 ((y + 1) * 8 - top) / (bottom - top), ((x + 1) * 8 - left) / (right - left)])
    assert box == pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])  # 3 layer cells wide, centred
    assert example_box(0, 6, [16, lh, lw], INPUT_SIZE, 3.0) == pytest.approx([0, 2 / 3, 1 / 3, 1])  # shifted at the edge


def test_label_min_share_and_viewer_settings_reach_atlas_json(tmp_path):
    run_dir = tmp_path / "run"
    _atlas(run_dir, sizes=(2, 4), icon_sizes={2: 24, 4: 16}, icon=16)
    over = ["grid.sizes=[2, 4]", "tile.label_min_share=0.3", "tile.home_cell_px=80", "tile.max_zoom=3", "tile.lod_fraction=0.7"]
    run_stage(STAGE, load_config(None, [f"run_dir={run_dir}", "grid.min_count=2", "tile.format=png", *over]))
    atlas = json.loads((run_dir / "tiles" / "atlas.json").read_text())
    assert (atlas["label_min_share"], atlas["home_cell_px"], atlas["max_zoom"], atlas["lod_fraction"]) == (0.3, 80, 3.0, 0.7)


@pytest.mark.parametrize("kind", ["attribution-top", "labels"])
def test_heatmap_falls_back_to_top_classes_or_labels(tmp_path, kind):
    run_dir = tmp_path / "run"
    info = _atlas(run_dir, sizes=(2, 4), icon_sizes={2: 24, 4: 16}, icon=16, class_attribution=False,
                  attribution=kind != "labels")
    run_stage(STAGE, load_config(None, [f"run_dir={run_dir}", "grid.sizes=[2, 4]", "grid.min_count=2", "tile.format=png"]))
    tiles = run_dir / "tiles"
    atlas = json.loads((tiles / "atlas.json").read_text())
    assert atlas["top_kind"] == kind
    s, count = 4, info["count"][4]
    if kind == "labels":  # the share of the cell's images carrying each source label
        assert atlas["class_names"] == [label_name(k) for k in range(3)] and atlas["values"]["unit"] == "share"
        lc = np.asarray(zarr.open_group(str(run_dir / "grid"), mode="r")["level-4/label_counts"][...], np.float64)
        cells = json.loads((tiles / "cells-4.json").read_text())["cells"]
        assert all(c["top"] and c["top"][0]["name"].startswith("photo-") for c in cells)
        for k in range(3):
            want = np.where(count >= 2, lc[:, :, k] / np.maximum(count, 1), 0).ravel()
            doc = _js_doc(tiles / "heat" / "4" / f"{k}.js", f"ATLAS_HEAT_4_{k}")
            assert doc["max"] == pytest.approx(want.max(), rel=1e-5)
            np.testing.assert_allclose(_heat(doc) / 255.0 * doc["max"], want, atol=doc["max"] / 255)
    else:  # only each cell's top classes are known
        cls = info["top_classes"][s]
        k = int(cls[count >= 2][0][0])
        doc = _js_doc(tiles / "heat" / "4" / f"{k}.js", f"ATLAS_HEAT_4_{k}")
        has = ((cls == k).any(axis=2) & (count >= 2)).ravel()
        assert ((_heat(doc) > 0) == has).all()  # only the cells where k is a top class


def test_density_scale_is_distills_rule(tmp_path):
    run_dir = tmp_path / "run"
    info = _atlas(run_dir, sizes=(2, 4), icon_sizes={2: 40, 4: 32}, icon=32, examples=1)
    run_stage(STAGE, load_config(None, [f"run_dir={run_dir}", "grid.sizes=[2, 4]", "grid.min_count=2", "tile.format=png",
                                        "tile.density_scale=true", "tile.background='#000000'", "tile.example_levels=0"]))
    count = info["count"][4]
    mean = count[count >= 2].mean()
    w = 4 * 32
    top = max_level(w, w)
    img = np.asarray(Image.open(run_dir / "tiles" / "grid-4_files" / str(top) / "0_0.png").convert("RGB"))
    for r, c in info["cells"][4]:
        cell = img[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]
        lit = int((cell.sum(axis=2) > 0)[16].sum())  # the icon's width across the cell's middle row
        want = round(32 * float(np.clip(np.sqrt(count[r, c] / mean), 0.4, 1.0)))
        assert abs(lit - want) <= 1, (r, c, lit, want)


def test_two_shards_write_what_one_does(built, tmp_path):
    """The new units (per-grid tiles, heat) are deterministic and split over shards like the others."""
    src, _ = built
    run_dir = tmp_path / "run"
    _atlas(run_dir)
    _tile(run_dir, shard=(0, 2))
    _tile(run_dir, shard=(1, 2))

    def tree(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b = tree(src / "tiles"), tree(run_dir / "tiles")
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k] != b[k] and not k.startswith("examples/")]
    assert differ == []
