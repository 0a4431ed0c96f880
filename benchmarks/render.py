"""Benchmark: icons/s of batched icon rendering against rendering one icon at a time.

Both modes run in the same invocation, on the same device, with the same network
(bundled Lite0, layer blocks.5 by default), steps, icon size and settings, on targets
that are real activations (the inner positions of demo photos at 224 px, cycled):

* batched: ``atlas.stages.render.render_icons`` on ``--batch`` icons at a time (the
  render stage's unit of work), over ``--count`` icons;
* one at a time: the same function with one icon per call, over the first
  ``--single-count`` icons (rendering thousands one by one would take hours; the rate
  per icon is what is compared).

Each mode also reports the median faithfulness (cosine of the final icon's activation
to its target), so a speed-up that costs quality would show. Results go to
``benchmarks/out/render.json`` and are printed as a markdown table.

    python benchmarks/render.py                                   # CPU: 32 icons of 64 px, 16 steps
    python benchmarks/render.py --preset gpu                      # CUDA: 10,000 icons of 80 px, 512 steps
    python benchmarks/render.py --device cuda --count 2000 --steps 128 --batch 500
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"


def _targets(net: Any, layer: str, n: int, device: torch.device) -> torch.Tensor:
    """n real layer vectors float32 [n, C]: the inner 5x5 positions of demo photos (cycled if needed)."""
    from atlas.models import layer_output
    from atlas.sources import demo_image

    n_img = min(max(1, -(-n // 25)), 64)
    imgs = np.stack([np.asarray(demo_image(i, 224)) for i in range(n_img)])
    vecs = []
    with torch.no_grad():
        for s in range(0, n_img, 16):
            x = net.preprocess(torch.from_numpy(imgs[s:s + 16]))
            h = layer_output(net, layer, x)
            vecs.append(h[:, :, 1:6, 1:6].permute(0, 2, 3, 1).reshape(-1, h.shape[1]))
    v = torch.cat(vecs)
    return v[torch.arange(n) % len(v)].contiguous()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _mode(acts: Any, targets: torch.Tensor, settings: Any, batch: int, seed: int) -> dict[str, Any]:
    from atlas.stages.render import render_icons

    cos = []
    _sync(acts.device)
    t0 = time.perf_counter()
    for k, s in enumerate(range(0, len(targets), batch)):
        res = render_icons(acts, targets[s:s + batch], settings, generator=torch.Generator().manual_seed(seed + k))
        cos.append(res.cossim)
    _sync(acts.device)
    dt = time.perf_counter() - t0
    c = np.concatenate(cos)
    return {"icons": len(targets), "batch": batch, "seconds": round(dt, 3), "icons_per_s": len(targets) / dt,
            "median_cossim": float(np.median(c)), "p10_cossim": float(np.percentile(c, 10))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("gpu",), default=None,
                    help="gpu: --device cuda --count 10000 --size 80 --steps 512 --batch 100 --single-count 8")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--count", type=int, default=32, help="icons rendered in batched mode")
    ap.add_argument("--batch", type=int, default=None, help="icons per batch (default: min(count, 100))")
    ap.add_argument("--single-count", type=int, default=8, help="icons rendered one at a time")
    ap.add_argument("--size", type=int, default=64, help="icon side in pixels")
    ap.add_argument("--steps", type=int, default=16, help="optimisation steps per icon")
    ap.add_argument("--layer", default="blocks.5")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=str(OUT / "render.json"))
    args = ap.parse_args()
    if args.preset == "gpu":
        args.device, args.count, args.size, args.steps, args.batch, args.single_count = "cuda", 10_000, 80, 512, 100, 8
    if args.threads:
        torch.set_num_threads(args.threads)

    from atlas.config import ModelConfig, RenderConfig
    from atlas.models import load_network, resolve_device
    from atlas.models._activations import LayerActivations
    from atlas.stages.render import render_icons

    device = resolve_device(args.device)
    net = load_network(ModelConfig(layer=args.layer))
    acts = LayerActivations(net, args.layer, device)
    settings = RenderConfig(icon_size=args.size, steps=args.steps, restarts=1)
    batch = args.batch or min(args.count, 100)
    targets = _targets(net, args.layer, max(args.count, args.single_count), device)
    render_icons(acts, targets[:2], settings.model_copy(update={"steps": 2}), generator=torch.Generator().manual_seed(0))
    single = _mode(acts, targets[:args.single_count], settings, 1, 1000)
    batched = _mode(acts, targets[:args.count], settings, batch, 0)
    result = {
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "layer": args.layer, "layer_shape": list(acts.shape), "icon_size": args.size,
        "steps": args.steps, "bn_folded": acts.folded, "autocast_bf16": acts.autocast, "settings": settings.model_dump(),
        "one_at_a_time": single, "batched": batched, "speedup": batched["icons_per_s"] / single["icons_per_s"],
    }
    if device.type == "cuda":
        result["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"device {result['device']} ({result['device_name']}), {result['threads']} threads, layer {args.layer}, "
          f"{args.size} px, {args.steps} steps\n")
    print("| mode | icons | batch | seconds | icons/s | median cossim |\n|---|---|---|---|---|---|")
    for name, r in (("one at a time", single), ("batched", batched)):
        print(f"| {name} | {r['icons']} | {r['batch']} | {r['seconds']:.1f} | {r['icons_per_s']:.3f} | {r['median_cossim']:.3f} |")
    print(f"\nspeed-up: {result['speedup']:.2f}x")


if __name__ == "__main__":
    main()
