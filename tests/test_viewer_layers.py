"""The viewer's layers (``atlas/viewer/layers.js``) in a real browser (Debian's chromium, driven by
Python playwright), at 1280 x 800 and 400 x 800, on a tiny run of two layers (blocks.5, then
blocks.3 in ``RUN/layers/blocks.3``) built once through the real CLI, served by
``atlas.serve.make_server`` and opened from disk.

Checked: the layer picker lists both layers (name, channels, grid) and switches between them,
keeping the class and the zoom, and the selected cell's images (followed there); the URL names the
layer and a reload restores the view; a cell's panel offers "Where these images go" and shows its
neighbourhood persistence with the other layer, as Python computes it from RUN/follow; following
a cell draws the density overlay whose top-cells share is Python's, at every level shown, restored
after a reload, followed back, cleared; located images of a layer still show; the follow files load
only when asked for; a one-layer atlas shows nothing of it.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from atlas.ops.binning import cell_ids
from tests.browser import launched, require_chromium, served
from tests.cluster.util import atlas
from tests.test_viewer_browser import NARROW, WIDE, _click_zoom, _open, _settle, _shot

pytestmark = pytest.mark.browser

LAYERS = ("blocks.5", "blocks.3")
PAGES = (re.compile(r"^http://[^/]+/tiles/index\.html#"), re.compile(r"/layers/blocks\.3/tiles/index\.html#"))
LOCATED = "demo://96/3"
SIZES = [WIDE, NARROW]
IDS = ["1280x800", "400x800"]


@pytest.fixture(scope="session")
def two_layers(layers_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's two-layer atlas (tests/conftest.py ``layers_run``), copied, one image located on the second."""
    require_chromium()
    run_dir = tmp_path_factory.mktemp("viewer-layers") / "run"
    shutil.copytree(layers_run, run_dir)
    atlas("locate", str(run_dir / "config.yaml"), "--layer", LAYERS[1], LOCATED)
    return run_dir


@pytest.fixture(scope="module")
def browser(two_layers):
    with launched() as b:
        yield b


@pytest.fixture(scope="module")
def url(two_layers):
    with served(two_layers) as base:
        yield base + "/"


# --------------------------------------------------------------------------- what Python says


def _script_doc(path: Path) -> dict:
    """The object a ``window.NAME = {...};`` file defines."""
    text = path.read_text()
    return json.loads(text[text.index("=") + 1:].strip().rstrip(";"))


def _index(run: Path) -> dict:
    return json.loads((run / "follow" / "follow.json").read_text())


def _coords(run: Path, i: int) -> np.ndarray:
    doc = _script_doc(run / "follow" / f"coords-{i}.js")
    return np.frombuffer(base64.b64decode(doc["values"]), "<f4").reshape(-1, 2)


def _cell_rows(run: Path, i: int, s: int, row: int, col: int) -> np.ndarray:
    """The image rows in cell (row, col) of layer i's s x s grid (as the grid stage bins them)."""
    return np.flatnonzero(cell_ids(_coords(run, i), s) == row * s + col)


def _landing(run: Path, follow: dict, dst: int, s: int) -> tuple[dict[int, int], float]:
    """Where the followed cell's images land on layer dst's s x s grid: (cell id -> count, share of the top cells)."""
    ids = cell_ids(_coords(run, dst)[_cell_rows(run, follow["src"], follow["s"], follow["row"], follow["col"])], s)
    ids = ids[ids >= 0]
    counts = np.bincount(ids, minlength=s * s)
    top = np.sort(counts)[::-1][:_index(run)["top_cells"]].sum()
    return {int(i): int(counts[i]) for i in np.flatnonzero(counts)}, float(top / len(ids))


def _persistence(run: Path, layer: int, s: int, row: int, col: int, other: int) -> float:
    """The mean over the cell's images of the share of their k nearest images the two layers share."""
    a, b = sorted((layer, other))
    doc = _script_doc(run / "follow" / f"shared-{a}-{b}.js")
    shared = np.frombuffer(base64.b64decode(doc["values"]), np.uint8)[_cell_rows(run, layer, s, row, col)]
    return float(shared[shared != 255].mean() / doc["k"])


# --------------------------------------------------------------------------- the page


def _ready(page, layer: int) -> None:
    """Layer ``layer``'s viewer open (follow.js read) and settled, on a page the last _switching did not leave."""
    page.wait_for_function(f"!window.leaving && window.ATLAS && window.ATLAS.layer === {json.dumps(LAYERS[layer])}"
                           " && window.atlasViewer && window.atlasViewer.state.firstTileMs !== null"
                           " && window.atlasViewer.layers && window.atlasViewer.layers.index !== null", timeout=20_000)
    _settle(page)
    assert PAGES[layer].search(page.url), page.url  # the page's path names the layer


