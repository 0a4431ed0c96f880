"""Differentiable layer activations of a network cut after the layer (for rendering icons).

:class:`LayerActivations` runs a private copy of ``net.module`` on a device, frozen
(no parameter gradients), and returns the layer's output WITH gradients with respect
to the input. The forward pass stops right after the layer (a forward hook captures
its output and raises; see :func:`layer_output`), so nothing after it runs.

Any layout: the output is the [B, C, H, W] view of the layer's output (``nhwc`` permuted,
``tokens`` without their prefix tokens and reshaped to the patch grid), so objectives see
every layer alike. A network that takes only its own input size (a ViT) gets its input
resized to that size (bilinear, differentiable) when another size comes in (icons).

Speed: in eval mode a BatchNorm that directly follows a convolution is an affine map
of the convolution's output; it is folded into the convolution's weights and bias
(timm's ``BatchNormAct2d`` keeps its activation). The pairs are found by tracing one
forward pass, and the folded network is used only if its layer output matches the
original's on a seeded input; otherwise the copy is left as it is. On Lite0 this
roughly doubles the speed of forward + backward on the CPU.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..ops.resample import resize_bilinear
from ._fold import fold_verified
from ._layers import layer_output, layer_spec, takes_one_input_size
from ._network import Network
from ._sampler import _prepare_module, resolve_device

__all__ = ["LayerActivations"]


class LayerActivations:
    """x float [B, 3, S, S] (preprocessed) -> layer output [B, C, H, W], differentiable in x.

    Any input side S works (a smaller input gives a smaller layer grid; a network that takes
    only its own size gets the input resized to it). ``autocast``
    runs the network under bfloat16 autocast on CUDA (ignored on the CPU); the output
    is then bfloat16. ``fold_bn`` folds BatchNorms into convs when that is exact
    (checked). The Network itself is never modified.
    """

    def __init__(self, net: Network, layer: str, device: str | torch.device = "cpu", *,
                 autocast: bool = True, fold_bn: bool = True, channels_last: bool = False) -> None:
        self.net = net
        self.layer = layer
        self.spec = layer_spec(net, layer)
        self.shape: tuple[int, int, int] = self.spec.shape  # type: ignore[assignment]  # (C, rows, cols)
        self.resize_to = net.input_size if takes_one_input_size(net) else None
        self.device = resolve_device(device)
        self.autocast = autocast and self.device.type == "cuda"
        self.channels_last = channels_last
        self.module = _prepare_module(net.module, self.device, channels_last).requires_grad_(False)
        self.folded = 0
        if fold_bn:
            self.module, self.folded = fold_verified(net, layer, self.module, self.device, channels_last)
        self.mean = torch.tensor(net.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(net.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, 3, S, S] in [0, 1] -> the network's input ``(x - mean) / std``."""
        return (images - self.mean) / self.std

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Layer output [B, C, H, W] for preprocessed x [B, 3, S, S] on ``self.device``."""
        if self.resize_to is not None and tuple(x.shape[-2:]) != (self.resize_to, self.resize_to):
            x = resize_bilinear(x, (self.resize_to, self.resize_to))  # = F.interpolate bilinear, repeatable on CUDA
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.enable_grad(), self._autocast():
            return layer_output(self.net, self.layer, x, module=self.module)
