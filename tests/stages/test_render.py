"""render on the real bundled Lite0 (layer blocks.5), over a synthetic grid, in-process; the
stage contract (rerun, resume after kill -9, shards, inputs) through the CLI on the tiny demo atlas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from atlas.config import ConfigError, ImagesConfig, ModelConfig, RenderConfig, load_config
from atlas.models import layer_output, load_network
from atlas.models._activations import LayerActivations
from atlas.ops.inversion import CPU_BATCH, auto_batch_size, render_icons
from atlas.ops.objectives import cosine, own_rank
from atlas.sources import demo_image
from atlas.stages import get_stage, render, run_stage, stage_status
from atlas.store import RunDir, StoreError
from tests.cluster.util import atlas
from tests.conftest import DEMO
from tests.stages.contract import FAST_RENDER, Runs, StageContract, copy_run, drop_stages, mark_finished
from tests.synthetic_grid import make_grid, non_empty_cells

STAGE = get_stage("render")
C = 192  # channels of Lite0 blocks.5
SIZES = [2, 4]
MIN_COUNT = 2


@pytest.fixture(scope="module")
def lite0():
    return load_network(ModelConfig())


@pytest.fixture(scope="module")
def real_maps(lite0) -> torch.Tensor:
    """Real blocks.5 activations of 6 demo photos (224 px), the inner 3x3 positions: [6, 192, 3, 3]."""
    imgs = np.stack([np.asarray(demo_image(i, 224)) for i in range(6)])
    with torch.no_grad():
        return layer_output(lite0, "blocks.5", lite0.preprocess(torch.from_numpy(imgs)))[:, :, 2:5, 2:5]


@pytest.fixture(scope="module")
def real_vectors(real_maps) -> np.ndarray:
    """The single-position vectors of :func:`real_maps`: [54, 192]."""
    return real_maps.permute(0, 2, 3, 1).reshape(-1, C).numpy()


def _ov(run_dir: Path, *more: str) -> list[str]:
    return [f"run_dir={run_dir}", f"grid.sizes={SIZES}", f"grid.min_count={MIN_COUNT}", "render.icon_size=32",
            "render.steps=4", "render.batch_size=3", "render.restarts=2", "model.device=cpu", "render.threads=2", *more]


def _grid(run_dir: Path, vectors: np.ndarray | None = None, finished: bool = True) -> None:
    """A synthetic grid; ``finished``: with the runner's markers of a finished grid (and of its inputs)."""
    make_grid(run_dir, SIZES, C, seed=0, min_count=MIN_COUNT, vectors=vectors)
    if finished:
        mark_finished(run_dir, "collect", "reduce", "grid")


def _run(cfg) -> bool:
    return run_stage(STAGE, cfg)


# --------------------------------------------------------------------------- activations


def test_layer_activations_are_the_layer_output_with_gradients(lite0):
    acts = LayerActivations(lite0, "blocks.5", "cpu")
    assert acts.folded > 0  # BatchNorms folded into the convs, and checked
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = layer_output(lite0, "blocks.5", x)
    head_calls = []
    handle = acts.module.get_submodule("conv_head").register_forward_hook(lambda *a: head_calls.append(1))
    xg = x.clone().requires_grad_(True)
    with torch.no_grad():  # LayerActivations turns gradients on itself
        h = acts(xg)
    handle.remove()
    assert h.shape == (2, C, 2, 2) and not head_calls  # cut after the layer
    torch.testing.assert_close(h.detach(), want, rtol=1e-4, atol=1e-4)
    h.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in acts.module.parameters())
    assert all(p.grad is None for p in lite0.module.parameters())  # the Network is untouched
    img = torch.full((1, 3, 4, 4), 127 / 255)
    torch.testing.assert_close(acts.normalize(img), torch.zeros(1, 3, 4, 4), atol=1e-6, rtol=0)


