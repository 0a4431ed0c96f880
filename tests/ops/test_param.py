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
    rfft2d_freqs,
    spectrum_scale,
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
