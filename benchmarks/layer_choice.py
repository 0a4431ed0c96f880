"""Which layer (and input size) should the demo use? Measure, don't assume.

For each candidate, collect the demo set (one random position per image) and report
k-nearest-neighbour label agreement (cosine, k=10): the share of an image's neighbours
that come from the same source photo, against the chance rate (sum of squared label
shares). The demo's natural label is "which photo the crop came from".

    python benchmarks/layer_choice.py --n 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"

CANDIDATES = [("blocks.4", 224), ("blocks.5", 224), ("blocks.6", 224), ("blocks.5", 320), ("blocks.4", 320)]


def knn_agreement(x: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """x: float [n, c], labels: int [n] -> mean share of same-label among k cosine neighbours."""
    import faiss

    v = np.ascontiguousarray(x, dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
    index = faiss.IndexFlatIP(v.shape[1])
    index.add(v)
    _, nn = index.search(v, k + 1)
    return float((labels[nn[:, 1:]] == labels[:, None]).mean())


def measure(layer: str, size: int, n: int) -> dict:
    import zarr

    from atlas.config import load_config
    from atlas.stages import get_stage, run_stage

    run_dir = OUT / "layer-choice" / f"{layer}-{size}"
    cfg = load_config(ROOT / "pipelines" / "demo.yaml", [f"run_dir={run_dir}", f"images.demo_count={n}",
                                                         f"model.layer={layer}", f"model.input_size={size}",
                                                         "collect.attribution=false"])
    t0 = time.perf_counter()
    run_stage(get_stage("collect"), cfg)
    g = zarr.open_group(str(run_dir / "collect"), mode="r")
    ok = g["status"][:] == 1
    x, labels = g["activations"][:][ok].astype(np.float32), g["labels"][:][ok]
    share = np.bincount(labels) / len(labels)
    return {"layer": layer, "input_size": size, "grid": g.attrs["layer_shape"], "n": int(ok.sum()),
            "knn_agreement": knn_agreement(x, labels), "chance": float((share ** 2).sum()),
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    rows = [measure(layer, size, args.n) for layer, size in CANDIDATES]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "layer_choice.json").write_text(json.dumps(rows, indent=2))
    print("| layer | input | grid | 10-NN label agreement | chance | collect s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['input_size']} | {'x'.join(map(str, r['grid']))} | {r['knn_agreement']:.3f} "
              f"| {r['chance']:.3f} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