def test_rendered_icons_are_faithful_and_reproducible(lite0, real_maps):
    acts = LayerActivations(lite0, "blocks.5", "cpu")
    targets = real_maps[[0, 2, 4]].mean(dim=(2, 3))  # like a grid cell: the mean of several real vectors
    settings = RenderConfig(icon_size=64, steps=96, restarts=1)
    res = render_icons(acts, targets, settings, generator=torch.Generator().manual_seed(0))
    assert res.icons.shape == (3, 64, 64, 3) and res.icons.dtype == np.uint8
    assert res.objective.shape == (3,) and res.cossim.dtype == np.float32
    noise = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = cosine(acts(acts.normalize(noise)).float(), targets)
        # the stored cossim is that of the stored (uint8) icon
        again = cosine(acts(acts.normalize(torch.from_numpy(res.icons).permute(0, 3, 1, 2) / 255.0)).float(), targets)
    np.testing.assert_allclose(res.cossim, again.numpy(), atol=1e-5)
    assert (res.cossim > base.numpy() + 0.3).all() and np.median(res.cossim) > 0.45, (res.cossim, base)
    same = render_icons(acts, targets[:2], RenderConfig(icon_size=24, steps=3, restarts=2),
                               generator=torch.Generator().manual_seed(5))
    again2 = render_icons(acts, targets[:2], RenderConfig(icon_size=24, steps=3, restarts=2),
                                 generator=torch.Generator().manual_seed(5))
    np.testing.assert_array_equal(same.icons, again2.icons)
    assert same.icons.shape == (2, 24, 24, 3)


# --------------------------------------------------------------------------- the stage, in-process


def test_units_and_seeds():
    units = render.plan_units({8: 5, 4: 2, 16: 0}, 2)
    assert [u.name for u in units] == ["level-0004-batch-000000", "level-0008-batch-000000",
                                       "level-0008-batch-000001", "level-0008-batch-000002"]
    assert (units[-1].lo, units[-1].hi) == (4, 5)
    assert [u.level for u in render.plan_units({8: 5, 4: 2}, 2, [8])] == [8, 8, 8]
    seeds = {render.unit_seed(0, s, b) for s in (4, 8) for b in range(50)}
    assert len(seeds) == 100 and render.unit_seed(0, 4, 1) == render.unit_seed(0, 4, 1) != render.unit_seed(1, 4, 1)


