"""Lucid's spectral, colour-decorrelated image parameterisation: exact values on tiny images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from atlas.ops.param import (
    COLOR_CORRELATION_SVD_SQRT,
    color_matrix,
    decorrelate_color,
    fft_image,
    fft_spectrum_of,
    logit_pixels,
    maco_image,
    pyramid_image,
    recorrelate_color,
    rfft2d_freqs,
    spectrum_magnitude,
    spectrum_scale,
    upsample_spectrum,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_dtypes_and_range():
    for h, w in ((8, 8), (7, 9), (5, 4)):
        params, image_fn = fft_image(3, h, w, generator=_gen())
        assert len(params) == 1 and params[0].shape == (3, 3, h, w // 2 + 1, 2)
        assert params[0].requires_grad and params[0].is_leaf
        img = image_fn()
        assert img.shape == (3, 3, h, w) and img.dtype == torch.float32
        assert 0.0 < img.min() and img.max() < 1.0


def test_zero_parameters_give_uniform_grey():
    params, image_fn = fft_image(2, 6, 5, generator=_gen())
    with torch.no_grad():
        params[0].zero_()
    assert torch.equal(image_fn(), torch.full((2, 3, 6, 5), 0.5))


def test_color_matrix_is_lucids_normalised_by_max_column_norm():
    c = np.array(COLOR_CORRELATION_SVD_SQRT)
    assert c.tolist() == [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
    want = c / np.linalg.norm(c, axis=0).max()
    np.testing.assert_allclose(color_matrix(torch.float64).numpy(), want, rtol=1e-12)
    assert color_matrix().norm(dim=0).max().item() == pytest.approx(1.0, abs=1e-6)
    # out_i = sum_j M_ij t_j (Lucid: t_flat @ M^T)
    t = torch.tensor([1.0, 2.0, -1.0]).view(1, 3, 1, 1)
    np.testing.assert_allclose(decorrelate_color(t).view(3).numpy(), want @ [1.0, 2.0, -1.0], rtol=1e-6)


def test_frequencies_and_scale():
    f = rfft2d_freqs(4, 6)
    assert f.shape == (4, 4)
    assert f[0, 0] == 0 and f[0, 1] == pytest.approx(1 / 6) and f[1, 0] == pytest.approx(1 / 4)
    assert f[2, 3] == pytest.approx(math.hypot(0.5, 0.5))  # Nyquist in both directions
    s = spectrum_scale(4, 6, 1.0)
    assert s[0, 0] == pytest.approx(6.0)  # DC clamped at 1 / max(h, w)
    assert s[0, 1] == pytest.approx(6.0) and s[1, 0] == pytest.approx(4.0)
    assert spectrum_scale(4, 6, 2.0)[1, 0] == pytest.approx(16.0)
    assert torch.equal(spectrum_scale(4, 6, 0.0), torch.ones(4, 4))


def test_single_frequency_gives_a_cosine_grating():
    h, w, a = 4, 8, 0.3
    params, image_fn = fft_image(1, h, w, generator=_gen())
    with torch.no_grad():
        params[0].zero_()
        params[0][0, 1, 0, 1, 0] = a  # green channel, fy = 0, fx = 1 / w, real part
    scale = spectrum_scale(h, w, 1.0)[0, 1].item()
    x = torch.arange(w, dtype=torch.float64)
    # orthonormal irfft2: the bin and its Hermitian twin give 2 a s cos(2 pi x / w) / sqrt(h w); Lucid divides by 4
    grating = (2 * a * scale * torch.cos(2 * math.pi * x / w) / math.sqrt(h * w) / 4).expand(h, w)
    m = color_matrix(torch.float64)
    want = torch.sigmoid(torch.stack([m[i, 1] * grating for i in range(3)]))
    np.testing.assert_allclose(image_fn()[0].detach().double().numpy(), want.numpy(), atol=1e-6)


def test_dc_component_is_a_flat_colour():
    h, w, a = 5, 5, -1.0
    params, image_fn = fft_image(1, h, w, generator=_gen())
    with torch.no_grad():
        params[0].zero_()
        params[0][0, 0, 0, 0, 0] = a
    level = a * 5 / math.sqrt(25) / 4  # scale at DC = max(h, w)
    want = torch.sigmoid(color_matrix(torch.float64)[:, 0] * level)
    img = image_fn()[0]
    for i in range(3):
        np.testing.assert_allclose(img[i].detach().double().numpy(), np.full((h, w), want[i].item()), atol=1e-6)


def test_seeded_draws_are_reproducible_and_sd_scaled():
    p1, f1 = fft_image(2, 16, 16, sd=0.05, generator=_gen(3))
    p2, f2 = fft_image(2, 16, 16, sd=0.05, generator=_gen(3))
    p3, _ = fft_image(2, 16, 16, sd=0.05, generator=_gen(4))
    assert torch.equal(p1[0], p2[0]) and torch.equal(f1(), f2())
    assert not torch.equal(p1[0], p3[0])
    assert p1[0].std().item() == pytest.approx(0.05, rel=0.1)


def test_image_is_differentiable_in_the_spectrum():
    params, image_fn = fft_image(2, 8, 8, generator=_gen())
    image_fn()[0].sum().backward()
    g = params[0].grad
    assert g is not None and g[0].abs().sum() > 0 and g[1].abs().sum() == 0  # images are independent


# --------------------------------------------------------------------------- starting from pictures


def test_recorrelate_inverts_decorrelate_and_logit_inverts_sigmoid():
    t = torch.randn(2, 3, 4, 5, generator=_gen(), dtype=torch.float64)
    torch.testing.assert_close(recorrelate_color(decorrelate_color(t)), t)
    x = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, 1, 1, 4).expand(1, 3, 1, 4)
    got = logit_pixels(x)
    assert got[0, 0, 0, 1] == 0 and got[0, 0, 0, 3] == pytest.approx(math.log(1 / 3))
    assert got[0, 0, 0, 0] == pytest.approx(math.log((1 / 255) / (254 / 255)), rel=1e-5)  # clamped


def test_fft_image_from_init_reproduces_the_picture():
    imgs = torch.rand(2, 3, 9, 10, generator=_gen(1)) * 0.9 + 0.05
    for decay in (1.0, 1.5):
        params, image_fn = fft_image(2, 9, 10, decay_power=decay, generator=_gen(), init=imgs)
        assert params[0].is_leaf and params[0].requires_grad and params[0].shape == (2, 3, 9, 6, 2)
        torch.testing.assert_close(image_fn(), imgs, atol=2e-6, rtol=0)
        torch.testing.assert_close(fft_spectrum_of(imgs, decay), params[0].detach())
    with pytest.raises(ValueError, match="init images must be"):
        fft_image(2, 9, 9, generator=_gen(), init=imgs)


@pytest.mark.parametrize(("h", "big", "decay"), [(8, 16, 1.0), (7, 14, 1.0), (6, 18, 1.5), (8, 24, 0.5)])
def test_upsampled_spectrum_is_the_same_picture_on_the_coarse_pixels(h, big, decay):
    params, small_fn = fft_image(3, h, h, decay_power=decay, sd=0.3, generator=_gen(2))
    up, big_fn = upsample_spectrum(params[0], (h, h), big, big, decay_power=decay)
    assert up[0].is_leaf and up[0].requires_grad and up[0].shape == (3, 3, big, big // 2 + 1, 2)
    r = big // h
    small, large = logit_pixels(small_fn()).detach(), logit_pixels(big_fn()).detach()
    torch.testing.assert_close(large[:, :, ::r, ::r], small, atol=2e-5, rtol=0)
    assert large.std() == pytest.approx(small.std().item(), rel=0.2)  # band-limited: no new detail


def test_upsample_spectrum_same_size_and_unit_decay_keep_the_parameters():
    params, _ = fft_image(1, 8, 8, sd=0.3, generator=_gen())
    same, _ = upsample_spectrum(params[0], (8, 8), 8, 8)
    torch.testing.assert_close(same[0], params[0].detach())
    up, _ = upsample_spectrum(params[0], (8, 8), 16, 16, decay_power=1.0)
    # with 1/f scaling the parameters of the low bins are unchanged (coefficient and scale both grow 2x)
    torch.testing.assert_close(up[0][:, :, 1:4, :4], params[0].detach()[:, :, 1:4, :4])
    with pytest.raises(ValueError, match="smaller"):
        upsample_spectrum(params[0], (8, 8), 4, 4)
    with pytest.raises(ValueError, match="spectrum must be"):
        upsample_spectrum(params[0], (6, 6), 12, 12)


def test_spectrum_magnitude_of_a_grating():
    h, w = 8, 8
    x = torch.arange(w, dtype=torch.float64)
    grating = 0.5 + 0.25 * torch.cos(2 * math.pi * x / w).expand(h, w)
    imgs = grating.expand(1, 3, h, w).float()  # grey: only the first decorrelated channel is non-zero
    mag = spectrum_magnitude(imgs)
    assert mag.shape == (3, 8, 5)
    col = recorrelate_color(torch.ones(1, 3, 1, 1, dtype=torch.float64)).view(3)
    # orthonormal rfft2 of a cos of amplitude a: a * sqrt(h w) / 2 at (0, 1); nothing else (DC removed)
    want = torch.zeros(3, 8, 5, dtype=torch.float64)
    want[:, 0, 1] = col.abs() * 0.25 * math.sqrt(h * w) / 2
    torch.testing.assert_close(mag.double(), want, atol=1e-5, rtol=1e-5)


def test_maco_shapes_range_and_fixed_magnitude():
    params, image_fn = maco_image(2, 12, 10, generator=_gen())
    assert len(params) == 1 and params[0].shape == (2, 3, 12, 6) and params[0].is_leaf
    assert params[0].abs().max() <= math.pi
    img = image_fn()
    assert img.shape == (2, 3, 12, 10) and 0 < img.min() and img.max() < 1
    # the spatial image is standardised per image: undo colour and sigmoid, mean 0 and std 1
    spatial = recorrelate_color(torch.logit(img.double()))
    torch.testing.assert_close(spatial.mean(dim=(1, 2, 3)), torch.zeros(2, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(spatial.std(dim=(1, 2, 3)), torch.ones(2, dtype=torch.float64), atol=1e-3, rtol=0)
    # only the phase moves: the magnitude of the spectrum stays proportional to 1/f
    with torch.no_grad():
        params[0].add_(torch.randn(params[0].shape, generator=_gen(5)))
    mag = torch.fft.rfft2(recorrelate_color(torch.logit(image_fn().double())), norm="ortho").abs()
    ratio = mag[:, :, 1:5, 1:4] / spectrum_scale(12, 10, 1.0).double()[1:5, 1:4]
    torch.testing.assert_close(ratio / ratio.mean(dim=(1, 2, 3), keepdim=True), torch.ones_like(ratio), atol=1e-3, rtol=1e-3)


def test_maco_magnitude_and_init():
    mag = torch.rand(3, 8, 5, generator=_gen())
    params, image_fn = maco_image(1, 8, 8, magnitude=mag, generator=_gen())
    assert image_fn().shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="magnitude must be"):
        maco_image(1, 8, 8, magnitude=torch.ones(3, 8, 8), generator=_gen())
    pic = torch.rand(1, 3, 8, 8, generator=_gen(3)) * 0.8 + 0.1
    params, image_fn = maco_image(1, 8, 8, generator=_gen(), init=pic)
    want = torch.angle(torch.fft.rfft2(recorrelate_color(logit_pixels(pic).double()), norm="ortho")).float()
    torch.testing.assert_close(params[0].detach(), want)
    image_fn().sum().backward()
    assert params[0].grad is not None and params[0].grad.abs().sum() > 0


def test_pyramid_shapes_sum_and_init():
    params, image_fn = pyramid_image(2, 10, 12, levels=3, sd=0.5, generator=_gen())
    assert [tuple(p.shape) for p in params] == [(2, 3, 10, 12), (2, 3, 5, 6), (2, 3, 3, 3)]
    img = image_fn()
    assert img.shape == (2, 3, 10, 12) and 0 < img.min() and img.max() < 1
    with torch.no_grad():
        for p in params:
            p.zero_()
        params[2][:, 1] = 0.7  # a constant coarse level upsamples to the same constant
    want = torch.sigmoid(color_matrix()[:, 1] * 0.7).view(1, 3, 1, 1).expand(2, 3, 10, 12)
    torch.testing.assert_close(image_fn(), want)
    pic = torch.rand(2, 3, 10, 12, generator=_gen(3)) * 0.8 + 0.1
    params, image_fn = pyramid_image(2, 10, 12, generator=_gen(), init=pic)
    torch.testing.assert_close(image_fn(), pic, atol=2e-6, rtol=0)
    assert all(p.abs().sum() == 0 for p in params[1:])
    image_fn().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    with pytest.raises(ValueError, match="at least one level"):
        pyramid_image(1, 8, 8, levels=0, generator=_gen())
