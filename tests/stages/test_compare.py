"""``atlas compare`` on the tiny demo atlas (the session's ``whole_run``, A) against the same atlas made
with the fine-tuned demo network (``finetuned_weights``, B: Lite0's ``blocks.5.3`` taught to name demo
photos 0-3): the views pair rows exactly, A against A changes nothing, A against B changes the
fine-tuned photos' cells most, the index, status, errors, a pairing across layer grids, the viewer
(chromium, from disk, 1280 x 800 and 400 x 800); the stage contract of a view's collect
(:class:`TestPairContract`) and of the ``compare`` analysis (:class:`TestCompareContract`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from atlas import api
from atlas.cli import main
from atlas.compare import view_config
from atlas.config import load_config
from atlas.formats import CompareOutput
from atlas.models import LayerSampler, load_network
from atlas.ops.compare import map_positions
from atlas.sources import load_image, read_manifest
from atlas.stages import final_info, get_stage, run_stage
from atlas.stages._pair import STAGE_RUN
from atlas.store import RunDir
from tests.browser import launched, served
from tests.cluster.util import atlas, sets
from tests.conftest import DEMO
from tests.stages.contract import Runs, StageContract, copy_run, one_line_error, stage_cli

TUNED = (0, 1, 2, 3)  # the demo photos the fine-tuned network learned (atlas.finetune.DEFAULT_PHOTOS)
FAST = ("render.steps=1",)  # icons of one step: the figures do not depend on them
MORE = ("images.demo_count=160", "collect.chunk_rows=32", "collect.batch_size=16", "render.batch_size=16",
        "tile.unit_tiles=256", *FAST)
# 160 images (10 of each photo) for the validation: the tiny atlas's 64 (4 a photo) fill too few cells
FIGURES = ("coherence_change", "relation_change", "class_shift", "change")


@pytest.fixture(scope="module")
def compared(finetuned_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A (the tiny demo atlas of 160 images), B (the same with the fine-tuned weights), compared through
    the CLI (A against B: two views) and the API (A against itself: one view)."""
    base = tmp_path_factory.mktemp("compare")
    a, b = base / "base", base / "finetuned"
    atlas("run", str(DEMO), *sets(a, *MORE))
    atlas("run", str(DEMO), *sets(b, *MORE, f"model.weights={finetuned_weights}"))
    p = atlas("compare", str(a), str(b))
    api.compare(a, a, name="self")
    return {"a": a, "b": b, "out": p.stdout}


def _view(compared: dict[str, Any], name: str, view: str) -> Path:
    return compared["a"] / "compare" / name / view


def _majority(run: Path, s: int) -> np.ndarray:
    counts = zarr.open_group(str(run / "grid"), mode="r")[f"level-{s}/label_counts"][...]
    return counts.argmax(axis=2)


# --------------------------------------------------------------------------- the views


def test_a_view_pairs_the_rows_exactly_and_lays_them_out_on_the_layout(compared: dict[str, Any]) -> None:
    a, b = compared["a"], compared["b"]
    for view, (lay, net) in (("layout-a", (a, b)), ("layout-b", (b, a))):
        root = _view(compared, "base--finetuned", view)
        mine, theirs, layout = (zarr.open_group(str(r / "collect"), mode="r") for r in (root, net, lay))
        for name in ("activations", "positions", "attr_classes", "attr_values", "index"):
            np.testing.assert_array_equal(mine[name][...], theirs[name][...], err_msg=f"{view} {name}")
        np.testing.assert_array_equal(mine["positions"][...], layout["positions"][...])  # one seed: the same places
        assert mine.attrs["compare"]["mode"] == "exact" and mine.attrs["model"] == theirs.attrs["model"]
        np.testing.assert_array_equal(zarr.open_group(str(root / "reduce"), mode="r")["coords"][...],
                                      zarr.open_group(str(lay / "reduce"), mode="r")["coords"][...])
        g, gl = zarr.open_group(str(root / "grid"), mode="r"), zarr.open_group(str(lay / "grid"), mode="r")
        for s in gl.attrs["sizes"]:  # the layout's cells, the network's means
            np.testing.assert_array_equal(g[f"level-{s}/count"][...], gl[f"level-{s}/count"][...])
        assert read_manifest(root).locations == read_manifest(lay).locations
        cfg = load_config(root / "config.yaml")
        assert Path(cfg.compare.layout) == lay.resolve() and Path(cfg.compare.network) == net.resolve()
        assert (cfg.model.weights is None) == (net == a) and cfg.grid.sizes == load_config(lay / "config.yaml").grid.sizes
        text = (root / "config.yaml").read_text()
        assert ("layout: ../../.." if lay == a else "network: ../../..") in text  # RUN_A as its views see it
        assert all(st["state"] == "done" for st in api.status(root)["stages"])
    pair = json.loads((compared["a"] / "compare" / "base--finetuned" / "pair.json").read_text())
    assert (pair["a"]["name"], pair["b"]["name"], pair["images"]) == ("base", "finetuned", 160)
    assert "layout-a" in compared["out"] and "mean change" in compared["out"] and "atlas serve" in compared["out"]


