"""The feature-inversion kernel: schedules and selection exactly, the loop on a tiny network,
and every parameterisation on the real bundled Lite0 (layer blocks.5)."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from atlas.ops.inversion import (
    DEFAULTS,
    RenderResult,
    directions,
    fit_batch_size,
    lr_at,
    make_optimizer,
    render_icons,
    resolve,
    select_best,
)
from atlas.ops.objectives import cosine, reduce_positions


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class TinyActs:
    """A frozen two-layer conv net as the kernel's ``acts``: [B, 3, S, S] -> [B, 6, S/4 - 1, ...]."""

    def __init__(self, seed: int = 0) -> None:
        g = _gen(seed)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(),
                                       torch.nn.Conv2d(8, 6, 3, stride=2), torch.nn.ReLU())
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.net.requires_grad_(False)
        self.device = torch.device("cpu")
        self.mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
        self.sizes: list[int] = []  # input side of every call

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images - self.mean

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[-1])
        with torch.enable_grad():
            return self.net(x)


def _settings(**kw):
    base = {"icon_size": 24, "steps": 6, "restarts": 1, "lr": 0.05, "cossim_power": 4.0, "whiten": False,
            "reduce": "mean", "cossim_floor": 0.1, "decay_power": 1.0, "init_sd": 0.01, "transforms": "standard",
            "polish": 0.1, "coarse": 0.0}
    return types.SimpleNamespace(**{**base, **kw})


def _targets(acts: TinyActs, n: int, seed: int = 1) -> torch.Tensor:
    """Reachable targets: the network's reduced activation of random pictures [n, 6]."""
    with torch.no_grad():
        return reduce_positions(acts(acts.normalize(torch.rand(n, 3, 24, 24, generator=_gen(seed)))))


# --------------------------------------------------------------------------- pieces


def test_lr_schedules_exact():
    assert [lr_at(s, 4, 0.1) for s in range(4)] == [0.1] * 4
    assert [lr_at(s, 10, 1.0, "constant", 0.3) for s in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    got = [lr_at(s, 5, 1.0, "cosine") for s in range(5)]
    assert got == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 5)) for s in range(5)])
    assert got[0] == 1.0 and got[-1] > 0
    got = [lr_at(s, 10, 2.0, "cosine", 0.2) for s in range(10)]
    assert got[:3] == pytest.approx([1.0, 2.0, 2.0])  # warm-up 2 steps, then the cosine starts at lr
    assert got[3] == pytest.approx(1.0 + math.cos(math.pi / 8))
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 4, 0.1, "step")


def test_select_best_by_restart():
    scores = torch.tensor([0.1, 0.9, 0.5,   # restart 0 of icons 0, 1, 2
                           0.3, 0.2, 0.5])  # restart 1: icon 0 better, icon 1 worse, icon 2 tied
    assert select_best(scores, 3, 2).tolist() == [3, 1, 2]
    assert select_best(torch.tensor([1.0, 2.0]), 2, 1).tolist() == [0, 1]


