"""Benchmark: the reduce stage vs plain umap-learn on the same activations.

Each method runs in its own subprocess (fresh interpreter, so both pay numba's start-up),
which reports its wall time and peak RSS (``ru_maxrss``). Trustworthiness (k=10, cosine)
of both layouts is measured afterwards on the same seeded sample of rows.

    python benchmarks/reduce.py --n 20000                # smoke check
    python benchmarks/reduce.py --n 200000               # ours vs plain umap-learn
    python benchmarks/reduce.py --n 1000000 --methods ours
    python benchmarks/reduce.py --run-dir runs/imagenet  # a real collect run (copied state)

Synthetic data: clustered activations of realistic shape (N x 112, stored float16) written
as a complete ``RUN/collect`` by ``tests/synthetic_collect.py``. Results go to
``benchmarks/out/reduce-<name>.json`` and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT = REPO / "benchmarks" / "out"


def _ok_rows(run_dir: Path) -> np.ndarray:
    import zarr

    return np.flatnonzero(zarr.open_group(str(run_dir / "collect"), mode="r")["status"][:] == 1)


def _activations(run_dir: Path, rows: np.ndarray) -> np.ndarray:
    import zarr

    from atlas.store import read_rows

    g = zarr.open_group(str(run_dir / "collect"), mode="r")
    return read_rows(g["activations"], rows, int(g.attrs["chunk_rows"]))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_ours(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the reduce stage from scratch on run_dir (its previous reduce output removed)."""
    from atlas.config import load_config
    from atlas.stages import get_stage, run_stage

    shutil.rmtree(run_dir / "reduce", ignore_errors=True)
    shutil.rmtree(run_dir / "state" / "reduce", ignore_errors=True)
    cfg = load_config(None, [f"run_dir={run_dir}", *overrides])
    t0 = time.perf_counter()
    run_stage(get_stage("reduce"), cfg)
    wall = time.perf_counter() - t0
    steps = {u: json.loads((run_dir / "state" / "reduce" / "done" / u).read_text()).get("seconds")
             for u in ("knn", "fit")}
    return {"wall_s": wall, "peak_rss_mib": _peak_rss_mib(), "steps_s": steps}


def worker_plain(run_dir: Path, n_neighbors: int, min_dist: float, seed: int, out: Path) -> dict[str, Any]:
    """Plain ``umap.UMAP(...).fit_transform(X)`` on all ok rows (X loaded before timing)."""
    import warnings

    import umap

    x = _activations(run_dir, _ok_rows(run_dir))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric="cosine",
                        random_state=seed).fit_transform(x)
    wall = time.perf_counter() - t0
    np.save(out, emb.astype(np.float32))
    return {"wall_s": wall, "peak_rss_mib": _peak_rss_mib()}