def test_a_against_itself_changes_nothing(compared: dict[str, Any]) -> None:
    assert not _view(compared, "self", "layout-b").exists()  # a run against itself: one view
    assert_no_change(_view(compared, "self", "layout-a"))


def assert_no_change(view: Path) -> None:
    """Every figure of every compared cell of the view is exactly 0, the two networks' classes the same."""
    out = CompareOutput(view)
    summary = out.summary()
    assert summary is not None and summary["a"] == summary["b"] and summary["pairing"] == "exact"
    for s in summary["sizes"]:
        cells = out.cells(s)
        assert len(cells) == summary["levels"][str(s)]["cells"] > 3
        assert summary["levels"][str(s)]["mean"]["change"] == 0.0
        for c in cells:
            assert c["coherence_layout"] == c["coherence_network"], c
            assert all(c[k] == 0.0 for k in FIGURES), c
            assert [t["name"] for t in c["top_layout"]] == [t["name"] for t in c["top_network"]]
            assert c["rank"] >= 1 and c["icon"] is not None


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size))


def test_the_finetuned_photos_cells_change_most(compared: dict[str, Any]) -> None:
    """The validation of docs/benchmarks.md on the tiny atlas: per view, over every grid level, the
    cells whose majority photo is one the network was fine-tuned on change more than the others."""
    for view, layout in (("layout-a", compared["a"]), ("layout-b", compared["b"])):
        out = CompareOutput(_view(compared, "base--finetuned", view))
        tuned, other = [], []
        for s in out.summary()["sizes"]:
            fig, majority = out.figures(s), _majority(layout, s)
            ok = np.isfinite(fig["change"])
            tuned += fig["change"][ok & np.isin(majority, TUNED)].tolist()
            other += fig["change"][ok & ~np.isin(majority, TUNED)].tolist()
        t, o = np.array(tuned), np.array(other)
        assert t.size >= 5 and o.size >= 10, (view, t.size, o.size)
        assert t.mean() > 1.2 * o.mean() and _auc(t, o) > 0.6, (view, t.mean(), o.mean(), _auc(t, o))


def test_the_index_status_and_a_rerun(compared: dict[str, Any]) -> None:
    a = compared["a"]
    index = json.loads((a / "atlases.json").read_text())
    found = {e["slug"]: e for e in index["atlases"] if e.get("kind") == "compare"}
    assert sorted(found) == ["compare/base--finetuned/layout-a", "compare/base--finetuned/layout-b", "compare/self/layout-a"]
    entry = found["compare/base--finetuned/layout-b"]
    assert entry["path"] == "compare/base--finetuned/layout-b/tiles/" and entry["compare"]["layout"] == "b"
    assert "finetuned's layout" in entry["title"] and entry["changes"].endswith("/changes/")
    text = api.format_status(api.status(a))
    assert "comparisons" in text and "base--finetuned/layout-a" in text and "done" in text
    doc = json.loads((_view(compared, "base--finetuned", "layout-a") / "tiles" / "atlas.json").read_text())
    assert doc["atlases_index"] == "../../../../atlases.js"
    view = RunDir(_view(compared, "self", "layout-a"))
    before = {s: final_info(view, s) for s in ("collect", "reduce", "grid", "render", "tile", "compare")}
    api.compare(a, a, name="self")
    assert {s: final_info(view, s) for s in before} == before
    # --prepare: the views' configs, nothing run; the --set recorded, used again when none is given
    doc = api.compare(a, compared["b"], name="later", overrides=["render.steps=2"], prepare_only=True)
    for v in ("layout-a", "layout-b"):
        cfg = load_config(Path(doc["views"][v]["config"]))
        assert cfg.render.steps == 2 and doc["views"][v]["summary"] is None
        assert not (a / "compare" / "later" / v / "state").exists()
    assert api.compare(a, compared["b"], name="later", prepare_only=True)["overrides"] == ["render.steps=2"]
    assert any(e["name"] == "later" and e["state"] == "not started" for e in api.status(a)["comparisons"])


