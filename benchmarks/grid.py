"""Benchmark: the grid stage in this process, on ``cluster.processes`` local processes and on
the dask engine (a LocalCluster of ``cluster.workers`` processes), on a synthetic run.

Each configuration runs in its own subprocess that reports wall time and peak RSS of the
driver (``ru_maxrss``; worker processes are separate and sampled with psutil).

    python benchmarks/grid.py --n 20000            # smoke check
    python benchmarks/grid.py --n 1000000 --sizes 8,16,32,64,128
    python benchmarks/grid.py --modes here,processes=2,dask=2

Results: ``benchmarks/out/grid-<n>.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "out"


def _prepare(n: int, c: int, chunk_rows: int) -> Path:
    from atlas.store import RunDir
    from tests.synthetic_collect import make_collect, make_layout

    root = OUT / f"work-grid-{n}x{c}"
    if not (root / "state" / "collect" / "ready").exists():
        shutil.rmtree(root, ignore_errors=True)
        make_collect(root, n, c, chunk_rows=chunk_rows, seed=0, n_classes=1000, top_k=10, n_labels=100)
        make_layout(root, seed=0)
        (root / "state" / "collect" / "ready").write_text("")
    # the grid runs only on finished inputs: the runner's final markers, chained by fingerprint
    RunDir(root).mark_done("collect", "final", {"fingerprint": "synthetic-collect", "inputs": {}})
    RunDir(root).mark_done("reduce", "final", {"fingerprint": "synthetic-reduce",
                                               "inputs": {"collect": "synthetic-collect"}})
    return root


def _tree_rss_sampler(stop: threading.Event, peak: dict[str, float]) -> None:
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        procs = [me, *me.children(recursive=True)]
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        peak["tree_mib"] = max(peak.get("tree_mib", 0.0), total / 2**20)
        time.sleep(0.1)


def _cluster(mode: str) -> dict[str, Any]:
    """``here`` -> in this process; ``processes=N`` -> N local processes; ``dask=N`` -> the dask engine."""
    kind, _, n = mode.partition("=")
    if kind == "here":
        return {}
    if kind == "processes":
        return {"processes": int(n)}
    if kind == "dask":
        return {"engine": "dask", "workers": int(n)}
    raise SystemExit(f"--modes: {mode!r} is not here, processes=N or dask=N")


def worker(root: Path, mode: str, sizes: list[int]) -> dict[str, Any]:
    from atlas.api import run_stage
    from atlas.config import config_from_dict

    shutil.rmtree(root / "grid", ignore_errors=True)
    shutil.rmtree(root / "state" / "grid", ignore_errors=True)
    cfg = config_from_dict({"run_dir": str(root), "grid": {"sizes": sizes}, "cluster": _cluster(mode)})
    stop, peak = threading.Event(), {}
    th = threading.Thread(target=_tree_rss_sampler, args=(stop, peak), daemon=True)
    th.start()
    t0 = time.perf_counter()
    run_stage("grid", cfg)  # on the config's engine (the dask one starts its LocalCluster here: timed)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    return {"wall_s": wall, "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "process_tree_peak_rss_mib": peak.get("tree_mib")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--c", type=int, default=112)
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--sizes", default="8,16,32,64")
    ap.add_argument("--modes", default="here,processes=2,dask=2",
                    help="comma list of: here (in-process), processes=N (cluster.processes), dask=N (the dask engine)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.worker is not None:
        print(json.dumps(worker(a.root, a.worker, sizes)))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    root = _prepare(a.n, a.c, a.chunk_rows)
    res: dict[str, Any] = {"n": a.n, "c": a.c, "sizes": sizes, "runs": {}}
    for mode in a.modes.split(","):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--root", str(root), "--sizes", a.sizes]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
        res["runs"][mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    (OUT / f"grid-{a.n}.json").write_text(json.dumps(res, indent=2))
    print("| run | N | wall (s) | driver peak RSS (MiB) | process tree peak RSS (MiB) |\n|---|---|---|---|---|")
    for name, r in res["runs"].items():
        print(f"| {name} | {a.n:,} | {r['wall_s']:.1f} | {r['driver_peak_rss_mib']:.0f} | {r['process_tree_peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
