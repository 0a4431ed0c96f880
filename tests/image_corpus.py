"""A corpus of edge-case image files, for the decoder's tests and the pipeline's bad-input tests.

``make_bad_corpus(dir)`` writes the files and returns ``{file name: expected status}``
for ``load_image`` called with the ``images`` defaults (:data:`CORPUS_LIMITS`:
``max_pixels=89_478_485``, ``min_side=16``). Every file exists (no "missing" entry).

Known contents, for exact checks:

* ``cmyk.jpg``: solid CMYK (0, 102, 204, 0), i.e. RGB (255, 153, 51), 64x48.
* ``gray16.png``: 16-bit grey (mode I;16), 128x96, a horizontal ramp 0..4000.
* ``rgba.png``: 128x128, left half fully transparent red, right half opaque blue.
* ``palette_transparent.png``: 64x64 palette image, left half the transparent index.
* ``la.png``: 64x64 LA, top half fully transparent black, bottom half opaque grey 100.
* ``exif_rotated.jpg``: stored 120x80 (left third red, rest blue) with EXIF orientation 6.
* ``bomb.png`` / ``bomb_huge.png``: valid 1-bit PNGs of 12000x12000 / 20000x20000 pixels
  (a few tens of KB each), over PIL's warning / error thresholds.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from atlas.sources import STATUS_OK, STATUS_TOO_LARGE, STATUS_TOO_SMALL, STATUS_UNREADABLE

__all__ = ["CORPUS_LIMITS", "CMYK_VALUE", "CMYK_AS_RGB", "make_bad_corpus", "png_bomb", "encode"]

CORPUS_LIMITS: dict[str, int] = {"max_pixels": 89_478_485, "min_side": 16}
CMYK_VALUE = (0, 102, 204, 0)
CMYK_AS_RGB = (255, 153, 51)


def encode(img: Image.Image, fmt: str, **opts: object) -> bytes:
    """``img`` saved to bytes in PIL format ``fmt``."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **opts)
    return buf.getvalue()


def _noise_rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: compresses like a photo, decodes to known sizes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 255 // max(w + h - 2, 1)], -1)
    noisy = base + rng.integers(-20, 21, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _large_rgb(w: int, h: int) -> Image.Image:
    """A large photo-like image, made quickly by enlarging a small noisy one."""
    return _noise_rgb(w // 8, h // 8, seed=2).resize((w, h), Image.Resampling.BILINEAR)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=4)
def png_bomb(side: int) -> bytes:
    """A valid all-black 1-bit PNG of ``side`` x ``side`` pixels, built without allocating the image."""
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _rgba() -> bytes:
    a = np.zeros((128, 128, 4), np.uint8)
    a[:, :64] = (255, 0, 0, 0)
    a[:, 64:] = (0, 0, 255, 255)
    return encode(Image.fromarray(a), "PNG")


def _palette(transparent: bool) -> bytes:
    idx = np.zeros((64, 64), np.uint8)
    idx[:, 32:] = 1
    img = Image.frombytes("P", (64, 64), idx.tobytes())
    img.putpalette([255, 0, 0, 0, 128, 0] + [0] * (254 * 3))
    return encode(img, "PNG", **({"transparency": 0} if transparent else {}))


def _la() -> bytes:
    a = np.zeros((64, 64, 2), np.uint8)
    a[32:] = (100, 255)
    return encode(Image.frombytes("LA", (64, 64), a.tobytes()), "PNG")


def _gray16() -> bytes:
    ramp = np.tile(np.linspace(0, 4000, 128).astype(np.uint16), (96, 1))
    return encode(Image.frombytes("I;16", (128, 96), ramp.astype("<u2").tobytes()), "PNG")


def _exif_rotated() -> bytes:
    a = np.zeros((80, 120, 3), np.uint8)
    a[:, :40] = (255, 0, 0)
    a[:, 40:] = (0, 0, 255)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [Image.new("P", (64, 64), color=c) for c in (1, 2, 3)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (252 * 3))
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _truncated(fmt: str) -> bytes:
    data = encode(_noise_rgb(256, 256, seed=1), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return data[: len(data) // 2]


def _high_bit(mode: str) -> bytes:
    dtype = np.float32 if mode == "F" else np.int32
    ramp = np.tile(np.linspace(-10, 70000, 100).astype(dtype), (50, 1))
    img = Image.fromarray(ramp)
    assert img.mode == mode, img.mode
    return encode(img, "TIFF")


_FILES: dict[str, tuple[Callable[[], bytes], int]] = {
    "zero_bytes.jpg": (lambda: b"", STATUS_UNREADABLE),
    "truncated.jpg": (lambda: _truncated("JPEG"), STATUS_UNREADABLE),
    "truncated.png": (lambda: _truncated("PNG"), STATUS_UNREADABLE),
    "not_an_image.jpg": (lambda: b"this is a text file, not a JPEG\n" * 20, STATUS_UNREADABLE),
    "garbage_after_png_signature.png": (lambda: b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, STATUS_UNREADABLE),
    "bomb.png": (lambda: png_bomb(12_000), STATUS_TOO_LARGE),
    "bomb_huge.png": (lambda: png_bomb(20_000), STATUS_TOO_LARGE),
    "one_pixel.png": (lambda: encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), STATUS_TOO_SMALL),
    "tiny_8x8.png": (lambda: encode(_noise_rgb(8, 8), "PNG"), STATUS_TOO_SMALL),
    "cmyk.jpg": (lambda: encode(Image.new("CMYK", (64, 48), CMYK_VALUE), "JPEG", quality=95), STATUS_OK),
    "gray16.png": (_gray16, STATUS_OK),
    "palette.png": (lambda: _palette(False), STATUS_OK),
    "palette_transparent.png": (lambda: _palette(True), STATUS_OK),
    "rgba.png": (_rgba, STATUS_OK),
    "la.png": (_la, STATUS_OK),
    "gray.jpg": (lambda: encode(_noise_rgb(100, 80).convert("L"), "JPEG"), STATUS_OK),
    "bilevel.png": (lambda: encode(_noise_rgb(64, 64).convert("1"), "PNG"), STATUS_OK),
    "float32.tif": (lambda: _high_bit("F"), STATUS_OK),
    "int32.tif": (lambda: _high_bit("I"), STATUS_OK),
    "animated.gif": (_animated_gif, STATUS_OK),
    "exif_rotated.jpg": (_exif_rotated, STATUS_OK),
    "progressive.jpg": (lambda: encode(_noise_rgb(300, 200), "JPEG", progressive=True), STATUS_OK),
    "image.webp": (lambda: encode(_noise_rgb(160, 120), "WEBP", quality=80), STATUS_OK),
    "huge_3000x2000.jpg": (lambda: encode(_large_rgb(3000, 2000), "JPEG", quality=85), STATUS_OK),
    "normal.jpg": (lambda: encode(_noise_rgb(640, 480), "JPEG", quality=90), STATUS_OK),
}


def make_bad_corpus(dir: Path) -> dict[str, int]:
    """Write the edge-case corpus into ``dir`` (created if needed); return {file name: expected status}."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    for name, (make, _) in _FILES.items():
        (dir / name).write_bytes(make())
    return {name: status for name, (_, status) in _FILES.items()}