def test_render_writes_the_documented_group(tmp_path, real_vectors):
    run_dir = tmp_path / "run"
    _grid(run_dir, real_vectors)
    cfg = load_config(DEMO, _ov(run_dir))
    _run(cfg)
    g = zarr.open_group(str(run_dir / "render"), mode="r")
    total_units = 0
    sides = {s: round(32 * (max(SIZES) / s) ** 0.5) for s in SIZES}  # render.icon_growth 0.5: coarser grids, larger icons
    assert sides[max(SIZES)] == 32 and g.attrs["icon_sizes"] == {str(s): px for s, px in sides.items()}
    for s in SIZES:
        cells = non_empty_cells(run_dir, s, MIN_COUNT)
        n, px = len(cells), sides[s]
        lvl = g[f"level-{s}"]
        assert lvl["icons"].shape == (n, px, px, 3) and lvl["icons"].dtype == np.uint8
        assert lvl["icons"].chunks == (3, px, px, 3) and lvl.attrs["icon_size"] == px
        np.testing.assert_array_equal(lvl["cells"][...], cells)
        assert lvl["objective"].dtype == np.float32 and np.isfinite(lvl["objective"][...]).all()
        cs = lvl["cossim"][...]
        assert cs.shape == (n,) and np.isfinite(cs).all() and (np.abs(cs) <= 1).all()
        assert lvl["icons"][...].reshape(n, -1).std(axis=1).min() > 0  # real pictures, not blank
        f = g.attrs["faithfulness"][str(s)]
        assert f["n"] == n and f["median"] == pytest.approx(float(np.median(cs)), abs=1e-6)
        assert f["p10"] <= f["median"] <= f["p90"]
        # distinctness: the stored rank is the own cell's rank among the level's targets by the stored activation
        act, rank = lvl["activation"][...], lvl["rank"][...]
        assert act.shape == (n, C) and rank.dtype == np.int32 and ((rank >= 1) & (rank <= n)).all()
        targets = zarr.open_group(str(run_dir / "grid"), mode="r")[f"level-{s}/mean_activation"][...][cells[:, 0], cells[:, 1]]
        want = own_rank(torch.from_numpy(act), torch.from_numpy(targets.astype(np.float32)), torch.arange(n))
        np.testing.assert_array_equal(rank, want.numpy())
        d = g.attrs["distinctness"][str(s)]
        assert d["n"] == n and d["candidates"] == n and d["retrieval@1"] == pytest.approx(float(np.mean(rank == 1)))
        total_units += -(-n // 3)
    done = RunDir(run_dir).done_units("render")
    assert len(done - {"final"}) == total_units and {"final", "level-0004-batch-000000"} <= done
    assert g.attrs["icon_size"] == 32 and g.attrs["restarts"] == 2 and g.attrs["sizes"] == SIZES
    st = stage_status(STAGE, RunDir(run_dir))
    assert st.state == "done" and st.done == st.total == total_units
    assert st.detail["median_cossim"]["4"] == pytest.approx(g.attrs["faithfulness"]["4"]["median"], abs=1e-6)
    assert st.detail["retrieval@1"]["4"] == g.attrs["distinctness"]["4"]["retrieval@1"]
    log = (run_dir / "logs" / "render-0of1.log").read_text()
    assert "faithfulness median" in log and "retrieval@1" in log
    # other settings are refused, not mixed into the same arrays
    with pytest.raises(StoreError, match=r"other settings \(render\.steps: 4 -> 5\)"):
        _run(load_config(DEMO, _ov(run_dir, "render.steps=5")))


def test_levels_subset_and_whitening(tmp_path):
    run_dir = tmp_path / "run"
    _grid(run_dir)
    cfg = load_config(DEMO, _ov(run_dir, "render.levels=[2]", "render.whiten=true", "render.steps=1",
                                "render.restarts=1"))
    assert _run(cfg)  # the levels asked for are finished
    st = stage_status(STAGE, RunDir(run_dir))
    assert st.detail["level_units"]["2"] == "2/2"
    assert st.detail["level_units"]["4"].startswith("0/") and st.detail["median_cossim"]["4"] is None
    g = zarr.open_group(str(run_dir / "render"), mode="r")
    assert list(g.attrs["faithfulness"]) == ["2"] and g.attrs["whiten"] is True
    with pytest.raises(ConfigError, match="not grid levels"):
        load_config(DEMO, _ov(run_dir, "render.levels=[64]"))


def test_auto_batch_size_is_resolved_once_and_recorded(tmp_path):
    run_dir = tmp_path / "run"
    _grid(run_dir)
    cfg = load_config(DEMO, _ov(run_dir, "render.batch_size=auto", "render.steps=1", "render.restarts=1",
                                "render.levels=[2]"))
    assert _run(cfg)
    g = zarr.open_group(str(run_dir / "render"), mode="r")
    cells = sum(int(v) for v in g.attrs["n_cells"].values())
    assert g.attrs["batch_size"] == auto_batch_size(None, cells) and g.attrs["batch_size_setting"] == "auto"
    assert stage_status(STAGE, RunDir(run_dir)).detail["level_units"]["2"] == "1/1"  # planned with the recorded size


def test_auto_batch_size_leaves_units_to_share():
    """auto takes what fits, but never a level per unit: at most cells / 16 icons (at least 32)."""
    assert auto_batch_size(None, 10_000) == CPU_BATCH  # off CUDA, many cells
    assert auto_batch_size(None, 102) == 32  # the demo's 102 icons: 4 units, not 2
    assert auto_batch_size(4096, 2_688) == 168  # a 64x64 grid on a large GPU: 16 units
    assert auto_batch_size(4096, 100_000) == 4096  # 6,250 per unit would leave 16: the GPU's fit is less
    assert auto_batch_size(50, 100_000) == 50  # what fits wins
    assert auto_batch_size(1, 5) == 1


def test_init_from_dataset_examples_starts_at_the_example_patch(tmp_path, whole_run):
    """render.init=example (feature accentuation): with one tiny step each icon is still its cell's
    best dataset-example patch, while a noise start is far from it."""
    from tests.cluster.util import WHOLE

    icons = {}
    for init in ("example", "noise"):
        run_dir = drop_stages(copy_run(whole_run, tmp_path / init), "grid")
        cfg = load_config(DEMO, [f"run_dir={run_dir}", *WHOLE, "render.levels=[4]", "render.steps=1",
                                 "render.lr=0.0001", f"render.init={init}", "render.threads=2"])
        assert _run(cfg)
        icons[init] = zarr.open_group(str(run_dir / "render"), mode="r")["level-4/icons"][...].astype(np.float32)
    run = RunDir(tmp_path / "example")
    g = zarr.open_group(str(run.root / "grid"), mode="r")
    cells = zarr.open_group(str(run.root / "render"), mode="r")["level-4/cells"][...]
    rows = g["level-4/examples"][...][cells[:, 0], cells[:, 1], 0]
    pos = g["level-4/example_positions"][...][cells[:, 0], cells[:, 1], 0]
    side = icons["example"].shape[1]
    want, failed = render.example_patches(run, rows, pos, side, window=3.0,
                                          images=ImagesConfig(max_pixels=10**9, min_side=1))
    want = want.permute(0, 2, 3, 1).numpy() * 255
    assert not failed
    assert np.abs(icons["example"] - want).mean() < 6, np.abs(icons["example"] - want).mean()
    assert np.abs(icons["noise"] - want).mean() > 20


def test_missing_grid_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="atlas grid"):
        _run(load_config(DEMO, _ov(tmp_path / "run")))
    assert stage_status(STAGE, RunDir(tmp_path / "run")).state == "not started"
    _grid(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "grid" / "level-4" / "mean_activation")  # a grid damaged after it finished
    with pytest.raises(StoreError, match="level-4/mean_activation"):
        _run(load_config(DEMO, _ov(tmp_path / "run")))


