"""LayerSampler: vectors at positions, forward-mode attribution checked against jvp, grad and finite differences."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import skimage.data
import torch
from torch import nn

from atlas.models import LayerSampler, ModelError, Network, class_names_for

from .conftest import photo_batch

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*is deprecated:FutureWarning")  # torch.func.jvp

POSITIONS = torch.tensor([[1, 2], [3, 3], [5, 0], [6, 6]])


Result = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


@pytest.fixture(scope="module")
def photos(lite0: Network) -> torch.Tensor:
    """Four real photos, preprocessed for Lite0: [4, 3, 224, 224]."""
    return photo_batch(lite0, skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket())


@pytest.fixture(scope="module")
def sampled(lite0: Network, photos: torch.Tensor) -> Callable[[bool, bool], Result]:
    """sampled(attribution, channels_last): LayerSampler results for blocks.5 at POSITIONS (each computed once)."""
    results: dict[tuple[bool, bool], Result] = {}

    def get(attribution: bool, channels_last: bool) -> Result:
        key = (attribution, channels_last)
        if key not in results:
            results[key] = LayerSampler(lite0, "blocks.5", attribution=attribution, channels_last=channels_last,
                                           fold_bn=False)(photos, POSITIONS)
        return results[key]

    return get


def _lite0_tail(net: Network) -> nn.Module:
    """What timm's EfficientNet runs after blocks.5: blocks.6, conv_head, bn2, then forward_head (pool, classifier)."""
    m = net.module
    assert m.drop_rate == 0 or not m.training
    return nn.Sequential(m.blocks[6], m.conv_head, m.bn2, m.global_pool, m.classifier)


@pytest.fixture(scope="module")
def h5(lite0: Network, photos: torch.Tensor) -> torch.Tensor:
    """blocks.5 output [4, 192, 7, 7], computed by an explicit forward of the stem and blocks 0-5."""
    m = lite0.module
    with torch.no_grad():
        return m.blocks[:6](m.bn1(m.conv_stem(photos)))


