"""BatchNorm folding: same layer outputs, the sampled conv kept, wrong module order refused."""

import torch
from torch import nn

from atlas.config import ModelConfig
from atlas.models import LayerSampler, load_network
from atlas.models._fold import fold_batchnorm


def test_fold_exact_on_a_tiny_block():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    m[1].weight.data.uniform_(0.5, 2)
    m[1].bias.data.uniform_(-1, 1)
    m.eval()
    x = torch.randn(2, 3, 6, 6)
    ref = m(x)
    assert fold_batchnorm(m, x) == 1
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)
    assert m[0].bias is not None  # the conv now carries the BN's shift


def test_sampled_conv_is_not_folded():
    m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).eval()
    assert fold_batchnorm(m, torch.randn(1, 3, 4, 4), keep=m[0]) == 0


def test_lite0_folded_sampler_matches_unfolded():
    net = load_network(ModelConfig())
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([[1, 1], [3, 2], [5, 5], [0, 6]])
    a = LayerSampler(net, "blocks.5", attribution=True, fold_bn=True)
    b = LayerSampler(net, "blocks.5", attribution=True, fold_bn=False)
    assert a.folded == 49 and b.folded == 0
    va, ta, ca = a(x, pos)
    vb, tb, cb = b(x, pos)
    torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ta, tb, rtol=1e-3, atol=1e-4)


class _Crossed(nn.Module):
    """Registers conv then bn, but the bn normalises the input, not the conv's output."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.bn.running_mean.fill_(0.7)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 5)

    def forward(self, x):
        return self.fc(self.pool(self.conv(self.bn(x))).flatten(1))


def test_registration_order_does_not_fool_the_tracer():
    from atlas.models._network import Network

    net = Network(module=_Crossed().eval(), name="crossed", input_size=8, mean=(0.5,) * 3, std=(0.5,) * 3,
                  class_names=[str(i) for i in range(5)], weights_path=None, weights_sha256=None)
    s = LayerSampler(net, "pool", attribution=False, channels_last=False)
    assert s.folded == 0  # the bn feeds the conv here, not the other way round
    assert fold_batchnorm(_Crossed().eval(), torch.randn(1, 3, 8, 8)) == 0


def _tf32(t: torch.Tensor) -> torch.Tensor:
    """float32 rounded to TF32's 10 mantissa bits (round to nearest), as tensor cores read it."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_fold_check_survives_tf32_convolutions(monkeypatch):
    """On CUDA convolutions run in TF32 by default; emulated here (inputs and weights rounded to 10-bit
    mantissas while ``cudnn.allow_tf32`` is on), the check would see the folded Lite0 differ by more than
    its tolerance. It compares in full float32, so folding stays on."""
    from atlas.models._fold import fold_verified, full_float32

    net = load_network(ModelConfig())
    plain = nn.Conv2d._conv_forward

    def emulated(self, x, weight, bias, always=False):
        if always or torch.backends.cudnn.allow_tf32:
            x, weight = _tf32(x), _tf32(weight)
        return plain(self, x, weight, bias)

    # the trap: with TF32 rounding inside the check, the folded network fails it
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, x, w, b: emulated(self, x, w, b, always=True))
    module = LayerSampler(net, "blocks.5", attribution=False, fold_bn=False).module
    assert fold_verified(net, "blocks.5", module, torch.device("cpu"), channels_last=True)[1] == 0
    # the check runs without TF32: folding stays on
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", emulated)
    assert torch.backends.cudnn.allow_tf32
    with full_float32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32  # restored
    assert fold_verified(net, "blocks.5", module, torch.device("cpu"), channels_last=True)[1] == 49
