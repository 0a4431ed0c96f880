"""load_image on real files: the edge-case corpus, exact conversions, geometry, fuzzing."""

from __future__ import annotations

import io
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from atlas.sources import (
    STATUS_MISSING,
    STATUS_NAMES,
    STATUS_OK,
    STATUS_TOO_LARGE,
    STATUS_TOO_SMALL,
    STATUS_UNREADABLE,
    BadInput,
    load_image,
)
from tests.image_corpus import CMYK_AS_RGB, CORPUS_LIMITS, encode, make_bad_corpus


def _status(path: str | Path, size: int = 64, **limits: int) -> int:
    try:
        load_image(str(path), size=size, **{**CORPUS_LIMITS, **limits})
    except BadInput as e:
        return e.status
    return STATUS_OK


def _load(path: str | Path, size: int = 64, **limits: int) -> np.ndarray:
    return load_image(str(path), size=size, **{**CORPUS_LIMITS, **limits})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    d = tmp_path_factory.mktemp("corpus")
    return d, make_bad_corpus(d)


def _save(path: Path, img: Image.Image, fmt: str = "PNG", **opts: object) -> Path:
    path.write_bytes(encode(img, fmt, **opts))
    return path


# --------------------------------------------------------------------------- corpus


def test_corpus_statuses_match_expectations(corpus):
    d, expected = corpus
    got = {name: _status(d / name) for name in expected}
    assert got == expected
    assert set(expected.values()) == {STATUS_OK, STATUS_UNREADABLE, STATUS_TOO_SMALL, STATUS_TOO_LARGE}


@pytest.mark.parametrize("size", [32, 224])
def test_every_usable_corpus_file_converts_to_size_size_3_uint8(corpus, size):
    d, expected = corpus
    for name in (n for n, s in expected.items() if s == STATUS_OK):
        a = _load(d / name, size)
        assert a.shape == (size, size, 3) and a.dtype == np.uint8, name
        assert a.flags.writeable and a.flags.c_contiguous, name


def test_reasons_are_readable_one_liners(corpus):
    d, expected = corpus
    reasons = {}
    for name, status in expected.items():
        if status != STATUS_OK:
            with pytest.raises(BadInput) as info:
                _load(d / name)
            assert info.value.status == status
            reasons[name] = info.value.reason
            assert reasons[name] and "\n" not in reasons[name]
            assert str(info.value).startswith(STATUS_NAMES[status] + ": ")
    assert reasons["truncated.jpg"].startswith("truncated JPEG: image file is truncated")
    assert reasons["zero_bytes.jpg"] == "empty file (0 bytes)"
    assert reasons["not_an_image.jpg"].startswith("not an image")
    assert reasons["bomb.png"].startswith("decompression bomb: 12000x12000")
    assert reasons["bomb_huge.png"].startswith("decompression bomb")
    assert "shorter side 8 < min_side 16" in reasons["tiny_8x8.png"]


def test_limits_are_the_callers(corpus):
    d, _ = corpus
    assert _status(d / "normal.jpg", max_pixels=640 * 480 - 1) == STATUS_TOO_LARGE
    assert _status(d / "normal.jpg", max_pixels=640 * 480) == STATUS_OK
    assert _status(d / "normal.jpg", min_side=481) == STATUS_TOO_SMALL
    assert _status(d / "tiny_8x8.png", min_side=8) == STATUS_OK
    assert _status(d / "huge_3000x2000.jpg", max_pixels=5_000_000) == STATUS_TOO_LARGE


def test_missing_folder_and_unreadable_paths(tmp_path):
    assert _status(tmp_path / "nope.jpg") == STATUS_MISSING
    assert _status(tmp_path) == STATUS_UNREADABLE
    assert _status("demo://64/x") == STATUS_UNREADABLE


def test_bad_input_pickles():
    e = pickle.loads(pickle.dumps(BadInput(STATUS_MISSING, "file not found: /x")))
    assert (e.status, e.reason) == (STATUS_MISSING, "file not found: /x")


# --------------------------------------------------------------------------- exact conversions


