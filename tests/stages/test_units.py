"""``atlas units`` on the tiny demo atlas (the session's ``whole_run``, real Lite0, layer blocks.5: 192
channels): its outputs against brute-force recomputations from collect and grid (the cells' dictionary,
the examples, the heatmaps, the self-ranks, the channels' attribution adding up to collect's), a
located image's dictionary picture, a learned basis (``nmf:K``, ``sae:K``) and the autoencoder's
resume from its checkpoint to the same bits, the viewer in chromium at 1280 x 800 and 400 x 800; the
stage contract (rerun, resume after kill -9, shards, inputs) through the CLI (:class:`TestUnitsContract`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from PIL import Image

from atlas import api
from atlas.cli import main
from atlas.formats import UnitsOutput
from atlas.ops.units import dictionary, quantise, self_rank
from atlas.sources._demo import demo_location
from atlas.store import RunDir, StoreError
from tests.browser import launched
from tests.stages.contract import StageContract, copy_run

# A few icons (the layer has 192 channels: every unit gets examples, a heatmap and dictionaries; only
# the first 4 an icon), 2 optimisation steps, one torch thread (the test machine is shared).
TINY_UNITS = ("units.limit=4", "units.batch_size=2", "units.steps=2", "units.attribution_batch=40", "units.threads=1")
LOCATED = demo_location(70, 96)  # held out: the tiny atlas collected demo images 0-63


def _cfg(run_dir: Path, *more: str) -> Any:
    return api.load(str(run_dir / "config.yaml"), [f"run_dir={run_dir}", *TINY_UNITS, *more])


def _js(path: Path) -> Any:
    return json.loads(path.read_text().split(" = ", 1)[1].rstrip(";\n"))


@pytest.fixture(scope="module")
def units_run(whole_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A copy of the whole tiny atlas with one image located, then `atlas units` (channels)."""
    run_dir = copy_run(whole_run, tmp_path_factory.mktemp("units") / "run")
    api.locate(api.load(str(run_dir / "config.yaml"), [f"run_dir={run_dir}"]), [LOCATED])
    return run_dir, api.units(_cfg(run_dir))