@contextmanager
def _switching(page, watch, layer: int) -> Iterator[None]:
    """What the block does opens layer ``layer``'s viewer (its own page: RUN/tiles or RUN/layers/<slug>/tiles)."""
    page.evaluate("window.leaving = true")  # the page left behind (a hash rewrite there is a navigation too)
    seen = len(watch.problems)
    yield
    _ready(page, layer)
    # the requests of the page left behind (tiles still loading) are cancelled, as they should be
    watch.problems[seen:] = [p for p in watch.problems[seen:] if not p.endswith("net::ERR_ABORTED")]


def _check_header(page, size: tuple[int, int]) -> None:
    """One compact line: the picker inside the page, left of the search box, which keeps some room."""
    header, pick = page.locator("header").bounding_box(), page.locator("#layer-pick-box").bounding_box()
    search = page.locator("#search").bounding_box()
    assert header["height"] <= 48 and pick["x"] >= 0 and pick["x"] + pick["width"] <= search["x"], (header, pick, search)
    assert search["width"] >= 48 and search["x"] + search["width"] <= size[0], search


def _params(page) -> dict[str, str]:
    return page.evaluate("window.atlasViewer.urlParams()")


def _open_densest(page) -> dict:
    """The click panel of the shown grid's cell holding the most images; -> its {s, row, col}."""
    return page.evaluate("""(() => { const a = window.atlasViewer, s = a.currentSize(), lv = a.state.cells[s];
        const c = lv.doc.cells.slice().sort((p, q) => q.count - p.count || p.row - q.row || p.col - q.col)[0];
        a.openPanel({s: s, row: c.row, col: c.col, cell: c});
        return {s: s, row: c.row, col: c.col}; })()""")


def _follow_state(page) -> dict:
    return page.evaluate("""(() => { const l = window.atlasViewer.layers, f = l.follow, s = window.atlasViewer.currentSize();
        const d = l.density(s);
        return {follow: f && {src: f.src, s: f.s, row: f.row, col: f.col}, s: s, drawn: l.lastDraw,
                counts: d && [...d.counts.entries()], share: d && d.topShare, cells: d && d.cells, max: d && d.max,
                legend: document.getElementById('layers-legend').hidden ? null : document.getElementById('layers-legend').innerText}; })()""")


def _check_follow(page, run: Path, follow: dict, here: int) -> dict:
    """The follow overlay on layer ``here`` shows ``follow``'s images as Python places them, at the grid shown."""
    page.wait_for_function("(() => { const l = window.atlasViewer.layers; return l.follow && l.follow.rows"
                           " && l.lastDraw.s === window.atlasViewer.currentSize() && l.lastDraw.cells > 0; })()",
                           timeout=10_000)
    got = _follow_state(page)
    assert got["follow"] == follow, got
    counts, share = _landing(run, follow, here, got["s"])
    assert dict(got["counts"]) == counts and got["share"] == pytest.approx(share, abs=1e-12), (got, counts, share)
    k, n, pct = min(_index(run)["top_cells"], len(counts)), sum(counts.values()), int(100 * share + 0.5)
    top = f"the top cell holds {pct}%" if k == 1 else f"the top {k} cells hold {pct}%"
    assert f"{n} image{'s' * (n != 1)}" in got["legend"] and f"{got['s']}\u00d7{got['s']} grid; {top} of them" in got["legend"], got
    assert f"follow={follow['src']}:{follow['s']},{follow['row']},{follow['col']}" in page.url
    return got


