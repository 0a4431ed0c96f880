"""Batched feature-visualisation objectives (Lucid's ``optvis.objectives``), one value per image.

Every function here is vectorised over the batch: icon b of a batch is scored against
its own target direction ``targets[b]`` in one tensor expression, with no Python
object or loop per icon. An :class:`Objective` is a named, composable value wrapping
such a function ``acts [B, C, H, W] -> [B]`` (sum, difference, scaling).

The activation atlas objective (Carter et al. 2019; Lucid's atlas notebook
``direction_neuron_cossim_S``) rewards the projection onto the target direction and
the angle to it::

    h_b = reduce(acts[b])                       # spatial mean, or the centre position
    objective_b = dot(h_b, v_b) * max(cos(h_b, v_b), floor) ** power

With whitening, ``v_b`` is replaced by ``S v_b`` (:func:`whiten`) before scoring.

Distinctness (:func:`own_rank`): an icon is its cell's when its activation is closer (by
cosine) to its own cell's target than to any other target of the level; the rank of the
own target among all of them is 1 then, and retrieval@k is the share of icons with rank
<= k (:func:`retrieval_at`). Pure torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["REDUCTIONS", "Objective", "reduce_positions", "cosine", "direction_cossim", "whiten",
           "direction_cossim_objective", "cosine_matrix", "own_rank", "retrieval_at"]

REDUCTIONS = ("mean", "center")
_EPS = 1e-8


def reduce_positions(acts: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """acts [B, C, H, W] -> [B, C]: the mean over positions, or the centre (H // 2, W // 2)."""
    if acts.ndim != 4:
        raise ValueError(f"acts must be [B, C, H, W], got shape {tuple(acts.shape)}")
    if reduce == "mean":
        return acts.mean(dim=(2, 3))
    if reduce == "center":
        return acts[:, :, acts.shape[2] // 2, acts.shape[3] // 2]
    raise ValueError(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")


def _dot_cos(h: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h, v [B, C] -> (dot [B], cos [B]); cos is 0 where either vector is 0."""
    dot = (h * v).sum(dim=1)
    norms = h.norm(dim=1) * v.norm(dim=1)
    return dot, dot / norms.clamp(min=_EPS)


def cosine(acts: torch.Tensor, targets: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
    """Cosine between each image's reduced activation and its target: acts [B,C,H,W], targets [B,C] -> [B]."""
    return _dot_cos(reduce_positions(acts, reduce), targets.to(acts.dtype))[1]


def direction_cossim(acts: torch.Tensor, targets: torch.Tensor, *, power: float = 2.0, reduce: str = "mean",
                     floor: float = 0.1) -> torch.Tensor:
    """``dot(h_b, v_b) * max(cos(h_b, v_b), floor) ** power`` per image.

    acts [B, C, H, W] (any float dtype), targets [B, C] -> [B] in acts' dtype.
    """
    if targets.shape != acts.shape[:2]:
        raise ValueError(f"targets must be [B, C] = {list(acts.shape[:2])}, got {list(targets.shape)}")
    dot, cos = _dot_cos(reduce_positions(acts, reduce), targets.to(acts.dtype))
    return dot * cos.clamp(min=floor) ** power


def whiten(targets: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Whitened directions ``S v`` for each row v: targets [B, C], s [C, C] (symmetric) -> [B, C]."""
    return targets @ s.to(targets.dtype).T


@dataclass(frozen=True)
class Objective:
    """A named objective ``fn(acts [B, C, H, W]) -> [B]``; compose with ``+``, ``-`` and scalar ``*``."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, acts: torch.Tensor) -> torch.Tensor:
        return self.fn(acts)

    def __add__(self, other: Objective) -> Objective:
        return Objective(f"{self.name} + {other.name}", lambda a: self.fn(a) + other.fn(a))

    def __sub__(self, other: Objective) -> Objective:
        return Objective(f"{self.name} - {other.name}", lambda a: self.fn(a) - other.fn(a))

    def __mul__(self, k: float) -> Objective:
        return Objective(f"{k:g} * {self.name}", lambda a: k * self.fn(a))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return Objective(f"-{self.name}", lambda a: -self.fn(a))


def direction_cossim_objective(targets: torch.Tensor, *, power: float = 2.0, reduce: str = "mean",
                               floor: float = 0.1, whitening: torch.Tensor | None = None) -> Objective:
    """The atlas objective against ``targets`` [B, C] (whitened by ``whitening`` [C, C] when given)."""
    v = targets if whitening is None else whiten(targets, whitening)
    name = f"direction_cossim(power={power:g}, reduce={reduce}{', whitened' if whitening is not None else ''})"
    return Objective(name, lambda acts: direction_cossim(acts, v, power=power, reduce=reduce, floor=floor))


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of every row of a [n, C] with every row of b [m, C] -> float32 [n, m] (0 for zero rows)."""
    a64, b64 = a.double(), b.double()
    an = a64 / a64.norm(dim=1, keepdim=True).clamp(min=_EPS)
    bn = b64 / b64.norm(dim=1, keepdim=True).clamp(min=_EPS)
    out: torch.Tensor = (an @ bn.T).float()
    return out


def own_rank(activations: torch.Tensor, targets: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Rank of each icon's own target among all targets by cosine to its activation (1 = first).

    activations [n, C] (icons' reduced activations), targets [m, C] (every cell target of
    the level), own int [n] (the row of targets that icon i was rendered for) -> int64 [n]:
    ``1 + #{j : cos(a_i, t_j) > cos(a_i, t_own_i)}`` (ties count for the icon; cosines in
    float64).
    """
    if activations.ndim != 2 or targets.ndim != 2 or activations.shape[1] != targets.shape[1]:
        raise ValueError(f"activations [n, C] and targets [m, C] must share C, got {list(activations.shape)} "
                         f"and {list(targets.shape)}")
    own = own.to(torch.int64)
    if own.shape != (activations.shape[0],):
        raise ValueError(f"own must be [n] = [{activations.shape[0]}], got {list(own.shape)}")
    if own.numel() and (int(own.min()) < 0 or int(own.max()) >= targets.shape[0]):
        raise ValueError(f"own rows must lie in [0, {targets.shape[0]}), got {own.tolist()}")
    a = activations.double()
    t = targets.double().to(a.device)
    an = a / a.norm(dim=1, keepdim=True).clamp(min=_EPS)
    tn = t / t.norm(dim=1, keepdim=True).clamp(min=_EPS)
    sims = an @ tn.T  # [n, m]
    mine = sims.gather(1, own.to(a.device)[:, None])  # [n, 1]
    ranks: torch.Tensor = (sims > mine).sum(dim=1) + 1
    return ranks


def retrieval_at(ranks: torch.Tensor, k: int) -> float:
    """Share of icons whose own target ranks within the first ``k``: ranks int [n] -> float (NaN if n = 0)."""
    if ranks.numel() == 0:
        return float("nan")
    return float((ranks <= k).double().mean())
