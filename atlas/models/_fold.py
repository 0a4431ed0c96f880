"""Fold eval-mode BatchNorm into the convolution that feeds it: one memory pass less per pair.

Pairs are found by tracing one forward pass (the BatchNorm's input is the very tensor the
conv returned), so registration order does not matter. :func:`fold_verified` keeps the
folded copy only if its layer output matches the original's on a seeded input, computed in
float32 with TF32 off (:func:`full_float32`): on CUDA, convolutions run in TF32 by default,
whose 10-bit mantissas differ between the folded and the unfolded weights by more than the
check's 1e-3 (2.3-3.7e-3 on Lite0), which would switch folding off on every GPU although
the fold is exact. On Lite0 folding is about 1.5x on the CPU for collect and about 2x for
render's forward + backward.
"""

from __future__ import annotations

import contextlib
import copy
import types
from collections.abc import Iterator
from typing import Any

import torch

from ._layers import layer_output, takes_one_input_size
from ._network import Network

__all__ = ["fold_batchnorm", "fold_verified", "full_float32"]


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """cuDNN convolutions and CUDA matmuls in full float32 (no TF32) inside; the flags are restored after."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


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
    act, drop = getattr(self, "act", None), getattr(self, "drop", None)
    if isinstance(act, torch.nn.Module) and isinstance(drop, torch.nn.Module):
        out: torch.Tensor = act(drop(x))
        return out
    return x


def fold_batchnorm(module: torch.nn.Module, x: torch.Tensor, keep: torch.nn.Module | None = None) -> int:
    """Fold eval-mode BatchNorms into the convs that feed them, in place; returns the pairs folded.

    ``x``: a sample input for the tracing pass. Only ``nn.BatchNorm2d`` and subclasses
    whose extra work is ``drop`` + ``act`` (timm's ``BatchNormAct2d``) are folded.
    ``keep``: a module whose own output must not change (the sampled layer, if a conv).
    """
    pairs = [(c, b) for c, b in _conv_bn_pairs(module, x)
             if c is not keep and (type(b) is torch.nn.BatchNorm2d or (hasattr(b, "act") and hasattr(b, "drop")))
             and b.running_mean is not None and b.running_var is not None and not b.training]
    with torch.no_grad():
        for conv, bn in pairs:
            mean, var = bn.running_mean, bn.running_var
            assert mean is not None and var is not None  # pairs keeps BatchNorms with running statistics
            scale = torch.rsqrt(var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -mean * scale + (bn.bias if bn.bias is not None else 0.0)
            bias = conv.bias * scale + shift if conv.bias is not None else shift
            conv.weight.copy_(conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1))))
            conv.bias = torch.nn.Parameter(bias.clone(), requires_grad=False)
            bn.forward = types.MethodType(_bn_passthrough, bn)  # type: ignore[method-assign]
    return len(pairs)


def fold_verified(net: Network, layer: str, module: torch.nn.Module, device: torch.device,
                  channels_last: bool) -> tuple[torch.nn.Module, int]:
    """A BN-folded copy of ``module`` and the pairs folded, or ``(module, 0)`` when folding
    would change the output at ``layer`` (checked on a seeded input) or is impossible."""
    if isinstance(module, torch.jit.ScriptModule) or not any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()):
        return module, 0  # nothing to fold (transformers, LayerNorm networks)
    size = net.input_size if takes_one_input_size(net) else min(net.input_size, 96)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    folded = copy.deepcopy(module)
    try:
        n = fold_batchnorm(folded, x, keep=dict(folded.named_modules()).get(layer))
    except Exception:  # noqa: BLE001 - a network that cannot run this probe is simply not folded
        return module, 0
    if n == 0:
        return module, 0
    with torch.no_grad(), full_float32():  # the fold is exact math: check it without TF32's rounding
        want = layer_output(net, layer, x, module=module).float()
        got = layer_output(net, layer, x, module=folded).float()
    if not torch.allclose(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max().clamp(min=1.0))):
        return module, 0
    return folded, n