def _check_pixels(page, got: dict) -> None:
    """The overlay canvas: a followed cell in the colour of its count, a cell without any dimmed."""
    px = page.evaluate("""((counts) => { const a = window.atlasViewer, l = a.layers, s = a.currentSize(), d = l.density(s);
        const o = document.getElementById('overlay'), g = o.getContext('2d'), r = window.devicePixelRatio || 1;
        const vs = a.viewSize(), at = (row, col) => { const c = a.cellRect(s, row, col);
            return [c.x + 0.72 * c.w, c.y + 0.72 * c.h]; };
        const inView = p => p[0] > 2 && p[1] > 2 && p[0] < vs.w - 2 && p[1] < vs.h - 2;
        const read = p => Array.from(g.getImageData(Math.round(p[0] * r), Math.round(p[1] * r), 1, 1).data);
        const held = new Map(counts), out = {followed: [], empty: null};
        for (let id = 0; id < s * s; id++) { const p = at(Math.floor(id / s), id % s);
            if (!inView(p)) continue;
            if (held.has(id)) { const c = l.colourOf(held.get(id), d.max);
                out.followed.push({got: read(p), want: c.rgb.concat([Math.round(255 * c.alpha)])}); }
            else if (!out.empty) out.empty = read(p); }
        return out; })""", got["counts"])
    assert px["followed"], px
    for item in px["followed"]:
        assert np.abs(np.array(item["got"]) - item["want"]).max() <= 3, item
    if px["empty"] is not None:  # the rest of the atlas dimmed
        assert np.abs(np.array(px["empty"]) - [18, 20, 30, 158]).max() <= 3, px["empty"]


# --------------------------------------------------------------------------- the picker


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_the_picker_lists_the_layers_switches_and_the_url_restores_it(browser, url, two_layers, size):
    index = _index(two_layers)
    page, watch = _open(browser, url + "tiles/", size)
    try:
        page.locator("#layer-pick").wait_for(state="visible", timeout=5000)
        labels = page.locator("#layer-pick option").all_inner_texts()
        want = [f"{e['layer']} \u00b7 {e['channels']} ch \u00b7 {e['grid'][0]}\u00d7{e['grid'][1]}" for e in index["layers"]]
        assert labels == want and want[1].startswith("blocks.3 \u00b7 80 ch \u00b7 "), labels
        assert page.input_value("#layer-pick") == "0" and "layer=blocks.5" in page.url
        assert page.evaluate("window.atlasViewer.layers.loads") == ["follow.js"]  # the rest only when asked for
        _check_header(page, size)
        assert page.evaluate("[window.atlasViewer.layers.levelFor(16), window.atlasViewer.layers.levelFor(2),"
                             " window.atlasViewer.layers.levelFor(7)]") == [8, 4, 8]  # the grid nearest another's

        before = _click_zoom(page, "zoom-in")
        k = page.evaluate("window.ATLAS.search_classes[0]")
        page.evaluate(f"window.atlasViewer.pick({k})")
        z = float(_params(page)["z"])
        with _switching(page, watch, 1):
            page.select_option("#layer-pick", "1")
        for _ in range(2):  # switched, then reloaded: the same layer and view
            assert page.evaluate("window.ATLAS.layer") == "blocks.3" and page.input_value("#layer-pick") == "1"
            assert page.evaluate("window.atlasViewer.state.query") == k  # the class kept
            assert float(_params(page)["z"]) == pytest.approx(z, rel=1e-3)  # the zoom kept: the finest grids match
            assert page.evaluate("window.atlasViewer.currentSize()") == before["s"]
            assert _params(page)["layer"] == "blocks.3" and "follow" not in _params(page)
            page.reload()
            _ready(page, 1)
        _check_header(page, size)  # with the Located list too
        _shot(page, f"layers-picked-{size[0]}")

        # a selected cell goes along: its images followed on the other layer; followed back, the cell selected
        cell = _open_densest(page)
        with _switching(page, watch, 0):
            page.select_option("#layer-pick", "0")
        _check_follow(page, two_layers, {"src": 1, **cell}, 0)
        assert page.evaluate("window.atlasViewer.state.query") == k and page.locator("#panel").is_hidden()
        with _switching(page, watch, 1):
            page.select_option("#layer-pick", "1")
        page.locator("#panel").wait_for(state="visible", timeout=5000)
        assert page.evaluate("window.atlasViewer.state.selected") == cell and "follow" not in _params(page)

        # a link naming another layer than the page's opens that layer; level=<s> shows the grid nearest s
        with _switching(page, watch, 1):
            page.goto(url + "tiles/index.html#x=0.5&y=0.5&z=0.05&level=16&layer=blocks.3")
        assert page.evaluate("window.atlasViewer.currentSize()") == 8 and "level" not in _params(page)
        watch.check(page)
    finally:
        page.close()


# --------------------------------------------------------------------------- following a cell's images


