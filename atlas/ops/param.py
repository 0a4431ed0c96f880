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

More parameterisations, all ending in the same decorrelated colour and sigmoid:

* :func:`maco_image`: MACO (Fel et al. 2023, *Unlocking feature visualization for deeper
  networks with magnitude constrained optimization*): the spectrum's magnitude is fixed
  (1/f by default, or a natural-image magnitude from :func:`spectrum_magnitude`) and only
  its phase is optimised; the spatial image is standardised per image before colour;
* :func:`pyramid_image`: Lucid's Laplacian pyramid (``param.spatial.laplacian_pyramid``):
  pixel-space tensors at sides S, S/2, S/4, ... bilinearly upsampled and summed;
* :func:`upsample_spectrum`: an :func:`fft_image` spectrum of side s as the spectrum of
  the same (band-limited) picture at side S > s, for coarse-to-fine optimisation.

Every parameterisation takes optional ``init`` images float [B, 3, H, W] in [0, 1] and then
starts from them instead of noise (exactly for ``fft_image`` and ``pyramid_image`` up to a
clamp of the pixels to [1/255, 254/255]; for ``maco_image`` the phase of the picture).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .resample import resize_bilinear

__all__ = ["COLOR_CORRELATION_SVD_SQRT", "PARAMETERISATIONS", "color_matrix", "rfft2d_freqs", "spectrum_scale",
           "decorrelate_color", "recorrelate_color", "logit_pixels", "fft_image", "fft_spectrum_of",
           "upsample_spectrum", "spectrum_magnitude", "maco_image", "pyramid_image"]

PARAMETERISATIONS = ("fft", "maco", "pyramid")

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


