"""Benchmark: collecting several layers in one pass against one run per layer, on the same images.

A config with ``model.layers`` decodes each image once and, without attribution, runs the network
once per batch, cut after the deepest layer; with attribution each layer takes its own
forward-mode pass (the logits' tangent must start at that layer alone). This times ``atlas
collect`` of the layers together and of each layer alone (fresh run directories, in-process,
the together run first and last so drift shows), and prints the seconds and the ratio
together / sum of alone, for attribution off and on.

    python benchmarks/layers.py                          # 400 demo images, blocks.3, blocks.4, blocks.5
    python benchmarks/layers.py --images 2000 --layers blocks.2,blocks.4,blocks.6
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from atlas.api import load, run_stage

ROOT = Path(__file__).resolve().parents[1]


def _collect(tmp: Path, name: str, images: int, layers: list[str], attribution: bool) -> float:
    run_dir = tmp / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load(str(ROOT / "pipelines" / "demo.yaml"), [
        f"run_dir={run_dir}", f"images.demo_count={images}", f"model.layer={layers[0]}",
        f"model.layers={json.dumps(layers)}", f"collect.attribution={json.dumps(attribution)}",
        "collect.workers=0", "model.device=cpu"])
    t0 = time.perf_counter()
    run_stage("collect", cfg)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--layers", default="blocks.3,blocks.4,blocks.5")
    args = ap.parse_args()
    layers = args.layers.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for attribution in (False, True):
            first = _collect(tmp, "together", args.images, layers, attribution)
            alone = {layer: _collect(tmp, f"alone-{layer}", args.images, [layer], attribution) for layer in layers}
            last = _collect(tmp, "together", args.images, layers, attribution)
            together = min(first, last)
            key = "attribution" if attribution else "no_attribution"
            results[key] = {"together_s": round(together, 2), "together_runs_s": [round(first, 2), round(last, 2)],
                            "alone_s": {k: round(v, 2) for k, v in alone.items()},
                            "ratio_together_over_alone": round(together / sum(alone.values()), 3)}
            print(f"{key}: {len(layers)} layers together {together:.1f} s (runs {first:.1f}, {last:.1f}); alone "
                  f"{sum(alone.values()):.1f} s ({', '.join(f'{k} {v:.1f}' for k, v in alone.items())}); ratio "
                  f"{together / sum(alone.values()):.2f}", flush=True)
    print(json.dumps({"images": args.images, "layers": layers, **results}))


if __name__ == "__main__":
    main()