def test_grid_without_its_final_marker_is_refused(tmp_path):
    _grid(tmp_path / "run", finished=False)  # a grid killed before it finished
    with pytest.raises(StoreError, match=r"needs a finished `grid`.*`atlas grid "):
        _run(load_config(DEMO, _ov(tmp_path / "run")))
    assert not (tmp_path / "run" / "render").exists()


# --------------------------------------------------------------------------- contract, through the CLI


class TestRenderContract(StageContract):
    stage = "render"
    overrides = FAST_RENDER
    redo = ("reduce", "reduce.min_dist=0.3")  # the grid becomes stale: render refuses it
    slow = ("test_resume_after_kill", "test_shards_match_single", "test_refuses_unfinished_or_stale_inputs")

    def test_status_through_the_cli(self, runs: Runs) -> None:
        rep = json.loads(atlas("status", str(runs.reference), "--json").stdout)
        st = next(s for s in rep["stages"] if s["stage"] == "render")
        assert st["state"] == "done" and st["done"] == st["total"] > 1
        assert set(st["median_cossim"]) == {"4", "8"} and st["icons"] > 0 and st["icon_size"] == 16


# --------------------------------------------------------------------------- CUDA (skipped without it)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_cuda_bf16_rendering_is_faithful(lite0, real_maps):
    acts = LayerActivations(lite0, "blocks.5", "cuda", channels_last=True)
    assert acts.autocast and acts.device.type == "cuda"
    targets = real_maps[[0, 2, 4]].mean(dim=(2, 3))
    res = render_icons(acts, targets, RenderConfig(icon_size=64, steps=96), generator=torch.Generator().manual_seed(0))
    assert res.icons.shape == (3, 64, 64, 3) and np.isfinite(res.objective).all()
    noise = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)).cuda()
    with torch.no_grad():
        base = cosine(acts(acts.normalize(noise)).float(), targets.cuda()).cpu().numpy()
    assert (res.cossim > base + 0.3).all(), (res.cossim, base)


@pytest.mark.gpu
@needs_cuda
def test_cuda_auto_batch_size_fits_memory(tmp_path, real_vectors):
    run_dir = tmp_path / "run"
    _grid(run_dir, real_vectors)
    _run(load_config(DEMO, _ov(run_dir, "model.device=cuda", "render.batch_size=auto")))
    g = zarr.open_group(str(run_dir / "render"), mode="r")
    assert g.attrs["batch_size_setting"] == "auto" and g.attrs["batch_size"] >= 8
    assert stage_status(STAGE, RunDir(run_dir)).state == "done"


@pytest.mark.gpu
@needs_cuda
def test_cuda_stage_run(tmp_path, real_vectors):
    run_dir = tmp_path / "run"
    _grid(run_dir, real_vectors)
    _run(load_config(DEMO, _ov(run_dir, "model.device=cuda")))
    st = stage_status(STAGE, RunDir(run_dir))
    assert st.state == "done" and all(v is not None for v in st.detail["median_cossim"].values())