def recorrelate_color(t: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`decorrelate_color`: t [B, 3, H, W] -> [B, 3, H, W], out = M^-1 t per pixel."""
    m = torch.linalg.inv(color_matrix(torch.float64)).to(t.dtype).to(t.device)
    return torch.einsum("ij,bjhw->bihw", m, t)


def logit_pixels(images: torch.Tensor, eps: float = 1.0 / 255.0) -> torch.Tensor:
    """The sigmoid's inverse of images [B, 3, H, W] in [0, 1], pixels clamped to [eps, 1 - eps] first."""
    return torch.logit(images.float().clamp(eps, 1.0 - eps))


def _check(batch: int, height: int, width: int, name: str) -> None:
    if batch <= 0 or height <= 0 or width <= 0:
        raise ValueError(f"{name} needs a positive batch and size, got {batch}x{height}x{width}")


def _check_init(init: torch.Tensor | None, batch: int, height: int, width: int) -> None:
    if init is not None and tuple(init.shape) != (batch, 3, height, width):
        raise ValueError(f"init images must be [{batch}, 3, {height}, {width}], got {list(init.shape)}")


def fft_spectrum_of(images: torch.Tensor, decay_power: float = 1.0) -> torch.Tensor:
    """The :func:`fft_image` parameters whose image is ``images`` [B, 3, H, W] in [0, 1] (pixels
    clamped to [1/255, 254/255]): float32 [B, 3, H, W // 2 + 1, 2]."""
    _, _, h, w = images.shape
    spatial = recorrelate_color(logit_pixels(images).double()) * _MAGIC
    spectrum = torch.fft.rfft2(spatial, norm="ortho") / spectrum_scale(h, w, decay_power).double().to(images.device)
    return torch.view_as_real(spectrum).float().contiguous()


def fft_image(batch: int, height: int, width: int, *, decay_power: float = 1.0, sd: float = 0.01,
              generator: torch.Generator, device: torch.device | str | None = None,
              init: torch.Tensor | None = None) -> tuple[list[torch.Tensor], ImageFn]:
    """Lucid's ``fft_image`` + ``to_valid_rgb(decorrelate=True, sigmoid=True)``, batched.

    Parameters are ``sd * N(0, 1)`` drawn from ``generator`` (on its device, then moved
    to ``device``, default: the generator's), float32 [B, 3, H, W // 2 + 1, 2]
    (real, imaginary); with ``init`` [B, 3, H, W] in [0, 1] they are instead the spectrum
    of those images (:func:`fft_spectrum_of`; nothing is drawn). Returns ``([params],
    image_fn)``; ``image_fn()`` gives float32 [B, 3, H, W] in [0, 1], differentiable in
    the parameters.
    """
    _check(batch, height, width, "fft_image")
    _check_init(init, batch, height, width)
    shape = (batch, 3, height, width // 2 + 1, 2)
    if init is None:
        start = torch.randn(shape, generator=generator, device=generator.device, dtype=torch.float32) * sd
    else:
        start = fft_spectrum_of(init, decay_power)
    device = torch.device(device) if device is not None else start.device
    return _fft_from(start.to(device).requires_grad_(True), height, width, decay_power)


def _fft_from(spectrum: torch.Tensor, height: int, width: int, decay_power: float) -> tuple[list[torch.Tensor], ImageFn]:
    """``([spectrum], image_fn)`` of :func:`fft_image` for a given leaf spectrum [B, 3, H, W // 2 + 1, 2]."""
    scale = spectrum_scale(height, width, decay_power).to(spectrum.device)[None, None]

    def image_fn() -> torch.Tensor:
        scaled = torch.view_as_complex(spectrum) * scale
        img = torch.fft.irfft2(scaled, s=(height, width), norm="ortho") / _MAGIC
        return torch.sigmoid(decorrelate_color(img))

    return [spectrum], image_fn


def upsample_spectrum(spectrum: torch.Tensor, size: tuple[int, int], height: int, width: int, *,
                      decay_power: float = 1.0) -> tuple[list[torch.Tensor], ImageFn]:
    """An :func:`fft_image` spectrum [B, 3, h, w // 2 + 1, 2] of pictures of ``size`` (h, w) as the
    :func:`fft_image` parameters of the same pictures at (height, width) >= (h, w).

    Each bin goes to the same frequency in cycles per picture; the other bins are zero:
    band-limited (sinc) upsampling of the pre-sigmoid image, which then equals the small
    one at every (H / h)-th pixel when H / h is an integer and the Nyquist bins are zero
    (a Nyquist bin of an even side is split evenly between +h/2 and -h/2). An orthonormal
    bin grows by ``sqrt(H W / (h w))`` for the same amplitude and its 1/f scale by
    ``(H / h) ** decay_power``, so parameters are multiplied by the ratio of the two.
    Returns a new leaf ``([spectrum], image_fn)`` like :func:`fft_image`.
    """
    h, w = size
    b, c = spectrum.shape[:2]
    if tuple(spectrum.shape[2:]) != (h, w // 2 + 1, 2):
        raise ValueError(f"spectrum must be [B, 3, {h}, {w // 2 + 1}, 2] for size {size}, got {list(spectrum.shape)}")
    if height < h or width < w:
        raise ValueError(f"upsample_spectrum: ({height}, {width}) is smaller than {size}")
    with torch.no_grad():
        small = spectrum.detach().double().clone()
        if w % 2 == 0 and width > w:
            small[:, :, :, w // 2] *= 0.5  # no longer the Nyquist column: irfft2 counts it twice
        big = torch.zeros(b, c, height, width // 2 + 1, 2, dtype=torch.float64, device=spectrum.device)
        pos = (h + 1) // 2  # rows 0 .. pos - 1: frequencies 0, 1, ...; rows pos .. h - 1: negative
        big[:, :, :pos, : w // 2 + 1] = small[:, :, :pos]
        big[:, :, height - (h - pos):, : w // 2 + 1] = small[:, :, pos:]
        if h % 2 == 0 and height > h:  # split the Nyquist row between +h/2 and -h/2
            big[:, :, h // 2, : w // 2 + 1] = 0.5 * small[:, :, h // 2]
            big[:, :, height - h // 2, : w // 2 + 1] = 0.5 * small[:, :, h // 2]
        ratio = math.sqrt(height * width / (h * w)) / (max(height / h, width / w)) ** decay_power
        big = (big * ratio).float().requires_grad_(True)
    return _fft_from(big, height, width, decay_power)


def spectrum_magnitude(images: torch.Tensor) -> torch.Tensor:
    """The mean spectrum magnitude of pictures, for :func:`maco_image`: images [N, 3, H, W] in
    [0, 1] -> float32 [3, H, W // 2 + 1], ``mean_n |rfft2(M^-1 (x_n - mean x_n))|`` (orthonormal),
    in the decorrelated colour space the parameterisation works in."""
    x = recorrelate_color(images.double() - images.double().mean(dim=(2, 3), keepdim=True))
    out: torch.Tensor = torch.fft.rfft2(x, norm="ortho").abs().mean(dim=0).float()
    return out


def _standardise(img: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit standard deviation per image: [B, 3, H, W] -> [B, 3, H, W]."""
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    std = img.std(dim=(1, 2, 3), keepdim=True)
    return (img - mean) / (std + 1e-4)


def maco_image(batch: int, height: int, width: int, *, magnitude: torch.Tensor | None = None,
               decay_power: float = 1.0, generator: torch.Generator, device: torch.device | str | None = None,
               init: torch.Tensor | None = None) -> tuple[list[torch.Tensor], ImageFn]:
    """MACO: a fixed spectrum magnitude, an optimised phase (Fel et al. 2023), batched.

    ``magnitude`` float [3, H, W // 2 + 1] (default: Lucid's 1/f scale
    :func:`spectrum_scale` for every channel). Parameters: the phase float32 [B, 3, H,
    W // 2 + 1], uniform in [-pi, pi) from ``generator``, or the phase of the pictures
    ``init`` [B, 3, H, W]. ``image_fn()``: ``sigmoid(M standardise(irfft2(magnitude *
    exp(i phase))))`` float32 [B, 3, H, W] in [0, 1] (standardised per image).
    """
    _check(batch, height, width, "maco_image")
    _check_init(init, batch, height, width)
    if magnitude is None:
        magnitude = spectrum_scale(height, width, decay_power)[None].expand(3, -1, -1)
    if tuple(magnitude.shape) != (3, height, width // 2 + 1):
        raise ValueError(f"magnitude must be [3, {height}, {width // 2 + 1}], got {list(magnitude.shape)}")
    shape = (batch, 3, height, width // 2 + 1)
    if init is None:
        start = (torch.rand(shape, generator=generator, device=generator.device) * 2.0 - 1.0) * math.pi
    else:
        spatial = recorrelate_color(logit_pixels(init).double())
        start = torch.angle(torch.fft.rfft2(spatial, norm="ortho")).float()
    device = torch.device(device) if device is not None else start.device
    phase = start.to(device).float().requires_grad_(True)
    mag = magnitude.to(device, torch.float32)[None]

    def image_fn() -> torch.Tensor:
        spectrum = torch.polar(mag.expand_as(phase), phase)
        img = torch.fft.irfft2(spectrum, s=(height, width), norm="ortho")
        return torch.sigmoid(decorrelate_color(_standardise(img)))

    return [phase], image_fn


def pyramid_image(batch: int, height: int, width: int, *, levels: int = 4, sd: float = 0.01,
                  generator: torch.Generator, device: torch.device | str | None = None,
                  init: torch.Tensor | None = None) -> tuple[list[torch.Tensor], ImageFn]:
    """Lucid's Laplacian pyramid parameterisation with decorrelated colour, batched.

    Parameters: ``levels`` tensors float32 [B, 3, ceil(H / 2^k), ceil(W / 2^k)], k = 0 ..
    levels - 1, ``sd * N(0, 1)`` each (with ``init``: the finest holds the pictures'
    decorrelated logits, the others are zero). ``image_fn()``: ``sigmoid(M sum_k
    up(p_k))``, ``up`` bilinear to (H, W), float32 [B, 3, H, W] in [0, 1].
    """
    _check(batch, height, width, "pyramid_image")
    _check_init(init, batch, height, width)
    if levels < 1:
        raise ValueError(f"pyramid_image needs at least one level, got {levels}")
    sizes = [(-(-height // 2**k), -(-width // 2**k)) for k in range(levels)]
    if init is None:
        starts = [torch.randn((batch, 3, h, w), generator=generator, device=generator.device) * sd for h, w in sizes]
    else:
        starts = [recorrelate_color(logit_pixels(init).double()).float()]
        starts += [torch.zeros((batch, 3, h, w), device=init.device) for h, w in sizes[1:]]
    device = torch.device(device) if device is not None else starts[0].device
    params = [s.to(device).float().requires_grad_(True) for s in starts]

    def image_fn() -> torch.Tensor:
        img = params[0]
        for p in params[1:]:
            img = img + resize_bilinear(p, (height, width))  # = F.interpolate bilinear, repeatable on CUDA
        return torch.sigmoid(decorrelate_color(img))

    return params, image_fn
