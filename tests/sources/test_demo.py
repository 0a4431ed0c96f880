"""The embedded demo set: determinism, distinctness, balance, speed, materialised files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas.config import ImagesConfig
from atlas.sources import DEMO_PHOTOS, demo_image, load_image, materialize_demo, scan_source

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"max_pixels": 89_478_485, "min_side": 16}


def _digest(i: int, size: int = 64) -> str:
    return hashlib.sha256(np.asarray(demo_image(i, size)).tobytes()).hexdigest()


def test_demo_manifest_locations_and_balanced_labels():
    m = scan_source(ImagesConfig(path="demo", demo_count=100, demo_size=96))
    assert m.kind == "demo" and len(m) == 100
    assert m.locations[:3] == ["demo://96/0", "demo://96/1", "demo://96/2"]
    assert m.label_names == list(DEMO_PHOTOS) and 15 <= len(DEMO_PHOTOS) <= 20
    assert m.labels.tolist() == [i % len(DEMO_PHOTOS) for i in range(100)]
    counts = Counter(m.labels.tolist())
    assert len(counts) == len(DEMO_PHOTOS) and max(counts.values()) - min(counts.values()) <= 1
    assert scan_source(ImagesConfig(kind="demo", path="ignored", demo_count=100, limit=7)).locations == \
        [f"demo://320/{i}" for i in range(7)]
    assert scan_source(ImagesConfig(demo_count=5, labels="none")).labels.tolist() == [-1] * 5


# A fresh interpreter computing digests of demo images 7 and 3 first. It registers the
# `atlas` package without running atlas/__init__.py (which imports torch): only the demo
# generator is under test, and this keeps the subprocess under a second or two.
_FRESH = f"""
import hashlib, sys, types
import numpy as np
pkg = types.ModuleType("atlas")
pkg.__path__ = [{str(ROOT / "atlas")!r}]
sys.modules["atlas"] = pkg
from atlas.sources import demo_image
print(*(hashlib.sha256(np.asarray(demo_image(i, 64)).tobytes()).hexdigest() for i in (7, 3)))
"""


def test_same_index_same_image_in_any_order_and_process():
    later = [_digest(i) for i in (7, 3, 7)]
    assert later[0] == later[2]
    first = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, cwd=ROOT,
                           check=True).stdout.split()
    assert first == later[:2]


def test_load_image_of_a_demo_location_is_deterministic_and_sized():
    a = load_image("demo://96/5", size=64, **LIMITS)
    b = load_image("demo://96/5", size=64, **LIMITS)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(load_image("demo://96/5", size=96, **LIMITS), np.asarray(demo_image(5, 96)))


def test_distinct_indices_give_distinct_images():
    n = 3 * len(DEMO_PHOTOS) + 5
    digests = {_digest(i, 32) for i in range(n)}
    assert len(digests) == n


def test_images_are_crops_of_their_photo_not_blank():
    for i in range(len(DEMO_PHOTOS)):
        a = np.asarray(demo_image(i, 64)).astype(float)
        assert a.std() > 3, DEMO_PHOTOS[i]


def test_generation_is_fast():
    demo_image(0, 320)
    for i in range(len(DEMO_PHOTOS)):  # warm the per-process photo cache
        demo_image(i, 32)
    t = time.perf_counter()
    for i in range(100):
        demo_image(i, 320)
    per_image = (time.perf_counter() - t) / 100
    assert per_image < 0.02  # ~2 ms on a laptop core; generous for slow CI machines


def test_rectangular_sizes():
    img = demo_image(3, (160, 90))
    assert img.size == (160, 90) and img.mode == "RGB"


def test_materialize_demo_writes_a_labelled_folder(tmp_path):
    paths = materialize_demo(tmp_path / "d", 20, size=(80, 60), fmt="jpg", quality=85)
    assert len(paths) == 20 and all(p.is_file() for p in paths)
    assert paths[0] == tmp_path / "d" / DEMO_PHOTOS[0] / "000000.jpg"
    assert paths[17] == tmp_path / "d" / DEMO_PHOTOS[17 % len(DEMO_PHOTOS)] / "000017.jpg"
    with Image.open(paths[3]) as im:
        assert im.size == (80, 60) and im.format == "JPEG"
    m = scan_source(ImagesConfig(path=str(tmp_path / "d")))
    assert m.kind == "folder" and len(m) == 20
    assert m.label_names == sorted(DEMO_PHOTOS)
    assert sorted(m.locations) == sorted(str(p) for p in paths)
    png = materialize_demo(tmp_path / "p", 2, size=48, fmt="png")
    np.testing.assert_array_equal(np.asarray(Image.open(png[1])), np.asarray(demo_image(1, 48)))
    with pytest.raises(ValueError, match="unknown image format"):
        materialize_demo(tmp_path / "x", 1, size=8, fmt="heic")
