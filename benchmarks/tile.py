"""Benchmark: wall time, throughput and peak memory of `atlas tile` on synthetic atlases.

Atlases (tests/synthetic_atlas.py: textured synthetic icons, blob-shaped occupancy):

* ``demo``: the demo pipeline's shape, grids [4, 8, 16] with 48-px finest icons grown by
  ``render.icon_growth`` 0.5 (96 / 68 / 48 px: pyramids of 384, 544 and 768 px), 20 classes,
  dataset example crops on (small PNG source images);
* ``160``: grids [5, 10, 20, 40, 80, 160] with 80-px finest icons (453 ... 80 px: pyramids of
  2265 to 12800 px), 1000 classes (the class heat files), example crops off unless ``--examples``.

Each tile run is a fresh subprocess (peak RSS measured per run), with ``cluster.processes`` 0
(one process) and 2. Also measured: the grid's ``class_attribution`` on disk (finest level,
float16 Zarr as the grid stage writes it) and the heat files; with ``--browser``, the time
headless Chromium takes to load and decode one class's heat file of the finest grid.
Writes ``benchmarks/out/tile.json`` and prints a table.

    python benchmarks/tile.py                 # both atlases, workers 0 and 2
    python benchmarks/tile.py --only demo --workers 0
    python benchmarks/tile.py --only 160 --workers 0 --browser
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
sys.path.insert(0, str(ROOT))

ATLASES = {
    "demo": {"sizes": [4, 8, 16], "icon": 48, "examples": True, "classes": 20},
    "160": {"sizes": [5, 10, 20, 40, 80, 160], "icon": 80, "examples": False, "classes": 1000},
}

# Peak memory is sampled in the child (psutil, every 20 ms: its own RSS, and its own plus its
# tile workers' at the same moment): ru_maxrss would report the parent's high-water mark,
# which survives fork + exec on Linux.
_CHILD = """
import json, sys, threading, time
sys.path.insert(0, {root!r})
import psutil
proc, peak = psutil.Process(), {{"own": 0.0, "total": 0.0}}
def sample():
    while True:
        try:
            own = proc.memory_info().rss
            total = own + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            continue
        peak["own"], peak["total"] = max(peak["own"], own), max(peak["total"], total)
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
from atlas.config import load_config
from atlas.stages import get_stage, run_stage
cfg = load_config(None, {overrides!r})
t0 = time.perf_counter()
run_stage(get_stage("tile"), cfg)
wall = time.perf_counter() - t0
time.sleep(0.05)
print(json.dumps({{"wall_s": wall, "peak_rss_mb": peak["own"] / 1e6, "peak_total_rss_mb": peak["total"] / 1e6}}))
"""


def _icon_sizes(spec: dict) -> dict[int, int]:
    """Each grid's icon side by the render rule (``render.icon_growth`` 0.5)."""
    from atlas.config import RenderConfig

    return {s: RenderConfig(icon_size=spec["icon"]).level_icon_size(s, spec["sizes"][-1]) for s in spec["sizes"]}


def _build(name: str, spec: dict, work: Path, examples: bool) -> tuple[Path, dict, float]:
    from tests.synthetic_atlas import make_atlas

    run_dir = work / name / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    info = make_atlas(run_dir, sizes=spec["sizes"], icon=spec["icon"], icon_sizes=_icon_sizes(spec), pattern="texture",
                      examples=8, write_images=examples, icon_chunk=256, n_classes=spec["classes"])
    _mark_inputs_finished(run_dir)
    return run_dir, info, time.perf_counter() - t0


def _mark_inputs_finished(run_dir: Path) -> None:
    """The tile stage runs only on finished inputs (their ``final`` markers, each naming its own
    inputs' fingerprints): mark the synthetic stages finished where the fixture did not."""
    from atlas.stages import STAGES, final_info, get_stage
    from atlas.store import RunDir

    run = RunDir(run_dir)
    for name in STAGES[:STAGES.index("tile")]:
        if final_info(run, name) is None:
            inputs = {i: f"synthetic-{i}" for i in get_stage(name).inputs}
            run.mark_done(name, "final", {"fingerprint": f"synthetic-{name}", "inputs": inputs})


def _tile(run_dir: Path, spec: dict, workers: int, examples: bool) -> dict:
    for p in (run_dir / "tiles", run_dir / "state" / "tile"):
        shutil.rmtree(p, ignore_errors=True)
    # grid sizes are read from RUN/grid; the config value only has to pass validation
    overrides = [f"run_dir={run_dir}", f"cluster.processes={workers}"]
    if not examples:
        overrides.append("tile.example_levels=0")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    code = _CHILD.format(root=str(ROOT), overrides=overrides)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    total = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"tile failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["process_wall_s"] = total
    tiles = run_dir / "tiles"
    files = [f for f in tiles.rglob("*") if f.is_file()]
    res["tiles"] = sum(1 for d in tiles.glob("grid-*_files") for f in d.rglob("*") if f.is_file())
    heat = [f for f in (tiles / "heat").rglob("*.js")] if (tiles / "heat").exists() else []
    finest = [f for f in heat if f.parent.name == str(spec["sizes"][-1])]
    res["heat_files"], res["heat_mb"] = len(heat), sum(f.stat().st_size for f in heat) / 1e6
    res["heat_finest_kb_per_class"] = sum(f.stat().st_size for f in finest) / max(len(finest), 1) / 1e3
    res["files"] = len(files)
    res["icon_files"] = sum(1 for f in (tiles / "icons").rglob("*") if f.is_file())
    res["example_files"] = sum(1 for f in (tiles / "examples").rglob("*") if f.is_file()) if (tiles / "examples").exists() else 0
    res["mb"] = sum(f.stat().st_size for f in files) / 1e6
    res["tiles_per_s"] = res["tiles"] / res["wall_s"]
    return res


