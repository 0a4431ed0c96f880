"""Pasting patches onto images, the pure parts of ``atlas patch-test``: where a patch goes
(named places and seeded random ones), resizing it, pasting it, and the seeded noise patch
it is compared with. Arrays in, arrays out.

Geometry: images are ``uint8 [B, S, S, 3]`` (rows, columns, RGB); a patch of side ``p``
placed at ``(top, left)`` covers rows ``top .. top + p - 1`` and columns ``left .. left + p - 1``
and replaces those pixels. Every place lies wholly inside the image. Random places and noise
patches depend only on ``(seed, image id, size index, ...)``, never on the batch, so a unit
redone after a kill, or split differently, pastes the same pixels.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image

__all__ = ["CORNERS", "NAMED", "patch_side", "place_count", "places", "square", "resize_patch", "paste",
           "noise_patch", "position_label"]

CORNERS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
NAMED: tuple[str, ...] = ("center", "corners", *CORNERS)
_RANDOM = re.compile(r"random:([1-9]\d*)")
_PLACE_TAG, _NOISE_TAG = 0x50415443, 0x4E4F4953  # "PATC", "NOIS": separate streams


def patch_side(fraction: float, side: int) -> int:
    """The patch side in pixels for ``fraction`` of an image side ``side`` (rounded, 1 .. side)."""
    return int(min(side, max(1, round(float(fraction) * side))))


def place_count(position: str) -> int:
    """How many places a position token stands for: 1, 4 (``corners``) or N (``random:N``)."""
    if position == "corners":
        return len(CORNERS)
    if position in NAMED:
        return 1
    m = _RANDOM.fullmatch(position)
    if not m:
        raise ValueError(f"unknown patch position {position!r}: use {', '.join(NAMED)} or random:N")
    return int(m.group(1))


def _named(name: str, free: int) -> tuple[int, int]:
    return {"center": (free // 2, free // 2), "top-left": (0, 0), "top-right": (0, free),
            "bottom-left": (free, 0), "bottom-right": (free, free)}[name]


def _stream(seed: int, tag: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & (2**63 - 1), tag, *map(int, key)])))


def places(position: str, side: int, p: int, *, seed: int, image_id: int, size_index: int) -> np.ndarray:
    """int64 [k, 2] (top, left) of the ``k = place_count(position)`` places of a ``p`` pixel patch
    in a ``side`` pixel image: ``center`` (the centre, rounded up-left), a corner (flush with
    it), ``corners`` (top-left, top-right, bottom-left, bottom-right) or ``random:N`` (uniform
    over every place inside the image, seeded by ``(seed, image_id, size_index, N)``)."""
    free = side - p
    if free < 0:
        raise ValueError(f"a {p} px patch does not fit a {side} px image")
    if position == "corners":
        return np.array([_named(c, free) for c in CORNERS], np.int64)
    if position in NAMED:
        return np.array([_named(position, free)], np.int64)
    n = place_count(position)
    return _stream(seed, _PLACE_TAG, image_id, size_index, n).integers(0, free + 1, size=(n, 2), dtype=np.int64)


def position_label(position: str) -> str:
    """How a position token reads in a sentence: ``center``, ``the 4 corners``, ``4 random places``."""
    if position == "corners":
        return "the 4 corners"
    n = place_count(position)
    return position if position in NAMED else f"{n} random place{'s' if n > 1 else ''}"


def square(image: np.ndarray) -> np.ndarray:
    """The centred square of an ``[h, w, 3]`` image (its shorter side)."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top:top + s, left:left + s]


def resize_patch(patch: np.ndarray, p: int) -> np.ndarray:
    """``uint8 [p, p, 3]``: the centred square of ``patch`` resized to ``p`` pixels (bilinear;
    the same array when it already has that side)."""
    sq = np.ascontiguousarray(square(patch)[..., :3].astype(np.uint8, copy=False))
    if sq.shape[0] == p:
        return sq
    return np.array(Image.fromarray(sq).resize((p, p), Image.Resampling.BILINEAR))


def paste(images: torch.Tensor, patches: torch.Tensor, tops: np.ndarray, lefts: np.ndarray) -> torch.Tensor:
    """A copy of ``images`` (uint8 [B, S, S, 3]) with ``patches`` pasted: one patch [p, p, 3] for
    every image, or one per image [B, p, p, 3]; image b's at ``(tops[b], lefts[b])``."""
    out = images.clone()
    p = int(patches.shape[-2])
    per_image = patches.ndim == 4
    if per_image and patches.shape[0] != images.shape[0]:
        raise ValueError(f"{patches.shape[0]} patches for {images.shape[0]} images")
    side = int(images.shape[1])
    for b, (t, left) in enumerate(zip(np.asarray(tops).tolist(), np.asarray(lefts).tolist())):
        if not (0 <= t <= side - p and 0 <= left <= side - p):
            raise ValueError(f"a {p} px patch at ({t}, {left}) does not lie inside a {side} px image")
        out[b, t:t + p, left:left + p] = patches[b] if per_image else patches
    return out


def noise_patch(p: int, *, seed: int, image_id: int, size_index: int, place_index: int) -> np.ndarray:
    """``uint8 [p, p, 3]`` of uniform noise (every value 0..255 equally likely), seeded by
    ``(seed, image_id, size_index, place_index)``: the baseline patch for that trial."""
    return _stream(seed, _NOISE_TAG, image_id, size_index, place_index).integers(0, 256, size=(p, p, 3), dtype=np.uint8)
