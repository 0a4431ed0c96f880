"""Benchmark: the render loop's resamplings, torch's kernels against atlas.ops.resample's.

The render loop differentiates through reflect padding, bilinear sampling at per-image affine
grids (random scale and rotation) and bilinear resizing. torch's kernels scatter their
gradients with atomic adds on CUDA (not repeatable); :mod:`atlas.ops.resample` gives the same
values through indexing and matrix products. This times forward + backward of each, torch's
and ours alternated in every round, on the render's shapes (a batch of icons), and prints the
minimum over the rounds in milliseconds with the ratio ours / torch's. (atlas runs the
repeatable paths on CUDA only: on the CPU torch's kernels are deterministic already.)

    python benchmarks/resample.py                       # CPU, 64 icons of 80 px
    python benchmarks/resample.py --device cuda --batch 256
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from atlas.ops.resample import affine_sample, reflect_pad, repeatable_resampling, resize_bilinear


def _theta(batch: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image affine maps [B, 2, 3]: scale 0.9-1.1, rotation within +-10 degrees."""
    scale = 0.9 + 0.2 * torch.rand(batch, generator=generator)
    angle = (torch.rand(batch, generator=generator) - 0.5) * math.radians(20)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros(batch)
    return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


def _pairs(images: torch.Tensor, theta: torch.Tensor, side: int) -> dict[str, tuple[Callable[[], torch.Tensor], ...]]:
    """name -> (torch's op, ours) on the same input."""
    small = images[:, :, : side // 2, : side // 2].contiguous()
    return {
        "reflect pad 8": (lambda: F.pad(images, (8, 8, 8, 8), mode="reflect"), lambda: reflect_pad(images, 8)),
        "affine sample": (
            lambda: F.grid_sample(images, F.affine_grid(theta, list(images.shape), align_corners=False),
                                  mode="bilinear", padding_mode="border", align_corners=False),
            lambda: affine_sample(images, theta)),
        "resize x2": (lambda: F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False),
                      lambda: resize_bilinear(small, (side, side))),
    }


def _time(fn: Callable[[], torch.Tensor], leaf: torch.Tensor, sync: Callable[[], None]) -> float:
    leaf.grad = None
    sync()
    t0 = time.perf_counter()
    out = fn()
    out.square().sum().backward()
    sync()
    return 1000 * (time.perf_counter() - t0)


def _forced(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """``fn`` on the repeatable paths (atlas uses them on CUDA; on the CPU only when forced)."""
    def run() -> torch.Tensor:
        with repeatable_resampling():
            return fn()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--side", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 3, args.side, args.side, generator=g).to(dev).requires_grad_(True)
    theta = _theta(args.batch, g).to(dev)
    results = {}
    for name, (theirs, ours_any) in _pairs(images, theta, args.side).items():
        ours = _forced(ours_any)
        times: dict[str, list[float]] = {"torch": [], "ours": []}
        for _ in range(args.rounds):
            times["torch"].append(_time(theirs, images, sync))
            times["ours"].append(_time(ours, images, sync))
        best = {k: min(v) for k, v in times.items()}
        results[name] = {**best, "ratio": best["ours"] / best["torch"],
                         "max_abs_diff": float((theirs() - ours()).abs().max())}
        print(f"| {name} | {best['torch']:.2f} | {best['ours']:.2f} | {best['ours'] / best['torch']:.2f} |")
    print(json.dumps({"device": str(dev), "batch": args.batch, "side": args.side, "results": results}))


if __name__ == "__main__":
    main()