def _heat_load_ms(tiles: Path, size: int) -> dict[str, float]:
    """Median and max ms headless chromium takes to load and decode one finest-grid heat file (5 classes),
    the page served from disk."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page(viewport={"width": 1280, "height": 800})
        page.goto((tiles / "index.html").as_uri())
        page.wait_for_function("window.atlasViewer && window.atlasViewer.state.firstTileMs !== null", timeout=60_000)
        ms = page.evaluate(f"""async () => {{ const a = window.atlasViewer, out = [];
            for (const k of window.ATLAS.search_classes.slice(0, 5)) {{ await a.loadHeat({size}, k); out.push(a.state.heatMs['{size}:' + k]); }}
            return out; }}""")
        b.close()
    ms = sorted(ms)
    return {"median": round(ms[len(ms) // 2], 1), "max": round(ms[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(ATLASES), action="append", help="atlas to run (repeatable; default all)")
    ap.add_argument("--workers", default="0,2", help="comma-separated cluster.processes values (default 0,2)")
    ap.add_argument("--examples", action="store_true", help="also crop dataset examples on the 160 atlas")
    ap.add_argument("--work", default=str(OUT / "tile-work"), help="scratch folder for the synthetic runs")
    ap.add_argument("--browser", action="store_true", help="time loading a finest-grid heat file in headless chromium")
    args = ap.parse_args()
    work = Path(args.work)
    workers = [int(w) for w in args.workers.split(",")]
    results = []
    for name in args.only or list(ATLASES):
        spec = ATLASES[name]
        examples = spec["examples"] or args.examples
        run_dir, info, build_s = _build(name, spec, work, examples)
        cells = {s: int((info["count"][s] >= 2).sum()) for s in spec["sizes"]}
        finest = spec["sizes"][-1]
        ca = run_dir / "grid" / f"level-{finest}" / "class_attribution"
        ca_mb = sum(f.stat().st_size for f in ca.rglob("*") if f.is_file()) / 1e6
        for w in workers:
            r = _tile(run_dir, spec, w, examples)
            r.update({"atlas": name, "sizes": spec["sizes"], "icon": spec["icon"], "icon_sizes": _icon_sizes(spec),
                      "canvas": finest * spec["icon"], "non_empty_cells": cells, "images": info["n"], "examples": examples,
                      "workers": w, "build_fixture_s": build_s, "classes": spec["classes"],
                      "class_attribution_finest_mb": ca_mb,
                      "class_attribution_finest_raw_mb": finest * finest * spec["classes"] * 2 / 1e6})
            if args.browser and w == workers[-1]:
                r["heat_load_ms"] = _heat_load_ms(run_dir / "tiles", finest)
            results.append(r)
            print(f"{name}: workers={w} {r['wall_s']:.1f} s", flush=True)
        shutil.rmtree(work / name, ignore_errors=True)
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg()}
    (OUT / "tile.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\n{'atlas':6s} {'canvas':>7s} {'workers':>7s} {'tiles':>6s} {'icons':>6s} {'crops':>6s} {'files':>6s} "
          f"{'MB':>7s} {'wall s':>7s} {'tiles/s':>8s} {'peak MB':>8s}")
    for r in results:
        peak = r["peak_total_rss_mb"]
        print(f"{r['atlas']:6s} {r['canvas']:7d} {r['workers']:7d} {r['tiles']:6d} {r['icon_files']:6d} "
              f"{r['example_files']:6d} {r['files']:6d} {r['mb']:7.1f} {r['wall_s']:7.1f} {r['tiles_per_s']:8.1f} {peak:8.0f}")
    print("peak MB: resident memory of the tile process plus its workers, sampled every 20 ms")
    for r in results:
        print(f"{r['atlas']}: class_attribution of the finest grid {r['class_attribution_finest_mb']:.1f} MB on disk "
              f"({r['class_attribution_finest_raw_mb']:.1f} MB raw float16), heat files {r['heat_files']} / {r['heat_mb']:.1f} MB "
              f"({r['heat_finest_kb_per_class']:.1f} kB per class on the finest grid)"
              + (f", browser load + decode {r['heat_load_ms']}" if "heat_load_ms" in r else ""))
    print(f"\n-> {OUT / 'tile.json'}  (load average at end: {meta['load_avg_at_end']})")


if __name__ == "__main__":
    main()
