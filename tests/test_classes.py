"""Class activation atlases (``atlas class-atlas``): class names matched like the viewer's search,
the selection rule, the grid sizes chosen; one-class and two-class atlases of the tiny demo run
made for real (its network, its Zarr groups) in ``RUN/classes/<slug>``; the run's atlas index,
``atlas status``, a rerun, another rule refused; the viewer's switcher and the two-class
comparison in chromium, served by ``atlas serve``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from atlas import api
from atlas.config import ConfigError, load_config
from atlas.models import imagenet_class_names
from atlas.ops.classes import (
    ClassNameError,
    atlas_slug,
    class_grid_sizes,
    class_slug,
    match_class,
    match_classes,
    select_rows,
    support,
)
from atlas.sources import read_manifest
from atlas.stages import final_info
from atlas.store import RunDir, StoreError
from tests.browser import launched, served
from tests.cluster.util import WHOLE, atlas
from tests.conftest import DEMO
from tests.stages.contract import one_line_error

NAMES = imagenet_class_names()
CLASS_SETTINGS = ["render.steps=2", "classes.top_k=10"]  # the tiny run's classes are spread thin: all 10 stored


# --------------------------------------------------------------------------- names


def test_names_match_like_the_viewers_search():
    assert NAMES[match_class("great white shark", NAMES)] == "great white shark"
    assert NAMES[match_class("Great WHITE  shark", NAMES)] == "great white shark"  # any case, spaces squeezed
    assert NAMES[match_class("great whi", NAMES)] == "great white shark"  # part of one name
    assert NAMES[match_class("crane", NAMES)] == "crane"  # an exact name beats 'crane bird'
    assert match_class("#6", NAMES) == 6
    # ImageNet's 'Cardigan' (a dog) and 'cardigan' (a sweater): as written, else an error naming both
    assert (match_class("Cardigan", NAMES), match_class("cardigan", NAMES)) == (264, 474)
    with pytest.raises(ClassNameError, match=r"shared by 'Cardigan' \(#264\), 'cardigan' \(#474\).*#<index>"):
        match_class("CARDIGAN", NAMES)


def test_an_ambiguous_name_lists_the_candidates_and_an_unknown_one_near_names():
    with pytest.raises(ClassNameError, match=r"'shark' is ambiguous: it matches .*'tiger shark' \(#3\).*"
                                             r"'great white shark' \(#2\).*pass more of the name"):
        match_class("shark", NAMES)
    with pytest.raises(ClassNameError, match=r"no class is named 'stingrey'; near names: 'stingray'"):
        match_class("stingrey", NAMES)
    with pytest.raises(ClassNameError, match=r"class #1000 does not exist: the network has 1000 classes"):
        match_class("#1000", NAMES)
    with pytest.raises(ClassNameError, match="same class"):
        match_classes(["stingray", "STINGRAY"], NAMES)
    with pytest.raises(ClassNameError, match="one class, or two"):
        match_classes(["stingray", "tench", "goldfish"], NAMES)
    assert match_classes(["snorkel", "scuba"], NAMES) == [801, 983]  # in class order


def test_slugs():
    assert atlas_slug([2], NAMES) == "great-white-shark"
    assert atlas_slug(match_classes(["scuba diver", "snorkel"], NAMES), NAMES) == "snorkel--scuba-diver"
    assert (class_slug(264, NAMES), class_slug(474, NAMES)) == ("cardigan-264", "cardigan-474")


# --------------------------------------------------------------------------- the rule


def test_selection_rule():
    cls = np.array([[3, 1, 2], [1, 3, 0], [2, 1, 3], [1, 2, 3], [3, 0, 1], [-1, -1, -1]], np.int16)
    val = np.array([[5.0, 2, 1], [4, 3, 1], [6, 2, 0.5], [2, 1, -1], [9, 8, 7], [0, 0, 0]], np.float32)
    status = np.array([1, 1, 1, 1, 2, 1], np.uint8)  # row 4 unreadable
    a = support(cls, val, status, 3, threshold=0.0, top_k=2)
    np.testing.assert_array_equal(a, [5, 3, -np.inf, -np.inf, -np.inf, -np.inf])  # rows 2, 3: 3 not in the top 2
    np.testing.assert_array_equal(support(cls, val, status, 3, 0.0, 3), [5, 3, 0.5, -np.inf, -np.inf, -np.inf])
    np.testing.assert_array_equal(support(cls, val, status, 3, 1.0, 3), [5, 3, -np.inf, -np.inf, -np.inf, -np.inf])
    rows, per = select_rows(cls, val, status, [1, 3], threshold=0.0, top_k=3, max_rows=2)
    # class 1: rows 1 (4), 0 (2), 2 (2), 3 (2): the two highest, ties to the lower row; class 3: rows 0 (5), 1 (3)
    assert rows.tolist() == [0, 1] and per == [2, 2]
    rows, per = select_rows(cls, val, status, [2], threshold=0.0, top_k=3, max_rows=10)
    assert rows.tolist() == [0, 2, 3] and per == [3]


def test_grid_sizes_follow_the_row_count():
    assert class_grid_sizes(9, [4, 8], 8) == [2]
    assert class_grid_sizes(200, [4, 8], 8) == [2, 4]
    assert class_grid_sizes(2000, [8, 16, 32], 8) == [2, 4, 8]
    assert class_grid_sizes(10**6, [8, 16, 32], 8) == [8, 16, 32]  # never finer than the parent


# --------------------------------------------------------------------------- class atlases of the tiny run


def _top_classes(run_dir: Path, n: int) -> list[str]:
    """The ``n`` classes most often among the rows' stored attribution classes."""
    cls = zarr.open_group(str(run_dir / "collect"), mode="r")["attr_classes"][:]
    ks, counts = np.unique(cls[cls >= 0], return_counts=True)
    return [NAMES[int(k)] for k in ks[np.lexsort((ks, -counts))][:n]]


