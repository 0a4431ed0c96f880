"""The viewer in a real browser (Debian's chromium, driven by Python playwright), at 1280 x 800
and 400 x 800, on a tiny synthetic atlas (grids 4 / 8 / 16, icons 128 / 91 / 64 px by
``render.icon_growth``), served by ``atlas.serve.make_server`` and opened from disk (file://).

Checked: the home view shows the coarsest grid with labels, icons about 100 px or more, the
minimap showing the same pyramid; zoom steps show the next grid and every grid is reached in
and out; the deepest zoom shows the finest icons at no less than native size; the class search
lists every match with its cell count, puts the chosen name in the box and draws a graded
heatmap with a legend; zoom to the strongest cells; the click panel (icon, examples with their
outlined position and labels, "average of N activations", what the values mean); a
double-click zooms only; the hover card hides when the view changes; the keyboard cursor
(arrows, Enter, Esc) and Tab to the zoom buttons; the URL restores a view after a reload; a
compact header and a bottom-sheet panel on a narrow screen; the level of detail read from the
table tile writes; a third overlay registered through ``atlasViewer.registerOverlay`` draws, hears
cell clicks and adds to the panel; no console errors anywhere.
Writes screenshots and ``viewer-timing.json`` to ``test-artifacts/``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from atlas.config import RenderConfig, load_config
from atlas.ops.dzi import grid_for_zoom, grid_switch_px
from atlas.stages import get_stage, run_stage
from atlas.stages.tile import example_box
from tests.browser import launched, require_chromium, served
from tests.stages.contract import mark_finished
from tests.synthetic_atlas import INPUT_SIZE, LAYER_HW, icon_image, label_name, make_atlas

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
SIZES, ICON = (4, 8, 16), 64
ICONS = {s: RenderConfig(icon_size=ICON).level_icon_size(s, SIZES[-1]) for s in SIZES}  # 128, 91, 64
WIDE, NARROW = (1280, 800), (400, 800)
TIMING: dict[str, float] = {}


@pytest.fixture(scope="module")
def atlas_run(tmp_path_factory) -> Path:
    require_chromium()
    run_dir = tmp_path_factory.mktemp("viewer") / "run"
    make_atlas(run_dir, sizes=SIZES, icon=ICON, icon_sizes=ICONS, pattern="texture", examples=6, n_labels=3)
    mark_finished(run_dir, "collect", "reduce", "grid", "render")  # the runner's final markers
    run_stage(get_stage("tile"), load_config(None, [f"run_dir={run_dir}", f"grid.sizes={list(SIZES)}", "grid.min_count=2"]))
    return run_dir


@pytest.fixture(scope="module")
def browser(atlas_run):
    with launched() as b:
        yield b
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "viewer-timing.json").write_text(json.dumps(TIMING, indent=2))


@pytest.fixture(scope="module")
def url(atlas_run):
    with served(atlas_run) as base:
        yield base + "/"


class _Watch:
    """Every failed request, HTTP error, page error and console error of a page (a viewer asks only for
    files that exist: e.g. the located images' list only when the run's index counts some)."""

    def __init__(self, page) -> None:
        self.problems: list[str] = []
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console error: {m.text}"))

    def check(self, page) -> None:
        assert not self.problems, self.problems
        assert page.evaluate("window.atlasViewer.state.errors") == []


def _open(browser, address: str, size: tuple[int, int] = WIDE):
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    watch = _Watch(page)
    t0 = time.perf_counter()
    page.goto(address)
    page.wait_for_function("window.atlasViewer && window.atlasViewer.state.firstTileMs !== null", timeout=20_000)
    TIMING.setdefault(f"first_tile_wall_s_{size[0]}", round(time.perf_counter() - t0, 3))
    _settle(page)
    return page, watch


def _settle(page) -> None:
    """Until the zoom animation has ended, the shown grid's pyramid has loaded and its cells are known."""
    page.wait_for_function(
        "() => { const a = window.atlasViewer, v = a.viewer, s = a.currentSize();"
        " const top = v.world.getItemAt(v.world.getItemCount() - 1);"
        " return Math.abs(v.viewport.getZoom(true) - v.viewport.getZoom(false)) < 1e-6"
        "  && Math.abs(v.viewport.getCenter(true).x - v.viewport.getCenter(false).x) < 1e-6"
        "  && top.getFullyLoaded() && a.state.cells[s] !== undefined && a.state.lastDraw.s === s; }",
        timeout=20_000)
    page.wait_for_timeout(120)