def _spike(h: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    b = torch.arange(h.shape[0])
    t = torch.zeros_like(h)
    t[b, :, positions[:, 0], positions[:, 1]] = h[b, :, positions[:, 0], positions[:, 1]]
    return t


@pytest.fixture(scope="module")
def jvp_attribution(lite0: Network, h5: torch.Tensor) -> torch.Tensor:
    """Reference: torch.func.jvp of the explicit tail along the spike tangent, [4, 1000]."""
    with torch.no_grad():
        _, tangent = torch.func.jvp(_lite0_tail(lite0), (h5,), (_spike(h5, POSITIONS),))
    return tangent


def _check_topk(values: torch.Tensor, classes: torch.Tensor, full: torch.Tensor, **tol: float) -> None:
    torch.testing.assert_close(values, full.gather(1, classes), **tol)
    torch.testing.assert_close(values, full.topk(values.shape[1], dim=1).values, **tol)


def test_attribution_equals_jvp_through_explicit_tail(sampled: Callable[[bool, bool], Result], h5: torch.Tensor, jvp_attribution: torch.Tensor) -> None:
    """Same memory format as the reference (contiguous): agreement to float32 rounding."""
    vectors, values, classes = sampled(True, False)
    assert values is not None and classes is not None
    assert values.shape == classes.shape == (4, 10) and values.dtype == torch.float32 and classes.dtype == torch.int64
    b = torch.arange(4)
    torch.testing.assert_close(vectors, h5[b, :, POSITIONS[:, 0], POSITIONS[:, 1]], rtol=1e-6, atol=1e-6)
    _check_topk(values, classes, jvp_attribution, rtol=1e-5, atol=1e-6)


def test_channels_last_attribution_close_to_jvp(sampled: Callable[[bool, bool], Result], h5: torch.Tensor, jvp_attribution: torch.Tensor) -> None:
    """channels_last runs other conv kernels: equal up to float32 reassociation (~1e-5 relative to the scale)."""
    vectors, values, classes = sampled(True, True)
    assert values is not None and classes is not None
    b = torch.arange(4)
    scale = h5.abs().max().item()
    torch.testing.assert_close(vectors, h5[b, :, POSITIONS[:, 0], POSITIONS[:, 1]], rtol=1e-4, atol=1e-5 * scale)
    _check_topk(values, classes, jvp_attribution, rtol=1e-4, atol=1e-4 * jvp_attribution.abs().max().item())


def test_attribution_is_activation_times_gradient(lite0: Network, sampled: Callable[[bool, bool], Result], h5: torch.Tensor) -> None:
    """Distill's definition: a . d logit_k / d h[:, :, y, x] (reverse mode), for every kept class."""
    _, values, classes = sampled(True, False)
    assert values is not None and classes is not None
    h = h5.clone().requires_grad_(True)
    logits = _lite0_tail(lite0)(h)
    b, y, x = torch.arange(4), POSITIONS[:, 0], POSITIONS[:, 1]
    for j in range(3):
        (grad,) = torch.autograd.grad(logits.gather(1, classes[:, j : j + 1]).sum(), h, retain_graph=True)
        expected = (grad[b, :, y, x] * h5[b, :, y, x]).sum(1)
        torch.testing.assert_close(values[:, j], expected, rtol=1e-4, atol=1e-5)


def test_attribution_matches_finite_differences(lite0: Network, sampled: Callable[[bool, bool], Result], h5: torch.Tensor) -> None:
    """(logits(h + eps t) - logits(h - eps t)) / 2 eps in float64 agrees loosely (ReLU6 kinks, float32 sampler)."""
    _, values, classes = sampled(True, True)
    assert values is not None and classes is not None
    tail = copy.deepcopy(_lite0_tail(lite0)).double()
    h = h5.double()
    t, eps = _spike(h, POSITIONS), 1e-5  # eps 1e-4 already pushes some units across a ReLU6 kink (error ~1e-3)
    with torch.no_grad():
        fd = (tail(h + eps * t) - tail(h - eps * t)) / (2 * eps)
    torch.testing.assert_close(values.double(), fd.gather(1, classes), rtol=1e-3, atol=1e-4 * fd.abs().max().item())


@pytest.mark.parametrize("channels_last", [True, False])
def test_vectors_identical_with_and_without_attribution(sampled: Callable[[bool, bool], Result], channels_last: bool) -> None:
    off, no_values, no_classes = sampled(False, channels_last)
    on, _, _ = sampled(True, channels_last)
    assert no_values is None and no_classes is None
    assert off.shape == (4, 192) and off.dtype == torch.float32 and off.device.type == "cpu"
    assert torch.equal(off, on)  # bitwise: the same kernels run up to the layer


def test_truncation_runs_nothing_after_the_layer(lite0: Network, photos: torch.Tensor) -> None:
    after = ["blocks.6", "blocks.6.0.conv_pw", "conv_head", "bn2", "global_pool", "classifier"]
    for attribution, expected_calls in ((False, 0), (True, 1)):
        sampler = LayerSampler(lite0, "blocks.5", attribution=attribution)
        calls = dict.fromkeys([*after, "blocks.5"], 0)
        for name in calls:
            sampler.module.get_submodule(name).register_forward_hook(lambda *_, n=name, c=calls: c.__setitem__(n, c[n] + 1))
        sampler(photos[:1], POSITIONS[:1])
        assert calls["blocks.5"] == 1
        assert all(calls[n] == expected_calls for n in after), calls


def test_vectors_independent_of_batch_composition(lite0: Network, photos: torch.Tensor, sampled: Callable[[bool, bool], Result]) -> None:
    v4, a4, c4 = sampled(True, True)
    v1, a1, c1 = LayerSampler(lite0, "blocks.5", attribution=True, fold_bn=False)(photos[2:3], POSITIONS[2:3])
    assert a1 is not None and a4 is not None and c1 is not None and c4 is not None
    torch.testing.assert_close(v1[0], v4[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a1[0], a4[2], rtol=1e-4, atol=1e-5)
    assert c1[0, :3].tolist() == c4[2, :3].tolist()


def test_sampler_leaves_the_network_untouched(lite0: Network) -> None:
    sampler = LayerSampler(lite0, "blocks.5", attribution=False, channels_last=True)
    assert sampler.module is not lite0.module and sampler.layer_shape == (192, 7, 7)
    assert sampler.module.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert lite0.module.conv_stem.weight.is_contiguous()


def test_bad_positions_and_inputs(lite0: Network, photos: torch.Tensor) -> None:
    sampler = LayerSampler(lite0, "blocks.5", attribution=False)
    with pytest.raises(ModelError, match="7 x 7 grid"):
        sampler(photos[:1], torch.tensor([[7, 0]]))
    with pytest.raises(ModelError, match=r"\[B, 2\]"):
        sampler(photos[:2], POSITIONS[:1])
    with pytest.raises(ModelError, match="preprocess"):
        sampler(photos[:1, :2], POSITIONS[:1])
    with pytest.raises(ModelError, match="unknown layer"):
        LayerSampler(lite0, "blocks.9", attribution=False)
    with pytest.raises(ModelError, match="top_k"):
        LayerSampler(lite0, "blocks.5", attribution=True, top_k=0)


# ---------------------------------------------------------------- a network small enough to do by hand


def _hand_network() -> Network:
    """conv 1x1 keeping input channels 0, 1 -> ReLU -> flatten -> linear W[k, j] = 8k + j (3 classes; 8 = 2 ch x 2 x 2)."""
    conv = nn.Conv2d(3, 2, 1, bias=False)
    linear = nn.Linear(8, 3, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2, 3).view(2, 3, 1, 1))
        linear.weight.copy_(torch.arange(24.0).view(3, 8))
    module = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear).eval()
    # [B, 2, 2, 2] outputs of a network that takes only 2 x 2 inputs: the layout cannot be probed, so it is given
    return Network(module, "hand", 2, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), class_names_for(3), layout="nchw")


