"""Benchmark: scaling of `collect` with the dask engine, 1 and 2 worker processes, against
the in-process run in the same invocation; the arrays must be identical in all three.

Each run is `atlas collect` in a fresh run directory, timed end to end (cluster start,
model loading and set-up included), on the demo images at the model's 224 px. Torch
threads per process are `cores / processes`, so no run oversubscribes the machine.

    python benchmarks/cluster.py --n 1024
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


def _run(name: str, n: int, extra: list[str], work: Path) -> dict:
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [f"run_dir={run_dir}", f"images.demo_count={n}", "collect.chunk_rows=64", "collect.batch_size=32",
            "collect.attribution=false", *extra]
    cmd = [str(Path(sys.executable).with_name("atlas")), "collect", "pipelines/demo.yaml", *(f"--set={s}" for s in sets)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    return {"run": name, "seconds": round(seconds, 2), "img_per_s": round(n / seconds, 2), "run_dir": str(run_dir)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    work = OUT / "cluster-runs"
    runs = [
        _run("in-process", args.n, [f"collect.threads={cores}", "collect.workers=1"], work),
        _run("dask-1-worker", args.n, ["cluster.engine=dask", "cluster.workers=1", f"collect.threads={cores}",
                                       "collect.workers=1"], work),
        _run("dask-2-workers", args.n, ["cluster.engine=dask", "cluster.workers=2",
                                        f"collect.threads={max(1, cores // 2)}", "collect.workers=1"], work),
    ]
    from tests.conftest import assert_groups_equal

    identical = True
    for r in runs[1:]:
        try:
            assert_groups_equal(Path(r["run_dir"]) / "collect", Path(runs[0]["run_dir"]) / "collect")
        except AssertionError:
            identical = False
    base = runs[0]["seconds"]
    for r in runs:
        r["speedup_vs_in_process"] = round(base / r["seconds"], 3)
    result = {"n": args.n, "cores": cores, "machine": platform.node(), "arrays_identical": identical, "runs": runs}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"cluster-{args.n}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
