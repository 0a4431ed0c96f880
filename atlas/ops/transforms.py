"""Batched random image transforms for feature visualisation (Lucid's ``optvis.transform``).

A transform is a plain callable ``(images [B, 3, H, W], generator) -> images [B, 3, H', W']``:
differentiable, and every image of the batch gets its own random draw. Draws are made
on the generator's device (use a CPU ``torch.Generator`` for results independent of
the device) and then moved to the images' device (:func:`to_device`: without blocking the host
on CUDA). Compose them with :func:`compose`.
Pure torch, no I/O.

Differences from Lucid, where a draw is shared by the whole batch: ``jitter`` crops
each image at its own offset; ``random_scale`` and ``random_rotate`` keep the image
size (a zoom / rotation about the centre, bilinear) so that images scaled
differently still form one batch.

Repeatable on CUDA: reflect padding and bilinear sampling are :mod:`atlas.ops.resample`'s
indexing versions (same values as ``F.pad(mode="reflect")`` and ``F.grid_sample``), whose
gradients add without atomics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from .resample import affine_sample, reflect_pad

__all__ = ["Transform", "TRANSFORM_SETS", "to_device", "pad", "jitter", "jitter_offsets", "random_translate", "random_scale",
           "random_rotate", "compose", "standard_transforms", "icon_transforms", "named_transforms",
           "STANDARD_SCALES", "STANDARD_ANGLES"]

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

TRANSFORM_SETS = ("standard", "icon", "none")
STANDARD_SCALES: tuple[float, ...] = tuple(1 + (i - 5) / 50.0 for i in range(11))
STANDARD_ANGLES: tuple[float, ...] = tuple(float(a) for a in range(-10, 11))


def to_device(draw: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``draw`` (made on a CPU generator) on ``device``. To CUDA it goes through pinned memory with
    ``non_blocking=True``: the host queues the copy and goes on (a plain ``.to`` from pageable memory
    waits for it, three times per optimisation step); the stream orders it before its use and
    torch's pinned-memory cache keeps the buffer until the copy is done. Same values either way."""
    if device.type == "cuda" and draw.device.type == "cpu":
        return draw.pin_memory().to(device, non_blocking=True)
    return draw.to(device)