def test_16_bit_is_scaled_by_its_max_not_saturated(corpus):
    d, _ = corpus
    a = _load(d / "gray16.png", 96).astype(int)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    # the centre 96 columns of a 0..4000 ramp over 128 columns: ~500..3500 of a 4000 max
    assert 20 < a.min() < 45 and 210 < a.max() < 235
    assert (np.diff(a[48, :, 0]) >= 0).all()


def test_rgba_fully_transparent_becomes_white(corpus):
    d, _ = corpus
    a = _load(d / "rgba.png", 64).astype(int)
    assert (a[:, :31] == 255).all()
    assert np.abs(a[:, 33:] - [0, 0, 255]).max() == 0


def test_palette_transparency_and_la_over_white(corpus):
    d, _ = corpus
    p = _load(d / "palette_transparent.png", 64).astype(int)
    assert (p[:, :31] == 255).all() and (p[:, 33:] == [0, 128, 0]).all()
    q = _load(d / "palette.png", 64).astype(int)
    assert (q[:, :31] == [255, 0, 0]).all()
    la = _load(d / "la.png", 64).astype(int)
    assert (la[:31] == 255).all() and (la[33:] == 100).all()


def test_cmyk_solid_colour(corpus):
    d, _ = corpus
    a = _load(d / "cmyk.jpg", 32).astype(int)
    assert np.abs(a - CMYK_AS_RGB).max() <= 4


def test_high_bit_float_and_int(corpus):
    d, _ = corpus
    for name in ("float32.tif", "int32.tif"):
        a = _load(d / name, 50).astype(int)
        assert 0 < a.min() < a.max() < 255, name  # a ramp, neither black nor saturated


def test_animated_gif_first_frame(corpus):
    d, _ = corpus
    assert (_load(d / "animated.gif", 16) == [255, 0, 0]).all()


def test_exif_orientation_applied(corpus):
    d, _ = corpus
    a = _load(d / "exif_rotated.jpg", 64).astype(int)
    # stored 120x80 with the left third red; orientation 6 shows it 80x120 with the top third red
    assert np.abs(a[4, 32] - [255, 0, 0]).max() < 40
    assert np.abs(a[60, 32] - [0, 0, 255]).max() < 40
    with Image.open(d / "exif_rotated.jpg") as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB").resize((64, 64), box=(0, 20, 80, 100)))
    assert np.abs(a - ref.astype(int)).mean() < 3


@pytest.mark.parametrize("shape", [(300, 100), (100, 300), (257, 255)])
def test_center_crop_picks_the_centre(tmp_path, shape):
    w, h = shape
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = (0, 200, 0)
    s = min(w, h)
    x0, y0 = (w - s) // 2, (h - s) // 2
    a[y0:y0 + s, x0:x0 + s] = (200, 0, 0)  # the centred square is red
    r = s // 10
    a[h // 2 - r:h // 2 + r, w // 2 - r:w // 2 + r] = (0, 0, 255)  # a blue square at the very centre
    out = _load(_save(tmp_path / "c.png", Image.fromarray(a)), 40).astype(int)
    assert (out[1:-1, 1:-1, 1] < 60).all()  # no green: nothing outside the centred square
    blue = out[..., 2] > 128
    assert blue[18:22, 18:22].all() and blue.sum() <= 8 * 8 + 4 * 8
    ys, xs = np.nonzero(blue)
    assert abs(ys.mean() - 19.5) < 0.6 and abs(xs.mean() - 19.5) < 0.6


def test_upscales_small_images(tmp_path):
    out = _load(_save(tmp_path / "s.png", Image.new("RGB", (20, 30), (9, 99, 199))), 224)
    assert out.shape == (224, 224, 3) and (out == [9, 99, 199]).all()


def test_draft_decode_matches_a_full_decode(corpus):
    d, _ = corpus
    ours = _load(d / "huge_3000x2000.jpg", 224).astype(float)
    with Image.open(d / "huge_3000x2000.jpg") as im:
        ref = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR, box=(500, 0, 2500, 2000)))
    assert np.abs(ours - ref).mean() < 3