def test_directions_unit_and_whitened():
    t = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(directions(t, None), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(directions(t, s)[0], torch.tensor([6.0, 4.0]) / math.hypot(6, 4))


def test_resolve_reads_what_is_there_and_defaults_the_rest():
    r = resolve(_settings())
    assert r.param == DEFAULTS["param"] and r.schedule == DEFAULTS["schedule"] and r.coarse_steps == 0
    r = resolve(types.SimpleNamespace(steps=10, icon_size=48))  # today's RenderConfig has no `coarse`
    assert (r.coarse, r.coarse_steps, r.transforms, r.polish, r.cossim_power) == (0.5, 5, "icon", 0.5, 8.0)
    r = resolve(_settings(param="fft", coarse=0.5, steps=10, icon_size=48))
    assert (r.coarse_steps, r.coarse_size, r.plain_from) == (5, 24, 9)
    assert resolve(_settings(param="maco", coarse=0.5)).coarse_steps == 0  # coarse-to-fine is fft only
    assert resolve(object()).icon_size == 80  # every name has a default
    for bad in ({"param": "cppn"}, {"optimizer": "lbfgs"}, {"schedule": "step"}, {"select": "max"},
                {"warmup": 2.0}, {"coarse_scale": 0.0}, {"steps": 0}):
        with pytest.raises(ValueError):
            resolve(_settings(**bad))


def test_kernel_defaults_are_render_configs():
    """The kernel's fallbacks for plain settings objects are RenderConfig's defaults (one set of defaults)."""
    from atlas.config import RenderConfig
    from atlas.ops.inversion import _BASE, DEFAULTS

    cfg = RenderConfig()
    assert {k: getattr(cfg, k) for k in {**_BASE, **DEFAULTS}} == {**_BASE, **DEFAULTS}
    assert resolve(cfg) == resolve(types.SimpleNamespace())


def test_make_optimizer_names():
    p = [torch.zeros(2, requires_grad=True)]
    assert [type(make_optimizer(n, p, 0.1)).__name__ for n in ("adam", "nadam", "radam", "sgd")] == \
        ["Adam", "NAdam", "RAdam", "SGD"]
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer("lbfgs", p, 0.1)


def test_fit_batch_size_is_none_off_cuda():
    assert fit_batch_size(TinyActs(), 24) is None


# --------------------------------------------------------------------------- the loop on a tiny network


def test_render_shapes_dtypes_and_the_returned_activation():
    acts = TinyActs()
    t = _targets(acts, 3)
    steps = []
    res = render_icons(acts, t, _settings(restarts=2), generator=_gen(), on_step=steps.append)
    assert isinstance(res, RenderResult)
    assert res.icons.shape == (3, 24, 24, 3) and res.icons.dtype == np.uint8
    assert res.objective.shape == res.cossim.shape == (3,) and res.cossim.dtype == np.float32
    assert res.activation.shape == (3, 6) and res.activation.dtype == np.float32
    assert steps == list(range(6))
    # the activation and cosine are those of the stored icon, untransformed
    x = torch.from_numpy(res.icons).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        h = acts(acts.normalize(x))
    np.testing.assert_allclose(res.activation, reduce_positions(h).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.cossim, cosine(h, t).numpy(), rtol=1e-5, atol=1e-6)


def test_icon_size_argument_overrides_the_settings():
    acts = TinyActs()
    res = render_icons(acts, _targets(acts, 2), _settings(steps=2), generator=_gen(), icon_size=16)
    assert res.icons.shape == (2, 16, 16, 3)


def test_render_is_seeded():
    acts = TinyActs()
    t = _targets(acts, 2)
    a = render_icons(acts, t, _settings(), generator=_gen(3))
    b = render_icons(acts, t, _settings(), generator=_gen(3))
    c = render_icons(acts, t, _settings(), generator=_gen(4))
    assert np.array_equal(a.icons, b.icons) and not np.array_equal(a.icons, c.icons)


def test_best_of_k_by_objective_or_by_cossim():
    acts = TinyActs()
    t = _targets(acts, 4)
    by_obj = render_icons(acts, t, _settings(restarts=3, steps=4), generator=_gen(1))
    by_cos = render_icons(acts, t, _settings(restarts=3, steps=4, select="cossim"), generator=_gen(1))
    assert (by_cos.cossim >= by_obj.cossim - 1e-6).all()  # the same images, chosen differently
    assert (by_obj.objective >= by_cos.objective - 1e-6).all()


def test_render_improves_with_steps_for_every_option():
    acts = TinyActs()
    t = _targets(acts, 4)
    for kw in ({}, {"transforms": "icon"}, {"transforms": "none", "schedule": "cosine", "warmup": 0.1, "lr": 0.1},
               {"param": "maco", "lr": 0.2}, {"param": "pyramid"}, {"coarse": 0.5}, {"optimizer": "nadam"},
               {"whiten": True}):
        few = render_icons(acts, t, _settings(steps=1, **kw), generator=_gen(2))
        many = render_icons(acts, t, _settings(steps=40, **kw), generator=_gen(2))
        assert np.median(many.cossim) > np.median(few.cossim), (kw, few.cossim, many.cossim)


def test_coarse_steps_run_at_the_lower_resolution():
    acts = TinyActs()
    t = _targets(acts, 2)
    acts.sizes.clear()
    res = render_icons(acts, t, _settings(icon_size=32, steps=8, coarse=0.5, transforms="none"), generator=_gen())
    assert acts.sizes == [16] * 4 + [32] * 4 + [32]  # 4 coarse steps, 4 full, the scoring pass
    assert res.icons.shape == (2, 32, 32, 3)


def test_init_images_are_the_starting_point():
    acts = TinyActs()
    t = _targets(acts, 2)
    pic = torch.rand(2, 3, 24, 24, generator=_gen(7)) * 0.8 + 0.1
    for param in ("fft", "pyramid"):
        res = render_icons(acts, t, _settings(steps=1, lr=1e-6, param=param), generator=_gen(), init_images=pic)
        np.testing.assert_allclose(res.icons.astype(np.float32) / 255.0, pic.permute(0, 2, 3, 1).numpy(), atol=1 / 255 + 1e-6)
    res = render_icons(acts, t, _settings(steps=1, lr=1e-6, param="maco"), generator=_gen(), init_images=pic)
    assert res.icons.shape == (2, 24, 24, 3)  # maco keeps only the picture's phase
    with pytest.raises(ValueError, match="init_images"):
        render_icons(acts, t, _settings(), generator=_gen(), init_images=pic[:1])


def test_whitening_changes_the_direction_not_the_faithfulness_target():
    acts = TinyActs()
    t = _targets(acts, 3)
    s = torch.diag(torch.tensor([4.0, 1.0, 1.0, 1.0, 1.0, 0.25]))
    res = render_icons(acts, t, _settings(steps=3), generator=_gen(), whitening=s)
    x = torch.from_numpy(res.icons).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        h = acts(acts.normalize(x))
    np.testing.assert_allclose(res.cossim, cosine(h, t).numpy(), rtol=1e-5, atol=1e-6)  # against the raw target


# --------------------------------------------------------------------------- the real network


@pytest.fixture(scope="module")
def lite0_acts():
    from atlas.config import ModelConfig
    from atlas.models import load_network
    from atlas.models._activations import LayerActivations

    return LayerActivations(load_network(ModelConfig()), "blocks.5", "cpu")


@pytest.fixture(scope="module")
def lite0_targets(lite0_acts) -> torch.Tensor:
    """Real blocks.5 vectors of two demo photos (224 px): [2, 192]."""
    from atlas.sources import demo_image

    imgs = torch.from_numpy(np.stack([np.asarray(demo_image(i, 224)) for i in (0, 5)])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return lite0_acts(lite0_acts.normalize(imgs))[:, :, 3, 3].float()


@pytest.mark.parametrize("kw", [{"param": "fft", "transforms": "icon", "schedule": "cosine", "warmup": 0.1, "lr": 0.1},
                                {"param": "maco", "lr": 0.2}, {"param": "pyramid"}, {"param": "fft", "coarse": 0.5}])
def test_parameterisations_on_lite0(lite0_acts, lite0_targets, kw):
    s = _settings(icon_size=32, **kw)
    few = render_icons(lite0_acts, lite0_targets, _settings(icon_size=32, steps=1, **kw), generator=_gen())
    res = render_icons(lite0_acts, lite0_targets, _settings(icon_size=32, steps=12, **kw), generator=_gen())
    assert res.icons.shape == (2, 32, 32, 3) and res.icons.dtype == np.uint8
    assert res.activation.shape == (2, 192) and np.isfinite(res.activation).all()
    assert res.objective.sum() > few.objective.sum(), (s, few.objective, res.objective)
    assert res.cossim.mean() > few.cossim.mean(), (few.cossim, res.cossim)