def _unique(text: str) -> bool:
    try:
        match_class(text, NAMES)
    except ClassNameError:
        return False
    return True


def _cfg(run_dir: Path, *more: str):
    return load_config(DEMO, [f"run_dir={run_dir}", *WHOLE, *CLASS_SETTINGS, *more])


@pytest.fixture(scope="module")
def made(whole_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A copy of the tiny whole run with a class atlas of its most frequent class and one comparing its
    two most frequent classes (the second named in upper case, the first by part of its name)."""
    run_dir = tmp_path_factory.mktemp("classes") / "run"
    shutil.copytree(whole_run, run_dir)
    a, b = _top_classes(run_dir, 2)
    cfg = _cfg(run_dir)
    one = api.class_atlas(cfg, [a])
    part = next(a[:n] for n in range(4, len(a) + 1) if _unique(a[:n]))
    two = api.class_atlas(cfg, [b.upper(), part])
    return {"run": run_dir, "cfg": cfg, "names": (a, b), "one": one, "two": two}


def test_one_class_atlas_holds_the_supporting_rows_and_is_tiled(made, whole_run):
    run_dir, one, (a, _) = made["run"], made["one"], made["names"]
    sub = Path(one.run_dir)
    assert (run_dir / "config.yaml").read_bytes() == (whole_run / "config.yaml").read_bytes()  # the parent's: untouched
    assert "parent: ../..\n" in (sub / "config.yaml").read_text()  # as the class atlas sees it, wherever the run is
    assert sub == run_dir / "classes" / atlas_slug([NAMES.index(a)], NAMES)
    parent, child = zarr.open_group(str(run_dir / "collect"), mode="r"), zarr.open_group(str(sub / "collect"), mode="r")
    k = NAMES.index(a)
    want = np.flatnonzero(np.isfinite(support(parent["attr_classes"][:], parent["attr_values"][:], parent["status"][:],
                                              k, 0.0, 10)))
    rows = child["parent_rows"][:]
    assert rows.tolist() == want.tolist() and len(rows) >= 3
    for name in ("activations", "positions", "labels", "attr_classes", "attr_values", "index"):
        np.testing.assert_array_equal(child[name][:], parent[name].get_orthogonal_selection(rows), err_msg=name)
    act = child["activations"][:].astype(np.float64)
    np.testing.assert_allclose(child["second_moment"][:], act.T @ act, rtol=1e-12)
    pm, cm = read_manifest(run_dir), read_manifest(sub)  # row i of the class atlas is image i of its manifest
    assert cm.locations == [pm.locations[i] for i in rows.tolist()]
    cfg = load_config(sub / "config.yaml")
    assert cfg.classes.parent == str(run_dir) and cfg.classes.names == [a]
    assert (cfg.reduce.n_neighbors, cfg.reduce.min_dist) == (min(20, len(rows) - 1), 0.02)
    assert cfg.grid.sizes == class_grid_sizes(len(rows), [4, 8], 8)
    doc = json.loads((sub / "tiles" / "atlas.json").read_text())
    assert doc["class_atlas"]["names"] == [a] and doc["class_atlas"]["slug"] == sub.name
    assert doc["atlases_index"] == "../../../atlases.js" and doc["n_images"] == len(rows)
    assert (sub / "tiles" / "index.html").is_file() and (sub / "tiles" / "atlases.js").is_file()
    assert all(st["state"] == "done" for st in api.status(sub)["stages"])


def test_two_class_atlas_keeps_both_classes_and_colours_cells(made):
    run_dir, two, (a, b) = made["run"], made["two"], made["names"]
    sub = Path(two.run_dir)
    ka, kb = NAMES.index(a), NAMES.index(b)
    assert sub.name == atlas_slug(sorted([ka, kb]), NAMES) and "--" in sub.name
    parent, child = zarr.open_group(str(run_dir / "collect"), mode="r"), zarr.open_group(str(sub / "collect"), mode="r")
    rows = set(child["parent_rows"][:].tolist())
    for k in (ka, kb):
        own = np.isfinite(support(parent["attr_classes"][:], parent["attr_values"][:], parent["status"][:], k, 0.0, 10))
        assert set(np.flatnonzero(own).tolist()) <= rows, NAMES[k]
    doc = json.loads((sub / "tiles" / "atlas.json").read_text())
    order = sorted([ka, kb])
    assert doc["class_atlas"]["names"] == [NAMES[k] for k in order] and doc["class_atlas"]["classes"] == order
    grid = zarr.open_group(str(sub / "grid"), mode="r")
    for s in doc["sizes"]:
        cells = json.loads((sub / "tiles" / f"cells-{s}.json").read_text())["cells"]
        assert cells and all(len(c["pair"]) == 2 for c in cells)
        attr = grid[f"level-{s}"]["class_attribution"][:]
        for c in cells:  # each cell's mean attribution to both classes, as the grid holds it
            np.testing.assert_allclose(c["pair"], attr[c["row"], c["col"], order], rtol=1e-4)


def test_the_run_index_lists_every_finished_atlas(made):
    run_dir = made["run"]
    index = json.loads((run_dir / "atlases.json").read_text())
    entries = {e["slug"]: e for e in index["atlases"]}
    one, two = Path(made["one"].run_dir).name, Path(made["two"].run_dir).name
    assert list(entries) == [None, *sorted([one, two])]  # the main atlas first
    assert entries[None]["path"] == "tiles/" and entries[one]["path"] == f"classes/{one}/tiles/"
    assert entries[one]["classes"] == [made["names"][0]] and len(entries[two]["classes"]) == 2
    js = (run_dir / "atlases.js").read_text()
    assert js.startswith("window.ATLAS_INDEX = ") and json.loads(js[len("window.ATLAS_INDEX = "):-2]) == index
    report = api.status(run_dir)
    assert [(e["slug"], e["state"]) for e in report["class_atlases"]] == [(s, "done") for s in sorted([one, two])]
    text = api.format_status(report)
    assert "class atlases" in text and f"{one} " in text and " vs " in text


def test_rerun_does_nothing_and_another_rule_is_refused(made):
    sub = RunDir(made["one"].run_dir)
    before = {s: final_info(sub, s) for s in ("collect", "reduce", "grid", "render", "tile")}
    api.class_atlas(made["cfg"], [made["names"][0]])
    assert {s: final_info(sub, s) for s in before} == before
    p = atlas("class-atlas", str(DEMO), *[f"--set={o}" for o in [f"run_dir={made['run']}", *WHOLE, *CLASS_SETTINGS,
                                                                  "classes.top_k=9"]],
              "--class", made["names"][0], check=False)
    one_line_error(p, "made with another rule", "classes.top_k: 10 -> 9", f"delete {sub.root}")


def test_clear_errors(made, tmp_path):
    cfg = made["cfg"]
    with pytest.raises(ClassNameError, match="'shark' is ambiguous"):
        api.class_atlas(cfg, ["shark"])
    with pytest.raises(ClassNameError, match="pass --class NAME"):
        api.class_atlas(cfg, [])
    with pytest.raises(ConfigError, match="is a class atlas .*pass the config of the run it was made from"):
        api.class_atlas(made["one"], ["tench"])
    with pytest.raises(StoreError, match="has none: run `atlas collect CONFIG`"):
        api.class_atlas(_cfg(tmp_path / "empty"), ["tench"])
    rare = next(n for n in NAMES if n not in _top_classes(made["run"], 1000))
    with pytest.raises(StoreError, match=f"too few rows .* support the class .*'{re.escape(rare)}': 0.*classes.threshold"):
        api.class_atlas(cfg, [rare])


# --------------------------------------------------------------------------- the viewer


@pytest.mark.browser
def test_the_switcher_lists_the_class_atlases_and_switching_changes_the_url(made):
    two = Path(made["two"].run_dir).name
    problems: list[str] = []
    with launched() as browser, served(made["run"]) as base:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("response", lambda r: r.status >= 400 and problems.append(f"{r.status} {r.url}"))
        page.goto(base + "/")
        assert page.url.startswith(base + "/tiles/")
        page.wait_for_function("window.atlasViewer && window.atlasViewer.atlases.index !== null", timeout=20_000)
        options = page.eval_on_selector_all("#atlas-switch option", "os => os.map(o => o.textContent)")
        assert len(options) == 3 and options[0].startswith("Whole atlas"), options
        assert any(made["names"][0] in o for o in options[1:]) and any(" vs " in o for o in options)
        assert page.is_visible("#atlas-switch") and page.is_hidden("#compare")
        index = next(i for i, o in enumerate(options) if " vs " in o)
        with page.expect_navigation():
            page.select_option("#atlas-switch", index=index)
        assert page.url.startswith(f"{base}/classes/{two}/tiles/index.html"), page.url
        page.wait_for_function("window.atlasViewer && window.atlasViewer.atlases.compare && "
                               "window.atlasViewer.atlases.compare.columns[0].length + "
                               "window.atlasViewer.atlases.compare.columns[1].length > 0 && "
                               "window.atlasViewer.atlases.compare.lastDraw.cells > 0", timeout=20_000)
        state = page.evaluate("(() => { const a = window.atlasViewer.atlases; return {slug: a.current, "
                              "legend: document.getElementById('compare-legend').textContent, "
                              "selected: document.getElementById('atlas-switch').selectedOptions[0].textContent,"
                              " title: document.querySelector('.title').textContent}; })()")
        assert state["slug"] == two and " vs " in state["selected"] and " vs " in state["title"]
        assert all(n in state["legend"] for n in made["two"].classes.names)
        page.click("#compare-cols button[data-row]")  # the strongest cell: fly there and open its panel
        page.wait_for_function("!document.getElementById('panel').hidden", timeout=20_000)
    assert not problems, problems
