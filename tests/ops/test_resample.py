"""The render loop's resamplings without atomic adds: the same values as torch's kernels (exactly on
tensors whose arithmetic is exact), and no grid_sample / reflection-pad / bilinear-upsample node
left in the autograd graph of a render step (those scatter their gradients with atomics on CUDA).
These paths are CUDA's; every test here forces them on the CPU (``repeatable_resampling``), except
the last, which checks that the CPU keeps torch's faster kernels."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from atlas.models import Network, class_names_for
from atlas.models._activations import LayerActivations
from atlas.ops.inversion import make_param, render_icons, repeatable_kernels, resolve
from atlas.ops.resample import (
    affine_sample,
    bilinear_matrix,
    bilinear_sample,
    reflect_pad,
    repeatable_resampling,
    resize_bilinear,
)
from atlas.ops.transforms import TRANSFORM_SETS, named_transforms

ATOMIC = ("GridSampler2DBackward", "ReflectionPad2DBackward", "UpsampleBilinear2DBackward")


@pytest.fixture(autouse=True)
def cuda_paths(request: pytest.FixtureRequest):
    """The indexing / matrix-product paths, as on CUDA (not for the test of the CPU's own kernels)."""
    if request.node.name.startswith("test_the_cpu_keeps"):
        yield
        return
    with repeatable_resampling():
        yield


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ints(*shape: int, seed: int = 0) -> torch.Tensor:
    """Small integers as float32: sums of their products with quarter weights are exact."""
    return torch.randint(-8, 9, shape, generator=_gen(seed)).float()


def _graph_nodes(out: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [out.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo.extend(nxt for nxt, _ in fn.next_functions)
    return names


def test_reflect_pad_is_torch_reflect_padding_exactly():
    x = torch.randn(2, 3, 7, 9, generator=_gen())
    for w in (1, 3, 6):
        assert torch.equal(reflect_pad(x, w), F.pad(x, (w,) * 4, mode="reflect"))
    with pytest.raises(ValueError, match="larger"):
        reflect_pad(x, 7)


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
def test_bilinear_sample_is_grid_sample(padding_mode):
    b, h, w = 2, 4, 8  # powers of two: the normalised coordinates are exact
    x = _ints(b, 3, h, w)
    # source coordinates on a quarter-pixel lattice, some outside the image: exact arithmetic
    ix = torch.randint(-6, 4 * w + 6, (b, 5, 7), generator=_gen(1)).float() / 4 - 1
    iy = torch.randint(-6, 4 * h + 6, (b, 5, 7), generator=_gen(2)).float() / 4 - 1
    grid = torch.stack([(ix + 0.5) * 2 / w - 1, (iy + 0.5) * 2 / h - 1], dim=-1)
    want = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    assert torch.equal(bilinear_sample(x, grid, padding_mode), want)
    # any affine map: equal up to float rounding, gradients too
    theta = torch.randn(b, 2, 3, generator=_gen(3)) * 0.5
    xr = torch.randn(b, 3, h, w, generator=_gen(4), requires_grad=True)
    got = affine_sample(xr, theta, padding_mode)
    ref = F.grid_sample(xr, F.affine_grid(theta, [b, 3, h, w], align_corners=False), mode="bilinear",
                        padding_mode=padding_mode, align_corners=False)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    g1, = torch.autograd.grad(got.square().sum(), xr)
    g2, = torch.autograd.grad(ref.square().sum(), xr)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-4)


def test_resize_bilinear_is_interpolate():
    x = _ints(2, 3, 4, 6)
    want = F.interpolate(x, size=(8, 12), mode="bilinear", align_corners=False)
    assert torch.equal(resize_bilinear(x, (8, 12)), want)  # weights 1/4, 3/4: exact
    y = torch.randn(2, 3, 5, 7, generator=_gen())
    for size in ((16, 9), (3, 4), (5, 7), (224, 224)):
        torch.testing.assert_close(resize_bilinear(y, size), F.interpolate(y, size=size, mode="bilinear",
                                                                           align_corners=False), rtol=0, atol=1e-5)
    assert torch.equal(bilinear_matrix(5, 5), torch.eye(5))
    torch.testing.assert_close(bilinear_matrix(3, 11).sum(dim=1), torch.ones(11))


class _Tiny:
    def __init__(self) -> None:
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.ReLU()).requires_grad_(False)
        self.device = torch.device("cpu")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images - 0.5

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("param", ["fft", "maco", "pyramid"])
@pytest.mark.parametrize("transforms", TRANSFORM_SETS)
def test_one_render_step_has_no_atomic_backward_node(param, transforms):
    r = resolve(types.SimpleNamespace(param=param, transforms=transforms, icon_size=24))
    params, image_fn = make_param(r, 3, 24, generator=_gen(), device=torch.device("cpu"))
    acts = _Tiny()
    h = acts(acts.normalize(named_transforms(transforms, 24)(image_fn(), _gen(1))))
    nodes = _graph_nodes(h.square().mean())
    assert not [n for n in nodes if n.startswith(ATOMIC)], nodes
    assert "IndexBackward0" in nodes or transforms == "none"


def _fixed_size_network() -> Network:
    """A network that takes only 16-pixel inputs (a flatten into a linear layer), like a ViT."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    return Network(module.eval(), "fixed16", 16, (0.5,) * 3, (0.25,) * 3, class_names_for(10))


def test_layer_activations_resize_has_no_bilinear_backward_node():
    net = _fixed_size_network()
    acts = LayerActivations(net, "0", "cpu", fold_bn=False)
    assert acts.resize_to == 16
    x = torch.rand(2, 3, 24, 24, generator=_gen(), requires_grad=True)
    out = acts(acts.normalize(x))
    assert out.shape == (2, 4, 4, 4)
    nodes = _graph_nodes(out.sum())
    assert not [n for n in nodes if n.startswith(ATOMIC)], nodes
    with torch.no_grad():
        ref = net.module[0](F.interpolate(acts.normalize(x), size=(16, 16), mode="bilinear", align_corners=False))
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=1e-5)


def test_render_under_deterministic_algorithms_repeats_bytes():
    """torch's strict deterministic mode accepts every op of a render (on the CPU), and two calls give the same bytes."""
    acts = _Tiny()
    targets = torch.rand(3, 4, generator=_gen(5))
    settings = types.SimpleNamespace(icon_size=20, steps=3, coarse=0.0, polish=0.34, transforms="icon", param="pyramid")
    torch.use_deterministic_algorithms(True)
    try:
        a = render_icons(acts, targets, settings, generator=_gen(7))
        b = render_icons(acts, targets, settings, generator=_gen(7))
    finally:
        torch.use_deterministic_algorithms(False)
    assert (a.icons == b.icons).all() and (a.objective == b.objective).all()


def test_repeatable_kernels_restore_the_flags_and_skip_the_cpu():
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    with repeatable_kernels(torch.device("cpu")):
        assert (cudnn.deterministic, torch.are_deterministic_algorithms_enabled()) == before[::2]
    with repeatable_kernels(torch.device("cuda")):  # sets flags only; nothing runs on a device
        assert cudnn.deterministic and not cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled()) == before


def test_the_cpu_keeps_torchs_kernels_and_their_values():
    """Off CUDA torch's kernels are deterministic and faster: used unless forced, with the same values."""
    x = torch.randn(2, 3, 8, 8, generator=_gen(), requires_grad=True)
    theta = torch.randn(2, 2, 3, generator=_gen(1)) * 0.5
    out = affine_sample(reflect_pad(x, 2), theta) + resize_bilinear(reflect_pad(x, 2)[:, :, :6, :6], (12, 12))
    nodes = _graph_nodes(out.sum())
    assert {"GridSampler2DBackward0", "ReflectionPad2DBackward0", "UpsampleBilinear2DBackward0"} <= nodes, nodes
    with repeatable_resampling():
        forced = affine_sample(reflect_pad(x, 2), theta) + resize_bilinear(reflect_pad(x, 2)[:, :, :6, :6], (12, 12))
        assert not [n for n in _graph_nodes(forced.sum()) if n.startswith(ATOMIC)]
    torch.testing.assert_close(forced, out, rtol=0, atol=1e-5)