def _spawn(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = time.perf_counter() - t0
    return result


def _trust(run_dir: Path, layouts: dict[str, np.ndarray], sample_size: int, seed: int) -> dict[str, float]:
    """Trustworthiness of each layout (rows = collect rows) on one seeded sample of ok rows."""
    from atlas.ops.layout import normalise_layout, trustworthiness

    ok = _ok_rows(run_dir)
    rng = np.random.default_rng([seed, 99])
    sample = np.sort(rng.choice(ok, size=min(sample_size, ok.size), replace=False))
    x = _activations(run_dir, sample)
    out = {}
    for name, xy in layouts.items():
        out[name] = trustworthiness(x, xy[sample], n_neighbors=10, metric="cosine")
        if not name.endswith("_final"):
            out[name + "_normalised"] = trustworthiness(x, normalise_layout(xy, 1.0, 0.02)[sample], 10, "cosine")
    return out


def _prepare_synthetic(n: int, c: int, seed: int, chunk_rows: int) -> Path:
    from atlas.store import RunDir
    from tests.synthetic_collect import make_collect

    run_dir = OUT / f"work-synthetic-{n}x{c}-s{seed}"
    if not (run_dir / "state" / "collect" / "ready").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.perf_counter()
        bad = np.random.default_rng(seed).choice(n, size=max(1, n // 1000), replace=False)
        make_collect(run_dir, n, c, chunk_rows=chunk_rows, seed=seed, n_classes=1000, top_k=5, bad_rows=bad.tolist())
        (run_dir / "state" / "collect" / "ready").write_text("")
        print(f"wrote synthetic collect {n}x{c} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    # reduce runs only on a finished collect: the runner's final marker
    RunDir(run_dir).mark_done("collect", "final", {"fingerprint": "synthetic-collect", "inputs": {}})
    return run_dir


def _copy_collect(src: Path) -> Path:
    """Work on a copy of a real run's collect so the benchmark never touches its reduce output."""
    dst = OUT / f"work-{src.name}"
    if not (dst / "collect").exists():
        shutil.copytree(src / "collect", dst / "collect")
        shutil.copytree(src / "state" / "collect", dst / "state" / "collect")
    return dst


def _plain_layout(run_dir: Path, path: Path) -> np.ndarray:
    """Plain umap-learn's embedding of the ok rows -> [N, 2] by collect row (NaN elsewhere)."""
    import zarr

    ok = _ok_rows(run_dir)
    full = np.full((zarr.open_group(str(run_dir / "collect"), mode="r")["status"].shape[0], 2), np.nan, np.float32)
    full[ok] = np.load(path)
    return full


def _machine() -> dict[str, Any]:
    import psutil

    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_avg_at_start": os.getloadavg()}


def _table(res: dict[str, Any]) -> str:
    lines = ["| method | N | wall (s) | peak RSS (MiB) | trustworthiness (raw) | trustworthiness (normalised) |",
             "|---|---|---|---|---|---|"]
    for m, r in res["methods"].items():
        t = res["trust"]
        lines.append(f"| {m} | {res['n_ok']:,} | {r['wall_s']:.1f} | {r['peak_rss_mib']:.0f} | "
                     f"{t.get(m, float('nan')):.4f} | {t.get(m + '_normalised', t.get(m + '_final', float('nan'))):.4f} |")
    if "speedup" in res:
        lines.append(f"\nspeed-up ours vs plain: {res['speedup']:.2f}x; "
                     f"trustworthiness difference (ours - plain, raw): {res['trust_diff']:+.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="synthetic rows")
    ap.add_argument("--c", type=int, default=112, help="synthetic channels")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-rows", type=int, default=4096)
    ap.add_argument("--run-dir", type=Path, default=None, help="a real run dir with a complete collect")
    ap.add_argument("--methods", default="ours,plain", help="comma list of ours, plain")
    ap.add_argument("--trust-sample", type=int, default=5000)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="reduce config override, key=value")
    ap.add_argument("--tag", default="", help="suffix of the result file name")
    ap.add_argument("--reuse-plain", action="store_true",
                    help="take plain umap-learn's layout and timing from an earlier run on the same data")
    ap.add_argument("--worker", choices=("ours", "plain"), help=argparse.SUPPRESS)
    ap.add_argument("--worker-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-k", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker == "ours":
        print(json.dumps(worker_ours(a.worker_dir, a.overrides)))
        return
    if a.worker == "plain":
        print(json.dumps(worker_plain(a.worker_dir, a.worker_k, 0.05, a.seed, a.worker_out)))
        return
    run_benchmark(a)


def run_benchmark(a: argparse.Namespace) -> None:
    import zarr

    from atlas.ops.layout import default_n_neighbors

    OUT.mkdir(parents=True, exist_ok=True)
    run_dir = _copy_collect(a.run_dir) if a.run_dir else _prepare_synthetic(a.n, a.c, a.seed, a.chunk_rows)
    name = (a.run_dir.name if a.run_dir else f"synthetic-{a.n}x{a.c}") + (f"-{a.tag}" if a.tag else "")
    n_ok = int(_ok_rows(run_dir).size)
    res: dict[str, Any] = {"name": name, "n_ok": n_ok, "machine": _machine(), "overrides": a.overrides, "methods": {}}
    layouts: dict[str, np.ndarray] = {}
    overrides = [f"seed={a.seed}", *(o if o.startswith("reduce.") else f"reduce.{o}" for o in a.overrides)]
    for method in a.methods.split(","):
        print(f"running {method} on {n_ok:,} points ...", file=sys.stderr, flush=True)
        if method == "ours":
            args = ["--worker", "ours", "--worker-dir", str(run_dir)] + sum((["--set", o] for o in overrides), [])
            res["methods"]["ours"] = _spawn(args)
            g = zarr.open_group(str(run_dir / "reduce"), mode="r")
            layouts["ours"] = np.asarray(g["raw_coords"][:])
            layouts["ours_final"] = np.asarray(g["coords"][:])
            res["ours_attrs"] = {k: g.attrs[k] for k in ("init", "knn_method", "knn_recall", "trustworthiness", "params")}
        elif method == "plain":
            out = OUT / f"plain-{name}.npy"
            res["methods"]["plain"] = _spawn(["--worker", "plain", "--worker-dir", str(run_dir), "--worker-out", str(out),
                                              "--worker-k", str(default_n_neighbors(n_ok)), "--seed", str(a.seed)])
            layouts["plain"] = _plain_layout(run_dir, out)
        print(f"  {method}: {res['methods'][method]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    if a.reuse_plain and "plain" not in res["methods"]:
        earlier_name = a.run_dir.name if a.run_dir else f"synthetic-{a.n}x{a.c}"
        earlier = json.loads((OUT / f"reduce-{earlier_name}.json").read_text())
        res["methods"]["plain"] = earlier["methods"]["plain"] | {"reused_from": f"reduce-{earlier_name}.json"}
        layouts["plain"] = _plain_layout(run_dir, OUT / f"plain-{earlier_name}.npy")
    res["trust"] = _trust(run_dir, layouts, a.trust_sample, a.seed)
    if {"ours", "plain"} <= set(res["methods"]):
        res["speedup"] = res["methods"]["plain"]["wall_s"] / res["methods"]["ours"]["wall_s"]
        res["trust_diff"] = res["trust"]["ours"] - res["trust"]["plain"]
    (OUT / f"reduce-{name}.json").write_text(json.dumps(res, indent=2, default=float))
    print(_table(res))


if __name__ == "__main__":
    main()
