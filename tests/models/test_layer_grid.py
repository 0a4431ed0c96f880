"""`layer_grid` (what `atlas locate` runs): every position of a layer of any layout, as the sampler
samples one position, plus the network's logits. Tiny networks of each layout, registered as objects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from atlas.api import use_model
from atlas.config import ModelConfig
from atlas.models import LayerSampler, layer_grid, load_network


class _Tokens(nn.Module):
    """ViT-like: 8-px patches of a 32-px input -> a class token + 4 x 4 patch tokens [B, 17, 8] at ``block``."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU())
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = self.block(torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1))
        return self.head(t[:, 0])


class _ChannelsLast(nn.Module):
    """Swin/ConvNeXt-like: a [B, 4, 4, 8] channels-last grid at ``block``."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 8, 8)
        self.block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.patch(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


@pytest.mark.parametrize("cls,layout", [(_Tokens, "tokens"), (_ChannelsLast, "nhwc")])
def test_every_position_is_the_sampled_vector_and_the_logits_are_the_networks(cls: type[nn.Module], layout: str) -> None:
    torch.manual_seed(0)
    module = cls().eval()
    name = use_model(module, cls.__name__.lower(), input_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                     class_names=[f"c{k}" for k in range(5)])
    net = load_network(ModelConfig(name=name))
    sampler = LayerSampler(net, "block", attribution=False, channels_last=False, fold_bn=False)
    assert sampler.spec.layout == layout and sampler.spec.prefix == (layout == "tokens")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    grid, logits = layer_grid(sampler, x)
    assert grid.shape == (2, 8, 4, 4) and grid.dtype == torch.float32
    ys, xs = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], dim=1)
    for b in range(2):
        want, _, _ = sampler(x[b:b + 1].expand(16, -1, -1, -1), pos)
        torch.testing.assert_close(grid[b].permute(1, 2, 0).reshape(16, 8), want, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(logits, module(x), rtol=1e-5, atol=1e-5)
