"""Rehearsal: a real end-to-end run at scale on this machine, checked against ``atlas estimate``.

Runs ``atlas estimate`` (calibrated here), then every stage of the demo config at
``--images`` images (the demo's seeded crops of the scikit-image photos) with a finer grid,
each stage as its own ``atlas <stage>`` process. While a stage runs, the resident memory of its
process tree is sampled twice a second. One stage (``--kill``) is killed with SIGKILL at a random
moment (``--kill-seed``) and resumed; after the whole run, that stage is run again, uninterrupted,
in a fresh copy of its inputs, and its outputs are compared bit for bit with the resumed ones.

Per stage it prints and writes (``benchmarks/out/rehearsal.json``): seconds (the stage's own,
from its first unit's attempt to its final marker, and the processes' wall time), throughput,
peak memory (PSS of the process tree) and memory at a tenth, half and nine tenths of the stage, disk, share of the total, and the
estimate's prediction beside each.

    python benchmarks/rehearsal.py                        # 50,000 images, grids 16/32/64, kill collect
    python benchmarks/rehearsal.py --images 5000 --kill render --no-reference
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from atlas.estimate import tree_mib

ROOT = Path(__file__).resolve().parents[1]
ATLAS = str(Path(sys.executable).with_name("atlas"))
STAGES = ("collect", "reduce", "grid", "render", "tile")
OUTPUTS = {"collect": "collect", "reduce": "reduce", "grid": "grid", "render": "render", "tile": "tiles"}


class MemSampler(threading.Thread):
    """Samples the memory (MiB) of a process and its descendants every ``period`` seconds: the sum of
    their PSS (each shared page divided among the processes sharing it), so that the decode workers'
    copy-on-write pages are not counted once per worker; RSS where PSS cannot be read."""

    def __init__(self, pid: int, period: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.period, self.samples = pid, period, []
        self._stop_evt, self._t0 = threading.Event(), time.perf_counter()

    def run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop_evt.is_set():
            total = tree_mib(root)  # what `atlas estimate` measures of its calibration collect
            if total:
                self.samples.append((time.perf_counter() - self._t0, total))
            self._stop_evt.wait(self.period)

    def stop(self) -> list[tuple[float, float]]:
        self._stop_evt.set()
        self.join()
        return self.samples


def _sets(run_dir: Path, images: int, sizes: list[int]) -> list[str]:
    out = []
    for s in (f"run_dir={run_dir}", f"images.demo_count={images}", f"grid.sizes={json.dumps(sizes)}"):
        out += ["--set", s]
    return out


def _run(args: list[str], log: Path, kill_after: float | None = None) -> dict[str, Any]:
    """Run ``atlas *args`` (its output to ``log``), sampling RSS; SIGKILL its group after ``kill_after`` s."""
    t0 = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen([ATLAS, *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
                                env={**os.environ, "ATLAS_PROGRESS": "0"})
        sampler = MemSampler(proc.pid)
        sampler.start()
        killed = False
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
    samples = sampler.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0 and not killed:
        raise SystemExit(f"atlas {' '.join(args)} failed ({proc.returncode}); see {log}")
    return {"wall_s": wall, "killed": killed, "samples": samples}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _stage_seconds(run_dir: Path, stage: str) -> float | None:
    from atlas.stages import stage_elapsed
    from atlas.store import RunDir
    return stage_elapsed(RunDir(run_dir), stage)


def _mem_profile(samples: list[tuple[float, float]]) -> dict[str, float]:
    if not samples:
        return {}
    t = np.array([s[0] for s in samples])
    m = np.array([s[1] for s in samples])
    at = {f"mem_{int(q * 100)}pct_mib": round(float(m[min(len(m) - 1, int(np.searchsorted(t, q * t[-1])))]), 1)
          for q in (0.1, 0.5, 0.9)}
    return {"peak_mib": round(float(m.max()), 1), **at}


def _series(samples: list[tuple[float, float]], points: int = 40) -> list[tuple[float, float]]:
    if len(samples) <= points:
        return [(round(a, 1), round(b, 1)) for a, b in samples]
    idx = np.linspace(0, len(samples) - 1, points).round().astype(int)
    return [(round(samples[i][0], 1), round(samples[i][1], 1)) for i in idx]


def _estimate(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    cmd = ["estimate", "demo", "--images", str(args.images), "--json",
           "--calibrate-seconds", str(args.calibrate_seconds), *_sets(run_dir, args.images, args.sizes)[2:]]
    p = subprocess.run([ATLAS, *cmd], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(p.stdout)


def _compare(a: Path, b: Path) -> list[str]:
    """Names of the files (arrays for Zarr groups) that differ between two stage outputs."""
    import zarr
    diffs = []
    if (a / "zarr.json").exists():
        ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
        names_a = sorted(k for k, _ in ga.arrays()) + sorted(f"{g}/{k}" for g, sub in ga.groups() for k, _ in sub.arrays())
        names_b = sorted(k for k, _ in gb.arrays()) + sorted(f"{g}/{k}" for g, sub in gb.groups() for k, _ in sub.arrays())
        if names_a != names_b:
            return [f"array names: {sorted(set(names_a) ^ set(names_b))[:5]}"]
        for name in names_a:
            xa, xb = ga[name][...], gb[name][...]
            if xa.dtype != xb.dtype or xa.shape != xb.shape or not np.array_equal(xa, xb, equal_nan=xa.dtype.kind == "f"):
                diffs.append(name)
        return diffs
    fa = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    fb = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    if fa != fb:
        return [f"file names: {sorted(fa ^ fb)[:5]}"]
    return [f for f in sorted(fa) if (a / f).read_bytes() != (b / f).read_bytes()]


def _reference(args: argparse.Namespace, run_dir: Path, log: Path) -> dict[str, Any]:
    """Run the killed stage uninterrupted on a copy of its inputs; compare with the resumed outputs."""
    ref = run_dir.with_name(run_dir.name + "-reference")
    shutil.rmtree(ref, ignore_errors=True)
    shutil.copytree(run_dir, ref, symlinks=True)
    for name in STAGES[STAGES.index(args.kill):]:
        shutil.rmtree(ref / OUTPUTS[name], ignore_errors=True)
        shutil.rmtree(ref / "state" / name, ignore_errors=True)
    r = _run([args.kill, "demo", *_sets(ref, args.images, args.sizes)], log)
    o = OUTPUTS[args.kill]
    diffs = [f"{o}/{d}" for d in _compare(run_dir / o, ref / o)]
    return {"reference_wall_s": round(r["wall_s"], 1), "identical": not diffs, "differences": diffs[:20]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--sizes", default="16,32,64", help="grid sizes (the finest at least 40 for the rehearsal)")
    ap.add_argument("--run-dir", type=Path, default=ROOT / "benchmarks" / "out" / "rehearsal")
    ap.add_argument("--kill", choices=STAGES, default="collect")
    ap.add_argument("--kill-seed", type=int, default=None, help="seed of the kill moment (default: random, printed)")
    ap.add_argument("--calibrate-seconds", type=int, default=30)
    ap.add_argument("--no-reference", action="store_true", help="skip the uninterrupted rerun of the killed stage")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    seed = args.kill_seed if args.kill_seed is not None else random.SystemRandom().randrange(1 << 31)
    run_dir = args.run_dir.resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(run_dir.with_name(run_dir.name + "-reference"), ignore_errors=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = run_dir.with_name(run_dir.name + ".log")
    log.unlink(missing_ok=True)

    est = _estimate(args, run_dir)
    predicted = {s["stage"]: s for s in est["stages"]}
    print(f"estimate: {est['total_seconds']:.0f} s in all; kill seed {seed}", flush=True)
    results: dict[str, Any] = {}
    for stage in STAGES:
        cmd = [stage, "demo", *_sets(run_dir, args.images, args.sizes)]
        runs = []
        if stage == args.kill:
            frac = random.Random(seed).uniform(0.1, 0.7)
            runs.append(_run(cmd, log, kill_after=frac * max(predicted[stage]["seconds"], 5.0)))
            runs[-1]["kill_fraction_of_estimate"] = round(frac, 3)
            if not runs[-1]["killed"]:
                print(f"{stage}: finished before its kill moment", flush=True)
        if not runs or runs[-1]["killed"]:
            runs.append(_run(cmd, log))
        samples, offset = [], 0.0
        for r in runs:
            samples += [(t + offset, m) for t, m in r["samples"]]
            offset += r["wall_s"]
        res = {"wall_s": round(sum(r["wall_s"] for r in runs), 1), "stage_s": _stage_seconds(run_dir, stage),
               "disk_bytes": _du(run_dir / OUTPUTS[stage]), **_mem_profile(samples),
               "estimate_s": predicted[stage]["seconds"], "estimate_peak_mib": predicted[stage]["peak_mib"],
               "estimate_disk_bytes": predicted[stage]["disk_bytes"], "units": predicted[stage]["units"],
               "detail": predicted[stage]["detail"], "mem_series": _series(samples)}
        if stage == args.kill:
            res["killed_after_s"] = round(runs[0]["wall_s"], 1) if runs[0]["killed"] else None
        results[stage] = res
        print(f"{stage}: {res['wall_s']:.1f} s wall (estimate {res['estimate_s']:.0f} s), peak {res.get('peak_mib')} MiB, "
              f"{res['disk_bytes'] / 1e6:.1f} MB", flush=True)
    total = sum(r["wall_s"] for r in results.values())
    for r in results.values():
        r["share"] = round(r["wall_s"] / total, 3)
        measured = r["stage_s"] or r["wall_s"]
        r["error"] = round(r["estimate_s"] / measured - 1, 3) if measured else None
    out = {"images": args.images, "sizes": args.sizes, "kill": args.kill, "kill_seed": seed,
           "total_wall_s": round(total, 1), "total_stage_s": round(sum(r["stage_s"] or 0 for r in results.values()), 1), "estimate_total_s": est["total_seconds"], "estimate": est,
           "stages": results, "cells": _cells(run_dir)}
    if not args.no_reference:
        out["kill_check"] = _reference(args, run_dir, log)
        print(f"kill check: {out['kill_check']}", flush=True)
    path = ROOT / "benchmarks" / "out" / "rehearsal.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k not in ("estimate",)}, default=str)[:4000])


def _cells(run_dir: Path) -> dict[str, Any]:
    """Non-empty cells per grid level (what render draws)."""
    try:
        from atlas.formats import GridOutput
        from atlas.store import RunDir
        g = GridOutput.open(RunDir(run_dir))
        return {str(s): {"points_2plus": int((g.level(s).count[...] >= 2).sum()), "cells": s * s} for s in g.sizes}
    except Exception as e:  # noqa: BLE001 - a figure for the record, never a reason to fail
        return {"error": repr(e)}


if __name__ == "__main__":
    main()
