"""One unit of a patch test: a batch of kept images, every size and place, the patch and the noise.

For each image the unit records the network's view of the image as it is (top-1, P(A),
P(B), rank of B) and, for each patch size and each place, the same for the image with the
patch and with a uniform-noise patch of that size at that place. Arrays (npz, in the test's
``units/`` folder, written atomically before the runner's done marker)::

    ids [B]                        the images' ids (demo index, or position in the source)
    orig_top1 / orig_prob_top1 / orig_prob_a / orig_prob_b / orig_rank_b [B]
    top1 / prob_top1 / prob_a / prob_b / rank_b [B, sizes, places, 2]    (last axis: patch, noise)
    places [B, sizes, places, 2]   (top, left) in pixels of the network's input
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...config import Config
from ...ops.patches import noise_patch, paste, patch_side, place_count, places, resize_patch
from ._classify import Classifier, scores
from ._spec import PatchTestSpec

__all__ = ["KEYS", "place_offsets", "image_places", "trial_images", "run_batch", "empty_batch"]

KEYS = ("top1", "prob_top1", "prob_a", "prob_b", "rank_b")


def place_offsets(positions: list[str]) -> list[tuple[int, int]]:
    """(first, stop) of each position token's places among an image's places of one size."""
    out, at = [], 0
    for pos in positions:
        n = place_count(pos)
        out.append((at, at + n))
        at += n
    return out


def image_places(cfg: Config, image_id: int, size_index: int, side: int, p: int) -> np.ndarray:
    """int64 [places, 2]: every (top, left) of image ``image_id``'s trials at size ``size_index``."""
    return np.concatenate([places(pos, side, p, seed=cfg.seed, image_id=image_id, size_index=size_index)
                           for pos in cfg.patch_test.positions])


def trial_images(cfg: Config, images: torch.Tensor, ids: list[int], patch: np.ndarray, size_index: int,
                 place_index: int, where: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The images with the patch (already at its side p) and with each image's noise patch of side p,
    both at ``where`` [B, 2] (top, left): the same place for the patch and its noise baseline."""
    p = int(patch.shape[0])
    noise = np.stack([noise_patch(p, seed=cfg.seed, image_id=i, size_index=size_index, place_index=place_index)
                      for i in ids])
    tops, lefts = where[:, 0], where[:, 1]
    return (paste(images, torch.from_numpy(np.ascontiguousarray(patch)), tops, lefts),
            paste(images, torch.from_numpy(noise), tops, lefts))


def empty_batch(cfg: Config) -> dict[str, np.ndarray]:
    """A unit's arrays for no image: their names, dtypes and shapes but the first axis."""
    s = len(cfg.patch_test.sizes)
    n = sum(place_count(p) for p in cfg.patch_test.positions)
    out: dict[str, np.ndarray] = {"ids": np.zeros(0, np.int64), "places": np.zeros((0, s, n, 2), np.int32)}
    for k in KEYS:
        dt = np.float32 if k.startswith("prob") else np.int32
        out[f"orig_{k}"] = np.zeros(0, dt)
        out[k] = np.zeros((0, s, n, 2), dt)
    return out


def run_batch(cfg: Config, spec: PatchTestSpec, clf: Classifier, images: np.ndarray, ids: list[int],
              on_trial: Any = None) -> dict[str, np.ndarray]:
    """Every trial of a batch of images (uint8 [B, S, S, 3]); the unit's arrays."""
    out = empty_batch(cfg)
    side, b = spec.input_size, len(ids)
    x = torch.from_numpy(images)
    orig = scores(clf.logits(x), spec.a, spec.b)
    for k in KEYS:
        out[f"orig_{k}"] = getattr(orig, k)
    n_places = out["places"].shape[2]
    shape = (b, len(cfg.patch_test.sizes), n_places, 2)
    out["ids"] = np.asarray(ids, np.int64)
    out["places"] = np.zeros(shape, np.int32)
    for k in KEYS:
        out[k] = np.zeros(shape, out[k].dtype)
    for si, frac in enumerate(cfg.patch_test.sizes):
        p = patch_side(frac, side)
        patch = resize_patch(spec.patch, p)
        where = np.stack([image_places(cfg, i, si, side, p) for i in ids])  # [B, places, 2]
        out["places"][:, si] = where
        for j in range(n_places):
            patched, noised = trial_images(cfg, x, ids, patch, si, j, where[:, j])
            sc = scores(clf.logits(torch.cat([patched, noised])), spec.a, spec.b)
            for k in KEYS:
                v = getattr(sc, k)
                out[k][:, si, j, 0], out[k][:, si, j, 1] = v[:b], v[b:]
            if on_trial is not None:
                on_trial()
    return out
