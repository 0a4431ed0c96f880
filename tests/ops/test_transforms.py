"""Batched random transforms: exact values on tiny tensors, per-image draws, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.ops.transforms import (
    STANDARD_ANGLES,
    STANDARD_SCALES,
    TRANSFORM_SETS,
    compose,
    icon_transforms,
    jitter,
    jitter_offsets,
    named_transforms,
    pad,
    random_rotate,
    random_scale,
    random_translate,
    standard_transforms,
    to_device,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=_gen(seed))


def test_pad_constant_and_reflect():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 3, 2, 4).contiguous()
    out = pad(2, mode="constant", value=0.5)(x, _gen())
    assert out.shape == (1, 3, 6, 8)
    assert torch.equal(out[:, :, 2:4, 2:6], x)
    border = torch.ones(6, 8, dtype=torch.bool)
    border[2:4, 2:6] = False
    assert (out[:, :, border] == 0.5).all()
    refl = pad(1, mode="reflect")(x, _gen())
    assert refl[0, 0, 1].tolist() == [1.0, 0.0, 1.0, 2.0, 3.0, 2.0]
    assert torch.equal(refl[:, :, 0], refl[:, :, 2])  # rows reflect too
    assert pad(0)(x, _gen()) is x
    with pytest.raises(ValueError, match="pad mode"):
        pad(1, mode="wrap")


def test_jitter_is_an_exact_integer_crop_per_image():
    x = _images(16, 10, 12)
    out = jitter(3)(x, _gen(5))
    assert out.shape == (16, 3, 7, 9)
    off = jitter_offsets(16, 3, _gen(5))
    assert off.min() >= 0 and off.max() <= 3
    for b, (dy, dx) in enumerate(off.tolist()):
        assert torch.equal(out[b], x[b, :, dy:dy + 7, dx:dx + 9])
    assert len({tuple(o) for o in off.tolist()}) > 1  # each image its own shift
    assert jitter(0)(x, _gen()) is x


def test_rotate_by_zero_and_scale_by_one_are_identities():
    x = _images(4, 9, 9)
    torch.testing.assert_close(random_rotate([0.0])(x, _gen()), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(random_scale([1.0])(x, _gen()), x, atol=1e-6, rtol=0)


def test_rotate_by_90_degrees_is_rot90():
    x = _images(2, 6, 6)
    torch.testing.assert_close(random_rotate([90.0])(x, _gen()), torch.rot90(x, 1, dims=(2, 3)),
                               atol=1e-5, rtol=0)


def test_scale_two_zooms_about_the_centre():
    w = 8
    ramp = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(1, 3, w, w).contiguous()
    out = random_scale([2.0])(ramp, _gen())
    centre = (w - 1) / 2
    want = centre + (torch.arange(w, dtype=torch.float32) - centre) / 2
    torch.testing.assert_close(out[0, 0, 3], want, atol=1e-5, rtol=0)
    assert torch.allclose(random_scale([0.5, 2.0])(torch.full((3, 3, 5, 5), 0.25), _gen()), torch.tensor(0.25))


def test_each_image_gets_its_own_draw_and_draws_are_seeded():
    x = _images(1, 16, 16).expand(8, 3, 16, 16).contiguous()
    for t in (random_rotate(STANDARD_ANGLES), random_scale(STANDARD_SCALES), jitter(4)):
        out = t(x, _gen(1))
        assert len({out[b].sum().item() for b in range(8)}) > 1
        assert torch.equal(out, t(x, _gen(1)))


def test_standard_transforms_shapes_and_gradients():
    ts = standard_transforms()
    assert len(ts) == 5
    x = _images(3, 32, 32).requires_grad_(True)
    out = compose(ts)(x, _gen())
    assert out.shape == (3, 3, 32 + 24 - 8 - 4, 32 + 24 - 8 - 4)
    out.sum().backward()
    assert x.grad is not None and (x.grad.abs().sum(dim=(1, 2, 3)) > 0).all()
    assert STANDARD_SCALES == tuple(1 + (i - 5) / 50 for i in range(11)) and STANDARD_ANGLES[0] == -10
    np.testing.assert_array_equal(compose(ts)(x, _gen(2)).detach(), compose(ts)(x, _gen(2)).detach())


def test_compose_applies_in_order():
    x = _images(1, 4, 4)
    out = compose([pad(1, mode="constant", value=0.0), pad(1, mode="constant", value=1.0)])(x, _gen())
    assert out.shape == (1, 3, 8, 8) and out[0, 0, 0, 0] == 1.0 and out[0, 0, 1, 1] == 0.0


def test_random_translate_keeps_the_size_and_shifts_exactly():
    x = _images(6, 10, 12)
    out = random_translate(2, mode="constant", value=0.5)(x, _gen(3))
    assert out.shape == x.shape
    padded = pad(2, mode="constant", value=0.5)(x, _gen())
    off = jitter_offsets(6, 4, _gen(3))  # the draws random_translate makes: jitter by 2d
    for b, (dy, dx) in enumerate(off.tolist()):
        assert torch.equal(out[b], padded[b, :, dy:dy + 10, dx:dx + 12])
    assert random_translate(0)(x, _gen()) is x


def test_icon_transforms_keep_the_icon_size_and_scale_with_it():
    for size in (24, 48, 80):
        x = _images(3, size, size).requires_grad_(True)
        out = compose(icon_transforms(size))(x, _gen())
        assert out.shape == x.shape
        out.sum().backward()
        assert x.grad is not None and (x.grad.abs().sum(dim=(1, 2, 3)) > 0).all()
    # the shift is round(size / 16) pixels at most: at 48 px, 3 (reflect padding)
    x = _images(1, 48, 48).expand(64, 3, 48, 48).contiguous()
    shifted = icon_transforms(48, scales=[1.0], angles_deg=[0.0])[0](x, _gen(1))
    ref = pad(3, mode="reflect")(x, _gen())
    found = set()
    for b in range(64):
        hits = [(dy, dx) for dy in range(7) for dx in range(7) if torch.equal(shifted[b], ref[b, :, dy:dy + 48, dx:dx + 48])]
        assert hits
        found.add(hits[0])
    assert len(found) > 10


def test_named_transforms():
    x = _images(2, 32, 32)
    assert named_transforms("none", 32)(x, _gen()) is x
    assert named_transforms("icon", 32)(x, _gen()).shape == x.shape
    assert named_transforms("standard", 32)(x, _gen()).shape == (2, 3, 44, 44)
    torch.testing.assert_close(named_transforms("standard", 32)(x, _gen(4)), compose(standard_transforms())(x, _gen(4)))
    assert TRANSFORM_SETS == ("standard", "icon", "none")
    with pytest.raises(ValueError, match="transforms must be one of"):
        named_transforms("lucid", 32)


def test_to_device_keeps_the_draw_and_leaves_cpu_tensors_alone():
    draw = jitter_offsets(5, 4, _gen(3))
    same = to_device(draw, torch.device("cpu"))
    assert same.dtype == draw.dtype and torch.equal(same, draw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transforms_on_cuda_draw_what_the_cpu_draws_without_blocking_copies():
    """The CUDA path copies each draw from pinned memory without blocking; the values, and so the
    transformed images, are those of the CPU (the draws come from the same CPU generator)."""
    draw = jitter_offsets(7, 6, _gen(1))
    moved = to_device(draw, torch.device("cuda"))
    assert moved.is_cuda and torch.equal(moved.cpu(), draw)
    images = _images(4, 40, 40)
    t = compose(standard_transforms())
    cpu = t(images, _gen(9))
    gpu = t(images.cuda(), _gen(9))
    assert gpu.shape == cpu.shape
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
