"""Resampling ops whose backward passes add without atomics, so that they repeat bit for bit on CUDA.

The render loop differentiates through three resamplings: reflect padding, bilinear
sampling at an affine grid (random scale and rotation) and bilinear resizing (the
Laplacian pyramid, and networks that take only their own input size). torch's kernels
for them (``F.pad(mode="reflect")``, ``F.grid_sample``, ``F.interpolate(mode="bilinear")``)
scatter their gradients with atomic adds on CUDA, whose order, and so whose float sums,
change from run to run. These equivalents give the same values (up to the rounding of a
sum's order) and differentiate only through:

* advanced indexing (``x[idx]``): its gradient is ``index_put_(accumulate=True)``, which on
  CUDA sorts the indices and adds duplicates in a fixed order (and is serial on the CPU);
* matrix products (cuBLAS and CPU BLAS are deterministic on one stream).

On the CPU torch's own kernels are deterministic and about 3.8x faster for padding and
sampling (``benchmarks/resample.py``), so :func:`reflect_pad`, :func:`affine_sample` and
:func:`resize_bilinear` use them there and these equivalents on CUDA;
:func:`repeatable_resampling` forces one or the other (the tests check the CUDA path on the CPU).

Pure torch, no I/O.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F

__all__ = ["reflect_indices", "reflect_pad", "bilinear_sample", "affine_sample", "bilinear_matrix",
           "resize_bilinear", "repeatable_resampling"]

_FORCED: ContextVar[bool | None] = ContextVar("atlas_repeatable_resampling", default=None)


@contextlib.contextmanager
def repeatable_resampling(on: bool = True) -> Iterator[None]:
    """Within the block, the resamplings use the indexing / matrix-product paths (``on``) or
    torch's kernels (not ``on``) whatever the device; outside it, the paths follow the device."""
    token = _FORCED.set(on)
    try:
        yield
    finally:
        _FORCED.reset(token)


def _repeatable(x: torch.Tensor) -> bool:
    forced = _FORCED.get()
    return x.is_cuda if forced is None else forced


def reflect_indices(n: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Source index of each position of a side of ``n`` padded by ``width`` on both ends (reflection
    without repeating the edge, as ``F.pad(mode="reflect")``): int64 [n + 2 width]."""
    if width >= n:
        raise ValueError(f"reflect padding of {width} needs a side larger than it, got {n}")
    i = torch.arange(-width, n + width, device=device).abs()
    return torch.where(i >= n, 2 * (n - 1) - i, i)


def reflect_pad(images: torch.Tensor, width: int) -> torch.Tensor:
    """``F.pad(images, (width,) * 4, mode="reflect")`` by indexing: [B, C, H, W] -> [B, C, H + 2w, W + 2w]."""
    if width == 0:
        return images
    if not _repeatable(images):
        return F.pad(images, (width, width, width, width), mode="reflect")
    _, _, h, w = images.shape
    rows = reflect_indices(h, width, images.device)
    cols = reflect_indices(w, width, images.device)
    return images[:, :, rows[:, None], cols[None, :]]


def bilinear_sample(images: torch.Tensor, grid: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """``F.grid_sample(images, grid, mode="bilinear", padding_mode, align_corners=False)`` by indexing.

    images [B, C, H, W]; grid [B, Ho, Wo, 2] (x, y) in [-1, 1]; padding ``border`` (clamp to
    the edge) or ``zeros``. Returns [B, C, Ho, Wo]. The same arithmetic as torch's CPU kernel:
    ``ix = (x + 1) W / 2 - 0.5``, weights from the distances to the four neighbours, summed
    north-west, north-east, south-west, south-east.
    """
    if padding_mode not in ("border", "zeros"):
        raise ValueError(f"padding_mode must be `border` or `zeros`, got {padding_mode!r}")
    b, c, h, w = images.shape
    ho, wo = grid.shape[1:3]
    gx, gy = grid[..., 0].to(images.dtype), grid[..., 1].to(images.dtype)
    ix = (gx + 1) * (w / 2) - 0.5
    iy = (gy + 1) * (h / 2) - 0.5
    if padding_mode == "border":
        ix = ix.clamp(0, w - 1)
        iy = iy.clamp(0, h - 1)
    x0, y0 = ix.floor(), iy.floor()
    wx, ny = ix - x0, iy - y0  # distance to the west / north neighbour
    ex, sy = 1 - wx, 1 - ny
    x0l, y0l = x0.long(), y0.long()
    flat = images.permute(0, 2, 3, 1).reshape(b, h * w, c)
    bi = torch.arange(b, device=images.device)[:, None]
    out = None
    for dy, dx, weight in ((0, 0, sy * ex), (0, 1, sy * wx), (1, 0, ny * ex), (1, 1, ny * wx)):
        xs, ys = x0l + dx, y0l + dy
        inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
        idx = (ys.clamp(0, h - 1) * w + xs.clamp(0, w - 1)).reshape(b, ho * wo)
        vals = flat[bi, idx]  # [B, Ho * Wo, C]
        term = vals * torch.where(inside, weight, torch.zeros_like(weight)).reshape(b, ho * wo, 1)
        out = term if out is None else out + term
    assert out is not None
    return out.reshape(b, ho, wo, c).permute(0, 3, 1, 2)


def affine_sample(images: torch.Tensor, theta: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Bilinear resampling of images [B, C, H, W] with per-image affine maps theta [B, 2, 3] (output
    coordinates -> input coordinates, normalised to [-1, 1], ``align_corners=False``): [B, C, H, W]."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    if not _repeatable(images):
        return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return bilinear_sample(images, grid, padding_mode)


def bilinear_matrix(n_in: int, n_out: int, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The linear map of 1-D bilinear resizing from ``n_in`` to ``n_out`` samples
    (``F.interpolate(mode="bilinear", align_corners=False)`` without antialiasing): [n_out, n_in].

    Row j: source ``s = max((j + 0.5) n_in / n_out - 0.5, 0)``, weight ``1 - (s - floor s)`` at
    ``floor s`` and ``s - floor s`` at ``min(floor s + 1, n_in - 1)``.
    """
    s = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0.0)
    i0 = s.floor().long().clamp(max=n_in - 1)
    lam = s - i0.double()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1.0 - lam, accumulate=True)
    m.index_put_((rows, i1), lam, accumulate=True)
    return m.to(dtype=dtype, device=device)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as two matrix products:
    [..., h, w] -> [..., H, W], ``Ry @ x @ Rx^T`` (:func:`bilinear_matrix`)."""
    if not _repeatable(x):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    h, w = x.shape[-2:]
    ry = bilinear_matrix(h, size[0], dtype=x.dtype, device=x.device)
    rx = bilinear_matrix(w, size[1], dtype=x.dtype, device=x.device)
    out: torch.Tensor = torch.matmul(torch.matmul(ry, x), rx.T)
    return out
