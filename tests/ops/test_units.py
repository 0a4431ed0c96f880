"""The units kernels (atlas.ops.units): exact values on tiny tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.ops.units import (
    SAEParams,
    adam_init,
    channel_basis,
    dictionary,
    labels_spanned,
    merge_top_rows,
    nmf_basis,
    nmf_encode,
    nmf_fit,
    parse_basis,
    quantise,
    sae_basis,
    sae_forward,
    sae_init,
    sae_loss,
    sae_step,
    self_rank,
    sign_split,
)


def test_parse_basis() -> None:
    assert parse_basis("channels") == ("channels", None)
    assert parse_basis("nmf:32") == ("nmf", 32)
    assert parse_basis("sae:4096") == ("sae", 4096)
    for bad in ("nmf", "sae:0", "pca:3", "channels:4", "nmf:-2"):
        with pytest.raises(ValueError, match="channels, nmf:K or sae:K"):
            parse_basis(bad)


def test_self_rank_scales_each_unit_by_its_spread() -> None:
    coefs = np.array([[2.0, 3.0, 1.0],    # z = [1, 1, 2]: own unit 0 -> unit 2 is higher: rank 2
                      [2.0, 3.0, 1.0],    # own unit 2: first
                      [0.0, 6.0, 0.5]])   # z = [0, 2, 1]: own unit 1: first
    spread = np.array([2.0, 3.0, 0.5])
    np.testing.assert_array_equal(self_rank(coefs, spread, np.array([0, 2, 1])), [2, 1, 1])
    # ties count for the icon; a unit that never varies counts 0
    np.testing.assert_array_equal(self_rank(np.array([[1.0, 1.0, 9.0]]), np.array([1.0, 1.0, 0.0]), np.array([1])), [1])
    with pytest.raises(ValueError, match="coefs"):
        self_rank(coefs, spread[:2], np.array([0, 1, 2]))


def test_dictionary_shares_of_the_positive_part() -> None:
    values = np.array([[1.0, -2.0, 3.0, 0.0],
                       [np.nan] * 4,
                       [-1.0, -1.0, -1.0, -1.0],
                       [2.0, 2.0, 0.0, 0.0]])
    units, shares = dictionary(values, 3)
    np.testing.assert_array_equal(units, [[2, 0, -1], [-1, -1, -1], [-1, -1, -1], [0, 1, -1]])
    np.testing.assert_allclose(shares[0, :2], [0.75, 0.25])
    assert np.isnan(shares[0, 2]) and np.isnan(shares[1]).all() and np.isnan(shares[2]).all()
    np.testing.assert_allclose(shares[3, :2], [0.5, 0.5])
    assert units.dtype == np.int32 and shares.dtype == np.float32
    units, shares = dictionary(values[:1], 6)  # more asked for than there are units
    np.testing.assert_array_equal(units, [[2, 0, -1, -1, -1, -1]])


def test_merge_top_rows_is_exact_whatever_the_chunks() -> None:
    rng = np.random.default_rng(0)
    vals = np.round(rng.normal(size=(40, 3)), 1).astype(np.float32)  # rounded: ties
    rows = np.arange(100, 140)
    whole = merge_top_rows(np.full((3, 5), -np.inf, np.float32), np.full((3, 5), -1), vals, rows)
    best_v, best_r = np.full((3, 5), -np.inf, np.float32), np.full((3, 5), -1)
    for lo in range(0, 40, 7):
        best_v, best_r = merge_top_rows(best_v, best_r, vals[lo:lo + 7], rows[lo:lo + 7])
    np.testing.assert_array_equal(best_r, whole[1])
    for u in range(3):
        order = sorted(range(40), key=lambda i: (-float(vals[i, u]), i))[:5]
        np.testing.assert_array_equal(best_r[u], rows[order])
        np.testing.assert_array_equal(best_v[u], vals[order, u])
    few_v, few_r = merge_top_rows(np.full((3, 5), -np.inf, np.float32), np.full((3, 5), -1), vals[:2], rows[:2])
    assert (few_r[:, 2:] == -1).all() and np.isneginf(few_v[:, 2:]).all()


def test_labels_spanned_and_quantise() -> None:
    np.testing.assert_array_equal(labels_spanned(np.array([[3, 3, 1, -1], [-1, -1, -1, -1], [0, 1, 2, 3]])), [2, 0, 4])
    q, vmax = quantise(np.array([0.0, 1.0, 2.0, -1.0, np.nan, 0.001]))
    assert vmax == 2.0
    np.testing.assert_array_equal(q, [0, 128, 255, 0, 0, 1])
    q, vmax = quantise(np.array([-1.0, np.nan]))
    assert vmax == 0.0 and (q == 0).all()


def test_nmf_recovers_an_exact_factorisation() -> None:
    h_true = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 1.0]], dtype=torch.float64)
    w_true = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.5, 3.0], [2.0, 0.5]], dtype=torch.float64)
    x = w_true @ h_true
    h, w = nmf_fit(x, 2, iters=3000, seed=0)
    assert torch.allclose(h.norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert float((x - w @ h).norm() / x.norm()) < 1e-3  # multiplicative updates converge slowly
    w2 = nmf_encode(x, h, iters=3000)
    assert float((x - w2 @ h).norm() / x.norm()) < 1e-3
    # the weights of one row do not depend on the others, and a zero row has zero weights
    np.testing.assert_array_equal(nmf_encode(x[1:2], h, iters=50).numpy(), nmf_encode(x, h, iters=50)[1:2].numpy())
    assert float(nmf_encode(torch.zeros(1, 3), h, iters=5).abs().max()) < 1e-9
    h_a, _ = nmf_fit(x, 2, iters=10, seed=3)
    h_b, _ = nmf_fit(x, 2, iters=10, seed=3)
    assert torch.equal(h_a, h_b)
    with pytest.raises(ValueError, match="non-negative"):
        nmf_fit(-x, 2)


def test_sign_split_and_the_nmf_basis() -> None:
    x = torch.tensor([[1.0, -2.0]])
    np.testing.assert_array_equal(sign_split(x).numpy(), [[1.0, 0.0, 0.0, 2.0]])
    comps = np.array([[0.6, 0.0, 0.0, 0.8], [0.0, 1.0, 0.0, 0.0]])  # [K=2, 2C=4]
    b = nmf_basis(comps, iters=500)
    np.testing.assert_allclose(b.directions, [[0.6, -0.8], [0.0, 1.0]], atol=1e-7)
    coef = b.encode(np.array([[0.6, -0.8]], np.float32))
    np.testing.assert_allclose(coef, [[1.0, 0.0]], atol=1e-4)
    np.testing.assert_allclose(b.reconstruct(np.zeros((1, 2)), coef), [[0.6, -0.8]], atol=1e-4)
    # attribution: coef_u * ((h_pos - h_neg) . g)
    np.testing.assert_allclose(b.attribution(np.array([[0.6, -0.8]]), np.array([[1.0, 2.0]])), [[0.6 - 1.6, 0.0]], atol=1e-4)


def test_channel_basis_attribution_adds_up_to_a_dot_g() -> None:
    b = channel_basis(3)
    a, g = np.array([[1.0, -2.0, 0.5]]), np.array([[0.5, 1.0, 4.0]])
    np.testing.assert_array_equal(b.encode(a), a.astype(np.float32))
    np.testing.assert_allclose(b.attribution(a, g), [[0.5, -2.0, 2.0]])
    assert float(b.attribution(a, g).sum()) == pytest.approx(float((a @ g.T)[0, 0]))


def _tiny_sae() -> SAEParams:
    return SAEParams(w_enc=torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), b_enc=torch.tensor([0.0, -0.5, -1.0]),
                     w_dec=torch.tensor([[1.0, 0.0, 0.6], [0.0, 1.0, 0.8]]), b_dec=torch.tensor([0.0, 0.0]))


def test_sae_forward_and_loss_by_hand() -> None:
    p = _tiny_sae()
    x = torch.tensor([[2.0, 1.0]])
    f, x_hat = sae_forward(x, p)
    np.testing.assert_allclose(f.numpy(), [[2.0, 0.5, 2.0]])                 # relu([2, 1 - .5, 3 - 1])
    np.testing.assert_allclose(x_hat.numpy(), [[2.0 + 1.2, 0.5 + 1.6]])
    loss, mse, sp = sae_loss(x, p, 0.1)
    assert float(mse) == pytest.approx(1.2 ** 2 + 1.1 ** 2) and float(sp) == pytest.approx(4.5)
    assert float(loss) == pytest.approx(1.2 ** 2 + 1.1 ** 2 + 0.45)


def test_sae_step_is_adam_then_unit_decoder_columns() -> None:
    p = _tiny_sae()
    x = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    new, state, loss = sae_step(p, adam_init(p), x, l1=0.1, lr=0.01)
    assert loss == pytest.approx(float(sae_loss(x, p, 0.1)[0]))
    assert state.t == 1
    # Adam's first step moves every parameter with a non-zero gradient by lr * sign(gradient) (up to eps)
    leaves = {k: getattr(p, k).clone().requires_grad_(True) for k in ("w_enc", "b_enc", "w_dec", "b_dec")}
    g = torch.autograd.grad(sae_loss(x, SAEParams(**leaves), 0.1)[0], list(leaves.values()))
    expect_b_enc = p.b_enc - 0.01 * torch.sign(g[1])
    np.testing.assert_allclose(new.b_enc.numpy(), expect_b_enc.numpy(), atol=1e-6)
    moved_dec = p.w_dec - 0.01 * torch.sign(g[2])
    np.testing.assert_allclose(new.w_dec.numpy(), (moved_dec / moved_dec.norm(dim=0, keepdim=True)).numpy(), atol=1e-6)
    np.testing.assert_allclose(new.w_dec.norm(dim=0).numpy(), [1.0, 1.0, 1.0], atol=1e-6)
    # its state round-trips through plain arrays: the next step is the same bits
    from atlas.ops.units import AdamState

    again = AdamState.from_arrays(state.arrays())
    a = sae_step(new, state, x, l1=0.1, lr=0.01)[0]
    b = sae_step(SAEParams.from_arrays(new.arrays()), again, x, l1=0.1, lr=0.01)[0]
    for k in ("w_enc", "b_enc", "w_dec", "b_dec"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k


def test_sae_training_lowers_the_loss_and_its_basis() -> None:
    gen = torch.Generator().manual_seed(0)
    atoms = torch.eye(4)[:3] * 2.0
    codes = (torch.rand(256, 3, generator=gen) < 0.3).float()
    x = codes @ atoms
    p = sae_init(4, 6, seed=1, mean=x.mean(0))
    assert torch.allclose(p.w_dec.norm(dim=0), torch.ones(6)) and torch.equal(p.w_enc, p.w_dec.T)
    state = adam_init(p)
    first = float(sae_loss(x, p, 0.01)[0])
    for _ in range(300):
        p, state, _ = sae_step(p, state, x, l1=0.01, lr=0.01)
    assert float(sae_loss(x, p, 0.01)[0]) < 0.2 * first
    b = sae_basis(p, scale=2.0)
    assert b.size == 6 and b.directions.shape == (6, 4) and b.gain == 2.0
    coef = b.encode(x[:5].numpy() * 2.0)  # encode scales its input by 1 / scale
    np.testing.assert_allclose(coef, sae_forward(x[:5], p)[0].detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(b.reconstruct(x[:5].numpy() * 2.0, coef), sae_forward(x[:5], p)[1].detach().numpy() * 2.0,
                               rtol=1e-5, atol=1e-5)