@pytest.mark.parametrize("size", SIZES, ids=IDS)
def test_following_a_cell_into_the_other_layer_and_back(browser, url, two_layers, size):
    index = _index(two_layers)
    page, watch = _open(browser, url + "tiles/", size)
    try:
        while page.evaluate("window.atlasViewer.currentSize()") != 8:
            _click_zoom(page, "zoom-in")
        cell = _open_densest(page)
        # the panel: the cell's neighbourhood persistence with blocks.3, beside the run's figures
        item = page.locator("#layers-panel li[data-layer='1']")
        page.wait_for_function("document.querySelector(\"#layers-panel li[data-layer='1']\").hasAttribute('data-mean')",
                               timeout=10_000)
        want = _persistence(two_layers, 0, cell["s"], cell["row"], cell["col"], 1)
        assert float(item.get_attribute("data-mean")) == pytest.approx(want, abs=1e-9)
        pair = index["pairs"][0]
        text = item.inner_text()
        assert f"{100 * want:.1f}%" in text and f"run {100 * pair['mean_share']:.1f}%" in text
        assert f"chance {100 * pair['chance']:.1f}%" in text and "blocks.3" in text
        assert page.locator("#layers-panel h3").first.text_content() == "Where these images go"
        assert page.evaluate("window.atlasViewer.layers.loads") == ["follow.js", "coords-0.js", "shared-0-1.js"]
        _shot(page, f"layers-panel-{size[0]}")

        with _switching(page, watch, 1):
            page.click("#layers-panel button[data-layer='1']")
        follow = {"src": 0, **cell}
        got = _check_follow(page, two_layers, follow, 1)
        _check_pixels(page, got)
        _shot(page, f"layers-follow-{size[0]}")
        # another level: the counts of the grid shown
        _click_zoom(page, "zoom-out")
        while page.evaluate("window.atlasViewer.currentSize()") != 4:
            _click_zoom(page, "zoom-out")
        _check_follow(page, two_layers, follow, 1)
        page.reload()  # the follow is in the URL
        _ready(page, 1)
        _check_pixels(page, _check_follow(page, two_layers, follow, 1))

        # and back: a cell of blocks.3 followed into blocks.5
        back = _open_densest(page)
        page.wait_for_function("document.querySelector(\"#layers-panel li[data-layer='0']\").hasAttribute('data-mean')",
                               timeout=10_000)
        mean = float(page.locator("#layers-panel li[data-layer='0']").get_attribute("data-mean"))
        assert mean == pytest.approx(_persistence(two_layers, 1, back["s"], back["row"], back["col"], 0), abs=1e-9)
        with _switching(page, watch, 0):
            page.click("#layers-panel button[data-layer='0']")
        _check_follow(page, two_layers, {"src": 1, **back}, 0)
        page.click("#layers-clear")
        page.locator("#layers-legend").wait_for(state="hidden", timeout=3000)
        page.wait_for_function("window.atlasViewer.layers.lastDraw.cells === 0 && !location.hash.includes('follow=')",
                               timeout=5000)
        watch.check(page)
    finally:
        page.close()


def test_from_disk_with_located_images_and_a_follow(browser, two_layers):
    """blocks.3's viewer opened as a file, following a blocks.5 cell: the follow files load from disk,
    and the image located on blocks.3 still draws its points."""
    cells = json.loads((two_layers / "tiles" / "cells-4.json").read_text())["cells"]
    c = max(cells, key=lambda c: (c["count"], -c["row"], -c["col"]))
    follow = {"src": 0, "s": 4, "row": c["row"], "col": c["col"]}
    unit = json.loads((two_layers / "layers" / "blocks.3" / "locate" / "index.json").read_text())["images"][0]["unit"]
    address = (two_layers / "layers" / "blocks.3" / "tiles" / "index.html").as_uri() + \
        f"#x=0.5&y=0.5&z=0.6&follow=0:4,{c['row']},{c['col']}&located={unit}"
    page, watch = _open(browser, address, (1000, 700))
    try:
        _check_follow(page, two_layers, follow, 1)
        page.wait_for_function("window.atlasViewer.located.drawn > 0", timeout=10_000)
        assert page.input_value("#located-select") == unit and page.input_value("#layer-pick") == "1"
        watch.check(page)
    finally:
        page.close()


def test_a_one_layer_atlas_shows_no_picker(browser, whole_run):
    page, watch = _open(browser, (whole_run / "tiles" / "index.html").as_uri(), NARROW)
    try:
        assert "layer_root" not in page.evaluate("Object.keys(window.ATLAS)")
        assert page.evaluate("window.atlasViewer.layers === undefined && !document.getElementById('layer-pick')")
        assert "layers" not in page.evaluate("window.atlasViewer.overlays.map(o => o.name)")
        assert "layer=" not in page.url
        watch.check(page)
    finally:
        page.close()