def _hand_input() -> torch.Tensor:
    """[2, 3, 2, 2]: image 0 has (2, -1) at (0, 1); image 1 has (3, 4) at (1, 0); channel 2 is noise the conv drops."""
    x = torch.zeros(2, 3, 2, 2)
    x[0, :2, 0, 1] = torch.tensor([2.0, -1.0])
    x[1, :2, 1, 0] = torch.tensor([3.0, 4.0])
    x[:, 2] = torch.randn(2, 2, 2)
    return x


HAND_POSITIONS = torch.tensor([[0, 1], [1, 0]])


@pytest.mark.parametrize("channels_last", [False, True])
def test_attribution_by_hand(channels_last: bool) -> None:
    """attr[k] = sum_c W[k, c*4 + y*2 + x] * a_c * [h_c > 0]:
    image 0, (0, 1), a = (2, -1), the ReLU keeps channel 0: 2 * W[k, 1] = 2 * (8k + 1) = 2, 18, 34.
    image 1, (1, 0), a = (3, 4): 3 * W[k, 2] + 4 * W[k, 6] = 3(8k + 2) + 4(8k + 6) = 30, 86, 142.
    """
    sampler = LayerSampler(_hand_network(), "0", attribution=True, top_k=5, channels_last=channels_last)
    vectors, values, classes = sampler(_hand_input(), HAND_POSITIONS)
    assert vectors.tolist() == [[2.0, -1.0], [3.0, 4.0]]
    assert values.tolist() == [[34.0, 18.0, 2.0], [142.0, 86.0, 30.0]]  # top_k clipped to the 3 classes
    assert classes.tolist() == [[2, 1, 0], [2, 1, 0]]


def test_attribution_by_hand_after_relu() -> None:
    """Sampling the ReLU output ("1"): a = relu(h) = (2, 0) and (3, 4); the tail is linear, same numbers."""
    vectors, values, _ = LayerSampler(_hand_network(), "1", attribution=True, top_k=1)(_hand_input(), HAND_POSITIONS)
    assert vectors.tolist() == [[2.0, 0.0], [3.0, 4.0]]
    assert values.tolist() == [[34.0], [142.0]]


# ---------------------------------------------------------------- CUDA (skipped without it)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_matches_cpu(lite0: Network, photos: torch.Tensor, sampled: Callable[[bool, bool], Result], autocast: bool) -> None:
    """CUDA float32 (TF32 convs) or bf16/fp16 autocast: results back on the CPU in float32, close to the CPU run."""
    vectors, values, classes = LayerSampler(lite0, "blocks.5", attribution=True, device="cuda", autocast=autocast)(photos, POSITIONS.cuda())
    ref_vectors, ref_values, ref_classes = sampled(True, True)
    assert values is not None and classes is not None and ref_values is not None and ref_classes is not None
    for t in (vectors, values, classes):
        assert t.device.type == "cpu"
    assert vectors.dtype == values.dtype == torch.float32 and classes.dtype == torch.int64
    tol = 5e-2 if autocast else 1e-2
    torch.testing.assert_close(vectors, ref_vectors, rtol=tol, atol=tol * ref_vectors.abs().max().item())
    torch.testing.assert_close(values[:, 0], ref_values[:, 0], rtol=tol, atol=tol * ref_values.abs().max().item())
    assert all(int(c) in ref_classes[i, :3].tolist() for i, c in enumerate(classes[:, 0]))
    off, _, _ = LayerSampler(lite0, "blocks.5", attribution=False, device="cuda", autocast=autocast)(photos, POSITIONS)
    assert torch.equal(off, vectors)
