"""Benchmark: where held-out images land on the demo atlas (`atlas locate`).

A demo atlas of ``--n`` images (the demo pipeline: Lite0 blocks.5, grids 4/8/16, icons with few
render steps) is built under ``--work``; then ``--held-out`` demo images that were never
collected (indices n, n+1, ...: seeded crops of the same 16 photos, image i a crop of photo
i % 16) are located through the CLI. Per grid level, for each image: the share of its layer
positions that fall in cells whose majority photo (the most frequent source label among the
cell's collected rows, the grid's ``label_counts``) is the image's own photo, against chance in
the same run, two ways:

* count-weighted: the share of the atlas's collected rows that lie in cells whose majority is
  the image's photo (positions landing on cells as a random collected row lands);
* uniform: the share of the non-empty cells whose majority is the image's photo.

    python benchmarks/locate.py --n 600 --held-out 160 --steps 16

Results: ``benchmarks/out/locate-<n>.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out"
ATLAS = str(Path(sys.executable).with_name("atlas"))


def _atlas(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([ATLAS, *args], cwd=REPO, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def _build(run_dir: Path, n: int, steps: int) -> dict[str, Any]:
    sets = [f"run_dir={run_dir}", f"images.demo_count={n}", f"render.steps={steps}", "collect.workers=1"]
    seconds = _atlas("run", "pipelines/demo.yaml", "--stages", "collect,reduce,grid,render",
                     *(f"--set={s}" for s in sets))
    return {"seconds": round(seconds, 1), "sets": sets}


def _majority(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """label_counts [s, s, L] -> (rows per cell [s, s], majority label per cell, -1 for cells without rows)."""
    rows = counts.sum(axis=2)
    return rows, np.where(rows > 0, counts.argmax(axis=2), -1)


def _measure(run_dir: Path, located: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    import zarr

    from atlas.sources._demo import demo_label

    grid = zarr.open_group(str(run_dir / "grid"), mode="r")
    out: dict[str, dict[str, float]] = {}
    docs = [json.loads((run_dir / "locate" / d["unit"] / "located.json").read_text()) for d in located]
    for s in sorted(grid.attrs["sizes"]):
        rows, maj = _majority(np.asarray(grid[f"level-{s}/label_counts"][...]))
        share, weighted, uniform = [], [], []
        for doc in docs:
            label = demo_label(int(doc["source"].rsplit("/", 1)[1]))
            cells = np.array([p["cells"][str(s)] for p in doc["positions"]])
            share.append(float(np.mean(maj[cells[:, 0], cells[:, 1]] == label)))
            weighted.append(float(rows[maj == label].sum() / rows.sum()))
            uniform.append(float((maj == label).sum() / (maj >= 0).sum()))
        m, w, u = float(np.mean(share)), float(np.mean(weighted)), float(np.mean(uniform))
        out[str(s)] = {"share": round(m, 4), "chance_count_weighted": round(w, 4), "chance_uniform": round(u, 4),
                       "ratio_count_weighted": round(m / w, 2), "ratio_uniform": round(m / u, 2),
                       "images_above_chance": round(float(np.mean(np.array(share) > np.array(weighted))), 3),
                       "non_empty_cells": int((maj >= 0).sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=600, help="demo images collected into the atlas")
    ap.add_argument("--held-out", type=int, default=160, help="demo images located (indices n, n+1, ...)")
    ap.add_argument("--steps", type=int, default=16, help="render steps per icon")
    ap.add_argument("--work", type=Path, default=Path("/tmp/atlas-bench-locate"), help="where the run is built")
    args = ap.parse_args()
    run_dir = args.work / f"demo-{args.n}"
    build = {"seconds": None, "reused": True}
    if not (run_dir / "state" / "render" / "done" / "final").is_file():
        build = _build(run_dir, args.n, args.steps)
    from atlas.api import load_run
    from atlas.sources._demo import demo_location

    cfg = load_run(run_dir)
    images = [demo_location(i, cfg.images.demo_size) for i in range(args.n, args.n + args.held_out)]
    cmd = ["locate", str(run_dir / "config.yaml"), *images]
    seconds = _atlas(*cmd)
    index = json.loads((run_dir / "locate" / "index.json").read_text())
    located = [d for d in index["images"] if d["source"] in set(images)]
    result = {"n": args.n, "held_out": len(located), "render_steps": args.steps, "build": build,
              "locate_seconds": round(seconds, 1), "cores": len(os.sched_getaffinity(0)),
              "command": f"atlas locate {run_dir}/config.yaml demo://{cfg.images.demo_size}/{args.n} ... "
                         f"demo://{cfg.images.demo_size}/{args.n + args.held_out - 1}",
              "levels": _measure(run_dir, located)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"locate-{args.n}.json").write_text(json.dumps(result, indent=1))
    print(f"{len(located)} held-out images located in {seconds:.1f} s (network loading included)\n")
    print("| grid | share in own-photo cells | chance (count-weighted) | ratio | chance (uniform) | ratio | images above chance |")
    print("|---|---|---|---|---|---|---|")
    for s, r in result["levels"].items():
        print(f"| {s}x{s} | {r['share']:.3f} | {r['chance_count_weighted']:.3f} | {r['ratio_count_weighted']:.1f}x | "
              f"{r['chance_uniform']:.3f} | {r['ratio_uniform']:.1f}x | {r['images_above_chance']:.0%} |")


if __name__ == "__main__":
    main()
