"""Benchmark: does `atlas compare`'s change figure find what fine-tuning changed?

Builds under ``--work``: the fine-tuned demo network (:func:`atlas.finetune.finetune_demo`: Lite0's
``blocks.5.3`` taught to name four demo photos by their labels, the layer's output on the other
photos kept), a demo atlas of ``--n`` images with the bundled weights (A) and one with the
fine-tuned weights (B), then ``atlas compare A A`` and ``atlas compare A B``. Per view and grid
level, for every figure: its mean over the cells whose majority photo (the layout run's
``label_counts``) is one of the fine-tuned photos and over the other cells, and the AUC (the chance
that a fine-tuned photo's cell has the higher figure than another cell; 0.5: no better than chance);
for A against A, the largest figure of any cell (zero expected).

    python benchmarks/compare.py --n 800 --steps 4

Results: ``benchmarks/out/compare-<n>.json`` and a markdown table on stdout (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
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
FIGURES = ("change", "relation_change", "coherence_change", "class_shift")


def _atlas(*args: str) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([ATLAS, *args], cwd=REPO, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"atlas {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a random ``pos`` value > a random ``neg`` value), ties counting half (Mann-Whitney U / n m)."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if not pos.size or not neg.size:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


def measure(view: Path, layout: Path, photos: tuple[int, ...]) -> dict[str, Any]:
    """Per grid level: each figure's mean on the fine-tuned photos' cells and the others', and its AUC."""
    import zarr

    from atlas.formats import CompareOutput

    out: dict[str, Any] = {}
    changes = CompareOutput(view)
    summary = changes.summary()
    assert summary is not None, f"{view} has no change figures"
    grid = zarr.open_group(str(layout / "grid"), mode="r")
    for s in summary["sizes"]:
        fig = changes.figures(s)
        counts = np.asarray(grid[f"level-{s}/label_counts"][...])
        majority = counts.argmax(axis=2)
        ok = np.isfinite(fig["change"])
        tuned, other = ok & np.isin(majority, photos), ok & ~np.isin(majority, photos)
        row: dict[str, Any] = {"cells": int(ok.sum()), "tuned_cells": int(tuned.sum())}
        for k in FIGURES:
            v = np.abs(fig[k]) if k == "coherence_change" else fig[k]
            t, o = v[tuned & np.isfinite(v)], v[other & np.isfinite(v)]
            row[k] = {"tuned": round(float(t.mean()), 4) if t.size else None,
                      "others": round(float(o.mean()), 4) if o.size else None, "auc": round(auc(t, o), 3),
                      "max_abs": round(float(np.nanmax(np.abs(v[ok]))), 6) if ok.any() else None}
        top = [tuple(rc) for rc in summary["levels"][str(s)]["changed"][:8]]
        row["changed_most_tuned"] = round(float(np.mean([bool(tuned[r, c]) for r, c in top])), 3) if top else None
        row["tuned_share"] = round(float(tuned.sum() / max(ok.sum(), 1)), 3)
        out[str(s)] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=800, help="demo images per run")
    ap.add_argument("--steps", type=int, default=4, help="render steps (the figures do not depend on the icons)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench-compare")
    args = ap.parse_args()
    from atlas.finetune import DEFAULT_PHOTOS, finetune_demo

    work = args.work
    t0 = time.perf_counter()
    weights = finetune_demo(work / "finetuned.pth", size=224, log=print)
    timing = {"finetune": round(time.perf_counter() - t0, 1)}
    common = [f"images.demo_count={args.n}", f"render.steps={args.steps}", "collect.workers=1"]
    base, tuned = work / "base", work / "finetuned"
    timing["run_base"] = round(_atlas("run", "pipelines/demo.yaml", *(f"--set={s}" for s in [f"run_dir={base}", *common])), 1)
    timing["run_finetuned"] = round(_atlas("run", "pipelines/demo.yaml", *(f"--set={s}" for s in
                                                                          [f"run_dir={tuned}", f"model.weights={weights}", *common])), 1)
    timing["compare_self"] = round(_atlas("compare", str(base), str(base), "--name", "self"), 1)
    timing["compare"] = round(_atlas("compare", str(base), str(tuned), "--name", "finetuned"), 1)
    result = {"n": args.n, "photos": list(DEFAULT_PHOTOS), "seconds": timing,
              "self": measure(base / "compare" / "self" / "layout-a", base, DEFAULT_PHOTOS),
              "layout-a": measure(base / "compare" / "finetuned" / "layout-a", base, DEFAULT_PHOTOS),
              "layout-b": measure(base / "compare" / "finetuned" / "layout-b", tuned, DEFAULT_PHOTOS)}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"compare-{args.n}.json").write_text(json.dumps(result, indent=1))
    print(f"| view | grid | cells (fine-tuned) | {' | '.join(f'{k}: tuned / others (AUC)' for k in FIGURES)} | top-8 fine-tuned |")
    print("|---|---|---|" + "---|" * (len(FIGURES) + 1))
    for view in ("layout-a", "layout-b"):
        for s, row in result[view].items():
            figs = " | ".join(f"{row[k]['tuned']} / {row[k]['others']} ({row[k]['auc']})" for k in FIGURES)
            print(f"| {view} | {s} | {row['cells']} ({row['tuned_cells']}) | {figs} | {row['changed_most_tuned']} |")
    worst = max(row[k]["max_abs"] or 0.0 for row in result["self"].values() for k in FIGURES)
    print(f"\nA against A: largest figure of any cell {worst}; seconds {timing}")


if __name__ == "__main__":
    main()
