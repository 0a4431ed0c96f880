"""Image parameterisations (Lucid's ``optvis.param``): each returns ``(params, image_fn)``.

``params`` are the leaf tensors an optimiser updates; ``image_fn()`` maps them to a
batch of RGB images float32 [B, 3, H, W] in [0, 1]. Pure torch, no I/O.

:func:`fft_image` is Lucid's spectral parameterisation (``param/spatial.py``
``fft_image``) followed by Lucid's decorrelated colour and a sigmoid
(``param/color.py`` ``to_valid_rgb(decorrelate=True, sigmoid=True)``):

* parameters: real and imaginary parts of an rfft2 spectrum per image and channel;
* scale of frequency f: ``1 / max(f, 1 / max(H, W)) ** decay_power`` (1/f noise);
* spatial image: orthonormal irfft2 (= Lucid's ``irfft2d * sqrt(H W)``), divided by 4;
* colour: ``t @ (C / max column norm of C)^T`` with C = ``COLOR_CORRELATION_SVD_SQRT``;
* pixels: ``sigmoid``, so all-zero parameters give 0.5 grey everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["COLOR_CORRELATION_SVD_SQRT", "color_matrix", "rfft2d_freqs", "spectrum_scale",
           "decorrelate_color", "fft_image"]

ImageFn = Callable[[], torch.Tensor]

# Square root of the ImageNet colour correlation (Lucid, param/color.py).
COLOR_CORRELATION_SVD_SQRT: tuple[tuple[float, float, float], ...] = (
    (0.26, 0.09, 0.02),
    (0.27, 0.00, -0.05),
    (0.27, -0.09, 0.03),
)
_MAGIC = 4.0  # Lucid divides the spatial image by 4 before the colour transform


def color_matrix(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Lucid's colour matrix divided by its largest column norm: [3, 3]."""
    c = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float64)
    out: torch.Tensor = (c / c.norm(dim=0).max()).to(dtype)
    return out


def rfft2d_freqs(height: int, width: int) -> torch.Tensor:
    """Frequency magnitude sqrt(fx^2 + fy^2) of each rfft2 bin: float32 [H, W // 2 + 1] (cycles/pixel)."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    return torch.sqrt(fx * fx + fy * fy).float()


def spectrum_scale(height: int, width: int, decay_power: float) -> torch.Tensor:
    """Per-bin amplitude 1 / max(f, 1 / max(H, W)) ** decay_power: float32 [H, W // 2 + 1]."""
    freqs = rfft2d_freqs(height, width).double()
    return (1.0 / freqs.clamp(min=1.0 / max(height, width)) ** decay_power).float()


def decorrelate_color(t: torch.Tensor) -> torch.Tensor:
    """Lucid's ``_linear_decorelate_color``: t [B, 3, H, W] -> [B, 3, H, W], out_i = sum_j M_ij t_j."""
    m = color_matrix(t.dtype).to(t.device)
    return torch.einsum("ij,bjhw->bihw", m, t)


def fft_image(batch: int, height: int, width: int, *, decay_power: float = 1.0, sd: float = 0.01,
              generator: torch.Generator, device: torch.device | str | None = None,
              ) -> tuple[list[torch.Tensor], ImageFn]:
    """Lucid's ``fft_image`` + ``to_valid_rgb(decorrelate=True, sigmoid=True)``, batched.

    Parameters are ``sd * N(0, 1)`` drawn from ``generator`` (on its device, then moved
    to ``device``, default: the generator's), float32 [B, 3, H, W // 2 + 1, 2]
    (real, imaginary). Returns ``([params], image_fn)``; ``image_fn()`` gives float32
    [B, 3, H, W] in [0, 1], differentiable in the parameters.
    """
    if batch <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"fft_image needs a positive batch and size, got {batch}x{height}x{width}")
    shape = (batch, 3, height, width // 2 + 1, 2)
    init = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32) * sd
    device = torch.device(device) if device is not None else init.device
    spectrum = init.to(device).requires_grad_(True)
    scale = spectrum_scale(height, width, decay_power).to(device)[None, None]

    def image_fn() -> torch.Tensor:
        scaled = torch.view_as_complex(spectrum) * scale
        img = torch.fft.irfft2(scaled, s=(height, width), norm="ortho") / _MAGIC
        return torch.sigmoid(decorrelate_color(img))

    return [spectrum], image_fn
