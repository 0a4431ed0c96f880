"""The units behind atlas cells: a basis of the layer (its channels, NMF's neuron groups or a sparse
autoencoder's features), each unit's coefficients, its self-rank and a cell's dictionary. Pure
numpy / torch, no I/O.

A *basis* of K units over a C-channel layer is three things:

* ``directions`` float32 [K, C], unit-length rows: what a unit's icon maximises (channel c: the
  one-hot e_c; an NMF neuron group: its component; an SAE feature: its decoder column);
* ``encode(x)``: the coefficients of activation vectors x [m, C] -> float32 [m, K] (channels: x;
  NMF: the non-negative least-squares weights of x's sign split [max(x, 0), max(-x, 0)] on the
  components; SAE: the encoder's ReLU features), what the dictionary, the heatmaps and the examples rank;
* ``gain``: x ~ gain * coef @ directions (+ a bias): 1, or the SAE's input scale; the linear
  attribution of unit u to a logit with gradient g is ``gain * coef_u * (direction_u . g)``
  (:meth:`Basis.attribution`; channels: ``x_c * g_c``).

Kernels, each with its shapes:

* :func:`parse_basis` ``"channels" | "nmf:K" | "sae:K"`` -> (kind, K or None);
* :func:`nmf_fit`, :func:`nmf_encode`: multiplicative-update NMF (Lee & Seung) in float64, seeded;
  :func:`sign_split` makes any layer non-negative (x -> [max(x, 0), max(-x, 0)], 2C columns): a layer
  after a ReLU has an all-zero second half, and its groups are Building Blocks' neuron groups; a linear
  layer (EfficientNet's block outputs) keeps its negative half, which NMF of the positive part would drop;
* :func:`sae_init`, :func:`sae_forward`, :func:`sae_loss`, :func:`sae_step`: a ReLU sparse
  autoencoder with unit-norm decoder columns and an L1 penalty, Adam written out (its state is plain
  arrays, so a checkpoint resumes to the same bits);
* :func:`self_rank`: a unit icon's own unit among all units once each is scaled by its spread;
* :func:`dictionary`: a cell's top units by share of its positive coefficients;
* :func:`merge_top_rows`: the rows where each unit is strongest, merged chunk by chunk (exact, flat
  in the row count); :func:`labels_spanned`; :func:`quantise` (the viewer's uint8 heat values).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["BASIS_PATTERN", "Basis", "SAEParams", "AdamState", "parse_basis", "channel_basis", "nmf_fit",
           "nmf_encode", "nmf_basis", "sign_split", "sae_init", "sae_forward", "sae_loss", "sae_step", "sae_basis", "adam_init",
           "self_rank", "dictionary", "merge_top_rows", "labels_spanned", "quantise"]

BASIS_PATTERN = r"channels|nmf:[1-9]\d{0,4}|sae:[1-9]\d{0,5}"
_EPS = 1e-12


def parse_basis(spec: str) -> tuple[str, int | None]:
    """``channels`` -> ("channels", None); ``nmf:32`` -> ("nmf", 32); ``sae:4096`` -> ("sae", 4096)."""
    if not re.fullmatch(BASIS_PATTERN, spec):
        raise ValueError(f"a basis is channels, nmf:K or sae:K (K >= 1), got {spec!r}")
    if spec == "channels":
        return "channels", None
    kind, k = spec.split(":")
    return kind, int(k)


# --------------------------------------------------------------------------- the basis


@dataclass(frozen=True)
class SAEParams:
    """A sparse autoencoder on scaled vectors x' = x / scale: ``w_enc`` [K, C], ``b_enc`` [K],
    ``w_dec`` [C, K] (unit-norm columns), ``b_dec`` [C]; f = relu((x' - b_dec) w_enc^T + b_enc),
    x' ~ f w_dec^T + b_dec. float32 tensors."""

    w_enc: torch.Tensor
    b_enc: torch.Tensor
    w_dec: torch.Tensor
    b_dec: torch.Tensor

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k).detach().cpu().numpy().copy() for k in ("w_enc", "b_enc", "w_dec", "b_dec")}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> SAEParams:
        return cls(*(torch.from_numpy(np.asarray(a[k], np.float32).copy()) for k in ("w_enc", "b_enc", "w_dec", "b_dec")))


