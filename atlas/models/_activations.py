"""Differentiable layer activations of a network cut after the layer (for rendering icons).

:class:`LayerActivations` runs a private copy of ``net.module`` on a device, frozen
(no parameter gradients), and returns the layer's output WITH gradients with respect
to the input. The forward pass stops right after the layer (a forward hook captures
its output and raises; see :func:`layer_output`), so nothing after it runs.

Speed: in eval mode a BatchNorm that directly follows a convolution is an affine map
of the convolution's output; it is folded into the convolution's weights and bias
(timm's ``BatchNormAct2d`` keeps its activation). The pairs are found by tracing one
forward pass, and the folded network is used only if its layer output matches the
original's on a seeded input; otherwise the copy is left as it is. On Lite0 this
roughly doubles the speed of forward + backward on the CPU.
"""

from __future__ import annotations

import contextlib
import types
from typing import Any

import torch

from ._layers import layer_output, layer_shape
from ._network import Network
from ._sampler import _prepare_module, resolve_device

__all__ = ["LayerActivations", "fold_batchnorm"]


def _conv_bn_pairs(module: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]]:
    """(conv, bn) pairs where the BatchNorm's input is the very tensor the conv returned."""
    outputs: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}
    pairs: list[tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]] = []

    def on_conv(m: torch.nn.Module, inputs: Any, out: Any) -> None:
        outputs[id(out)] = (m, out)

    def on_bn(m: torch.nn.Module, inputs: Any, out: Any) -> None:
        got = outputs.get(id(inputs[0]))
        if got is not None and got[1] is inputs[0] and all(m is not b for _, b in pairs):
            pairs.append((got[0], m))  # type: ignore[arg-type]

    handles = []
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_hook(on_conv))
        elif isinstance(m, torch.nn.BatchNorm2d):
            handles.append(m.register_forward_hook(on_bn))
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return pairs


def _bn_passthrough(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward of a folded BatchNorm: identity, or timm's ``drop`` + ``act`` for BatchNormAct2d."""
    if hasattr(self, "act") and hasattr(self, "drop"):
        return self.act(self.drop(x))
    return x


def fold_batchnorm(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Fold eval-mode BatchNorms into the convs that feed them, in place; returns the pairs folded.

    ``x``: a sample input for the tracing pass. Only ``nn.BatchNorm2d`` and subclasses
    whose extra work is ``drop`` + ``act`` (timm's ``BatchNormAct2d``) are folded.
    """
    pairs = [(c, b) for c, b in _conv_bn_pairs(module, x)
             if (type(b) is torch.nn.BatchNorm2d or (hasattr(b, "act") and hasattr(b, "drop")))
             and b.running_mean is not None and b.running_var is not None and not b.training]
    with torch.no_grad():
        for conv, bn in pairs:
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
            bias = conv.bias * scale + shift if conv.bias is not None else shift
            conv.weight.copy_(conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1))))
            conv.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
            bn.forward = types.MethodType(_bn_passthrough, bn)  # type: ignore[method-assign]
    return len(pairs)


class LayerActivations:
    """x float [B, 3, S, S] (preprocessed) -> layer output [B, C, H, W], differentiable in x.

    Any input side S works (a smaller input gives a smaller layer grid). ``autocast``
    runs the network under bfloat16 autocast on CUDA (ignored on the CPU); the output
    is then bfloat16. ``fold_bn`` folds BatchNorms into convs when that is exact
    (checked). The Network itself is never modified.
    """

    def __init__(self, net: Network, layer: str, device: str | torch.device = "cpu", *,
                 autocast: bool = True, fold_bn: bool = True, channels_last: bool = False) -> None:
        self.net = net
        self.layer = layer
        self.shape = layer_shape(net, layer)
        self.device = resolve_device(device)
        self.autocast = autocast and self.device.type == "cuda"
        self.channels_last = channels_last
        self.module = _prepare_module(net.module, self.device, channels_last).requires_grad_(False)
        self.folded = self._fold() if fold_bn else 0
        self.mean = torch.tensor(net.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(net.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)

    def _fold(self) -> int:
        """Fold BatchNorms into a copy; keep it only if its output matches (else 0)."""
        if isinstance(self.module, torch.jit.ScriptModule):
            return 0
        import copy

        size = min(self.net.input_size, 96)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, size, size, generator=g).to(self.device)
        folded = copy.deepcopy(self.module)
        n = fold_batchnorm(folded, x)
        if n == 0:
            return 0
        with torch.no_grad():
            want = layer_output(self.net, self.layer, x, module=self.module).float()
            got = layer_output(self.net, self.layer, x, module=folded).float()
        if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max().clamp(min=1.0))):
            return 0
        self.module = folded
        return n

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B, 3, S, S] in [0, 1] -> the network's input ``(x - mean) / std``."""
        return (images - self.mean) / self.std

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Layer output [B, C, H, W] for preprocessed x [B, 3, S, S] on ``self.device``."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.enable_grad(), self._autocast():
            return layer_output(self.net, self.layer, x, module=self.module)
