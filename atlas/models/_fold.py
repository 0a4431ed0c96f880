"""Fold eval-mode BatchNorm into the convolution before it: one memory pass less per pair.

On CPU this makes EfficientNet-Lite0 about 1.5x faster (benchmarks/collect.py). Pairs are
found as a ``Conv2d`` registered right before a ``BatchNorm2d`` in the same parent (the
order every torchvision/timm conv-bn block uses); the BN becomes its activation part
(timm's ``BatchNormAct2d``) or ``Identity``. A conv that is itself the sampled layer is
left alone (its output must stay the conv's). The caller verifies the folded copy
against the original on a probe input and falls back when they disagree.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["fold_batchnorm"]


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Module:
    """Scale conv weights and shift its bias by the BN's eval statistics; return what replaces the BN."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.data = conv.weight.data * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias.detach(), requires_grad=False)
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
    return nn.Sequential(*rest)


def fold_batchnorm(module: nn.Module, keep: str = "") -> int:
    """Fold every adjacent (Conv2d, BatchNorm2d) pair of ``module`` in place; returns the pair count.

    ``keep``: qualified name of a layer whose own output must not change (the sampled layer).
    """
    folded = 0
    for pname, parent in module.named_modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = parent._modules[a], parent._modules[b]
            full = f"{pname}.{a}" if pname else a
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)) or full == keep:
                continue
            if bn.training or not bn.track_running_stats or bn.running_var is None or not bn.affine:
                continue
            if bn.num_features != conv.out_channels:
                continue
            parent._modules[b] = _fold_pair(conv, bn)
            folded += 1
    return folded
