"""The batched atlas objective: hand-computed values, the floor, whitening, and that ascent works."""

from __future__ import annotations

import math

import pytest
import torch

from atlas.ops.objectives import (
    Objective,
    cosine,
    cosine_matrix,
    direction_cossim,
    direction_cossim_objective,
    own_rank,
    reduce_positions,
    retrieval_at,
    whiten,
)
from atlas.ops.param import fft_image
from atlas.ops.transforms import compose, jitter, pad


def _acts(*vectors: list[float]) -> torch.Tensor:
    """One 1x1 activation per vector: [B, C, 1, 1]."""
    return torch.tensor(vectors, dtype=torch.float32)[:, :, None, None]


def test_reduce_mean_and_center():
    a = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).view(2, 2, 3, 3)
    torch.testing.assert_close(reduce_positions(a, "mean"), a.mean(dim=(2, 3)))
    assert reduce_positions(a, "center").tolist() == [[4.0, 13.0], [22.0, 31.0]]
    even = torch.arange(16.0).view(1, 1, 4, 4)
    assert reduce_positions(even, "center").item() == 10.0  # (H // 2, W // 2)
    with pytest.raises(ValueError, match="reduce"):
        reduce_positions(a, "max")


def test_direction_cossim_hand_computed():
    acts = _acts([3.0, 4.0], [1.0, 10.0], [-1.0, 0.0], [0.0, 0.0])
    v = torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # dot(h, v) * max(cos, 0.1)^2: 6 * 0.6^2; cos = 1/sqrt(101) < 0.1 -> floor; negative cos -> floor; zero h -> 0
    want = [6 * 0.36, 1 * 0.01, -1 * 0.01, 0.0]
    torch.testing.assert_close(direction_cossim(acts, v), torch.tensor(want), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(direction_cossim(acts, v, power=1.0, floor=0.0)[:2],
                               torch.tensor([6 * 0.6, 1 / math.sqrt(101)]), rtol=1e-6, atol=0)
    torch.testing.assert_close(cosine(acts, v), torch.tensor([0.6, 1 / math.sqrt(101), -1.0, 0.0]))


def test_direction_cossim_reduces_over_positions():
    acts = torch.zeros(1, 2, 2, 2)
    acts[0, 0, 0, 0] = 4.0  # mean over 4 positions: h = (1, 0.5)
    acts[0, 1] = 0.5
    v = torch.tensor([[1.0, 0.0]])
    cos = 1 / math.hypot(1, 0.5)
    assert direction_cossim(acts, v, power=3.0).item() == pytest.approx(cos**3, rel=1e-6)
    assert direction_cossim(acts, v, reduce="center").item() == 0.0  # centre (1, 1) has h = (0, 0.5)


def test_batched_equals_one_at_a_time():
    g = torch.Generator().manual_seed(0)
    acts, v = torch.randn(6, 5, 3, 3, generator=g), torch.randn(6, 5, generator=g)
    single = torch.cat([direction_cossim(acts[i:i + 1], v[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(direction_cossim(acts, v), single)
    with pytest.raises(ValueError, match="targets"):
        direction_cossim(acts, v[:3])


def test_whitening_uses_s_v():
    s = torch.diag(torch.tensor([2.0, 3.0]))
    v = torch.tensor([[1.0, 1.0]])
    assert whiten(v, s).tolist() == [[2.0, 3.0]]
    acts = _acts([1.0, 0.0])
    obj = direction_cossim_objective(v, power=1.0, whitening=s)
    # dot(h, S v) = 2, cos(h, S v) = 2 / sqrt(13)
    assert obj(acts).item() == pytest.approx(2 * 2 / math.sqrt(13), rel=1e-6)
    assert "whitened" in obj.name


def test_objectives_compose():
    acts = _acts([3.0, 4.0])
    a = direction_cossim_objective(torch.tensor([[1.0, 0.0]]), power=0.0)
    b = Objective("sum", lambda x: x.sum(dim=(1, 2, 3)))
    torch.testing.assert_close((a + 2 * b)(acts), a(acts) + 2 * b(acts))
    torch.testing.assert_close((a - b)(acts), torch.tensor([3.0 - 7.0]))
    torch.testing.assert_close((-a)(acts), torch.tensor([-3.0]))
    assert (a + 2 * b).name.endswith("+ 2 * sum")


def test_gradient_ascent_increases_the_objective_on_a_tiny_model():
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 6, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    net.requires_grad_(False)
    targets = torch.randn(4, 6, generator=g)
    params, image_fn = fft_image(4, 24, 24, generator=g)
    obj = direction_cossim_objective(targets, power=2.0)
    transform = compose([pad(2, mode="constant"), jitter(2)])
    with torch.no_grad():
        before = obj(net(image_fn()))
        cos_before = cosine(net(image_fn()), targets)
    opt = torch.optim.Adam(params, lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        (-obj(net(transform(image_fn(), g))).sum()).backward()
        opt.step()
    with torch.no_grad():
        after = obj(net(image_fn()))
        cos_after = cosine(net(image_fn()), targets)
    assert (after > before).all(), (before, after)
    assert (cos_after > cos_before).all() and cos_after.min() > 0.4, cos_after


# --------------------------------------------------------------------------- distinctness


def test_own_rank_hand_computed():
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    acts = torch.tensor([[2.0, 0.1],    # closest to t0 (cos 0.999), then t2 (0.75), t1, t3
                         [1.0, 0.9],    # closest to t2, then t0, then t1
                         [0.0, 3.0],    # t1 first
                         [-1.0, -1.0]])  # t3 (0.707) ahead of t0 (-0.707), t1 (-0.707), t2 (-1)
    own = torch.tensor([0, 0, 2, 1])
    # icon 0: own t0 is first; icon 1: t2 beats t0 -> 2; icon 2: t1 (1.0) beats t2 (0.707) -> 2;
    # icon 3: own t1 at -0.707 is beaten only by t3 (0.707); t0 ties at -0.707 and counts for the icon -> 2
    assert own_rank(acts, targets, own).tolist() == [1, 2, 2, 2]
    assert own_rank(acts, targets, torch.tensor([0, 2, 1, 3])).tolist() == [1, 1, 1, 1]
    # icon 2 = (0, 3) against t3: cos 0, beaten by t1 and t2, tied with t0 -> 3
    assert own_rank(acts, targets, torch.tensor([3, 3, 3, 2])).tolist() == [4, 4, 3, 4]


def test_own_rank_is_scale_invariant_and_dtype_exact():
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(30, 16, generator=g)
    acts = targets[[3, 7, 11]] * torch.tensor([[2.0], [0.5], [9.0]]) + 0.01 * torch.randn(3, 16, generator=g)
    own = torch.tensor([3, 7, 11])
    ranks = own_rank(acts, targets, own)
    assert ranks.dtype == torch.int64 and ranks.tolist() == [1, 1, 1]
    assert own_rank(acts, 5.0 * targets, own).tolist() == [1, 1, 1]
    sims = cosine_matrix(acts, targets)
    assert sims.shape == (3, 30)
    torch.testing.assert_close(sims[0, 3], torch.nn.functional.cosine_similarity(acts[0], targets[3], dim=0))
    want = (sims > sims.gather(1, own[:, None])).sum(1) + 1
    assert torch.equal(own_rank(acts, targets, torch.tensor([0, 1, 2])), (sims > sims[:, :3].diagonal()[:, None]).sum(1) + 1)
    assert torch.equal(ranks, want)


def test_own_rank_rejects_bad_shapes_and_rows():
    a, t = torch.zeros(2, 3), torch.ones(4, 3)
    with pytest.raises(ValueError, match="share C"):
        own_rank(a, torch.ones(4, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="own must be"):
        own_rank(a, t, torch.tensor([0]))
    with pytest.raises(ValueError, match="own rows"):
        own_rank(a, t, torch.tensor([0, 4]))
    assert own_rank(torch.zeros(0, 3), t, torch.zeros(0, dtype=torch.int64)).tolist() == []


def test_retrieval_at():
    ranks = torch.tensor([1, 2, 1, 6, 5])
    assert retrieval_at(ranks, 1) == pytest.approx(0.4)
    assert retrieval_at(ranks, 5) == pytest.approx(0.8)
    assert retrieval_at(ranks, 6) == 1.0
    assert math.isnan(retrieval_at(torch.zeros(0, dtype=torch.int64), 1))