def _view(page) -> dict:
    return page.evaluate("""(() => { const a = window.atlasViewer, v = a.viewer, c = v.viewport.getCenter(false);
        const s = a.currentSize(), r = a.cellRect(s, 0, 0);
        return {s: s, px: a.atlasPx(false), x: c.x, y: c.y, cell_w: r.w, labels: a.state.lastDraw.labels,
                query: a.state.query, selected: a.state.selected, max_px: v.viewport.getMaxZoom() * v.viewport.getContainerSize().x}; })()""")


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"viewer-{name}.png"))


def _click_zoom(page, button: str) -> dict:
    page.click(f"#{button}")
    _settle(page)
    return _view(page)


def _cell_centre(page, s: int, row: int, col: int) -> tuple[float, float]:
    r = page.evaluate(f"window.atlasViewer.cellRect({s}, {row}, {col})")
    box = page.locator("#osd").bounding_box()
    return box["x"] + r["x"] + r["w"] / 2, box["y"] + r["y"] + r["h"] / 2


def _visible_cell(page, s: int, margin: int = 60, right: int = 420) -> dict:
    """The densest non-empty cell of grid s lying wholly inside the view, away from the panel and minimap."""
    cell = page.evaluate(f"""(() => {{
        const lv = window.atlasViewer.state.cells[{s}], o = document.getElementById('osd');
        let best = null;
        for (const c of lv.doc.cells) {{
            const r = window.atlasViewer.cellRect({s}, c.row, c.col);
            if (r.x < {margin} || r.y < {margin} || r.x + r.w > o.clientWidth - {right} || r.y + r.h > o.clientHeight - {margin}) continue;
            if (!best || c.count > best.count) best = c;
        }}
        return best; }})()""")
    assert cell is not None, "no fully visible cell"
    return cell


def _check_labels(page) -> int:
    """Every label drawn lies inside the visible part of its cell, and none under the minimap."""
    got = page.evaluate("""(() => { const a = window.atlasViewer, o = document.getElementById('osd').getBoundingClientRect();
        const n = a.viewer.navigator.element.getBoundingClientRect(), s = a.state.lastDraw.s;
        return {s: s, w: o.width, h: o.height, nav: [n.left - o.left, n.top - o.top, n.right - o.left, n.bottom - o.top],
                boxes: a.state.lastDraw.labelBoxes.map(b => { const r = a.cellRect(s, b[0], b[1]);
                    return {box: b.slice(2), cell: [r.x, r.y, r.x + r.w, r.y + r.h]}; })}; })()""")
    nx0, ny0, nx1, ny1 = got["nav"]
    for item in got["boxes"]:
        x0, y0, x1, y1 = item["box"]
        cx0, cy0, cx1, cy1 = item["cell"]
        assert max(cx0, 0) - 0.5 <= x0 and x1 <= min(cx1, got["w"]) + 0.5, item  # inside the visible part of the cell
        assert max(cy0, 0) - 0.5 <= y0 and y1 <= min(cy1, got["h"]) + 0.5, item
        assert x1 <= nx0 or x0 >= nx1 or y1 <= ny0 or y0 >= ny1, item  # never under the minimap
    return len(got["boxes"])


def _minimap_matches(page) -> bool:
    """Every minimap item has the opacity of the pyramid it mirrors (the minimap shows the view's picture)."""
    return page.evaluate("""(() => { const n = window.atlasViewer.viewer.navigator.world;
        for (let i = 0; i < n.getItemCount(); i++) { const it = n.getItemAt(i);
            if (it.getOpacity() !== it._originalForNavigator.getOpacity()) return false; }
        return n.getItemCount() === window.ATLAS.grids.length; })()""")


