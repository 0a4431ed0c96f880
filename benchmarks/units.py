"""Benchmark: `atlas units` on the demo atlas, one basis after another.

Given a finished demo atlas (``atlas run pipelines/demo.yaml --set run_dir=RUN``: 2,000 images,
Lite0 blocks.5 with 192 channels, grids 4 / 8 / 16), each basis of ``--bases`` runs on its own copy
of it (``--work/<basis>``), through the CLI, with every unit rendered (no ``units.limit``) at the
run's render settings (80-px icons, 72 steps). Per basis:

* the time of the whole analysis, and of its icons per icon (the done markers' ``seconds``);
* the icons' self-rank: its median (chance: (K + 1) / 2) and the share ranked first / in the first five;
* how many distinct labels (the demo's 16 source photos) a unit's top 8 examples span, on average
  over the units (fewer: closer to one concept); and the same for random sets of 8 rows (chance);
* for a learned basis, its reconstruction error (unexplained variance) and sparsity (active units
  per row, units never active);
* the viewer's data per unit: ``unit/<u>.js`` (heatmaps at every grid size, examples), the icon,
  the example crops (shared by units), and ``cells-<s>.js`` / ``index.js`` per unit.

    python benchmarks/units.py --run /tmp/u_demo --bases channels nmf:32 sae:256

Results: ``benchmarks/out/units.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
ATLAS = str(Path(sys.executable).with_name("atlas"))


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def _chance_span(run: Path, n: int = 8, draws: int = 2000) -> float:
    import zarr

    col = zarr.open_group(str(run / "collect"), mode="r")
    labels = col["labels"][...][col["status"][...] == 1]
    rng = np.random.default_rng(0)
    return float(np.mean([np.unique(rng.choice(labels, n, replace=False)).size for _ in range(draws)]))


def _measure(work: Path, basis: str, sets: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    subprocess.run([ATLAS, "units", str(work / "config.yaml"), "--basis", basis, *(f"--set={s}" for s in sets)],
                   cwd=REPO, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    units = work / "units"
    index = json.loads((units / "index.json").read_text())
    done = work / "state" / "units" / "done"
    icon_s = sum(json.loads(p.read_text()).get("seconds", 0.0) for p in done.glob("icons-*"))
    k, n = index["n_units"], index["n_icons"]
    unit_js = _size(list((units / "unit").glob("*.js")))
    icons = _size(list((units / "icons").iterdir()))
    crops = _size(list((units / "examples").iterdir()))
    cells = _size(list(units.glob("cells-*.js")))
    sr, st = index["self_rank"], index["stats"]
    return {"basis": basis, "units": k, "icons": n, "seconds": round(seconds, 1),
            "icon_seconds": round(icon_s, 1), "seconds_per_icon": round(icon_s / max(n, 1), 3),
            "self_rank_median": sr["median"], "self_rank_first": sr["first"], "self_rank_top5": sr["top5"],
            "chance_median": sr["chance_median"], "labels_spanned": round(float(np.mean(index["spans"])), 3),
            "unexplained_variance": st.get("unexplained_variance"), "active_per_row": st["active_per_row"],
            "dead_units": st["dead_units"], "bytes_per_unit": {
                "unit_js": round(unit_js / k), "icon": round(icons / max(n, 1)), "crops": round(crops / k),
                "cells_and_index": round((cells + (units / "index.js").stat().st_size) / k)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished demo atlas (copied, never written)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/units-bench"))
    ap.add_argument("--bases", nargs="+", default=["channels", "nmf:32", "sae:256"])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="more units.* settings")
    ap.add_argument("--reuse", action="store_true", help="measure a basis's finished copy under --work again "
                                                          "(its `seconds` is then a rerun's, which does nothing)")
    args = ap.parse_args()
    rows = []
    for basis in args.bases:
        work = args.work / basis.replace(":", "-")
        if not (args.reuse and (work / "units" / "index.json").is_file()):
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(args.run, work)
            for old in (work / "units", work / "state" / "units"):
                shutil.rmtree(old, ignore_errors=True)
        rows.append(_measure(work, basis, args.sets))
        print(json.dumps(rows[-1]), flush=True)
    chance = round(_chance_span(args.run), 3)
    OUT.mkdir(exist_ok=True)
    (OUT / "units.json").write_text(json.dumps({"rows": rows, "labels_spanned_chance": chance}, indent=1))
    print(f"\n| basis | units | s per icon | self-rank median (chance) | ranked first | first five | labels spanned "
          f"(chance {chance}) | unexplained variance | active per row |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        uv = "-" if r["unexplained_variance"] is None else f"{r['unexplained_variance']:.3f}"
        print(f"| {r['basis']} | {r['units']} | {r['seconds_per_icon']:.2f} | {r['self_rank_median']:g} "
              f"({r['chance_median']:g}) | {r['self_rank_first']:.0%} | {r['self_rank_top5']:.0%} | "
              f"{r['labels_spanned']:.2f} | {uv} | {r['active_per_row']:.1f} |")


if __name__ == "__main__":
    main()
