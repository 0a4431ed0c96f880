"""Every position of a layer for whole images, and the network's logits, in one forward pass.

``atlas locate`` needs what collect samples one position of, at every position: it runs the
:class:`~atlas.models.LayerSampler`'s own module (the same copy, device, memory format and
BatchNorm folding as collect), taps the layer's output on the way and, when the network has a
classifier, lets the pass run on to the logits; without one the pass stops after the layer.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ._layers import _StopForward, logits_of, run_tapped
from ._network import ModelError
from ._sampler import LayerSampler

__all__ = ["layer_grid"]


def layer_grid(sampler: LayerSampler, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x float [B, 3, S, S] preprocessed -> (the layer's output as float32 [B, C, H, W] on the CPU,
    any layout: ``nhwc`` permuted, ``tokens`` without their prefix tokens; logits float32 [B, K] on
    the CPU, or None for a network without a classifier)."""
    x = sampler._input(x)
    captured: list[torch.Tensor] = []
    whole = sampler.net.has_classifier

    def tap(name: str, out: Any) -> None:
        if name == sampler.layer and not captured:
            captured.append(sampler.spec.grid_view(out.detach()).float().cpu())
            if not whole:
                raise _StopForward

    logits = None
    with torch.no_grad(), sampler._autocast(), contextlib.suppress(_StopForward):
        out = run_tapped(sampler.module, x, tap, [sampler.layer])
        logits = logits_of(out).float().cpu()
    if not captured:
        raise ModelError(f"layer `{sampler.layer}` did not run in the forward pass of `{sampler.net.name}`; "
                         f"choose one `atlas layers --model {sampler.net.name}` lists")
    return captured[0].contiguous(), logits