# --------------------------------------------------------------------------- level of detail


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["1280x800", "400x800"])
def test_home_shows_the_coarsest_grid_and_zooming_reaches_every_grid(browser, url, size):
    page, watch = _open(browser, url, size)
    try:
        home = _view(page)
        assert home["s"] == SIZES[0], home
        assert home["cell_w"] >= 95, home  # coarse icons of about 100 px or more
        assert home["labels"] > 0 and _check_labels(page) == home["labels"], home  # labelled
        assert grid_for_zoom(SIZES, ICONS, home["px"]) == home["s"]  # the viewer's rule is the documented one
        assert page.evaluate("window.atlasViewer.homePx()") >= min(size[0], 100 * SIZES[0]) * 0.95
        assert _minimap_matches(page)
        header = page.locator("header").bounding_box()
        assert header["height"] <= 48, header  # one compact line, also on a narrow screen
        nav = page.evaluate("(() => { const r = window.atlasViewer.viewer.navigator.element.getBoundingClientRect();"
                            " return {w: r.width, h: r.height}; })()")
        assert nav["w"] <= (90 if size == NARROW else 160), nav
        assert page.evaluate("""(() => { const a = window.atlasViewer, o = document.getElementById('osd').getBoundingClientRect();
            const n = a.viewer.navigator.element.getBoundingClientRect(), r = a.cellRect(1, 0, 0);
            return n.left - o.left >= r.x + r.w || n.top - o.top >= r.y + r.h; })()"""), "the minimap covers the home view"
        _shot(page, f"home-{size[0]}")

        # zoom in with the zoom buttons: the next grid within two steps, then every grid
        seen, steps, view = [home["s"]], 0, home
        while view["s"] == SIZES[0]:
            view = _click_zoom(page, "zoom-in")
            steps += 1
        assert steps <= 2 and view["s"] == SIZES[1], (steps, view)
        assert view["labels"] > 0
        _shot(page, f"grid-{view['s']}-{size[0]}")
        while view["s"] != SIZES[-1] and steps < 8:
            view = _click_zoom(page, "zoom-in")
            seen.append(view["s"])
            steps += 1
        assert set(seen) | {SIZES[1]} == set(SIZES), seen
        assert sorted(seen) == seen  # zooming in never goes back to a coarser grid
        assert view["labels"] > 0 and _minimap_matches(page)
        _shot(page, f"grid-{view['s']}-{size[0]}")
        # labels: where the view cuts cells, in the visible part; never under the minimap; optionally only clear ones
        page.evaluate("window.atlasViewer.viewer.viewport.panBy(new OpenSeadragon.Point(0.013, 0.021))")
        _settle(page)
        assert _check_labels(page) > 0
        page.evaluate("window.ATLAS.label_min_share = 0.99; window.atlasViewer.redraw()")
        assert page.evaluate("window.atlasViewer.state.lastDraw.labels") == 0  # no cell's top class holds 99 %
        page.evaluate("window.ATLAS.label_min_share = 0; window.atlasViewer.redraw()")
        # the deepest zoom: the finest icons at native size or larger, and never more than max_zoom times
        page.evaluate("(() => { const v = window.atlasViewer.viewer; v.viewport.zoomTo(v.viewport.getMaxZoom()); })()")
        _settle(page)
        deep = _view(page)
        assert deep["s"] == SIZES[-1] and ICONS[SIZES[-1]] <= deep["cell_w"] <= 2.0 * ICONS[SIZES[-1]] + 0.5, deep
        # and out again, with the button, to the coarsest grid
        seen_out = [deep["s"]]
        for _ in range(12):
            view = _click_zoom(page, "zoom-out")
            seen_out.append(view["s"])
            if view["s"] == SIZES[0]:
                break
        assert set(seen_out) == set(SIZES), seen_out
        watch.check(page)
    finally:
        page.close()


# --------------------------------------------------------------------------- class heatmap


