"""``load_image``: the robust decoder, from any location to a ``uint8 [size, size, 3]`` RGB array.

Steps: read the bytes (file or tar member) or generate the image (demo); open with
PIL (header only); reject by pixel count and shorter side before any pixel is
decoded; let JPEGs decode at a reduced DCT scale (``draft``) that still covers the
output; convert every mode to RGB (alpha composited over white, 16/32-bit and float
scaled by the image's maximum); resize the centred square to ``size`` in one bilinear
pass; apply the EXIF orientation. Every way a bad file can fail becomes a
:class:`BadInput` with a status code and a one-line reason.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._demo import demo_image, parse_demo_location
from ._errors import STATUS_MISSING, STATUS_TOO_LARGE, STATUS_TOO_SMALL, STATUS_UNREADABLE, BadInput, SourceError
from ._hf import read_hf_image
from ._tar import read_tar_member

__all__ = ["load_image"]

_REDUCING_GAP = 3.0
_HIGH_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "I;32", "F"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


# --------------------------------------------------------------------------- reading


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise BadInput(STATUS_MISSING, f"file not found: {path}") from None
    except IsADirectoryError:
        raise BadInput(STATUS_UNREADABLE, f"is a folder, not an image file: {path}") from None
    except OSError as e:
        raise BadInput(STATUS_UNREADABLE, f"cannot read {path}: {_one_line(e.strerror or e)}") from None


def _open_bytes(data: bytes) -> Image.Image:
    if not data:
        raise BadInput(STATUS_UNREADABLE, "empty file (0 bytes)")
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadInput(STATUS_UNREADABLE, f"not an image: no image format recognises these {len(data)} bytes "
                                          f"(they start {data[:8]!r})") from None


def _open(location: str) -> Image.Image:
    if location.startswith("demo://"):
        demo_size, i = parse_demo_location(location)
        return demo_image(i, demo_size)
    if location.startswith("tar://"):
        data = read_tar_member(location)
    elif location.startswith("hf://"):
        data = read_hf_image(location)
    else:
        data = _read_file(location)
    return _open_bytes(data)


# --------------------------------------------------------------------------- checks


def _check_size(img: Image.Image, max_pixels: int, min_side: int) -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise BadInput(STATUS_TOO_LARGE, f"decompression bomb: {w}x{h} = {w * h} pixels > max_pixels "
                                         f"{max_pixels} (images.max_pixels)")
    if min(w, h) < min_side:
        raise BadInput(STATUS_TOO_SMALL, f"{w}x{h} image: shorter side {min(w, h)} < min_side {min_side} "
                                         "(images.min_side)")


def _decode(img: Image.Image, size: int) -> None:
    """Decode the pixels; JPEGs at the smallest DCT scale whose shorter side is still >= size."""
    w, h = img.size
    short = min(w, h)
    img.draft("RGB", (max(1, math.ceil(w * size / short)), max(1, math.ceil(h * size / short))))
    try:
        img.load()
    except OSError as e:
        what = "truncated" if "truncated" in str(e) else "corrupt"
        raise BadInput(STATUS_UNREADABLE, f"{what} {img.format or 'image'}: {_one_line(e)}") from None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block must not cost the image
        return 1


# --------------------------------------------------------------------------- modes


def _scale_to_l(img: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images -> 8-bit L, scaled so that the image's maximum is 255."""
    a = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(a.max()) if a.size else 0.0
    scaled = a * (255.0 / top) if top > 0 else np.zeros_like(a)
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))


def _over_white(img: Image.Image) -> Image.Image:
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _has_alpha_palette(img: Image.Image) -> bool:
    return "transparency" in img.info or getattr(img.palette, "mode", "") == "RGBA"


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    """The image in mode RGB or L (L is resized first and expanded to RGB at the end)."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode in _HIGH_BIT_MODES:
        return _scale_to_l(img)
    if mode == "1":
        return img.convert("L")
    if mode == "P":
        return _over_white(img) if _has_alpha_palette(img) else img.convert("RGB")
    if mode in _ALPHA_MODES:
        return _over_white(img)
    return img.convert("RGB")  # CMYK, YCbCr, HSV, ...


# --------------------------------------------------------------------------- geometry


def _center_square(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` and crop the centre, in one resampling pass."""
    w, h = img.size
    s = min(w, h)
    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    return img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=_REDUCING_GAP)


def _to_array(img: Image.Image, size: int, orientation: int) -> np.ndarray:
    out = _center_square(_to_rgb_or_l(img), size)
    if orientation in _TRANSPOSE:  # the centred square commutes with the EXIF rotations and flips
        out = out.transpose(_TRANSPOSE[orientation])
    if out.mode != "RGB":
        out = out.convert("RGB")
    arr = np.array(out, dtype=np.uint8)
    if arr.shape != (size, size, 3):  # pragma: no cover - defensive
        raise BadInput(STATUS_UNREADABLE, f"decoded to an unexpected shape {arr.shape}")
    return arr


def _load(location: str, size: int, max_pixels: int, min_side: int) -> np.ndarray:
    img = _open(location)
    _check_size(img, max_pixels, min_side)
    _decode(img, size)
    return _to_array(img, size, _orientation(img))


def load_image(location: str, *, size: int, max_pixels: int, min_side: int) -> np.ndarray:
    """Decode ``location`` (path, ``tar://``, ``hf://`` or ``demo://``) to ``uint8 [size, size, 3]`` RGB.

    Raises :class:`BadInput` (status + reason) for any file that cannot be used, and
    nothing else for a bad file (a SourceError when this machine cannot read the source's kind).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    try:
        with warnings.catch_warnings():  # PIL's warnings about corrupt data and pixel counts: we decide
            warnings.simplefilter("ignore")
            return _load(location, size, max_pixels, min_side)
    except (BadInput, SourceError):  # a bad image; or this machine cannot read the source at all (pyarrow missing)
        raise
    except Image.DecompressionBombError as e:
        raise BadInput(STATUS_TOO_LARGE, f"decompression bomb: {_one_line(e)}") from None
    except Exception as e:  # whatever else a malformed file provokes inside PIL
        raise BadInput(STATUS_UNREADABLE, f"cannot decode: {type(e).__name__}: {_one_line(e)}") from None
