"""`atlas locate`: every position of new images placed on the whole tiny atlas (real network, real
Zarr), through the API, the CLI (in this process) and the viewer (chromium, from disk); the stage
contract (rerun, resume after kill -9, shards, inputs) through the CLI (:class:`TestLocateContract`).

The tiny atlas (tests/cluster/util.py WHOLE) collected demo images 0-63; images 64 and up are
held out: seeded crops of the same 16 photos (image i is a crop of photo i % 16) that the atlas
never saw.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image

from atlas import api
from atlas.cli import main
from atlas.config import LocateConfig
from atlas.ops.binning import cell_ids
from atlas.sources._demo import demo_image, demo_label, demo_location
from atlas.stages import get_stage, run_stage
from atlas.stages.locate import FILES
from atlas.stages.locate._atlas import load_placer
from atlas.store import RunDir
from tests.browser import launched
from tests.stages.contract import StageContract, copy_run

HELD_OUT = tuple(range(64, 72))  # never collected: the tiny atlas has images.demo_count=64
SIZE = 96  # images.demo_size of the tiny atlas
FOLDER_IMAGE = 75


def _cfg(run_dir: Path, *more: str) -> Any:
    return api.load(str(run_dir / "config.yaml"), [f"run_dir={run_dir}", *more])


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the user's images: one JPEG (held-out demo image 75) and a file that is no image."""
    folder = tmp_path_factory.mktemp("photos") / "my photos"
    (folder / "bad").mkdir(parents=True)
    demo_image(FOLDER_IMAGE, 160).save(folder / "Cat Photo.JPG", format="JPEG", quality=90)
    (folder / "bad" / "broken.png").write_bytes(b"this is not a png at all")
    return folder


