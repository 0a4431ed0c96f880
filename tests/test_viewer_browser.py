"""The viewer in a real browser (Debian's chromium, driven by Python playwright).

Served by ``atlas.serve.make_server`` on 127.0.0.1, and opened from disk (file://): tiles
paint, nothing fails to load, zoom switches to the finer grid, hovering a cell shows its
card, clicking shows its icon and dataset examples, searching a class shows the heatmap.
Writes ``test-artifacts/viewer.png`` and ``test-artifacts/viewer-timing.json``.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from atlas.config import load_config
from atlas.serve import make_server
from atlas.stages import tile
from tests.synthetic_atlas import icon_image, make_atlas

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
SIZES, ICON = (4, 8, 16), 96


@pytest.fixture(scope="module")
def atlas_run(tmp_path_factory) -> Path:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium, done by `make setup`)")
    pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")
    run_dir = tmp_path_factory.mktemp("viewer") / "run"
    make_atlas(run_dir, sizes=SIZES, icon=ICON, pattern="texture", examples=6)
    tile.run(load_config(None, [f"run_dir={run_dir}", f"grid.sizes={list(SIZES)}", "grid.min_count=2"]))
    return run_dir


@pytest.fixture(scope="module")
def browser(atlas_run):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class _Watch:
    """Every failed request, HTTP error, page error and console error of a page."""

    def __init__(self, page) -> None:
        self.problems: list[str] = []
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console error: {m.text}"))


def _wait_painted(page, timeout: float = 20_000) -> float:
    page.wait_for_function("window.atlasViewer && window.atlasViewer.state.firstTileMs !== null", timeout=timeout)
    return page.evaluate("window.atlasViewer.state.firstTileMs")


def _wait_settled(page) -> None:
    page.wait_for_function(
        "() => { const v = window.atlasViewer.viewer; const s = window.atlasViewer.currentSize();"
        " return !v.viewport.getZoom(true) !== undefined && Math.abs(v.viewport.getZoom(true) - v.viewport.getZoom(false)) < 1e-6"
        " && v.world.getItemAt(0).getFullyLoaded() && window.atlasViewer.state.cells[s] !== undefined; }",
        timeout=20_000)
    page.wait_for_timeout(150)


def _cell_screen(page, s: int, row: int, col: int) -> tuple[float, float]:
    r = page.evaluate(f"window.atlasViewer.cellRect({s}, {row}, {col})")
    box = page.locator("#osd").bounding_box()
    return box["x"] + r["x"] + r["w"] / 2, box["y"] + r["y"] + r["h"] / 2


def test_viewer_over_http(atlas_run, browser):
    server = make_server(atlas_run, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    watch = _Watch(page)
    try:
        t0 = time.perf_counter()
        page.goto(url)
        first_ms = _wait_painted(page)
        wall_first = time.perf_counter() - t0
        _wait_settled(page)
        header = page.locator("#run-info").inner_text()
        n = json.loads((atlas_run / "tiles" / "atlas.json").read_text())["n_images"]
        assert "synthetic-net" in header and "blocks.5" in header and f"{n:,} images" in header

        # zoom in with the OpenSeadragon viewport API: the finer grid takes over
        s0 = page.evaluate("window.atlasViewer.currentSize()")
        assert s0 < SIZES[-1]
        page.evaluate("(() => { const v = window.atlasViewer.viewer; v.viewport.zoomBy(2.6); v.viewport.applyConstraints(); })()")
        _wait_settled(page)
        s = page.evaluate("window.atlasViewer.currentSize()")
        assert s > s0, (s0, s)
        # also the mouse wheel (zoom back out a little, then in again)
        page.mouse.move(640, 450)
        page.mouse.wheel(0, 200)
        page.mouse.wheel(0, -200)
        _wait_settled(page)
        s = page.evaluate("window.atlasViewer.currentSize()")

        # the densest visible cell of the shown grid
        cell = page.evaluate(f"""(() => {{
            const lv = window.atlasViewer.state.cells[{s}], v = window.atlasViewer.viewer;
            const W = document.getElementById('osd').clientWidth, H = document.getElementById('osd').clientHeight;
            let best = null;
            for (const c of lv.doc.cells) {{
                const r = window.atlasViewer.cellRect({s}, c.row, c.col);
                if (r.x < 60 || r.y < 60 || r.x + r.w > W - 420 || r.y + r.h > H - 60) continue;
                if (!best || c.count > best.count) best = c;
            }}
            return best; }})()""")
        assert cell is not None, "no fully visible cell"
        x, y = _cell_screen(page, s, cell["row"], cell["col"])
        page.mouse.move(x, y)
        card = page.locator("#hover-card")
        card.wait_for(state="visible", timeout=5000)
        text = card.inner_text()
        assert f"{cell['count']} activations" in text
        for t in cell["top"]:
            assert t["name"] in text

        # click: the panel with the icon at full size and the real example crops
        page.mouse.click(x, y)
        page.locator("#panel").wait_for(state="visible", timeout=5000)
        page.wait_for_function("""() => { const im = [...document.querySelectorAll('#panel img')];
            const icon = document.getElementById('panel-icon');
            return im.length > 0 && im.every(i => i.complete && i.naturalWidth > 0)
                && icon && icon.getAttribute('data-loaded') === '1'; }""", timeout=10_000)
        # the icon, cut from its sheet and enlarged: the synthetic icon's centre is its disc
        icon = page.evaluate("""(() => { const c = document.getElementById('panel-icon');
            const d = c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data;
            return {w: c.width, centre: Array.from(d).slice(0, 3)}; })()""")
        assert icon["w"] % ICON == 0 and icon["w"] >= ICON
        disc = icon_image(s, cell["row"], cell["col"], ICON, "texture")[ICON // 2, ICON // 2]
        assert np.abs(np.array(icon["centre"]) - disc).max() < 24, (icon, disc)
        examples = page.evaluate("[...document.querySelectorAll('#panel-examples img')].map(i => [i.getAttribute('src'), i.naturalWidth])")
        assert [src for src, _ in examples] == [f"examples/{r}.jpg" for r in cell["examples"]] and examples
        assert all(w > 0 for _, w in examples)
        assert f"Cell ({cell['row']}, {cell['col']})" in page.locator("#panel").inner_text()

        # search the cell's top class: heatmap on its cells, others dimmed
        name = cell["top"][0]["name"]
        page.fill("#search-input", name)
        page.press("#search-input", "Enter")
        page.wait_for_function("document.getElementById('search-status').textContent.includes('cells')", timeout=5000)
        status = page.locator("#search-status").inner_text()
        assert name in status
        page.mouse.move(5, 5)
        page.wait_for_timeout(200)
        px = page.evaluate(f"""(() => {{
            const o = document.getElementById('overlay'), d = window.devicePixelRatio || 1;
            const r = window.atlasViewer.cellRect({s}, {cell['row']}, {cell['col']});
            const hit = o.getContext('2d').getImageData(Math.round((r.x + r.w * 0.3) * d), Math.round((r.y + r.h * 0.3) * d), 1, 1).data;
            const lv = window.atlasViewer.state.cells[{s}];
            const k = lv.doc.cells.find(c => !c.top.some(t => t.name === {name!r}) &&
                (() => {{ const q = window.atlasViewer.cellRect({s}, c.row, c.col); return q.x > 0 && q.y > 0 && q.x + q.w < o.clientWidth - 380 && q.y + q.h < o.clientHeight; }})());
            let other = null;
            if (k) {{ const q = window.atlasViewer.cellRect({s}, k.row, k.col);
                other = Array.from(o.getContext('2d').getImageData(Math.round((q.x + q.w / 2) * d), Math.round((q.y + q.h * 0.3) * d), 1, 1).data); }}
            return {{hit: Array.from(hit), other: other}}; }})()""")
        r_, g_, b_, a_ = px["hit"]
        assert a_ > 0 and r_ > g_ > b_, px  # orange heat on the matching cell
        if px["other"] is not None:
            assert px["other"][3] > 100 and max(px["other"][:3]) < 60, px  # dimmed non-matching cell

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "viewer.png"))
        assert not watch.problems, watch.problems
        assert page.evaluate("window.atlasViewer.state.errors") == []
        timing = {"first_tile_ms_since_navigation": round(first_ms, 1), "first_tile_wall_s": round(wall_first, 3),
                  "tiles_drawn": page.evaluate("window.atlasViewer.state.tilesDrawn")}
        (ARTIFACTS / "viewer-timing.json").write_text(json.dumps(timing, indent=2))
        print(f"\nviewer: first tile painted {first_ms:.0f} ms after navigation start", timing)
    finally:
        page.close()
        server.shutdown()
        server.server_close()


def test_viewer_from_disk(atlas_run, browser):
    """index.html opened as a file (no server): the .js metadata twins make it work."""
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    watch = _Watch(page)
    try:
        page.goto((atlas_run / "tiles" / "index.html").as_uri())
        _wait_painted(page)
        _wait_settled(page)
        s = page.evaluate("window.atlasViewer.currentSize()")
        cell = page.evaluate(f"window.atlasViewer.state.cells[{s}].doc.cells.reduce((a, c) => c.count > a.count ? c : a)")
        x, y = _cell_screen(page, s, cell["row"], cell["col"])
        page.mouse.move(x, y)
        page.locator("#hover-card").wait_for(state="visible", timeout=5000)
        assert f"{cell['count']} activations" in page.locator("#hover-card").inner_text()
        assert not watch.problems, watch.problems
    finally:
        page.close()