def _choice(values: Sequence[float], batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """One value of ``values`` per image, uniformly: float32 [B] on ``device``."""
    idx = torch.randint(len(values), (batch,), generator=generator, device=generator.device)
    return to_device(torch.tensor(list(values), dtype=torch.float32, device=generator.device)[idx], device)


def pad(width: int, mode: str = "reflect", value: float = 0.5) -> Transform:
    """Pad every side by ``width`` pixels: ``reflect`` or ``constant`` (= ``value``). [B,3,H,W] -> [B,3,H+2w,W+2w]."""
    if mode not in ("reflect", "constant"):
        raise ValueError(f"pad mode must be `reflect` or `constant`, got {mode!r}")

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if width == 0:
            return images
        if mode == "constant":
            return F.pad(images, (width,) * 4, mode="constant", value=value)
        return reflect_pad(images, width)

    return apply


def jitter_offsets(batch: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """The crop offsets :func:`jitter` draws: int64 [B, 2] (dy, dx), each uniform in [0, d]."""
    return torch.randint(d + 1, (batch, 2), generator=generator, device=generator.device)


def jitter(d: int) -> Transform:
    """Crop each image at its own random integer offset (dy, dx) in [0, d]^2 (Lucid's
    ``jitter``: a random crop d pixels smaller). [B,3,H,W] -> [B,3,H-d,W-d];
    ``out[b] = images[b, :, dy:dy+H-d, dx:dx+W-d]`` exactly."""

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if d == 0:
            return images
        b, _, h, w = images.shape
        off = to_device(jitter_offsets(b, d, generator), images.device)
        rows = off[:, 0, None] + torch.arange(h - d, device=images.device)  # [B, H-d]
        cols = off[:, 1, None] + torch.arange(w - d, device=images.device)  # [B, W-d]
        bi = torch.arange(b, device=images.device)[:, None, None]
        out = images.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # [B, H-d, W-d, 3]
        return out.permute(0, 3, 1, 2)

    return apply


def random_translate(d: int, mode: str = "reflect", value: float = 0.5) -> Transform:
    """Shift each image by its own integer offset in [-d, d]^2, keeping its size: :func:`pad`
    by d, then :func:`jitter` by 2d. [B,3,H,W] -> [B,3,H,W]; ``out[b, :, y, x] =
    padded[b, :, y + dy, x + dx]`` with (dy, dx) from :func:`jitter_offsets` (B, 2d)."""
    chain = compose([pad(d, mode=mode, value=value), jitter(2 * d)])

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images if d == 0 else chain(images, generator)

    return apply


def _affine(images: torch.Tensor, theta: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """Bilinear resampling of images [B,3,H,W] with per-image affine maps theta [B, 2, 3]
    (output coordinates -> input coordinates, both normalised to [-1, 1]); ``F.grid_sample``'s values."""
    return affine_sample(images, theta, padding_mode)


def random_scale(scales: Sequence[float], padding_mode: str = "border") -> Transform:
    """Zoom each image about its centre by its own factor from ``scales`` (> 1 enlarges),
    keeping its size. [B,3,H,W] -> [B,3,H,W]."""

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = images.shape[0]
        inv = 1.0 / _choice(scales, b, generator, images.device)
        theta = torch.zeros(b, 2, 3, device=images.device)
        theta[:, 0, 0] = inv
        theta[:, 1, 1] = inv
        return _affine(images, theta, padding_mode)

    return apply


def random_rotate(angles_deg: Sequence[float], padding_mode: str = "border") -> Transform:
    """Rotate each image about its centre by its own angle (degrees) from ``angles_deg``,
    keeping its size. [B,3,H,W] -> [B,3,H,W]."""

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = images.shape
        a = _choice(angles_deg, b, generator, images.device) * (math.pi / 180.0)
        cos, sin = torch.cos(a), torch.sin(a)
        theta = torch.zeros(b, 2, 3, device=images.device)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * (h / w)  # normalised coordinates: undo aspect
        theta[:, 1, 0], theta[:, 1, 1] = sin * (w / h), cos
        return _affine(images, theta, padding_mode)

    return apply


def compose(transforms: Sequence[Transform]) -> Transform:
    """Apply ``transforms`` in order, all drawing from the same generator."""
    chain = list(transforms)

    def apply(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for t in chain:
            images = t(images, generator)
        return images

    return apply


def standard_transforms(*, pad_width: int = 12, pad_mode: str = "constant", pad_value: float = 0.5,
                        jitter_px: int = 8, scales: Sequence[float] = STANDARD_SCALES,
                        angles_deg: Sequence[float] = STANDARD_ANGLES, final_jitter: int = 4) -> list[Transform]:
    """Lucid's ``transform.standard_transforms``: pad 12 (constant 0.5), jitter 8, random
    scale over ``1 + (i - 5) / 50``, random rotate over -10..10 degrees, jitter 4."""
    return [
        pad(pad_width, mode=pad_mode, value=pad_value),
        jitter(jitter_px),
        random_scale(scales),
        random_rotate(angles_deg),
        jitter(final_jitter),
    ]


def icon_transforms(size: int, *, translate: float = 1 / 16, pad_mode: str = "reflect",
                    scales: Sequence[float] = STANDARD_SCALES,
                    angles_deg: Sequence[float] = STANDARD_ANGLES) -> list[Transform]:
    """Transformation robustness that keeps the icon's size: a shift of up to
    ``round(translate * size)`` pixels (reflect padding), Lucid's random scale and rotation.

    [B,3,S,S] -> [B,3,S,S], so the network sees during optimisation the same layer grid
    as when the final icon is scored (Lucid's standard set grows a 48-pixel icon to 60 px
    of which a fifth is grey padding, and crops it by up to 12 px).
    """
    return [random_translate(max(0, round(translate * size)), mode=pad_mode), random_scale(scales),
            random_rotate(angles_deg)]


def named_transforms(name: str, size: int) -> Transform:
    """The transform set ``name`` (one of :data:`TRANSFORM_SETS`) for icons of side ``size``, composed."""
    if name == "standard":
        return compose(standard_transforms())
    if name == "icon":
        return compose(icon_transforms(size))
    if name == "none":
        return compose([])
    raise ValueError(f"transforms must be one of {', '.join(TRANSFORM_SETS)}, got {name!r}")
