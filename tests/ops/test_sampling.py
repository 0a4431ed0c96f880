import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas.ops.sampling import sample_positions, splitmix64


def _ref_splitmix64(x: int) -> int:
    m = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def test_splitmix64_reference_values():
    # first output of the reference SplitMix64 generator seeded with 0
    assert int(splitmix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF
    xs = [1, 2**63, 2**64 - 1, 123456789]
    assert [int(v) for v in splitmix64(np.array(xs, np.uint64))] == [_ref_splitmix64(x) for x in xs]


def test_positions_depend_only_on_seed_and_index():
    idx = np.arange(1000)
    full = sample_positions(3, idx, 14, 14, 1)
    parts = np.concatenate([sample_positions(3, idx[s:s + 37], 14, 14, 1) for s in range(0, 1000, 37)])
    np.testing.assert_array_equal(full, parts)
    shuffled = np.random.default_rng(0).permutation(idx)
    np.testing.assert_array_equal(sample_positions(3, shuffled, 14, 14, 1), full[shuffled])
    assert not np.array_equal(sample_positions(4, idx, 14, 14, 1), full)


def test_positions_cover_the_interior_uniformly():
    pos = sample_positions(0, np.arange(49_000), 7, 7, 1)
    assert pos.dtype == np.int16 and pos.shape == (49_000, 2)
    assert pos.min() == 1 and pos.max() == 5
    counts = np.bincount(pos[:, 0] * 7 + pos[:, 1], minlength=49).reshape(7, 7)[1:6, 1:6]
    assert counts.min() > 0.9 * 49_000 / 25 and counts.max() < 1.1 * 49_000 / 25


def test_border_too_large_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="collect.border"):
        sample_positions(0, np.arange(3), 4, 4, 2)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(-2**63, 2**63 - 1), h=st.integers(1, 40), w=st.integers(1, 40),
       border=st.integers(0, 5), idx=st.lists(st.integers(0, 2**40), min_size=1, max_size=20))
def test_positions_stay_inside_the_border(seed, h, w, border, idx):
    if h - 2 * border <= 0 or w - 2 * border <= 0:
        return
    pos = sample_positions(seed, np.array(idx), h, w, border)
    assert (pos[:, 0] >= border).all() and (pos[:, 0] < h - border).all()
    assert (pos[:, 1] >= border).all() and (pos[:, 1] < w - border).all()
