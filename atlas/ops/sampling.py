"""Per-image spatial positions from a counter-based hash: no state, any order."""

from __future__ import annotations

import numpy as np

__all__ = ["splitmix64", "sample_positions"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of ``x + golden``, vectorised.

    x: uint64 [...] -> uint64 [...] (wrapping arithmetic, as in the reference C code).
    """
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def sample_positions(seed: int, indices: np.ndarray, height: int, width: int, border: int) -> np.ndarray:
    """One (y, x) per image on a ``height`` x ``width`` grid, excluding ``border`` cells.

    indices: int [n] global image indices -> int16 [n, 2] (y, x).
    Position i depends only on (seed, i): the same whatever batch, shard or restart.
    """
    hh, ww = height - 2 * border, width - 2 * border
    if hh <= 0 or ww <= 0:
        raise ValueError(
            f"collect.border={border} leaves no position on a {height}x{width} layer grid; "
            f"use a border below {min(height, width) // 2 + (min(height, width) % 2)}"
        )
    with np.errstate(over="ignore"):
        key = splitmix64(np.asarray([seed], dtype=np.int64).view(np.uint64))
        h = splitmix64(key + np.asarray(indices, dtype=np.int64).view(np.uint64))
    y = border + (h & np.uint64(0xFFFFFFFF)) % np.uint64(hh)
    x = border + (h >> np.uint64(32)) % np.uint64(ww)
    return np.stack([y, x], axis=-1).astype(np.int16)