def test_tar_member_loads_the_same_pixels_as_the_file(tmp_path, corpus):
    d, _ = corpus
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tf:
        for name in ("normal.jpg", "rgba.png"):
            tf.add(d / name, arcname=f"x/{name}")
    with tarfile.open(shard) as tf:
        members = {m.name: m for m in tf}
    for name in ("normal.jpg", "rgba.png"):
        m = members[f"x/{name}"]
        loc = f"tar://{shard}#{m.offset_data}:{m.size}:{m.name}"
        np.testing.assert_array_equal(_load(loc, 96), _load(d / name, 96))
    m = members["x/normal.jpg"]
    assert _status(f"tar://{tmp_path / 'gone.tar'}#{m.offset_data}:{m.size}:x") == STATUS_MISSING
    assert _status(f"tar://{shard}#{shard.stat().st_size - 10}:{m.size}:x") == STATUS_UNREADABLE


# --------------------------------------------------------------------------- properties

_MODES = {
    "RGB": ("PNG", "JPEG", "WEBP", "BMP", "TIFF"),
    "L": ("PNG", "JPEG", "TIFF", "GIF"),
    "RGBA": ("PNG", "WEBP", "TIFF"),
    "LA": ("PNG",),
    "P": ("PNG", "GIF", "BMP"),
    "1": ("PNG", "BMP", "TIFF"),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "F": ("TIFF",),
}


def _synthetic(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "F":
        return Image.fromarray(rng.normal(0, 100, (h, w)).astype(np.float32))
    bands = len(Image.new(mode, (1, 1)).getbands())
    if mode == "I;16":
        return Image.frombytes(mode, (w, h), rng.integers(0, 65535, (h, w), dtype=np.uint16).astype("<u2").tobytes())
    img = Image.frombytes("L" if bands == 1 else {"LA": "LA", "RGB": "RGB", "RGBA": "RGBA", "CMYK": "CMYK"}[mode],
                          (w, h), rng.integers(0, 256, (h, w, bands), dtype=np.uint8).tobytes())
    return img.convert(mode) if mode in ("P", "1") else img


@st.composite
def _images(draw: st.DrawFn) -> tuple[bytes, str]:
    mode = draw(st.sampled_from(sorted(_MODES)))
    fmt = draw(st.sampled_from(_MODES[mode]))
    w, h = draw(st.integers(1, 90)), draw(st.integers(1, 90))
    img = _synthetic(mode, w, h, draw(st.integers(0, 2**16)))
    return encode(img, fmt), f"{mode}/{fmt}/{w}x{h}"


def _check(path: Path, size: int) -> None:
    try:
        a = load_image(str(path), size=size, max_pixels=5000, min_side=4)
    except BadInput as e:
        assert e.status in (STATUS_UNREADABLE, STATUS_TOO_SMALL, STATUS_TOO_LARGE), e
        assert isinstance(e.reason, str) and e.reason
        return
    assert a.shape == (size, size, 3) and a.dtype == np.uint8


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_images(), st.sampled_from([1, 7, 32]))
def test_any_synthetic_image_gives_an_array_or_bad_input(tmp_path_factory, image, size):
    data, _ = image
    path = tmp_path_factory.getbasetemp() / "prop.img"
    path.write_bytes(data)
    _check(path, size)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_images(), st.integers(0, 2**32 - 1), st.sampled_from(["flip", "cut", "splice"]))
def test_corrupted_bytes_give_an_array_or_bad_input(tmp_path_factory, image, seed, how):
    data, _ = image
    rnd = random.Random(seed)
    buf = bytearray(data)
    if how == "flip":
        for _ in range(rnd.randint(1, 8)):
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
    elif how == "cut":
        del buf[rnd.randrange(len(buf)):]
    else:
        at = rnd.randrange(len(buf))
        buf[at:at] = rnd.randbytes(rnd.randint(1, 64))
    path = tmp_path_factory.getbasetemp() / "fuzz.img"
    path.write_bytes(bytes(buf))
    _check(path, 16)


def test_garbage_and_random_bytes(tmp_path):
    rnd = random.Random(0)
    for k in range(50):
        p = tmp_path / f"g{k}.jpg"
        p.write_bytes(rnd.randbytes(rnd.randint(1, 2000)))
        assert _status(p) == STATUS_UNREADABLE
    p = tmp_path / "jpeg_header_only.jpg"
    p.write_bytes(io.BytesIO(encode(Image.new("RGB", (64, 64)), "JPEG")).getvalue()[:200])
    assert _status(p) == STATUS_UNREADABLE