@dataclass(frozen=True)
class Basis:
    """K units over C channels (see the module docstring). ``kind``: channels, nmf or sae;
    ``directions`` float32 [K, C]; ``sae``: the autoencoder (sae only) and ``scale`` its input scale;
    ``components`` the NMF components on the sign split and ``nmf_iter`` the iterations of
    :func:`nmf_encode` (nmf only)."""

    kind: str
    directions: np.ndarray
    sae: SAEParams | None = None
    scale: float = 1.0
    nmf_iter: int = 100
    components: np.ndarray | None = None  # nmf: float [K, 2C] on the sign split (unit-norm rows)

    @property
    def size(self) -> int:
        return int(self.directions.shape[0])

    @property
    def gain(self) -> float:
        return self.scale if self.kind == "sae" else 1.0

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Coefficients of x float [m, C] -> float32 [m, K]."""
        x = np.asarray(x, np.float32)
        if self.kind == "channels":
            return x.copy()
        if self.kind == "nmf":
            assert self.components is not None
            h = torch.from_numpy(np.asarray(self.components, np.float64))
            return nmf_encode(sign_split(torch.from_numpy(x)), h, iters=self.nmf_iter).numpy().astype(np.float32)
        assert self.sae is not None
        with torch.no_grad():
            f, _ = sae_forward(torch.from_numpy(x) / self.scale, self.sae)
        return f.numpy().astype(np.float32)

    def reconstruct(self, x: np.ndarray, coefs: np.ndarray) -> np.ndarray:
        """What the basis keeps of x [m, C] given its coefficients [m, K]: float32 [m, C]
        (channels: x; NMF: the positive half of coefs @ components minus the negative half; SAE: the
        decoder's output)."""
        if self.kind == "channels":
            return np.asarray(x, np.float32).copy()
        if self.kind == "nmf":
            out: np.ndarray = (np.asarray(coefs, np.float64) @ self._signed()).astype(np.float32)
            return out
        assert self.sae is not None
        dec = self.sae.w_dec.numpy().astype(np.float64)
        out = (np.asarray(coefs, np.float64) @ dec.T + self.sae.b_dec.numpy().astype(np.float64)) * self.scale
        return out.astype(np.float32)

    def attribution(self, acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
        """Linear attribution of each unit to a logit: acts, grads float [m, C] (the vector and the
        logit's gradient at its position) -> float32 [m, K]: ``gain * coef_u * (direction_u . g)``
        (channels: ``a_c * g_c``, which add up to the collected attribution a . g)."""
        a, g = np.asarray(acts, np.float64), np.asarray(grads, np.float64)
        if self.kind == "channels":
            return (a * g).astype(np.float32)
        coefs = self.encode(a.astype(np.float32)).astype(np.float64)
        proj = g @ (self._signed() if self.kind == "nmf" else self.gain * self.directions.astype(np.float64)).T
        out: np.ndarray = (coefs * proj).astype(np.float32)
        return out

    def _signed(self) -> np.ndarray:
        """NMF: each component folded back onto the layer, positive half minus negative half: float64 [K, C]."""
        assert self.components is not None
        h = np.asarray(self.components, np.float64)
        c = h.shape[1] // 2
        return h[:, :c] - h[:, c:]


def channel_basis(channels: int) -> Basis:
    """The layer's own channels: K = C, directions the identity."""
    return Basis("channels", np.eye(channels, dtype=np.float32))


# --------------------------------------------------------------------------- NMF


def _unit_rows(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    norms = h.norm(dim=1, keepdim=True).clamp(min=_EPS)
    return h / norms, norms[:, 0]


def nmf_fit(x: torch.Tensor, k: int, *, iters: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative factors of x float [n, C] >= 0: (H float64 [k, C] with unit-norm rows, W float64
    [n, k]) minimising ``|x - W H|_F`` by Lee & Seung's multiplicative updates, ``iters`` rounds of
    (H, then W) from a uniform start seeded by ``seed`` scaled to x's mean. Deterministic on the CPU."""
    if x.ndim != 2 or (x < 0).any():
        raise ValueError(f"nmf_fit needs a non-negative [n, C] matrix, got shape {tuple(x.shape)}")
    x = x.double()
    n, c = x.shape
    gen = torch.Generator().manual_seed(int(seed))
    avg = float(torch.sqrt(x.mean() / k)) if x.numel() else 1.0
    w = torch.rand(n, k, generator=gen, dtype=torch.float64) * avg
    h = torch.rand(k, c, generator=gen, dtype=torch.float64) * avg
    for _ in range(iters):
        h = h * (w.T @ x) / (w.T @ w @ h).clamp(min=_EPS)
        w = w * (x @ h.T) / (w @ (h @ h.T)).clamp(min=_EPS)
    h, norms = _unit_rows(h)
    return h, w * norms[None, :]


def nmf_encode(x: torch.Tensor, h: torch.Tensor, *, iters: int = 100) -> torch.Tensor:
    """Non-negative weights of x float [m, C] >= 0 on fixed components h [k, C]: float64 [m, k]
    minimising ``|x - W h|_F`` by multiplicative updates of W from ``max(x h^T, 0) + 1e-12`` (the same
    start for every row, so a row's weights do not depend on the other rows). Multiplicative updates
    only shrink an unused weight towards 0: weights below 1e-9 of their row's largest are set to 0."""
    x, h = x.double(), h.double()
    xh, hh = x @ h.T, h @ h.T
    w = xh.clamp(min=0) + _EPS
    for _ in range(iters):
        w = w * xh.clamp(min=0) / (w @ hh).clamp(min=_EPS)
    out: torch.Tensor = torch.where(w > 1e-9 * w.amax(dim=1, keepdim=True), w, torch.zeros_like(w))
    return out


def sign_split(x: torch.Tensor) -> torch.Tensor:
    """x float [m, C] -> float64 [m, 2C] = [max(x, 0), max(-x, 0)] (non-negative; x = left - right)."""
    x = x.double()
    return torch.cat([x.clamp(min=0), (-x).clamp(min=0)], dim=1)


def nmf_basis(components: np.ndarray, iters: int) -> Basis:
    """A basis of NMF components float [k, 2C] on the sign split (unit-norm rows): each unit's direction
    is its positive half minus its negative half, scaled to unit length."""
    h = np.asarray(components, np.float64)
    c = h.shape[1] // 2
    d = h[:, :c] - h[:, c:]
    d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), _EPS)
    return Basis("nmf", d.astype(np.float32), nmf_iter=int(iters), components=h)


# --------------------------------------------------------------------------- sparse autoencoder


@dataclass
class AdamState:
    """Adam's moments per parameter (same shapes as :class:`SAEParams`) and its step count."""

    m: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    t: int = 0

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"m_{k}": t.numpy().copy() for k, t in self.m.items()}
        out.update({f"v_{k}": t.numpy().copy() for k, t in self.v.items()})
        out["t"] = np.asarray(self.t, np.int64)
        return out

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> AdamState:
        names = [k[2:] for k in a if k.startswith("m_")]
        return cls({k: torch.from_numpy(np.asarray(a[f"m_{k}"]).copy()) for k in names},
                   {k: torch.from_numpy(np.asarray(a[f"v_{k}"]).copy()) for k in names}, int(a["t"]))


_PARAMS = ("w_enc", "b_enc", "w_dec", "b_dec")


def _unit_columns(w: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = w / w.norm(dim=0, keepdim=True).clamp(min=_EPS)
    return out


def sae_init(channels: int, k: int, *, seed: int, mean: torch.Tensor | None = None) -> SAEParams:
    """A new autoencoder of k features on C channels: decoder columns drawn from a normal seeded by
    ``seed`` and scaled to unit norm, the encoder their transpose (a tied start), biases 0 (the
    decoder's: ``mean`` [C], the scaled data's mean, when given)."""
    gen = torch.Generator().manual_seed(int(seed))
    w_dec = _unit_columns(torch.randn(channels, k, generator=gen, dtype=torch.float32))
    b_dec = torch.zeros(channels) if mean is None else mean.float().clone()
    return SAEParams(w_dec.T.contiguous(), torch.zeros(k), w_dec, b_dec)


def adam_init(p: SAEParams) -> AdamState:
    return AdamState({k: torch.zeros_like(getattr(p, k)) for k in _PARAMS},
                     {k: torch.zeros_like(getattr(p, k)) for k in _PARAMS}, 0)


def sae_forward(x: torch.Tensor, p: SAEParams) -> tuple[torch.Tensor, torch.Tensor]:
    """x float [m, C] (scaled) -> (features f [m, K] >= 0, reconstruction [m, C])."""
    f = torch.relu((x - p.b_dec) @ p.w_enc.T + p.b_enc)
    return f, f @ p.w_dec.T + p.b_dec


def sae_loss(x: torch.Tensor, p: SAEParams, l1: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mse, sparsity) of a batch x [m, C]: ``mse = mean_rows |x - x_hat|^2``, ``sparsity =
    mean_rows |f|_1``, ``loss = mse + l1 * sparsity`` (decoder columns have unit norm, so the L1 of f
    is the L1 of the features' contributions)."""
    f, x_hat = sae_forward(x, p)
    mse = (x - x_hat).square().sum(dim=1).mean()
    sparsity = f.sum(dim=1).mean()
    return mse + l1 * sparsity, mse, sparsity


def sae_step(p: SAEParams, state: AdamState, x: torch.Tensor, *, l1: float, lr: float,
             betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> tuple[SAEParams, AdamState, float]:
    """One Adam step of :func:`sae_loss` on batch x [m, C] (scaled), then the decoder's columns
    renormalised to unit length: (new params, new state, the batch's loss before the step)."""
    leaves = {k: getattr(p, k).detach().clone().requires_grad_(True) for k in _PARAMS}
    loss, _, _ = sae_loss(x, SAEParams(**leaves), l1)
    grads = torch.autograd.grad(loss, [leaves[k] for k in _PARAMS])
    t = state.t + 1
    b1, b2 = betas
    new, m, v = {}, {}, {}
    with torch.no_grad():
        for k, g in zip(_PARAMS, grads):
            m[k] = b1 * state.m[k] + (1 - b1) * g
            v[k] = b2 * state.v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1 ** t), v[k] / (1 - b2 ** t)
            new[k] = getattr(p, k) - lr * m_hat / (v_hat.sqrt() + eps)
        new["w_dec"] = _unit_columns(new["w_dec"])
    return SAEParams(**new), AdamState(m, v, t), float(loss.detach())


def sae_basis(p: SAEParams, scale: float) -> Basis:
    """The basis of an autoencoder's features: directions its decoder's columns."""
    return Basis("sae", p.w_dec.T.contiguous().numpy().astype(np.float32), sae=p, scale=float(scale))


# --------------------------------------------------------------------------- measures


def self_rank(coefs: np.ndarray, spread: np.ndarray, own: np.ndarray) -> np.ndarray:
    """How much each icon raises its own unit against the others: coefs float [n, K] (the units'
    coefficients of each icon's activation), spread float [K] (each unit's standard deviation over the
    dataset), own int [n] (icon i's unit) -> int64 [n]: ``1 + #{j : z_j > z_own}`` with
    ``z = coefs / spread`` (in float64; a unit that never varies counts 0). 1: its own unit is, relative
    to how much each unit varies, the one the icon raises most."""
    c = np.asarray(coefs, np.float64)
    s = np.asarray(spread, np.float64)
    own = np.asarray(own, np.int64)
    if c.ndim != 2 or s.shape != (c.shape[1],) or own.shape != (c.shape[0],):
        raise ValueError(f"self_rank needs coefs [n, K], spread [K], own [n]; got {c.shape}, {s.shape}, {own.shape}")
    z = np.where(s[None, :] > 0, c / np.where(s > 0, s, 1.0)[None, :], 0.0)
    mine = z[np.arange(c.shape[0]), own]
    ranks: np.ndarray = (z > mine[:, None]).sum(axis=1).astype(np.int64) + 1
    return ranks


def dictionary(values: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top units by share of its positive values: values float [m, K] -> (units int32 [m, top],
    shares float32 [m, top]); share = value / sum of the row's positive values, largest first (ties: the
    lower unit). Fewer than ``top`` positive values, or a row with NaN (an empty cell): -1 and NaN."""
    v = np.asarray(values, np.float64)
    m, k = v.shape
    t = min(top, k)
    units = np.full((m, top), -1, np.int32)
    shares = np.full((m, top), np.nan, np.float32)
    finite = np.asarray(np.isfinite(v).all(axis=1), bool)
    pos = np.where(np.isfinite(v), np.maximum(v, 0.0), 0.0)
    total = pos.sum(axis=1)
    order = np.argsort(-pos, axis=1, kind="stable")[:, :t]
    val = np.take_along_axis(pos, order, axis=1)
    keep = np.asarray(finite[:, None] & (val > 0) & (total[:, None] > 0))
    units[:, :t] = np.where(keep, order, -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares[:, :t] = np.where(keep, val / np.where(total > 0, total, 1.0)[:, None], np.nan)
    return units, shares


def merge_top_rows(best_vals: np.ndarray, best_rows: np.ndarray, vals: np.ndarray,
                   rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The n rows where each unit is strongest so far: best_vals float32 [K, n] / best_rows int64 [K, n]
    (-inf / -1 where none yet) merged with a chunk's vals float [m, K] at rows int [m]: the n largest
    values per unit (ties: the lower row first). Exact whatever the chunking."""
    k, n = best_vals.shape
    cand_v = np.concatenate([best_vals, np.asarray(vals, np.float32).T], axis=1)  # [K, n + m]
    cand_r = np.concatenate([best_rows, np.broadcast_to(np.asarray(rows, np.int64), (k, len(rows)))], axis=1)
    order = np.lexsort((np.where(cand_r < 0, np.iinfo(np.int64).max, cand_r), -cand_v.astype(np.float64)), axis=1)
    order = order[:, :n]
    return np.take_along_axis(cand_v, order, axis=1), np.take_along_axis(cand_r, order, axis=1)


def labels_spanned(labels: np.ndarray) -> np.ndarray:
    """Distinct labels (>= 0) in each row: labels int [K, n] (-1: none) -> int64 [K]."""
    lab = np.asarray(labels, np.int64)
    srt = np.sort(lab, axis=1)
    new = np.ones_like(srt, dtype=bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    out: np.ndarray = (new & (srt >= 0)).sum(axis=1).astype(np.int64)
    return out


def quantise(values: np.ndarray) -> tuple[np.ndarray, float]:
    """The viewer's heat values: float [n] (NaN: empty) -> (uint8 [n] = round(255 v / max), at least 1
    where v > 0, 0 where v <= 0 or NaN; max, the largest value (0 when none is positive))."""
    v = np.asarray(values, np.float64)
    pos = np.where(np.isfinite(v) & (v > 0), v, 0.0)
    vmax = float(pos.max()) if pos.size else 0.0
    if vmax <= 0:
        return np.zeros(v.shape, np.uint8), 0.0
    q = np.clip(np.round(255.0 * pos / vmax), 0, 255).astype(np.uint8)
    q[(pos > 0) & (q == 0)] = 1
    return q, vmax
