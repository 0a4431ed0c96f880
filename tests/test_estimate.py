"""`atlas estimate`: the pure cost model on made-up figures, its warnings, and the command."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atlas.config import Config
from atlas.estimate import Calibration, cell_counts, default_calibration, estimate, format_estimate, with_cluster

ROOT = Path(__file__).resolve().parent.parent


def _cal(**kw: object) -> Calibration:
    base = dict(source="made up", device="cpu", channels=10, classes=100, collect_s_per_image=0.01,
                collect_peak_mib=100.0, render_s_per_icon_step=0.001, render_ref_side=10, render_peak_mib=200.0,
                reduce_fit_s=10.0, reduce_fit_ref=100, reduce_place_s_per_row=0.5, reduce_peak_mib=50.0,
                grid_s_per_row_level=0.25, grid_peak_mib=30.0, tile_s_per_tile=2.0)
    base.update(kw)
    return Calibration(**base)  # type: ignore[arg-type]


def _cfg(**sections: dict[str, object]) -> Config:
    data: dict[str, object] = {"collect": {"chunk_rows": 64, "top_k": 5, "attribution": True, "dtype": "float16"},
                               "reduce": {"fit_max": 100, "n_neighbors": 4},
                               "grid": {"sizes": [2, 4], "min_count": 2, "examples": 1},
                               "render": {"icon_size": 10, "icon_growth": 0.0, "steps": 3, "batch_size": 3,
                                          "coarse": 0.0},
                               "tile": {"tile_size": 16, "unit_tiles": 4, "examples_per_unit": 5}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}  # type: ignore[dict-item]
    return Config.model_validate(data)


def _row(est: object, stage: str) -> object:
    return next(s for s in est.stages if s.stage == stage)  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _half_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's tests fill half of each grid, so that their exact counts read easily."""
    monkeypatch.setattr("atlas.estimate.FILL", 0.5)


def test_cell_counts_fill_half_the_square_but_never_more_than_n_over_min_count() -> None:
    assert cell_counts([2, 4, 16], 200, 2) == {2: 2, 4: 8, 16: 100}


def test_the_fill_prior_is_the_demos_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """FILL = 0.3: the demo's 102 icons of 336 cells (grids 4, 8, 16 at 2,000 images), within one icon."""
    monkeypatch.undo()
    assert sum(cell_counts([4, 8, 16], 2000, 2).values()) == 101


def test_collect_time_disk_units() -> None:
    est = estimate(_cal(), _cfg(), 200)
    row = _row(est, "collect")
    assert row.seconds == pytest.approx(2.0)                 # 200 x 0.01 s
    assert row.disk_bytes == 200 * (10 * 2 + 6 * 5 + 17 + 64)  # activations, attribution, positions..., manifest
    assert row.units == 4                                     # ceil(200 / 64)
    assert row.peak_mib == 100.0


def test_float32_without_attribution() -> None:
    est = estimate(_cal(), _cfg(collect={"attribution": False, "dtype": "float32"}), 10)
    assert _row(est, "collect").disk_bytes == 10 * (10 * 4 + 17 + 64)


def test_reduce_fit_n_log_n_and_linear_placement() -> None:
    est = estimate(_cal(), _cfg(), 200)
    row = _row(est, "reduce")
    assert row.seconds == pytest.approx(10.0 + 100 * 0.5)    # the fit at its reference size, 100 rows placed
    assert row.disk_bytes == 16 * 200 + 12 * 4 * 100
    small = _row(estimate(_cal(), _cfg(), 50), "reduce")
    assert small.seconds == pytest.approx(10.0 * 50 * math.log(50) / (100 * math.log(100)))


def test_grid_render_tile() -> None:
    est = estimate(_cal(), _cfg(), 200)
    grid = _row(est, "grid")
    assert grid.seconds == pytest.approx(200 * 2 * 0.25)
    assert grid.disk_bytes == (4 + 16) * (4 * 10 + 2 * 100 + 24 + 8) + 8 * 10 * 10
    render = _row(est, "render")
    # icons 2 + 8 at 10 px, 3 steps, 1 ms per icon-step at the 10-px reference
    assert render.seconds == pytest.approx(10 * 3 * 0.001)
    assert render.units == 1 + 3                              # ceil(2 / 3) + ceil(8 / 3)
    assert render.disk_bytes == 10 * (3 * 100 + 4 * 10 + 12)
    tile = _row(est, "tile")
    # pyramids of 20 px (levels 1, 2, 3, 5, 10, 20 px: 1+1+1+1+1+4 tiles of 16 px) and 40 px (... 40 px: 9 more)
    assert tile.seconds == pytest.approx((9 + 18) * 2.0)
    assert tile.detail == "27 tiles, 10 example crops"
    assert est.total_seconds == pytest.approx(sum(s.seconds for s in est.stages))