def test_one_icon_per_unit_and_the_index(units_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, doc = units_run
    out = UnitsOutput.open(RunDir(run_dir))
    assert doc["n_units"] == out.n_units == 192 and doc["n_icons"] == out.n_icons == 4 and doc["kind"] == "channels"
    assert out.array("icons").shape == (4, out.icon_size, out.icon_size, 3) and out.icon_size == 16
    assert np.isfinite(out.array("cossim")[...]).all()
    assert sorted(p.name for p in (run_dir / "units" / "icons").iterdir()) == [f"{u}.jpg" for u in range(4)]
    assert len(list((run_dir / "units" / "unit").glob("*.js"))) == 192
    for s in (4, 8):
        assert (run_dir / "units" / f"cells-{s}.js").is_file()
    sr = doc["self_rank"]
    assert sr["n"] == 4 and 1 <= sr["median"] <= 192 and 0 <= sr["first"] <= 1 and sr["chance_median"] == 96.5
    assert (run_dir / "units" / "index.js").read_text().startswith("window.ATLAS_UNITS = ")
    index = json.loads((run_dir / "atlases.json").read_text())
    assert index["atlases"][0]["units"] == 192  # the viewer learns there are units from the run's index
    status = next(st for st in api.status(run_dir)["stages"] if st["stage"] == "units")
    assert status["state"] == "done" and status["basis"] == "channels" and status["icons"] == 4


def test_the_self_rank_is_the_own_channels_rank_scaled_by_spread(units_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = units_run
    out = UnitsOutput.open(RunDir(run_dir))
    act = np.asarray(out.array("activation")[...])
    std = np.asarray(out.array("unit_std")[...])
    np.testing.assert_array_equal(out.array("self_rank")[...], self_rank(act, std, np.arange(4)))
    col = zarr.open_group(str(run_dir / "collect"), mode="r")
    ok = col["status"][...] == 1
    x = col["activations"][...].astype(np.float64)[ok]
    np.testing.assert_allclose(std, x.std(axis=0), rtol=1e-4, atol=1e-6)


def test_the_cells_dictionary_is_the_grids_mean_activation(units_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = units_run
    out = UnitsOutput.open(RunDir(run_dir))
    grid = zarr.open_group(str(run_dir / "grid"), mode="r")
    for s in (4, 8):
        mean = grid[f"level-{s}/mean_activation"][...]
        lvl = out.level(s)
        got = np.asarray(lvl.mean_coef[...])
        np.testing.assert_array_equal(np.isnan(got), np.isnan(mean))
        np.testing.assert_allclose(got, mean, rtol=1e-5, atol=1e-5)
        units, shares = dictionary(got.reshape(-1, 192), 8)
        np.testing.assert_array_equal(lvl.top_units[...], units.reshape(s, s, 8))
        cells = _js(run_dir / "units" / f"cells-{s}.js")
        occupied = grid[f"level-{s}/count"][...] >= grid.attrs["min_count"]
        assert len(cells["cells"]) == int(occupied.sum()) and cells["attribution"]
        r, c, us, sh = cells["cells"][0][:4]
        assert us == [u for u in units.reshape(s, s, 8)[r, c] if u >= 0]
        np.testing.assert_allclose(sh, shares.reshape(s, s, 8)[r, c][:len(us)], atol=1e-4)
        assert abs(sum(sh) - 1) < 1 and sh == sorted(sh, reverse=True)


def test_examples_are_the_rows_where_each_channel_is_largest(units_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = units_run
    out = UnitsOutput.open(RunDir(run_dir))
    col = zarr.open_group(str(run_dir / "collect"), mode="r")
    rows = np.flatnonzero(col["status"][...] == 1)
    x = col["activations"][...].astype(np.float32)[rows]
    ex = np.asarray(out.array("examples")[...])
    for u in (0, 7, 191):
        want = rows[sorted(range(len(rows)), key=lambda i: (-float(x[i, u]), int(rows[i])))[:8]]
        np.testing.assert_array_equal(ex[u], want)
    crops = {int(p.stem) for p in (run_dir / "units" / "examples").iterdir()}
    assert crops == {int(r) for r in ex.reshape(-1) if r >= 0}  # every unit's examples, icon or not
    pos = np.asarray(out.array("example_positions")[...])
    np.testing.assert_array_equal(pos[5], col["positions"][...][ex[5]])
    doc = _js(run_dir / "units" / "unit" / "7.js")
    assert [e[0] for e in doc["examples"]] == ex[7].tolist()


def test_a_units_heatmap_is_its_mean_over_the_cells(units_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, _ = units_run
    out = UnitsOutput.open(RunDir(run_dir))
    doc = _js(run_dir / "units" / "unit" / "3.js")
    for s in (4, 8):
        h = doc["levels"][str(s)]
        q, vmax = quantise(np.asarray(out.level(s).mean_coef[...])[:, :, 3].reshape(-1))
        got = np.zeros(s * s, np.uint8)
        values = np.frombuffer(base64.b64decode(h["values"]), np.uint8)
        if h["encoding"] == "sparse":
            got[np.frombuffer(base64.b64decode(h["index"]), "<u4")] = values
        else:
            got[:] = values
        np.testing.assert_array_equal(got, q)
        assert h["max"] == pytest.approx(vmax, rel=1e-6) and h["cells"] == int((q > 0).sum())


def test_channel_attributions_add_up_to_collects(units_run: tuple[Path, dict[str, Any]]) -> None:
    """A channel's attribution h_c * grad_c, summed over channels, is collect's h . grad for that class."""
    run_dir, _ = units_run
    col = zarr.open_group(str(run_dir / "collect"), mode="r")
    classes, values = col["attr_classes"][...], col["attr_values"][...]
    checked = 0
    for path in sorted((run_dir / "state" / "units" / "units").glob("attribution-*.npz")):
        with np.load(path) as z:
            for r, k, a in zip(z["rows"], z["classes"], z["attribution"]):
                hit = np.flatnonzero(classes[r] == k)
                if hit.size:
                    assert float(a.sum()) == pytest.approx(float(values[r, hit[0]]), rel=0.05, abs=0.05)
                    checked += 1
    assert checked >= 10
    out = UnitsOutput.open(RunDir(run_dir))
    lvl = out.level(8)
    assert lvl.has_attribution and (np.asarray(lvl.attr_units[...])[:, :, 0] >= 0).any()


def test_a_located_image_gets_its_dictionary_picture(units_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, doc = units_run
    [unit] = list(doc["located"])
    pic = run_dir / "units" / doc["located"][unit]
    grid_png = run_dir / "locate" / unit / "activation-grid.png"
    assert Image.open(pic).size == Image.open(grid_png).size
    positions = json.loads((pic.parent / "dictionary.json").read_text())["positions"]
    assert len(positions) == 16 and all(u < 192 for p in positions for u, _ in p)


def test_the_cli_reruns_nothing_and_errors_are_one_line(units_run: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    run_dir = copy_run(units_run[0], tmp_path / "run")
    sets = [f"--set=run_dir={run_dir}", *(f"--set={s}" for s in TINY_UNITS)]
    assert main(["units", str(run_dir / "config.yaml"), *sets]) == 0
    assert "nothing to do" in caplog.text and "192 channels of layer blocks.5" in capsys.readouterr().out
    assert main(["units", str(run_dir / "config.yaml"), *sets, "--set", "units.examples=4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "other settings" in err and "units.examples: 8 -> 4" in err
    assert main(["units", str(run_dir / "config.yaml"), *sets, "--basis", "pca:3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--basis must be channels, nmf:K or sae:K" in err
    with pytest.raises(StoreError, match="atlas units"):
        UnitsOutput.open(RunDir(tmp_path / "nothing"))


@pytest.mark.parametrize("basis", ["nmf:6", "sae:8"])
def test_a_learned_basis(whole_run: Path, tmp_path: Path, basis: str) -> None:
    run_dir = copy_run(whole_run, tmp_path / "run")
    doc = api.units(_cfg(run_dir, "units.limit=2", "units.sae_epochs=2", "units.attribution_examples=0"), basis=basis)
    k = int(basis.split(":")[1])
    out = UnitsOutput.open(RunDir(run_dir))
    assert doc["n_units"] == k and doc["n_icons"] == 2 and out.kind == basis.split(":")[0] and not doc["attribution"]
    d = np.asarray(out.array("directions")[...])
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, rtol=1e-5)
    assert 0.0 <= doc["stats"]["unexplained_variance"] < 1.5 and doc["stats"]["active_per_row"] <= k
    assert 1 <= doc["self_rank"]["median"] <= k and len(list((run_dir / "units" / "unit").glob("*.js"))) == k
    basis_info = json.loads((run_dir / "units" / "basis.json").read_text())
    assert basis_info["spec"] == basis and ("fit_error" in basis_info or len(basis_info["loss_by_epoch"]) == 2)
    coef = out.basis().encode(np.asarray(out.array("activation")[...]))
    np.testing.assert_array_equal(out.array("self_rank")[...], self_rank(coef, out.array("unit_std")[...], np.arange(2)))


def test_the_autoencoder_resumes_from_its_checkpoint_to_the_same_bits(whole_run: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Training stopped after 5 steps (its state saved after every chunk) and run again gives the
    parameters of an uninterrupted training, bit for bit."""
    import logging

    import atlas.stages.units._basis as basis_mod
    from atlas.stages.units import STAGE
    from atlas.stages.units._context import open_context

    more = ("units.basis=sae:8", "units.sae_epochs=2", "units.sae_batch=8", "units.sae_checkpoint_s=0")

    def learned(run_dir: Path) -> dict[str, np.ndarray]:
        out = UnitsOutput.open(RunDir(run_dir))
        return {k: np.asarray(out.array(k)[...]) for k in ("w_enc", "b_enc", "w_dec", "b_dec")}

    def fresh(name: str) -> Any:
        run_dir = copy_run(whole_run, tmp_path / name)
        ctx = open_context(_cfg(run_dir, *more), RunDir(run_dir), logging.getLogger("test"), {})
        STAGE.create(ctx)
        return run_dir, ctx

    whole_dir, ctx = fresh("whole")
    basis_mod.learn_basis(ctx)
    killed_dir, ctx = fresh("killed")
    real, calls = basis_mod.sae_step, [0]

    def stop_after_five(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] > 5:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(basis_mod, "sae_step", stop_after_five)
    with pytest.raises(KeyboardInterrupt):
        basis_mod.learn_basis(ctx)
    monkeypatch.setattr(basis_mod, "sae_step", real)
    assert RunDir(killed_dir).unit_data_path("units", "basis-checkpoint").is_file()
    assert UnitsOutput.files(RunDir(killed_dir)).basis_info() is None
    _, ctx = killed_dir, open_context(_cfg(killed_dir, *more), RunDir(killed_dir), logging.getLogger("test"), {})
    basis_mod.learn_basis(ctx)
    a, b = learned(whole_dir), learned(killed_dir)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert (killed_dir / "units" / "basis.json").read_bytes() == (whole_dir / "units" / "basis.json").read_bytes()


class TestUnitsContract(StageContract):
    """Channels, 4 icons of 2 steps in 2 units, every unit's examples, the attribution pass in 2 units."""

    stage = "units"
    overrides = TINY_UNITS
    output_kind = "files"
    redo = ("grid", "grid.min_count=3")  # render, tile and units become stale


# --------------------------------------------------------------------------- the viewer


def _viewer_checks(page: Any, wide: bool) -> None:
    """Click a cell: its channels in the panel; one of them: its card, its heatmap and legend; the URL."""
    page.wait_for_function("window.atlasViewer.units && window.atlasViewer.units.index !== null && "
                           "window.atlasViewer.state.openMs && window.atlasViewer.state.cells[window.atlasViewer.currentSize()]",
                           timeout=20_000)
    hit = page.evaluate("""(() => { const a = window.atlasViewer, s = a.currentSize(), c = a.state.cells[s].doc.cells[0];
        const r = a.cellRect(s, c.row, c.col); return {x: r.x + r.w / 2, y: r.y + r.h / 2}; })()""")
    box = page.locator("#osd").bounding_box()
    page.mouse.click(box["x"] + hit["x"], box["y"] + hit["y"])
    page.wait_for_selector("#units-section[data-loaded='1']", timeout=10_000)
    assert page.locator("#units-section button[data-unit]").count() >= 8
    first = int(page.locator("#units-section button[data-unit]").first.get_attribute("data-unit"))
    page.locator("#units-section button[data-unit]").first.click()
    page.wait_for_function(f"location.hash.indexOf('channel={first}') >= 0 && window.atlasViewer.units.drawn > 0",
                           timeout=10_000)
    assert page.locator("#unit-card").is_visible() and page.locator("#unit-legend-bar").is_visible()
    assert page.locator("#unit-examples figure").count() == 8
    assert page.locator("#unit-legend-max").inner_text().strip() != ""
    assert page.evaluate("document.getElementById('panel').hidden") is not wide  # a narrow screen shows the map
    page.fill("#search-input", "#c2")
    page.wait_for_selector("#search-list li[data-x]", timeout=5_000)
    assert "channel 2" in page.inner_text("#search-list")
    page.keyboard.press("Enter")
    page.wait_for_function("location.hash.indexOf('channel=2') >= 0 && window.atlasViewer.units.drawn > 0", timeout=10_000)
    page.wait_for_function("document.getElementById('unit-icon') && document.getElementById('unit-icon').naturalWidth > 0",
                           timeout=10_000)
    page.reload()
    page.wait_for_function("window.atlasViewer.units && window.atlasViewer.units.unit === 2 && "
                           "window.atlasViewer.units.drawn > 0", timeout=20_000)
    if page.evaluate("window.atlasViewer.panelOpen()"):
        page.keyboard.press("Escape")  # Esc closes the click panel first, then the unit
    page.keyboard.press("Escape")
    page.wait_for_function("window.atlasViewer.units.unit === null && window.atlasViewer.units.drawn === 0")


@pytest.mark.browser
@pytest.mark.parametrize("size", [(1280, 800), (400, 800)], ids=["1280x800", "400x800"])
def test_the_viewer_shows_a_cells_channels_and_a_channels_heatmap(units_run: tuple[Path, dict[str, Any]],
                                                                    size: tuple[int, int]) -> None:
    run_dir, doc = units_run
    unit = next(iter(doc["located"]))
    problems: list[str] = []
    with launched() as browser:
        page = browser.new_page(viewport={"width": size[0], "height": size[1]})
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("console", lambda m: m.type == "error" and problems.append(m.text))
        page.goto((run_dir / "tiles" / "index.html").as_uri())
        _viewer_checks(page, wide=size[0] > 640)
        page.wait_for_function("window.atlasViewer.located && window.atlasViewer.located.index !== null", timeout=20_000)
        page.select_option("#located-select", unit)
        page.wait_for_function("document.querySelectorAll('#located-card img').length === 3 && "
                               "Array.from(document.querySelectorAll('#located-card img')).every(i => i.naturalWidth > 0)",
                               timeout=10_000)
    assert not problems, problems
