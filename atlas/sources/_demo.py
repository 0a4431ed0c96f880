"""The embedded demo set: seeded crops, scales and flips of photos that ship inside scikit-image.

Image ``i`` depends on ``i`` and the requested size only (a fixed internal seed, not the
run seed), so the demo set is the same in every run: photo ``i % len(DEMO_PHOTOS)``
(its label), a crop of 0.25-1.0 of the photo's shorter side at a random position with
an aspect ratio within about 15 % of the target's, flipped left-right half of the time,
resized to the target size. Its location is ``demo://<size>/<i>``.

Source photos are decoded once per process and kept as a pyramid of 2x reductions, so
one image costs a single bilinear resize of at most 2x (a few milliseconds).
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .._cache import cached
from ..store import atomic_write_bytes
from ._manifest import Manifest

__all__ = ["DEMO_PHOTOS", "demo_image", "demo_location", "parse_demo_location", "scan_demo", "materialize_demo"]

# Photos bundled in scikit-image's wheel (skimage/data/*.png|jpg): they load without pooch/network.
DEMO_PHOTOS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle_left", "page", "retina",
    "rocket", "text",
)

_SEED = 0xA71A5_DE30  # fixed: the demo set never depends on the run seed
_SCALE = (0.25, 1.0)
_ASPECT_JITTER = 0.15
_MIN_LEVEL_SIDE = 32
_LOCATION_RE = re.compile(r"^demo://(\d+)/(\d+)$")
_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}


def _load_photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle_left":
        return np.asarray(skimage.data.stereo_motorcycle()[0])
    return np.asarray(getattr(skimage.data, name)())


def _pyramid(k: int) -> tuple[Image.Image, ...]:
    """Photo ``k`` as RGB, then successive 2x box reductions down to ~32 px (built once per process:
    the cached table of the photos' pyramids, filled as photos are first used)."""
    table: dict[int, tuple[Image.Image, ...]] = cached("sources.demo_pyramids", DEMO_PHOTOS, dict)
    if k not in table:
        table[k] = _build_pyramid(k)
    return table[k]


def _build_pyramid(k: int) -> tuple[Image.Image, ...]:
    arr = _load_photo(DEMO_PHOTOS[k])
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    levels = [Image.fromarray(np.ascontiguousarray(arr[:, :, :3]).astype(np.uint8))]
    while min(levels[-1].size) >= 2 * _MIN_LEVEL_SIDE:
        levels.append(levels[-1].reduce(2))
    return tuple(levels)


def _crop_box(rng: np.random.Generator, src: tuple[int, int], out: tuple[int, int]) -> tuple[float, float, float, float]:
    """A random crop (x0, y0, x1, y1) of ``src`` (w, h) with roughly the aspect of ``out``."""
    sw, sh = src
    side = rng.uniform(*_SCALE) * min(sw, sh)
    aspect = (out[0] / out[1]) * math.exp(rng.uniform(-_ASPECT_JITTER, _ASPECT_JITTER))
    cw, ch = side * math.sqrt(aspect), side / math.sqrt(aspect)
    shrink = min(1.0, sw / cw, sh / ch)
    cw, ch = cw * shrink, ch * shrink
    x0, y0 = rng.uniform(0.0, sw - cw), rng.uniform(0.0, sh - ch)
    return x0, y0, min(x0 + cw, float(sw)), min(y0 + ch, float(sh))


def _pick_level(levels: tuple[Image.Image, ...], box: tuple[float, ...], out: tuple[int, int]) -> int:
    """Smallest pyramid level in which the crop still has at least the output's pixels."""
    cw, ch = box[2] - box[0], box[3] - box[1]
    level = 0
    while level + 1 < len(levels) and cw / 2 ** (level + 1) >= out[0] and ch / 2 ** (level + 1) >= out[1]:
        level += 1
    return level


def _as_wh(size: int | tuple[int, int]) -> tuple[int, int]:
    w, h = (size, size) if isinstance(size, int) else size
    if w <= 0 or h <= 0:
        raise ValueError(f"demo image size must be positive, got {size!r}")
    return int(w), int(h)


def demo_image(i: int, size: int | tuple[int, int]) -> Image.Image:
    """Demo image ``i`` as an RGB PIL image of ``size`` (side, or (width, height))."""
    out = _as_wh(size)
    rng = np.random.default_rng((_SEED, int(i)))
    levels = _pyramid(int(i) % len(DEMO_PHOTOS))
    box = _crop_box(rng, levels[0].size, out)
    level = _pick_level(levels, box, out)
    f = 2.0**level
    x0, y0, x1, y1 = (v / f for v in box)
    img = levels[level].resize(out, Image.Resampling.BILINEAR, box=(x0, y0, x1, y1))
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def demo_label(i: int) -> int:
    """Label (photo index) of demo image ``i``."""
    return int(i) % len(DEMO_PHOTOS)


def demo_location(i: int, size: int) -> str:
    return f"demo://{int(size)}/{int(i)}"


def parse_demo_location(location: str) -> tuple[int, int]:
    """``demo://<size>/<i>`` -> (size, i); ValueError for anything else."""
    m = _LOCATION_RE.match(location)
    if not m or int(m[1]) <= 0:
        raise ValueError(f"not a demo location: {location!r} (expected demo://<size>/<i>)")
    return int(m[1]), int(m[2])


def scan_demo(count: int, size: int, source: str = "demo", labels: bool = True) -> Manifest:
    """Manifest of the first ``count`` demo images of side ``size``."""
    idx = np.arange(count, dtype=np.int64)
    lab = (idx % len(DEMO_PHOTOS)).astype(np.int32) if labels else np.full(count, -1, np.int32)
    return Manifest("demo", source, [demo_location(i, size) for i in range(count)], lab,
                    list(DEMO_PHOTOS) if labels else [])


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    pil_fmt = _FORMATS.get(fmt.lower())
    if pil_fmt is None:
        raise ValueError(f"unknown image format {fmt!r}; use one of {', '.join(_FORMATS)}")
    buf = io.BytesIO()
    opts = {"quality": quality} if pil_fmt in ("JPEG", "WEBP") else {}
    img.save(buf, format=pil_fmt, **opts)
    return buf.getvalue()


def materialize_demo(out_dir: Path, count: int, *, size: int | tuple[int, int], fmt: str = "jpg",
                     quality: int = 90) -> list[Path]:
    """Write demo images ``0..count-1`` as ``out_dir/<photo name>/<i:06d>.<fmt>``; return their paths."""
    out_dir = Path(out_dir)
    paths = []
    for i in range(count):
        path = out_dir / DEMO_PHOTOS[demo_label(i)] / f"{i:06d}.{fmt.lower()}"
        atomic_write_bytes(path, _encode(demo_image(i, size), fmt, quality))
        paths.append(path)
    return paths