@pytest.fixture(scope="module")
def located(whole_run: Path, photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A copy of the whole tiny atlas with the held-out images and the folder located."""
    run_dir = copy_run(whole_run, tmp_path_factory.mktemp("locate") / "run")
    doc = api.locate(_cfg(run_dir), [*(demo_location(i, SIZE) for i in HELD_OUT), str(photos)])
    return run_dir, doc


def _source_index(source: str) -> int:
    return FOLDER_IMAGE if not source.startswith("demo://") else int(source.rsplit("/", 1)[1])


def test_outputs_of_each_located_image(located: tuple[Path, dict[str, Any]], photos: Path) -> None:
    run_dir, doc = located
    out = run_dir / "locate"
    col, grid = zarr.open_group(str(run_dir / "collect")), zarr.open_group(str(run_dir / "grid"))
    _, h, w = col.attrs["layer_shape"]
    sizes = sorted(grid.attrs["sizes"])
    assert len(doc["images"]) == len(HELD_OUT) + 1 and doc["output"] == str(out)
    assert {d["source"] for d in doc["images"]} == {*(demo_location(i, SIZE) for i in HELD_OUT),
                                                    str(photos / "Cat Photo.JPG")}
    for entry in doc["images"]:
        unit = out / entry["unit"]
        assert sorted(p.name for p in unit.iterdir()) == sorted(FILES)
        xy = np.load(unit / "positions.npy")
        assert xy.shape == (h, w, 2) and xy.dtype == np.float32 and ((xy >= 0) & (xy <= 1)).all()
        ld = json.loads((unit / "located.json").read_text())
        assert ld["layer_grid"] == [h, w] and ld["sizes"] == sizes and len(ld["positions"]) == h * w
        assert len(ld["top_classes"]) == 5 and all(t["name"] for t in ld["top_classes"])
        for s in sizes:
            ids = cell_ids(xy.reshape(-1, 2), s)
            cells = np.array([p["cells"][str(s)] for p in ld["positions"]])
            assert ((cells >= 0) & (cells < s)).all()
            np.testing.assert_array_equal(cells[:, 0] * s + cells[:, 1], ids)
        np.testing.assert_allclose([p["xy"] for p in ld["positions"]], xy.reshape(-1, 2), atol=1e-6)
        lc = LocateConfig()
        assert Image.open(unit / "overlay.png").size == (2 * lc.picture_px + 8, lc.picture_px)
        assert Image.open(unit / "activation-grid.png").size == (w * lc.icon_px, h * lc.icon_px)
        pts = json.loads((unit / "points.js").read_text().split(" = ", 1)[1].rstrip(";\n"))
        assert len(pts["points"]) == h * w and pts["level"] == max(sizes)
    index = json.loads((out / "index.json").read_text())
    assert [d["unit"] for d in index["images"]] == sorted(d["unit"] for d in doc["images"])
    assert (out / "index.js").read_text().startswith("window.ATLAS_LOCATED = ")
    assert next(st for st in api.status(run_dir)["stages"] if st["stage"] == "locate")["located"] == len(HELD_OUT) + 1


def test_locate_keeps_the_runs_config_and_records_its_images_in_its_state(whole_run: Path, photos: Path,
                                                                          located: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = located
    assert (run_dir / "config.yaml").read_bytes() == (whole_run / "config.yaml").read_bytes()
    recorded = api.load(str(run_dir / "state" / "locate" / "config.yaml"), [f"run_dir={run_dir}"]).locate.images
    assert recorded == [*(demo_location(i, SIZE) for i in HELD_OUT), str(photos)]


def test_a_bad_image_file_is_skipped_and_recorded(located: tuple[Path, dict[str, Any]], photos: Path) -> None:
    run_dir, doc = located
    bad = str(photos / "bad" / "broken.png")
    assert [(d["source"], d["status"]) for d in doc["skipped"]] == [(bad, 2)]
    assert "not an image" in doc["skipped"][0]["reason"]
    lines = (run_dir / "locate" / "bad_inputs.tsv").read_text().splitlines()
    assert lines[0] == "unit\tlocation\tstatus\treason" and lines[1].split("\t")[1:3] == [bad, "2"]
    assert not (run_dir / "locate" / doc["skipped"][0]["unit"]).exists()


def test_held_out_positions_land_in_their_own_photos_cells(located: tuple[Path, dict[str, Any]]) -> None:
    """The share of positions in cells whose majority photo is the image's own, against chance: the
    share of the atlas's rows in such cells (cells drawn as a random collected row lands)."""
    run_dir, doc = located
    grid = zarr.open_group(str(run_dir / "grid"))
    for s in grid.attrs["sizes"]:
        counts = grid[f"level-{s}/label_counts"][...]
        rows = counts.sum(axis=2)
        majority = np.where(rows > 0, counts.argmax(axis=2), -1)
        share, chance = [], []
        for entry in doc["images"]:
            label = demo_label(_source_index(entry["source"]))
            ld = json.loads((run_dir / "locate" / entry["unit"] / "located.json").read_text())
            cells = np.array([p["cells"][str(s)] for p in ld["positions"]])
            share.append(np.mean(majority[cells[:, 0], cells[:, 1]] == label))
            chance.append(rows[majority == label].sum() / rows.sum())
        assert np.mean(share) > 3 * np.mean(chance), (s, np.mean(share), np.mean(chance))


@pytest.fixture(scope="module")
def placed_run(whole_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny atlas's collect, reduced with UMAP fitted on 40 of its 64 rows: 24 rows are placed."""
    run_dir = tmp_path_factory.mktemp("placed") / "run"
    run_dir.mkdir()
    for part in ("collect", "state/collect", "manifest.tsv", "manifest.json", "config.yaml"):
        src = whole_run / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, run_dir / part)
    run_stage(get_stage("reduce"), _cfg(run_dir, "reduce.fit_max=40"))
    return run_dir


def test_the_placement_is_reduces_exactly(placed_run: Path) -> None:
    """The kernel locate uses gives reduce's stored raw and normalised coordinates, bit for bit, for
    the rows reduce placed (vectors as collect stored them, in reduce's chunks)."""
    run = RunDir(placed_run)
    col, red = run.open_group("collect"), run.open_group("reduce")
    placer = load_placer(run)
    fitted = set(red["fit_rows"][...].tolist())
    status, raw, coords = col["status"][...], red["raw_coords"][...], red["coords"][...]
    r, placed = int(col.attrs["chunk_rows"]), 0
    for j in range(-(-status.size // r)):
        rows = np.arange(j * r, min(status.size, (j + 1) * r))
        todo = rows[(status[rows] == 1) & ~np.isin(rows, list(fitted))]
        x = np.asarray(col["activations"][j * r:(j + 1) * r], np.float32)[todo - j * r]
        np.testing.assert_array_equal(placer.raw(x, j), raw[todo])
        np.testing.assert_array_equal(placer.coords(x, j), coords[todo])
        placed += todo.size
    assert placed == 24


def _snapshot(*roots: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for root in roots for p in [root, *sorted(root.rglob("*"))]}


def test_cli_rerun_does_nothing_and_a_new_image_adds_one_unit(located: tuple[Path, dict[str, Any]], photos: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = copy_run(located[0], tmp_path / "run")
    cfg, sets = str(run_dir / "config.yaml"), ["--set", f"run_dir={run_dir}"]
    before = _snapshot(run_dir / "locate", run_dir / "state" / "locate")
    assert main(["locate", cfg, demo_location(HELD_OUT[0], SIZE), str(photos), *sets]) == 0
    assert _snapshot(run_dir / "locate", run_dir / "state" / "locate") == before
    assert main(["locate", cfg, demo_location(90, SIZE), *sets]) == 0
    printed = capsys.readouterr().out
    new = [p for p in (run_dir / "locate").iterdir() if p.is_dir() and str(p) not in before]
    assert [p.name for p in new] == ["demo-96-90-" + new[0].name.rsplit("-", 1)[1]] and (new[0] / "overlay.png").is_file()
    assert f"{new[0]}/ (overlay.png" in printed and "atlas serve" in printed
    after = _snapshot(run_dir / "locate")
    old = {k: v for k, v in before.items() if "/state/" not in k and not k.endswith(("index.json", "index.js", "bad_inputs.tsv"))
           and k != str(run_dir / "locate")}
    assert {k: after[k] for k in old} == old, "the images located before were touched"
    kept = {k: v for k, v in before.items() if "/state/locate/" in k and (k.endswith("setup.json") or "/done/" in k)
            and not k.endswith("/final")}  # the scope grew without a redo: the attempt and its markers stay
    state_after = _snapshot(run_dir / "state" / "locate")
    assert len(kept) > len(HELD_OUT) and {k: state_after.get(k) for k in kept} == kept, "the stage was redone"
    assert json.loads((run_dir / "state" / "locate" / "done" / "final").read_text())["scope"] == \
        sorted(p.name for p in (run_dir / "state" / "locate" / "done").iterdir() if p.name != "final")
    index = json.loads((run_dir / "locate" / "index.json").read_text())
    assert len(index["images"]) == len(HELD_OUT) + 2


def test_errors_name_the_problem_and_the_fix(located: tuple[Path, dict[str, Any]], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = copy_run(located[0], tmp_path / "run")
    cfg, sets = str(run_dir / "config.yaml"), ["--set", f"run_dir={run_dir}"]
    assert main(["locate", cfg, str(tmp_path / "nope.jpg"), *sets]) == 2
    assert "no such image or folder" in capsys.readouterr().err
    assert main(["locate", cfg, demo_location(95, SIZE), *sets, "--set", "model.layer=blocks.4"]) == 2
    assert "collected with model efficientnet_lite0 layer blocks.5" in capsys.readouterr().err


class TestLocateContract(StageContract):
    """Three held-out images as `atlas locate DEMO IMAGE...` arguments: one unit each (one per shard of 3)."""

    stage = "locate"
    cli_args = tuple(demo_location(i, SIZE) for i in HELD_OUT[:3])
    output_kind = "files"
    redo = ("grid", "grid.min_count=3")  # render, tile and locate become stale: locate refuses render


@pytest.mark.browser
def test_the_viewer_draws_a_located_image(located: tuple[Path, dict[str, Any]]) -> None:
    """From disk (file://): the Located list, the dots at the positions' atlas points, the card, the URL."""
    run_dir, doc = located
    unit = doc["images"][0]["unit"]
    problems: list[str] = []
    with launched() as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.goto((run_dir / "tiles" / "index.html").as_uri())
        page.wait_for_function("window.atlasViewer.located && window.atlasViewer.located.index !== null", timeout=20_000)
        assert page.locator(".located-pick").is_visible()
        assert page.locator("#located-select option").count() == len(doc["images"]) + 1
        page.select_option("#located-select", unit)
        page.wait_for_function("window.atlasViewer.located.drawn > 0 && window.atlasViewer.state.openMs", timeout=10_000)
        n = len(json.loads((run_dir / "locate" / unit / "located.json").read_text())["positions"])
        assert page.evaluate("window.atlasViewer.located.drawn") == n
        page.wait_for_function("document.querySelectorAll('#located-card img').length === 2 && "
                               "Array.from(document.querySelectorAll('#located-card img')).every(i => i.naturalWidth > 0)",
                               timeout=10_000)
        page.wait_for_function(f"location.hash.indexOf('located={unit}') >= 0", timeout=10_000)
        page.reload()
        page.wait_for_function(f"window.atlasViewer.located && window.atlasViewer.located.unit === '{unit}' && "
                               "window.atlasViewer.located.drawn > 0", timeout=20_000)
        page.locator("#located-card .close").click()
        page.wait_for_function("window.atlasViewer.located.drawn === 0")
    assert not problems, problems