def test_class_search_lists_matches_and_draws_a_graded_heatmap(browser, url, atlas_run):
    page, watch = _open(browser, url)
    try:
        atlas = json.loads((atlas_run / "tiles" / "atlas.json").read_text())
        page.click("#search-input")
        page.keyboard.type("class-01")
        page.locator("#search-list").wait_for(state="visible", timeout=5000)
        options = page.locator("#search-list li[data-k]").all_inner_texts()
        want = [n for n in atlas["class_names"] if "class-01" in n]
        assert len(options) == len(want) == 10 and all("cell" in o for o in options), options
        index = atlas["search_classes"].index(12)
        option = page.locator("#search-list li[data-k='12']")
        assert f"{atlas['class_cells']['4'][index]} cell" in option.inner_text()
        option.click()
        assert page.input_value("#search-input") == "class-012"  # the chosen name in the box
        page.wait_for_function("window.atlasViewer.state.lastDraw.heatCells > 0", timeout=5000)
        page.locator("#legend").wait_for(state="visible")
        assert "class-012" in page.locator("#legend").inner_text()
        assert page.locator("#legend-max").inner_text().strip() != ""
        page.mouse.move(5, 5)
        page.wait_for_timeout(150)
        draw = page.evaluate("window.atlasViewer.state.lastDraw")
        assert draw["heatColours"] > 2, draw
        # the overlay itself: more than two distinct colours at the centres of the heat cells
        colours = page.evaluate("""(() => { const a = window.atlasViewer, s = a.currentSize(), o = document.getElementById('overlay');
            const d = window.devicePixelRatio || 1, g = o.getContext('2d'), heat = a.state.heat[s + ':12'], out = new Set();
            for (let i = 0; i < s * s; i++) { if (!heat.values[i]) continue;
                const r = a.cellRect(s, Math.floor(i / s), i % s);
                const p = g.getImageData(Math.round((r.x + r.w / 2) * d), Math.round((r.y + r.h / 2) * d), 1, 1).data;
                out.add(p.slice(0, 3).join(',')); }
            return [...out]; })()""")
        assert len(colours) > 2, colours
        _shot(page, "heatmap")
        TIMING["heat_load_ms_grid_4"] = round(page.evaluate("window.atlasViewer.state.heatMs['4:12']"), 1)
        # zoom to the strongest cells: one grid deeper, centred on the strongest cell of the grid shown before
        heat4 = page.evaluate("Array.from(window.atlasViewer.state.heat['4:12'].values)")
        best = int(np.argmax(heat4))
        page.click("#legend-strongest")
        _settle(page)
        view = _view(page)
        assert view["s"] > SIZES[0]
        assert abs(view["x"] - (best % 4 + 0.5) / 4) < 0.13 and abs(view["y"] - (best // 4 + 0.5) / 4) < 0.13, (view, best)
        page.wait_for_function(f"window.atlasViewer.state.heat['{view['s']}:12'] !== undefined", timeout=5000)
        assert page.evaluate("window.atlasViewer.state.lastDraw.heatColours") > 2
        # no match: said so, nothing searched
        page.fill("#search-input", "zebra")
        assert "no class matches" in page.locator("#search-list").inner_text()
        page.press("#search-input", "Escape")
        page.press("#search-input", "Escape")
        assert page.evaluate("window.atlasViewer.state.query") is None and page.locator("#legend").is_hidden()
        watch.check(page)
    finally:
        page.close()


# --------------------------------------------------------------------------- hover, click panel, interaction


def test_hover_card_click_panel_and_double_click(browser, url, atlas_run):
    page, watch = _open(browser, url)
    try:
        header = page.locator("#run-info").inner_text()
        n = json.loads((atlas_run / "tiles" / "atlas.json").read_text())["n_images"]
        assert "synthetic-net" in header and "blocks.5" in header and f"{n:,} images" in header
        view = _click_zoom(page, "zoom-in")
        s = view["s"]
        cell = _visible_cell(page, s)
        x, y = _cell_centre(page, s, cell["row"], cell["col"])
        page.mouse.move(x, y)
        card = page.locator("#hover-card")
        card.wait_for(state="visible", timeout=5000)
        text = card.inner_text()
        assert f"average of {cell['count']} activations" in text
        assert all(t["name"] in text for t in cell["top"])
        # any change of the view hides the card
        page.evaluate("window.atlasViewer.viewer.viewport.panBy(new OpenSeadragon.Point(0.01, 0))")
        card.wait_for(state="hidden", timeout=3000)
        _settle(page)

        # click: the panel with the icon, the examples with their outlined position and labels, what the values mean
        x, y = _cell_centre(page, s, cell["row"], cell["col"])
        page.mouse.click(x, y)
        page.locator("#panel").wait_for(state="visible", timeout=5000)
        page.wait_for_function("""() => { const im = [...document.querySelectorAll('#panel img')];
            const icon = document.getElementById('panel-icon');
            return im.length > 0 && im.every(i => i.complete && i.naturalWidth > 0)
                && icon && icon.getAttribute('data-loaded') === '1'; }""", timeout=10_000)
        icon = page.evaluate("""(() => { const c = document.getElementById('panel-icon');
            const d = c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data;
            return {w: c.width, centre: Array.from(d).slice(0, 3)}; })()""")
        assert icon["w"] % ICONS[s] == 0 and icon["w"] >= ICONS[s]
        disc = icon_image(s, cell["row"], cell["col"], ICONS[s], "texture")[ICONS[s] // 2, ICONS[s] // 2]
        assert np.abs(np.array(icon["centre"]) - disc).max() < 24, (icon, disc)
        examples = page.evaluate("[...document.querySelectorAll('#panel-examples img')].map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert [src for src, _ in examples] == [f"examples/{r}.jpg" for r in cell["examples"]] and examples
        boxes = page.evaluate("[...document.querySelectorAll('#panel-examples .rf')].map(e => { const r = e.getBoundingClientRect();"
                              " const p = e.parentElement.getBoundingClientRect(); return [(r.left - p.left) / p.width, r.width / p.width]; })")
        assert len(boxes) == len(examples) and all(0.2 < left < 0.45 and 0.25 < w < 0.45 for left, w in boxes), boxes
        captions = page.locator("#panel-examples figcaption").all_inner_texts()
        assert captions == [label_name(k) for k in cell["example_labels"]] and captions
        # the outline is where Python puts it
        want = [example_box(y, x, [16, *LAYER_HW], INPUT_SIZE, 3.0) for y, x in cell["example_positions"]]
        got = page.evaluate(f"{json.dumps(cell['example_positions'])}.map(p => window.atlasViewer.exampleBox(p, 3))")
        np.testing.assert_allclose(got, want, atol=1e-9)
        panel_text = page.locator("#panel").inner_text()
        assert f"Cell ({cell['row']}, {cell['col']})" in panel_text and f"average of {cell['count']} activations" in panel_text
        assert "logit units" in panel_text and "Attribution:" in panel_text
        # the icon measured twice: faithfulness and distinctness (its own cell's rank among the grid's icons)
        assert page.locator("#panel-faithfulness").inner_text().startswith("faithfulness 0.")
        n_icons = page.evaluate(f"window.atlasViewer.state.cells[{s}].doc.n_icons")
        rank_text = page.locator("#panel-distinctness").inner_text()
        assert cell["rank"] >= 1 and f" of {n_icons}" in rank_text and rank_text.split("ranks ")[1].startswith(str(cell["rank"]))
        assert page.evaluate("window.atlasViewer.state.selected")["row"] == cell["row"]
        _shot(page, "panel")
        page.keyboard.press("Escape")
        page.locator("#panel").wait_for(state="hidden", timeout=3000)

        # a double-click zooms and does not open the panel
        before = _view(page)["px"]
        x, y = _cell_centre(page, s, cell["row"], cell["col"])
        page.mouse.dblclick(x, y)
        page.wait_for_timeout(700)
        _settle(page)
        assert _view(page)["px"] > before * 1.5
        assert page.locator("#panel").is_hidden() and page.evaluate("window.atlasViewer.state.selected") is None
        watch.check(page)
    finally:
        page.close()


def test_keyboard_cursor_and_tab_to_the_zoom_buttons(browser, url):
    page, watch = _open(browser, url)
    try:
        page.focus("#search-input")
        for _ in range(6):  # input, clear, link, then the zoom buttons
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "zoom-in":
                break
        assert page.evaluate("document.activeElement.id") == "zoom-in"
        before = _view(page)["px"]
        page.keyboard.press("Enter")
        _settle(page)
        assert _view(page)["px"] > before * 1.3
        for _ in range(4):  # on to the map
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement === window.atlasViewer.viewer.canvas"):
                break
        assert page.evaluate("document.activeElement === window.atlasViewer.viewer.canvas")
        page.keyboard.press("ArrowRight")
        first = page.evaluate("window.atlasViewer.state.cursor")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("ArrowLeft")
        cur = page.evaluate("window.atlasViewer.state.cursor")
        assert first is not None  # the first arrow puts the cursor on the centre cell, the next ones move it
        assert (cur["row"], cur["col"]) == (min(first["row"] + 1, cur["s"] - 1), max(first["col"] - 1, 0)), (first, cur)
        _settle(page)
        cells = page.evaluate(f"window.atlasViewer.state.cells[{cur['s']}].doc.cells.map(c => [c.row, c.col])")
        target = min(cells, key=lambda rc: abs(rc[0] - cur["row"]) + abs(rc[1] - cur["col"]))
        for _ in range(abs(target[0] - cur["row"])):
            page.keyboard.press("ArrowDown" if target[0] > cur["row"] else "ArrowUp")
        for _ in range(abs(target[1] - cur["col"])):
            page.keyboard.press("ArrowRight" if target[1] > cur["col"] else "ArrowLeft")
        _settle(page)
        page.keyboard.press("Enter")
        page.locator("#panel").wait_for(state="visible", timeout=5000)
        assert f"Cell ({target[0]}, {target[1]})" in page.locator("#panel").inner_text()
        _shot(page, "keyboard")
        page.keyboard.press("Escape")
        page.locator("#panel").wait_for(state="hidden", timeout=3000)
        watch.check(page)
    finally:
        page.close()


# --------------------------------------------------------------------------- shareable views


@pytest.mark.parametrize("size", [WIDE, NARROW], ids=["1280x800", "400x800"])
def test_the_url_restores_the_view_after_a_reload(browser, url, size):
    page, watch = _open(browser, url, size)
    try:
        _click_zoom(page, "zoom-in")
        page.evaluate("window.atlasViewer.viewer.viewport.panBy(new OpenSeadragon.Point(0.06, 0.04))")
        _settle(page)
        page.evaluate("window.atlasViewer.pick(7)")
        view = _view(page)
        s = view["s"]
        cell = _visible_cell(page, s, margin=10, right=10)
        page.evaluate(f"(() => {{ const a = window.atlasViewer, c = a.state.cells[{s}].byKey.get({cell['row'] * s + cell['col']});"
                      f" a.openPanel({{s: {s}, row: c.row, col: c.col, cell: c}}); }})()")
        _settle(page)
        view = _view(page)
        if size == NARROW:  # the panel is a bottom sheet: full width, at the bottom
            box = page.locator("#panel").bounding_box()
            assert box["width"] == size[0] and abs(box["y"] + box["height"] - size[1]) < 1, box
        shared = page.url
        assert "class=class-007" in shared and f"cell={s},{cell['row']},{cell['col']}" in shared
        watch.check(page)
    finally:
        page.close()
    page, watch = _open(browser, shared, size)  # a new page: the link someone was sent
    try:
        page.locator("#panel").wait_for(state="visible", timeout=5000)
        _settle(page)
        again = _view(page)
        assert again["s"] == view["s"] and abs(again["px"] / view["px"] - 1) < 0.01, (again, view)
        assert abs(again["x"] - view["x"]) < 1e-3 and abs(again["y"] - view["y"]) < 1e-3, (again, view)
        assert again["query"] == 7 and page.input_value("#search-input") == "class-007"
        assert again["selected"] == {"s": s, "row": cell["row"], "col": cell["col"]}
        assert f"Cell ({cell['row']}, {cell['col']})" in page.locator("#panel").inner_text()
        page.wait_for_function("window.atlasViewer.state.lastDraw.heatCells > 0", timeout=5000)
        _shot(page, f"restored-{size[0]}")
        watch.check(page)
    finally:
        page.close()


def test_viewer_from_disk(atlas_run, browser):
    """index.html opened as a file (no server): the .js metadata and heat twins make it work."""
    page, watch = _open(browser, (atlas_run / "tiles" / "index.html").as_uri(), (1000, 700))
    try:
        s = page.evaluate("window.atlasViewer.currentSize()")
        cell = _visible_cell(page, s, margin=0, right=0)
        x, y = _cell_centre(page, s, cell["row"], cell["col"])
        page.mouse.move(x, y)
        page.locator("#hover-card").wait_for(state="visible", timeout=5000)
        assert f"average of {cell['count']} activations" in page.locator("#hover-card").inner_text()
        assert page.evaluate("window.atlasViewer.search('class-003')") == 3
        page.wait_for_function("window.atlasViewer.state.lastDraw.heatColours > 2", timeout=5000)
        assert label_name(0) == "photo-0"
        watch.check(page)
    finally:
        page.close()


# --------------------------------------------------------------------------- the level of detail's table, overlays


def test_the_level_of_detail_reads_the_table_tile_writes(browser, url, atlas_run):
    page, watch = _open(browser, url)
    try:
        atlas = json.loads((atlas_run / "tiles" / "atlas.json").read_text())
        want = grid_switch_px(SIZES, ICONS)
        assert {g["size"]: g["switch_px"] for g in atlas["grids"]} == pytest.approx(want)  # tile writes the table
        got = page.evaluate("window.ATLAS.grids.map(g => [g.size, window.atlasViewer.lod.switchPx(g)])")
        assert dict(got) == pytest.approx(want)
        for s in SIZES:  # just below and at each switch point: the rule of atlas.ops.dzi.grid_for_zoom
            for px in (want[s] - 1, want[s]):
                if px >= 0:
                    assert page.evaluate(f"window.atlasViewer.gridForAtlasPx({px})") == grid_for_zoom(SIZES, ICONS, px)
        # the viewer derives nothing: another table, another rule
        page.evaluate("window.ATLAS.grids.forEach(g => { if (g.size === 8) g.switch_px = 1e9; })")
        assert page.evaluate(f"window.atlasViewer.gridForAtlasPx({want[8] + 1})") == SIZES[0]
        watch.check(page)
    finally:
        page.close()


PROBE = """(() => {
    const probe = window.probe = {frames: 0, cells: 0, clicks: [], take: false};
    window.atlasViewer.registerOverlay({
        name: 'probe',
        draw(ctx, view) {
            probe.frames += 1;
            probe.cells = 0;
            ctx.fillStyle = 'rgb(255, 0, 255)';
            view.forEachCell((r, c, x, y) => { ctx.fillRect(x + 2, y + 2, 8, 8); probe.cells += 1; });
        },
        onCell(hit) { probe.clicks.push([hit.s, hit.row, hit.col, hit.cell !== null]); return probe.take; },
        panelSection(hit) { return "<p id='probe-section'>probe " + hit.row + "," + hit.col + "</p>"; },
        urlPart() { return 'probe=on'; }
    });
})()"""


def test_a_registered_overlay_draws_gets_cell_clicks_and_adds_to_the_panel(browser, url):
    """A third overlay, registered by the page through atlasViewer.registerOverlay (as atlases.js and
    located.js register theirs): it draws on the map, hears clicks on cells, adds a panel section
    and keeps its state in the URL; a click it takes opens no panel."""
    page, watch = _open(browser, url)
    try:
        page.evaluate(PROBE)
        page.wait_for_function("window.probe.frames > 0 && window.probe.cells > 0", timeout=5000)
        view = _click_zoom(page, "zoom-in")
        s = view["s"]
        cell = _visible_cell(page, s)
        pixel = page.evaluate(f"""(() => {{ const r = window.atlasViewer.cellRect({s}, {cell['row']}, {cell['col']});
            const d = window.devicePixelRatio || 1, o = document.getElementById('overlay');
            return Array.from(o.getContext('2d').getImageData(Math.round((r.x + 6) * d), Math.round((r.y + 6) * d), 1, 1).data); }})()""")
        assert pixel == [255, 0, 255, 255], pixel  # its square, at the top left of the cell
        assert [o["name"] for o in page.evaluate("window.atlasViewer.overlays.map(o => ({name: o.name}))")] == ["heatmap", "probe", "labels", "located", "outlines"]

        x, y = _cell_centre(page, s, cell["row"], cell["col"])
        page.mouse.click(x, y)
        page.locator("#panel").wait_for(state="visible", timeout=5000)
        assert page.evaluate("window.probe.clicks") == [[s, cell["row"], cell["col"], True]]
        assert page.locator("#panel-body section[data-overlay='probe'] #probe-section").inner_text() == \
            f"probe {cell['row']},{cell['col']}"
        assert "probe=on" in page.url and f"cell={s},{cell['row']},{cell['col']}" in page.url
        page.keyboard.press("Escape")
        page.locator("#panel").wait_for(state="hidden", timeout=3000)

        page.evaluate("window.probe.take = true")  # the overlay takes the click: no panel
        page.mouse.click(x, y)
        page.wait_for_function("window.probe.clicks.length === 2", timeout=5000)
        page.wait_for_timeout(200)
        assert page.locator("#panel").is_hidden() and page.evaluate("window.atlasViewer.state.selected") is None

        # a second overlay of the same name, or a misspelt hook: one clear line, nothing registered
        errors = page.evaluate("""[{name: 'probe', draw() {}}, {name: 'other', drow() {}}, {draw() {}}].map(spec => {
            try { window.atlasViewer.registerOverlay(spec); return null; } catch (e) { return e.message; } })""")
        assert "registered already" in errors[0] and "unknown keys drow" in errors[1] and "name" in errors[2], errors
        assert all("\n" not in e for e in errors)
        assert page.evaluate("window.atlasViewer.overlays.length") == 5
        watch.check(page)
    finally:
        page.close()