def test_tile_counts_exact() -> None:
    est = estimate(_cal(), _cfg(grid={"sizes": [1], "min_count": 1}, render={"icon_size": 16}), 4)
    tile = _row(est, "tile")
    # one 16-px canvas: levels of 1, 2, 4, 8, 16 px, one tile each; 1 base unit + 1 sheet + 2 heat + 1 examples
    assert tile.seconds == pytest.approx(5 * 2.0)
    assert tile.units == 1 + 1 + 2 + 1
    assert tile.disk_bytes == round((5 * 16 * 16 * 3 + 1 * 96 * 96 * 3) * 0.127)  # JPEG: about an eighth of raw
    png = estimate(_cal(), _cfg(grid={"sizes": [1], "min_count": 1}, render={"icon_size": 16}, tile={"format": "png"}), 4)
    assert _row(png, "tile").disk_bytes == 5 * 16 * 16 * 3 + 1 * 96 * 96 * 3  # raw: an upper bound


def test_coarse_phase_and_icon_growth() -> None:
    cfg = _cfg(render={"coarse": 0.5, "coarse_scale": 0.5, "icon_growth": 1.0})
    render = _row(estimate(_cal(), cfg, 200), "render")
    # 3 steps: round(0.5 x 3) = 2 coarse, 1 full. Grid 2 at 20 px (2 icons): a full step 4x the pixels of
    # 10 px, a coarse one at 10 px; grid 4 at 10 px (8 icons): coarse at max(8, 5) = 8 px, 0.64x the pixels
    assert render.seconds == pytest.approx(2 * (1 * 4 + 2 * 1) * 0.001 + 8 * (1 * 1 + 2 * 0.64) * 0.001)


def test_render_uses_the_cost_measured_at_each_side() -> None:
    """A CPU step of a batch of large icons costs more per pixel (caches): measured sides are used as
    they are, others scaled by the pixels from the nearest measured side."""
    from atlas.estimate import icon_step_s

    cal = _cal(render_side_s=((10, 0.001), (20, 0.008)))
    assert icon_step_s(cal, 10) == 0.001 and icon_step_s(cal, 20) == 0.008  # not 4x: 8x, as measured
    assert icon_step_s(cal, 40) == pytest.approx(0.008 * 4) and icon_step_s(cal, 8) == pytest.approx(0.001 * 0.64)
    assert icon_step_s(_cal(), 20) == pytest.approx(0.004)  # no table: the reference side's, scaled
    cfg = _cfg(render={"coarse": 0.0, "icon_growth": 1.0})
    render = _row(estimate(cal, cfg, 200), "render")
    assert render.seconds == pytest.approx(2 * 3 * 0.008 + 8 * 3 * 0.001)


def test_no_warnings_on_a_fitting_config() -> None:
    assert estimate(_cal(), _cfg(), 200).warnings == []


def test_warns_about_cpu_render_of_50000_icons() -> None:
    cfg = _cfg(grid={"sizes": [64, 128, 256, 512]}, model={"device": "cpu"})
    est = estimate(_cal(), cfg, 1_000_000)
    assert sum(cell_counts([64, 128, 256, 512], 1_000_000, 2).values()) >= 50_000
    assert any(w.startswith("render on the CPU with") for w in est.warnings), est.warnings
    assert not any("render on the CPU" in w for w in estimate(_cal(), cfg.model_copy(
        update={"model": cfg.model.model_copy(update={"device": "auto"})}), 1_000_000, cuda=True).warnings)


def test_warns_about_a_grid_finer_than_the_images_support() -> None:
    est = estimate(_cal(), _cfg(grid={"sizes": [8, 16, 32], "min_count": 4}), 2000)
    (warning,) = est.warnings
    assert warning.startswith("grid 32 x 32 is finer than 2,000 images support")
    assert "the finest grid 2,000 images support is 16" in warning


def test_warns_when_the_disk_is_too_small() -> None:
    est = estimate(_cal(), _cfg(), 200, free_disk=10)
    assert any("free where run_dir goes" in w for w in est.warnings)


def test_slurm_config_adds_hours_and_arrays() -> None:
    cfg = _cfg(cluster={"slurm": {"partition": "gpu"}})
    est = with_cluster(estimate(_cal(), cfg, 200), cfg)
    assert est.cluster == "slurm"
    collect = _row(est, "collect")
    assert collect.tasks == 4                                  # the 16-task default, capped at the 4 units
    assert collect.cpu_hours == pytest.approx(2.0 / 3600 * 8)
    assert collect.gpu_hours == pytest.approx(2.0 / 3600)
    assert _row(est, "reduce").gpu_hours is None
    assert "CPU-hours" in format_estimate(est)
    plain = with_cluster(estimate(_cal(), _cfg(), 200), _cfg())
    assert plain.cluster is None and _row(plain, "collect").tasks is None


