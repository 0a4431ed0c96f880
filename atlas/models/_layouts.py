"""Layer layouts: how a layer's output holds its spatial grid, found by probing the network.

Three layouts are known (B = batch, C = channels, H x W = the spatial grid):

``nchw``    [B, C, H, W]  convolutional networks (ResNet, EfficientNet, ConvNeXt, ...)
``nhwc``    [B, H, W, C]  channels-last blocks (torchvision's Swin, ...)
``tokens``  [B, P + T, C] transformers: P prefix tokens (class, distillation, register
            tokens) then T = G x G patch tokens in row-major order (ViT, DeiT, DINOv2, ...)

The spatial axes are the ones that scale with the input. The network is probed at its
input size S and, when it accepts one, at a second size S2; an axis whose length changes
is spatial. A network that only takes S (ViT) is judged from one probe: a 4-D output with
two equal axes next to each other, a 3-D output whose length is P + G x G for a grid G that
divides S (or that a 4-D layer of the same pass has, e.g. the patch embedding) and a small P.
An output that fits no layout, or more than one, is *ambiguous*; ``model.layout`` and
``model.prefix_tokens`` settle it.

Whatever the layout, :meth:`LayerSpec.grid_view` gives the [B, C, H, W] view of an output
(prefix tokens dropped), so sampling and rendering see every layer alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LAYOUTS", "MAX_PREFIX", "LayerSpec", "detect_layout", "second_probe_size"]

LAYOUTS = ("nchw", "nhwc", "tokens")
MAX_PREFIX = 16  # at most this many prefix tokens are guessed from one probe (ViT: 1, DeiT-distilled: 2, +4 registers: 5)

_FIX = "set model.layout (nchw, nhwc or tokens) and, for tokens, model.prefix_tokens (tokens before the patch grid)"


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its layout and its grid (C, rows, cols) for an input of the network's input size.

    ``output``: the output shape without the batch axis; ``prefix``: tokens before the
    patch grid (tokens layout only); ``layout`` None = ambiguous (``problem`` says why; then
    ``shape`` is None).
    """

    name: str
    output: tuple[int, ...]
    layout: str | None
    shape: tuple[int, int, int] | None
    prefix: int = 0
    problem: str = ""

    @property
    def channels(self) -> int:
        assert self.shape is not None
        return self.shape[0]

    def grid_view(self, out: torch.Tensor) -> torch.Tensor:
        """The output [B, ...] of this layer as a [B, C, H, W] view (no copy; gradients flow)."""
        if self.layout == "nchw":
            return out
        if self.layout == "nhwc":
            return out.permute(0, 3, 1, 2)
        if self.layout == "tokens":
            b, n, c = out.shape
            g = _isqrt(n - self.prefix)
            return out[:, self.prefix:, :].reshape(b, g, g, c).permute(0, 3, 1, 2)
        raise ValueError(f"layer `{self.name}` has no known layout")

    def grid_size(self, out: torch.Tensor) -> tuple[int, int]:
        """(rows, cols) of the grid of this batch's output (which depends on the input size)."""
        if self.layout == "nchw":
            return int(out.shape[2]), int(out.shape[3])
        if self.layout == "nhwc":
            return int(out.shape[1]), int(out.shape[2])
        g = _isqrt(int(out.shape[1]) - self.prefix)
        return g, g

    def gather(self, out: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """out [B, ...], positions long [B, 2] (y, x) -> the vectors at those grid cells, a new tensor [B, C]."""
        b = torch.arange(out.shape[0], device=out.device)
        y, x = positions[:, 0], positions[:, 1]
        if self.layout == "nchw":
            return out[b, :, y, x]
        if self.layout == "nhwc":
            return out[b, y, x, :]
        g = _isqrt(int(out.shape[1]) - self.prefix)
        return out[b, self.prefix + y * g + x, :]

    def spike(self, out: torch.Tensor, positions: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """A tensor like ``out`` (same strides): ``a[b]`` at grid cell (y_b, x_b), zero elsewhere."""
        t = torch.zeros_like(out)
        b = torch.arange(out.shape[0], device=out.device)
        y, x = positions[:, 0], positions[:, 1]
        if self.layout == "nchw":
            t[b, :, y, x] = a
        elif self.layout == "nhwc":
            t[b, y, x, :] = a
        else:
            g = _isqrt(int(out.shape[1]) - self.prefix)
            t[b, self.prefix + y * g + x, :] = a
        return t

    def describe(self) -> str:
        """``tokens (1+14x14)``, ``nhwc``, ... for listings."""
        if self.layout is None:
            return "ambiguous"
        if self.layout == "tokens":
            assert self.shape is not None
            return f"tokens({self.prefix}+{self.shape[1]}x{self.shape[2]})"
        return self.layout


def _isqrt(n: int) -> int:
    if n <= 0:
        return 0
    r = int(round(n ** 0.5))
    while r * r > n:
        r -= 1
    while (r + 1) * (r + 1) <= n:
        r += 1
    return r


def _square_root(n: int) -> int | None:
    r = _isqrt(n)
    return r if n > 0 and r * r == n else None


def second_probe_size(size: int) -> int:
    """The second input side the layout probe tries: a quarter smaller (a multiple of 32 when possible),
    or 32 more for small inputs."""
    if size >= 128:
        s2 = max(32, round(size * 0.75 / 32) * 32)
        return s2 if s2 != size else size - 32
    return size + 32


def _four_d(name: str, out1: tuple[int, ...], out2: tuple[int, ...] | None, conv2d: bool) -> LayerSpec | None:
    a, b, c = out1
    if out2 is not None:
        scaled = {i for i in range(3) if out1[i] != out2[i]}
        if scaled == {1, 2}:
            return LayerSpec(name, out1, "nchw", (a, b, c))
        if scaled == {0, 1}:
            return LayerSpec(name, out1, "nhwc", (c, a, b))
        if scaled:
            return None  # other axes scale (e.g. attention's [B, heads, tokens, dim]): no H x W grid
    # one probe (or no axis changed, e.g. a pooled 1 x 1 grid): torch's 2-D convolutions, norms and poolings
    # work on [B, C, H, W]; else two equal neighbouring axes are the (square) grid
    if conv2d or (b == c and a != b):
        return LayerSpec(name, out1, "nchw", (a, b, c))
    if a == b and b != c:
        return LayerSpec(name, out1, "nhwc", (c, a, b))
    if a == b == c:
        return LayerSpec(name, out1, None, None, problem=f"[B, {a}, {b}, {c}] could be [B, C, H, W] or [B, H, W, C]")
    return None  # no two equal neighbouring axes: no square grid


def _token_grids(n1: int, n2: int, s1: int, s2: int) -> list[tuple[int, int]]:
    """(prefix, grid at s1) pairs that fit token counts n1 at input s1 and n2 at s2 with one patch size."""
    found = []
    for p in range(0, min(n1, n2)):
        g1, g2 = _square_root(n1 - p), _square_root(n2 - p)
        if g1 is None or g2 is None:
            continue
        if any(s1 // q == g1 and s2 // q == g2 for q in range(1, max(s1, s2) + 1)):
            found.append((p, g1))
    return found


def _one_probe_grids(n: int, size: int, known: set[int]) -> list[tuple[int, int]]:
    """(prefix, grid) pairs for n tokens from one probe: a grid that divides the input side (or that a 4-D layer
    of the same pass has) and at most MAX_PREFIX prefix tokens; a known grid wins over the others."""
    found = [(n - g * g, g) for g in range(_isqrt(n), 0, -1)
             if n - g * g <= MAX_PREFIX and (size % g == 0 or g in known)]
    preferred = [f for f in found if f[1] in known]
    return preferred if preferred else found


def _three_d(name: str, out1: tuple[int, ...], out2: tuple[int, ...] | None, s1: int, s2: int | None,
             prefix: int | None, known: set[int]) -> LayerSpec | None:
    n, c = out1
    if prefix is not None:
        g = _square_root(n - prefix)
        if g is None:
            return LayerSpec(name, out1, None, None, prefix=prefix,
                             problem=f"[B, {n}, {c}] less model.prefix_tokens={prefix} leaves {n - prefix} tokens, not a square grid")
        return LayerSpec(name, out1, "tokens", (c, g, g), prefix)
    if out2 is not None and s2 is not None:
        if out2[1] != c or out2[0] == n:
            return None  # the channel axis changes, or the token count does not: no patch grid
        fits = _token_grids(n, out2[0], s1, s2)
    else:
        fits = _one_probe_grids(n, s1, known)
    if len(fits) == 1:
        p, g = fits[0]
        return LayerSpec(name, out1, "tokens", (c, g, g), p)
    if not fits:
        return None  # no square grid of patches: not a spatial layer
    options = ", ".join(f"{p} prefix + {g}x{g}" for p, g in fits[:4])
    return LayerSpec(name, out1, None, None, problem=f"[B, {n}, {c}] splits into tokens more than one way ({options})")


def detect_layout(name: str, out1: tuple[int, ...], out2: tuple[int, ...] | None, size: int, size2: int | None, *,
                  layout: str = "auto", prefix: int | None = None, known_grids: set[int] | None = None,
                  conv2d: bool = False, strict: bool = False) -> LayerSpec | None:
    """The LayerSpec of an output of shape ``out1`` (no batch axis) at input side ``size`` and ``out2`` at
    ``size2`` (None: the network takes no other size). ``layout``/``prefix``: ``model.layout`` /
    ``model.prefix_tokens``. None: not a spatial layer (not listed).

    ``conv2d``: the layer is a torch 2-D convolution, batch norm or pooling (which work on [B, C, H, W]).
    ``strict``: a ``layout`` that does not fit the output's rank is an ambiguous spec saying so
    (for the layer in use); otherwise the layer is judged as if ``layout`` were ``auto`` (listings).
    """
    rank = len(out1)
    if layout in ("nchw", "nhwc") and rank == 3:
        a, b, c = out1
        return LayerSpec(name, out1, layout, (a, b, c) if layout == "nchw" else (c, a, b))
    if layout == "tokens" and rank == 2:
        spec = _three_d(name, out1, out2, size, size2, prefix, known_grids or set())
        if spec is None:
            spec = LayerSpec(name, out1, None, None, problem=f"[B, {out1[0]}, {out1[1]}] has no square grid of patch "
                             f"tokens after at most {MAX_PREFIX} prefix tokens")
        return spec
    if layout != "auto" and strict:
        dims = ", ".join(["B", *map(str, out1)])
        return LayerSpec(name, out1, None, None, problem=f"model.layout={layout} does not fit its {rank + 1}-D output [{dims}]")
    if rank == 3:
        return _four_d(name, out1, out2, conv2d)
    if rank == 2:
        return _three_d(name, out1, out2, size, size2, prefix, known_grids or set())
    return None


def ambiguous_message(spec: LayerSpec, model_name: str) -> str:
    """The ModelError text for using an ambiguous layer."""
    return (f"the layout of layer `{spec.name}` of `{model_name}` cannot be told: {spec.problem}. Fix: {_FIX}, "
            f"e.g. --set model.layout=nhwc, or --set model.layout=tokens --set model.prefix_tokens=1")
