"""The gradient of chosen logits with respect to the layer's vector at one position per image.

``atlas units`` splits a cell's attribution to its top class over the layer's units: for an image
whose vector at position (y, x) is a, the linear attribution of channel c to logit k is
``a_c * d logit_k / d h_c(y, x)``; the channels add up to collect's attribution a . grad. This runs the
:class:`~atlas.models.LayerSampler`'s own module (collect's copy, memory format and BatchNorm folding),
replaces the layer's output by a leaf tensor on the way, and takes one backward pass per class slot.
"""

from __future__ import annotations

from typing import Any

import torch

from ._layers import logits_of, run_tapped
from ._network import ModelError
from ._sampler import LayerSampler

__all__ = ["position_gradients"]


def position_gradients(sampler: LayerSampler, x: torch.Tensor, positions: torch.Tensor,
                       classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x float [B, 3, S, S] preprocessed, positions int [B, 2] (y, x) on the layer grid, classes int
    [B, J] (-1: no class in that slot) -> (vectors float32 [B, C], gradients float32 [B, J, C]: of
    logit ``classes[b, j]`` with respect to the layer's vector at image b's position; 0 where -1), on the CPU."""
    if not sampler.net.has_classifier:
        raise ModelError(f"`{sampler.net.name}` has no classifier: there are no logits to attribute")
    x = sampler._input(x)
    pos = sampler._positions(positions, x.shape[0]).to(sampler.device)
    classes = classes.to(torch.long)
    captured: list[torch.Tensor] = []

    def tap(name: str, out: Any) -> Any:
        if name != sampler.layer or captured:
            return None
        leaf = out.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    with torch.enable_grad(), sampler._autocast():
        logits = logits_of(run_tapped(sampler.module, x, tap, [sampler.layer])).float()
    if not captured:
        raise ModelError(f"layer `{sampler.layer}` did not run in the forward pass of `{sampler.net.name}`")
    leaf = captured[0]
    vectors = sampler.spec.gather(leaf.detach(), pos).float().cpu()
    b, j_slots = classes.shape
    grads = torch.zeros(b, j_slots, vectors.shape[1])
    for j in range(j_slots):
        sel = classes[:, j].to(logits.device)
        ok = sel >= 0
        if not bool(ok.any()):
            continue
        picked = logits.gather(1, sel.clamp(min=0)[:, None])[:, 0] * ok.to(logits.dtype)
        (g,) = torch.autograd.grad(picked.sum(), leaf, retain_graph=j < j_slots - 1)
        grads[:, j] = sampler.spec.gather(g, pos).float().cpu()
    return vectors, grads