def _error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """``atlas ARGS`` in this process: exit 2 and one line on stderr, returned."""
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_errors_are_one_line(compared: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = compared["a"], compared["b"]
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.yaml", "manifest.json", "state"):
        (shutil.copytree if (b / name).is_dir() else shutil.copy2)(b / name, other / name)
    lines = (b / "manifest.tsv").read_text().splitlines()
    lines[5] = "demo://96/999\t7"
    (other / "manifest.tsv").write_text("\n".join(lines) + "\n")
    one_line_error(atlas("compare", str(a), str(other), check=False), "not collected from the same images",
                   "image 5 is demo://96/5")
    shutil.rmtree(other / "state" / "render")
    assert "has no finished render" in _error(capsys, "compare", str(a), str(other))
    view = _view(compared, "self", "layout-a")
    assert "is a comparison's view" in _error(capsys, "compare", str(view), str(a))
    assert "is not a comparison's view" in _error(capsys, "compare", str(DEMO))
    assert "--shard goes with one view" in _error(capsys, "compare", str(a), str(b), "--shard", "0/2")
    assert "takes two runs" in _error(capsys, "compare", str(a), str(b), str(a))
    assert "pass another --name" in _error(capsys, "compare", str(a), str(b), "--name", "self")


def test_runs_of_other_grids_pair_by_relative_location(whole_run: Path, tmp_path: Path) -> None:
    """B collected at another input size (a 3 x 3 layer grid against the tiny atlas's 4 x 4): the view runs
    B's network at A's positions mapped onto its grid, as its own sampler gives them."""
    a = whole_run  # read only: the view is made in tmp_path
    small = tmp_path / "small"
    atlas("collect", str(DEMO), *sets(small, "model.input_size=96"))
    ca, cb = load_config(a / "config.yaml"), load_config(small / "config.yaml")
    cfg = view_config(ca, cb, tmp_path / "cmp", "layout-a", "cmp")
    assert get_stage("collect", cfg) is STAGE_RUN and STAGE_RUN.wants_gpu
    assert not run_stage(get_stage("collect", cfg), cfg, (1, 4))  # one chunk of 16 rows (the network runs)
    mine, layout = zarr.open_group(cfg.run_dir + "/collect", mode="r"), zarr.open_group(str(a / "collect"), mode="r")
    assert mine.attrs["compare"]["mode"] == "mapped" and mine.attrs["compare"]["network_grid"] == [3, 3]
    assert RunDir(cfg.run_dir).done_units("collect") == {"chunk-000001"}
    want_pos = map_positions(layout["positions"][16:32], (4, 4), (3, 3))
    np.testing.assert_array_equal(mine["positions"][16:32], want_pos)
    net = load_network(cb.model)
    sampler = LayerSampler(net, cb.model.layer, attribution=True, top_k=cb.collect.top_k, channels_last=True)
    rows = [16, 17, 31]
    images = np.stack([load_image(f"demo://96/{i}", size=96, max_pixels=cb.images.max_pixels, min_side=1) for i in rows])
    vec, values, classes = sampler(net.preprocess(torch.from_numpy(images)),
                                   torch.from_numpy(want_pos[[r - 16 for r in rows]].astype(np.int64)))
    np.testing.assert_allclose(mine["activations"].get_orthogonal_selection((rows, slice(None))),
                               vec.numpy().astype(np.float16), rtol=1e-2, atol=1e-2)
    assert (mine["attr_classes"].get_orthogonal_selection((rows, slice(None)))[:, 0] == classes.numpy()[:, 0]).mean() >= 2 / 3
    assert (mine["status"][16:32] == 1).all()


def test_serve_shows_the_views_and_their_figures_only(tmp_path: Path) -> None:
    from atlas.serve import Redirect, Refused, resolve_request_path, served_root

    run = tmp_path / "run"
    view = run / "compare" / "a--b.2" / "layout-b"
    for rel in ("tiles/index.html", "changes/summary.js", "changes/icons/8/0.png", "changes/notes.txt", "config.yaml",
                "collect/zarr.json"):
        (view / rel).parent.mkdir(parents=True, exist_ok=True)
        (view / rel).write_text(rel)
    (run / "config.yaml").write_text("run_dir: .\n")
    (view.parent / "pair.json").write_text("{}")
    for path in ("tiles/index.html", "changes/summary.js", "changes/icons/8/0.png"):
        assert resolve_request_path(run, f"/compare/a--b.2/layout-b/{path}") == (view / path).resolve()
    for path in ("/compare/a--b.2/layout-b/config.yaml", "/compare/a--b.2/layout-b/collect/zarr.json",
                 "/compare/a--b.2/pair.json", "/compare/a--b.2/layout-b/changes/notes.txt",
                 "/compare/a--b.2/layout-b/changes/", "/compare/a--b.2/layout-c/tiles/index.html",
                 "/compare/../config.yaml"):
        with pytest.raises(Refused):
            resolve_request_path(run, path)
    with pytest.raises(Redirect):
        resolve_request_path(run, "/compare/a--b.2/layout-b/tiles")
    assert served_root(view) == (run.resolve(), "/compare/a--b.2/layout-b/tiles/")


# --------------------------------------------------------------------------- the viewer


def _open_view(browser: Any, url: str, size: tuple[int, int]) -> tuple[Any, list[str]]:
    problems: list[str] = []
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console error: {m.text}"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    page.goto(url)
    page.wait_for_function("window.atlasViewer && window.atlasViewer.compare && window.atlasViewer.compare.summary && "
                           "window.atlasViewer.state.firstTileMs !== null && window.atlasViewer.state.openMs", timeout=20_000)
    page.wait_for_function("document.querySelectorAll('#cmp-list button[data-row]').length > 0", timeout=20_000)
    return page, problems


def _pixel(page: Any, x: float, y: float) -> list[int]:
    return page.evaluate(f"""(() => {{ const o = document.getElementById('overlay'), d = window.devicePixelRatio || 1;
        return Array.from(o.getContext('2d').getImageData(Math.round({x} * d), Math.round({y} * d), 1, 1).data); }})()""")


@pytest.mark.browser
@pytest.mark.parametrize("size", [(1280, 800), (400, 800)], ids=["1280x800", "400x800"])
def test_the_viewer_switches_icons_in_place_and_colours_cells_by_change(compared: dict[str, Any], size: tuple[int, int]) -> None:
    with launched() as browser:
        with served(compared["a"]) as base:  # served: the icons drawn in place leave the canvas readable
            _check_viewer(browser, f"{base}/compare/base--finetuned/layout-a/tiles/index.html", size)
        if size[0] > 640:  # from disk too: the box, the switch, no failed request
            view = _view(compared, "base--finetuned", "layout-b")
            page, problems = _open_view(browser, (view / "tiles" / "index.html").as_uri(), size)
            page.keyboard.press("x")
            page.wait_for_function("window.atlasViewer.compare.drawnIcons > 0", timeout=10_000)
            assert "finetuned's layout" in page.inner_text("#compare")
            assert not problems, problems


def _check_viewer(browser: Any, url: str, size: tuple[int, int]) -> None:
    page, problems = _open_view(browser, url, size)
    got = page.evaluate("(() => { const s = document.getElementById('atlas-switch'); return {title: document.title,"
                        " options: Array.from(s.options).map(o => o.textContent), chosen: s.selectedOptions[0].textContent,"
                        " icons: window.atlasViewer.compare.icons}; })()")
    assert got["icons"] == "network" and "base vs finetuned" in got["title"]
    assert sum("Compare:" in o for o in got["options"]) == 3 and got["chosen"].startswith("Compare: base vs finetuned, on base")
    # the key: A's icons drawn in place over the pyramid of B's, then B's again (the X key)
    s = page.evaluate("window.atlasViewer.currentSize()")
    page.click(".cmp-key button[data-icons='layout']")
    page.wait_for_function("window.atlasViewer.compare.drawnIcons > 0", timeout=10_000)
    drawn = page.evaluate("window.atlasViewer.compare.drawnIcons")
    assert drawn == page.evaluate(f"Array.from(window.atlasViewer.compare.cells[{s}].byKey.values()).filter(c => c.icon).length")
    assert "icons=a" in page.evaluate("location.hash")
    page.keyboard.press("x")
    page.wait_for_function("window.atlasViewer.compare.icons === 'network' && window.atlasViewer.compare.drawnIcons === 0")
    # the heatmap: a legend, graded colours at the cells' centres
    page.click("#cmp-heat")
    page.wait_for_function("window.atlasViewer.compare.heatCells > 0", timeout=10_000)
    assert page.is_visible("#cmp-legend") and page.inner_text("#cmp-legend-max").strip() != ""
    centres = page.evaluate(f"""(() => {{ const a = window.atlasViewer, lv = a.compare.cells[{s}], box = document.getElementById('osd');
        return Array.from(lv.byKey.values()).map(c => {{ const r = a.cellRect({s}, c.row, c.col);
            return [r.x + r.w / 2, r.y + r.h / 2]; }}).filter(p => p[0] > 0 && p[1] > 0 && p[0] < box.clientWidth && p[1] < box.clientHeight); }})()""")
    colours = {tuple(_pixel(page, x, y)[:3]) for x, y in centres}
    assert len(colours) > 2, colours
    assert "change=1" in page.evaluate("location.hash")
    page.screenshot(path=str(Path(__file__).resolve().parents[2] / "test-artifacts" / f"compare-{size[0]}.png"))
    # changed most: fly to the first cell; its panel shows both icons, both class lists and the figures
    if size[0] <= 640:
        page.click("#cmp-fold")
    page.click("#cmp-list button[data-row]")
    page.wait_for_function("!document.getElementById('panel').hidden && document.getElementById('panel-compare')", timeout=20_000)
    page.wait_for_function("document.querySelectorAll('#panel-compare-icons canvas[data-loaded]').length === 2", timeout=10_000)
    text = page.inner_text("#panel-compare")
    assert "A (base)'s top classes" in text and "B (finetuned)'s top classes" in text
    assert "relation change" in text and "rank 1 of" in text
    page.reload()
    page.wait_for_function("window.atlasViewer.compare && window.atlasViewer.compare.heat === true && "
                           "window.atlasViewer.compare.heatCells > 0", timeout=20_000)
    assert not problems, problems


# --------------------------------------------------------------------------- the contract


class TestPairContract(StageContract):
    """collect of a view of the tiny atlas against itself (``compare.layout`` = ``compare.network`` =
    the whole run): its chunks copied, 4 units."""

    stage = "collect"
    slow = ("test_resume_after_kill",)

    @pytest.fixture(scope="class")
    @classmethod
    def runs(cls, whole_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
        cls.overrides = (f"compare.layout={whole_run}", f"compare.network={whole_run}", *FAST)  # as below: one collect
        return cls.prepare(whole_run, tmp_path_factory)

    def test_refuses_unfinished_or_stale_inputs(self, runs: Runs, tmp_path: Path) -> None:
        """No inputs of its own run: an unfinished compared run is refused in one line, a redone one
        redoes the view's collect (its fingerprint is in the settings)."""
        run_dir = copy_run(runs.reference, tmp_path / "run")
        layout = copy_run(Path(self.overrides[0].split("=", 1)[1]), tmp_path / "layout")
        more = (f"compare.layout={layout}", f"compare.network={layout}", *FAST)
        marker = layout / "state" / "collect" / "done" / "final"
        saved = json.loads(marker.read_text())
        marker.unlink()
        one_line_error(stage_cli("collect", run_dir, more, check=False), "has no finished collect", "atlas run")
        marker.write_text(json.dumps({**saved, "fingerprint": "redone"}))
        old = json.loads((run_dir / "state" / "collect" / "done" / "final").read_text())["fingerprint"]
        p = stage_cli("collect", run_dir, more)
        assert "redoing the stage" in p.stderr
        assert json.loads((run_dir / "state" / "collect" / "done" / "final").read_text())["fingerprint"] != old
        self.assert_same_outputs(run_dir, runs.reference, "redone")


class TestCompareContract(StageContract):
    """The ``compare`` analysis in a view of the tiny atlas against itself: 4 chunks and 2 icon sheets."""

    stage = "compare"
    output_kind = "files"
    redo = ("grid", "grid.min_count=3")  # render, tile and the figures become stale
    slow = ("test_resume_after_kill", "test_refuses_unfinished_or_stale_inputs")

    @pytest.fixture(scope="class")
    @classmethod
    def runs(cls, whole_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
        cls.overrides = (f"compare.layout={whole_run}", f"compare.network={whole_run}", *FAST)
        return cls.prepare(whole_run, tmp_path_factory)

    def test_the_tiny_atlas_against_itself_changes_nothing(self, runs: Runs) -> None:
        assert_no_change(runs.reference)