def test_default_calibration_matches_benchmarks() -> None:
    cal = default_calibration(192)
    assert cal.collect_s_per_image == pytest.approx(32.3 / 2000)  # the demo, attribution on
    assert cal.reduce_fit_s == pytest.approx(22.7) and cal.tile_s_per_tile == pytest.approx(21.4 / 6819)
    assert cal.grid_start_s + 200_000 * 4 * cal.grid_s_per_row_level == pytest.approx(4.3)
    assert cal.grid_start_s + 20_000 * 3 * cal.grid_s_per_row_level == pytest.approx(2.1)
    assert cal.render_s_per_icon_step * 0.625 == pytest.approx(104.0 / (34 * 512))


def test_command_demo_json() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "atlas", "estimate", "pipelines/demo.yaml", "--no-calibrate", "--json"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["images"] == 2000
    assert [s["stage"] for s in doc["stages"]] == ["collect", "reduce", "grid", "render", "tile"]
    assert doc["total_seconds"] == pytest.approx(sum(s["seconds"] for s in doc["stages"]), abs=0.01)
    assert doc["total_seconds"] > 0
    assert _units(doc, "collect") == 8                          # ceil(2000 / 256)


def _units(doc: dict[str, object], stage: str) -> int:
    return next(s["units"] for s in doc["stages"] if s["stage"] == stage)  # type: ignore[attr-defined, index]


def test_fixed_reduce_start_and_example_crops_add_to_their_stages() -> None:
    """UMAP's compilation is paid once per reduce; each example crop costs tile its own time."""
    import dataclasses

    base = estimate(_cal(), _cfg(), 80)
    more = estimate(dataclasses.replace(_cal(), reduce_start_s=3.0, tile_s_per_example=0.5), _cfg(), 80)
    assert _row(more, "reduce").seconds == pytest.approx(_row(base, "reduce").seconds + 3.0)
    examples = int(_row(base, "tile").detail.split(", ")[1].split()[0])
    assert examples > 0
    assert _row(more, "tile").seconds == pytest.approx(_row(base, "tile").seconds + 0.5 * examples)


def test_remaining_time_uses_the_runs_own_rate_where_a_stage_is_under_way() -> None:
    from atlas.estimate import Estimate, Progress, StageEstimate, default_calibration, remaining

    est = Estimate(100, default_calibration(192), [StageEstimate("collect", 50.0, 0, None, 10),
                                                   StageEstimate("reduce", 8.0, 0, None, 1),
                                                   StageEstimate("render", 30.0, 0, None, 6)])
    left = remaining(est, [Progress("collect", "done", 10, 10, 44.0), Progress("reduce", "partial", 0, 1, None),
                           Progress("render", "partial", 2, 6, 12.0)])
    assert left["seconds"] == {"collect": 0.0, "reduce": 8.0, "render": 24.0}  # render: 12 s for 2 units, 4 to go
    assert left["from"] == {"collect": "done", "reduce": "model", "render": "this run's rate"}
    assert left["total_seconds"] == 32.0
    stale = remaining(est, [Progress("render", "stale", 6, 6, 30.0)])
    assert stale["seconds"] == {"render": 30.0}


def test_status_of_a_run_under_way_says_what_is_left(whole_run, tmp_path) -> None:  # noqa: ANN001
    import shutil

    from atlas.api import format_status, status

    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    shutil.rmtree(run / "state" / "tile")
    report = status(run)
    assert report["remaining"]["from"]["tile"] == "model" and report["remaining"]["seconds"]["tile"] > 0
    assert "remaining: about" in format_status(report)
    assert status(whole_run)["remaining"] is None  # finished: nothing left


def test_calibration_times_the_real_collect_and_each_render_side(tmp_path) -> None:  # noqa: ANN001
    """The calibration runs `atlas collect` itself (a child process, one unit per batch, stopped after its
    budget) and a render batch at each icon side of the levels, smallest first; it leaves nothing behind."""
    import tempfile

    from atlas.config import load_config
    from atlas.estimate import calibrate, render_sides

    cfg = load_config(ROOT / "pipelines" / "demo.yaml", [
        f"run_dir={tmp_path / 'run'}", "images.demo_count=400", "collect.batch_size=16", "collect.workers=1",
        "grid.sizes=[2, 4]", "render.icon_size=16", "render.batch_size=4", "model.device=cpu"])
    assert render_sides(cfg) == [8, 12, 16, 23]  # 16 and 23 px icons, their coarse phases at half the side
    said: list[str] = []
    before = set(Path(tempfile.gettempdir()).glob("atlas-calibrate-*"))
    cal = calibrate(cfg, seconds=2, log=said.append)
    assert cal.source.startswith("measured on this machine") and cal.channels == 192
    assert 1 / cal.collect_s_per_image > 1 and cal.collect_peak_mib > 100
    assert "`atlas collect` on" in said[0], said
    sides = [side for side, _ in cal.render_side_s]
    assert sides == sorted(sides) and sides[0] == 8 and all(v > 0 for _, v in cal.render_side_s)
    assert set(Path(tempfile.gettempdir()).glob("atlas-calibrate-*")) == before
    assert not (tmp_path / "run").exists()
