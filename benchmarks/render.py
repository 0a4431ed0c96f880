"""Benchmark: icon quality per step and per second, and the speed of the render loop.

Quality (the default mode): every non-empty cell of every level of a real grid (default:
the demo at 2,000 images, EfficientNet-Lite0 ``blocks.5``, grids 4/8/16, in
``/tmp/bench-render/demo``; built once with ``atlas run demo --stages collect,reduce,grid``
when missing) is rendered with :func:`atlas.ops.inversion.render_icons`, once per idea and
step budget, batched per level as the render stage does. Each icon is measured twice:

* faithfulness: cosine between the final icon's reduced activation and its cell's target
  (also reported under both reductions, ``mean`` and ``center``, whatever was optimised);
* distinctness: the rank of its own cell among all cell targets of its level by cosine
  to the icon's activation (:func:`atlas.ops.objectives.own_rank`); retrieval@1 and @5
  are the shares of icons whose own cell ranks first / in the first five.

An idea is a set of render settings on top of the preset's (``IDEAS``; ``a+b`` merges,
``name={json}`` adds settings, an idea may fix its own ``steps``); ``baseline`` is today's
renderer, ``chosen`` the settings the measurements chose, ``CURVES`` the curves in
docs/benchmarks.md. Seconds are the wall time of the rendering only; the machine is
shared, so compare settings alternated within one invocation (set
``OMP_WAIT_POLICY=PASSIVE`` on a loaded CPU: spinning OpenMP threads inflate every time).

Speed (``--mode speed``): milliseconds per optimisation step (parameterisation, transforms,
network forward + backward, Adam) of one batch, every variant once per round in turn: the
network as the render stage builds it (BatchNorm folded, NCHW on the CPU) against
channels_last and unfolded; each parameterisation and transform set; one icon at a time;
``torch.compile`` with ``--compile``; and on CUDA the batch size that fits the free memory.

    python benchmarks/render.py --preset demo --set '{"icon_size": 80}' --ideas curves --steps 32,64,128 --every 2
    python benchmarks/render.py --preset demo --set '{"icon_size": 80}' --steps 1 \
        --ideas 'baseline={"icon_size":48,"steps":128};chosen={"steps":72};baseline={"icon_size":48,"steps":128}'
    python benchmarks/render.py --preset full --ideas baseline,chosen --every 3
    python benchmarks/render.py --mode speed --preset demo --set '{"icon_size": 80}' --compile
    python benchmarks/render.py --preset gpu                      # CUDA: the curves at 80 px, 64 to 1,024 steps
    python benchmarks/render.py --report benchmarks/out/render-demo.json   # the curves as a table

Results are merged into ``benchmarks/out/render-<preset>.json`` (one record per idea, step
budget and ``--every``; a rerun replaces its records) and printed as markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
DEFAULT_RUN = Path("/tmp/bench-render/demo")

PRESETS: dict[str, dict[str, Any]] = {
    # the demo's render settings before the measurements (48 px, 128 steps); pipelines/demo.yaml now has
    # 80 px at 72 steps: --set '{"icon_size": 80}' with the idea chosen={"steps":72}
    "demo": {"device": "cpu", "render": {"icon_size": 48, "steps": 128, "batch_size": 64}, "steps": [32, 64, 128, 256]},
    # RenderConfig's defaults
    "full": {"device": "cpu", "render": {"icon_size": 80, "steps": 512, "batch_size": 100}, "steps": [128, 256, 512]},
    # the same on a GPU: the curves (CURVES), more steps
    "gpu": {"device": "cuda", "render": {"icon_size": 80, "steps": 512, "batch_size": 100},
            "steps": [64, 128, 256, 512, 1024]},
}

# Each idea: render settings on top of the preset's (names of RenderConfig + atlas.ops.inversion.DEFAULTS).
IDEAS: dict[str, dict[str, Any]] = {
    # the renderer before the measurements (RenderConfig's defaults then)
    "baseline": {"coarse": 0.0, "transforms": "standard", "polish": 0.1, "cossim_power": 4.0},
    "icon-tf": {"transforms": "icon"},                                # transforms that keep the icon's size
    "no-tf": {"transforms": "none"},
    "cosine": {"schedule": "cosine", "warmup": 0.05},                 # warm-up + cosine decay per phase, lr 0.05
    "cosine-lr.1": {"schedule": "cosine", "warmup": 0.05, "lr": 0.1},
    "cosine-lr.2": {"schedule": "cosine", "warmup": 0.05, "lr": 0.2},
    "nadam": {"optimizer": "nadam"},
    "radam": {"optimizer": "radam"},
    "maco": {"param": "maco", "lr": 0.2},                             # phase only, 1/f magnitude
    "maco-lr1": {"param": "maco", "lr": 1.0},
    "maco-photo": {"param": "maco", "lr": 0.2, "magnitude": "photos"},  # magnitude of the demo photos
    "pyramid": {"param": "pyramid"},
    "coarse": {"coarse": 0.5},                                        # first half at half the side
    "coarse.75": {"coarse": 0.75},
    "whiten": {"whiten": True, "whiten_mix": 1.0},                    # S v (Distill)
    "whiten.5": {"whiten": True, "whiten_mix": 0.5},                  # halfway between v and S v
    "whiten.25": {"whiten": True, "whiten_mix": 0.25},
    "example-init": {"init": "example"},                              # from the cell's nearest dataset patch
    "k2-objective": {"restarts": 2},                                  # best of 2 by the objective
    "k2-cossim": {"restarts": 2, "select": "cossim"},                 # best of 2 by faithfulness
    "polish.0": {"polish": 0.0},
    "polish.2": {"polish": 0.2},
    "polish.3": {"polish": 0.3},
    "polish.5": {"polish": 0.5},
    "power2": {"cossim_power": 2.0},
    "power8": {"cossim_power": 8.0},
    "lr.1": {"lr": 0.1},
    "center": {"reduce": "center"},                                   # Lucid's direction_neuron: the centre position
    "power16": {"cossim_power": 16.0},
    "mean-reduce": {"reduce": "mean"},
    "no-coarse": {"coarse": 0.0},
    "standard-tf": {"transforms": "standard"},
    "polish.1": {"polish": 0.1},
    "power4": {"cossim_power": 4.0},
    "80px": {"icon_size": 80},
    "48px": {"icon_size": 48},
    # steps towards the settings the measurements chose; "chosen" is them (atlas.ops.inversion DEFAULTS / _BASE)
    "tuned": {"transforms": "icon", "polish": 0.5, "cossim_power": 8.0},
    "chosen": {"transforms": "icon", "polish": 0.5, "cossim_power": 8.0, "coarse": 0.5},
}


# The curves in docs/benchmarks.md: today's renderer, the chosen settings, and each idea changed on top of them.
CURVES = ["baseline", "chosen", "baseline+48px", "chosen+48px", "chosen+center", "chosen+no-coarse",
          "chosen+standard-tf+polish.1", "chosen+power4", "chosen+cosine", "chosen+nadam", "chosen+maco",
          "chosen+pyramid", "chosen+whiten", "chosen+whiten.5", "chosen+whiten.25", "chosen+example-init", "chosen+k2-objective",
          "chosen+k2-cossim"]


# --------------------------------------------------------------------------- inputs


def _ensure_run(run: Path) -> None:
    """Build the demo run's collect, reduce and grid stages once, if the grid is missing."""
    if (run / "grid").is_dir() and (run / "state" / "grid" / "done").exists():
        return
    atlas = Path(sys.executable).with_name("atlas")
    cmd = [str(atlas), "run", "demo", "--set", f"run_dir={run}", "--stages", "collect,reduce,grid"]
    print("building the benchmark's grid:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _levels(run: Path) -> tuple[dict[int, dict[str, np.ndarray]], np.ndarray]:
    """Per level: cells [n, 2], targets float32 [n, C], example rows [n], example positions [n, 2]
    of the non-empty cells (as the render stage picks them, row-major); and the whitening [C, C]."""
    import zarr

    g = zarr.open_group(str(run / "grid"), mode="r")
    min_count = int(g.attrs["min_count"])
    out = {}
    for s in sorted(int(v) for v in g.attrs["sizes"]):
        count = np.asarray(g[f"level-{s}/count"][...])
        mean = np.asarray(g[f"level-{s}/mean_activation"][...], dtype=np.float32)
        keep = (count >= min_count) & np.isfinite(mean).all(axis=2) & (np.abs(mean).sum(axis=2) > 0)
        rows, cols = np.nonzero(keep)
        ex = np.asarray(g[f"level-{s}/examples"][...])[rows, cols, 0]
        pos = np.asarray(g[f"level-{s}/example_positions"][...])[rows, cols, 0]
        out[s] = {"cells": np.stack([rows, cols], 1), "targets": mean[rows, cols], "example": ex, "position": pos}
    return out, np.asarray(g["whitening"][...], dtype=np.float64)


def _example_patches(run: Path, rows: np.ndarray, positions: np.ndarray, size: int, window: float = 3.0) -> torch.Tensor:
    """The dataset-example patch of each cell, as the render stage's ``render.init: example`` makes it."""
    from atlas.config import ImagesConfig
    from atlas.stages.render import example_patches
    from atlas.store import RunDir

    images = ImagesConfig()
    patches, _ = example_patches(RunDir(run), rows, positions, size, window=window, images=images)
    return patches


def _photo_magnitude(size: int, n: int = 64) -> torch.Tensor:
    """Mean spectrum magnitude of ``n`` demo crops at ``size`` px: [3, size, size // 2 + 1] (MACO's natural magnitude)."""
    from atlas.ops.param import spectrum_magnitude
    from atlas.sources import demo_image

    imgs = np.stack([np.asarray(demo_image(i, size), dtype=np.float32) / 255.0 for i in range(n)])
    return spectrum_magnitude(torch.from_numpy(imgs).permute(0, 3, 1, 2))


# --------------------------------------------------------------------------- quality


def _settings(base: dict[str, Any], idea: dict[str, Any], steps: int) -> types.SimpleNamespace:
    from atlas.config import RenderConfig

    merged = {**RenderConfig().model_dump(), **base, "steps": steps, **idea}  # an idea may fix its own steps
    return types.SimpleNamespace(**merged)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _render_all(acts: Any, run: Path, levels: dict[int, dict[str, np.ndarray]], whitening: np.ndarray,
                settings: types.SimpleNamespace, every: int, seed: int, save_icons: Path | None = None) -> dict[str, Any]:
    """Render the (every ``every``-th) cells of every level; faithfulness and distinctness per level."""
    from atlas.ops.inversion import render_icons
    from atlas.ops.objectives import cosine, own_rank, retrieval_at

    device = acts.device
    s_mat = torch.from_numpy(whitening) if getattr(settings, "whiten", False) else None
    magnitude = _photo_magnitude(settings.icon_size) if getattr(settings, "magnitude", None) == "photos" else None
    per_level, seconds, cpu, all_cos, all_ranks = {}, 0.0, 0.0, [], []
    all_both: dict[str, list[np.ndarray]] = {"mean": [], "center": []}
    for s, lvl in levels.items():
        idx = np.arange(0, len(lvl["targets"]), every)
        targets = torch.from_numpy(lvl["targets"])
        init_all = None
        if getattr(settings, "init", "noise") == "example":
            init_all = _example_patches(run, lvl["example"][idx], lvl["position"][idx], settings.icon_size)
        acts_out, cos, icons = [], [], []
        both: dict[str, list[np.ndarray]] = {"mean": [], "center": []}
        for b, lo in enumerate(range(0, len(idx), settings.batch_size)):
            sel = idx[lo:lo + settings.batch_size]
            init = None if init_all is None else init_all[lo:lo + settings.batch_size]
            gen = torch.Generator().manual_seed(seed + 1000 * s + b)
            _sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            res = render_icons(acts, targets[sel], settings, generator=gen, whitening=s_mat, init_images=init,
                               magnitude=magnitude)
            _sync(device)
            seconds += time.perf_counter() - t0
            cpu += time.process_time() - c0
            acts_out.append(res.activation)
            cos.append(res.cossim)
            icons.append(res.icons)
            with torch.no_grad():  # the stored icon's cosine under both reductions, whatever was optimised
                x = torch.from_numpy(res.icons).to(device).permute(0, 3, 1, 2).float() / 255.0
                h = acts(acts.normalize(x)).float()
                t = targets[sel].to(device)
                both["mean"].append(cosine(h, t, "mean").cpu().numpy())
                both["center"].append(cosine(h, t, "center").cpu().numpy())
        c = np.concatenate(cos)
        ranks = own_rank(torch.from_numpy(np.concatenate(acts_out)), targets, torch.from_numpy(idx)).numpy()
        per_level[str(s)] = {"icons": len(idx), "cells": len(targets), "median_cossim": float(np.median(c)),
                             "p10_cossim": float(np.percentile(c, 10)),
                             "retrieval@1": retrieval_at(torch.from_numpy(ranks), 1),
                             "retrieval@5": retrieval_at(torch.from_numpy(ranks), 5),
                             "median_rank": float(np.median(ranks)),
                             **{f"median_cossim_{k}_reduce": float(np.median(np.concatenate(v))) for k, v in both.items()}}
        for k, v in both.items():
            all_both[k].append(np.concatenate(v))
        all_cos.append(c)
        all_ranks.append(ranks)
        if save_icons is not None:
            from PIL import Image

            from atlas.ops.canvas import icon_mosaic

            mosaic = icon_mosaic(np.concatenate(icons), lvl["cells"][idx], s)
            save_icons.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mosaic).save(save_icons.with_name(f"{save_icons.name}-level{s}.png"))
    c, ranks = np.concatenate(all_cos), np.concatenate(all_ranks)
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "icons": len(c), "median_cossim": float(np.median(c)),
            "p10_cossim": float(np.percentile(c, 10)), "retrieval@1": float((ranks <= 1).mean()),
            "retrieval@5": float((ranks <= 5).mean()),
            **{f"median_cossim_{k}_reduce": float(np.median(np.concatenate(v))) for k, v in all_both.items()},
            "levels": per_level}


def _quality(args: argparse.Namespace, preset: dict[str, Any], acts: Any,
             save: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    run = Path(args.run)
    _ensure_run(run)
    levels, whitening = _levels(run)
    base = {**preset["render"], **json.loads(args.set or "{}")}
    steps_list = [int(v) for v in args.steps.split(",")] if args.steps else preset["steps"]
    ideas = {"all": list(IDEAS), "curves": CURVES}.get(args.ideas) or args.ideas.split(";" if ";" in args.ideas else ",")
    records = []
    # warm the network and allocator once, outside every timing
    _render_all(acts, run, {s: {k: v[:2] for k, v in lv.items()} for s, lv in list(levels.items())[:1]}, whitening,
                _settings(base, {}, 2), 1, 0)
    for steps in steps_list:
        for name in ideas:
            idea = _parse_idea(name)
            stem = None
            if args.save_icons:
                stem = OUT / "icons" / f"{args.preset}-{name}-{steps}".replace("/", "_").replace('"', "").replace(" ", "")
            res = _render_all(acts, run, levels, whitening, _settings(base, idea, steps), args.every, args.seed, stem)
            rec = {"idea": name, "settings": idea, "steps": int(idea.get("steps", steps)), "every": args.every, **res}
            records.append(rec)
            save(rec)
            lv = " ".join(f"{s}:{v['median_cossim']:.2f}/{v['retrieval@1']:.2f}" for s, v in res["levels"].items())
            print(f"{name:>16} {rec['steps']:5d} steps {res['seconds']:7.1f} s {res['cpu_seconds']:7.1f} cpu-s  cossim {res['median_cossim']:.3f}  "
                  f"r@1 {res['retrieval@1']:.3f}  r@5 {res['retrieval@5']:.3f}  (mean/center reduce: "
                  f"{res['median_cossim_mean_reduce']:.3f}/{res['median_cossim_center_reduce']:.3f})  [{lv}]", flush=True)
    return records


def _parse_idea(name: str) -> dict[str, Any]:
    """An idea by name, or ``a+b`` (merged, later wins), or ``{json}`` / ``name={json}`` for ad-hoc settings."""
    if "=" in name and name.split("=", 1)[1].startswith("{"):
        head, js = name.split("=", 1)
        return {**_parse_idea(head), **json.loads(js)} if head else json.loads(js)
    out: dict[str, Any] = {}
    for part in name.split("+"):
        if part not in IDEAS:
            raise SystemExit(f"unknown idea {part!r}; ideas: {', '.join(IDEAS)}")
        out.update(IDEAS[part])
    return out


# --------------------------------------------------------------------------- speed


class _Loop:
    """One optimisation step of ``batch`` icons (parameterisation -> transforms -> network -> objective
    -> backward -> Adam), as :func:`atlas.ops.inversion.render_icons` runs it."""

    def __init__(self, acts: Any, size: int, batch: int, *, param: str = "fft", transforms: str = "standard",
                 call: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        from atlas.ops.inversion import make_param, resolve
        from atlas.ops.transforms import named_transforms

        self.acts, self.call = acts, call or acts
        self.gen = torch.Generator().manual_seed(0)
        r = resolve(types.SimpleNamespace(param=param, icon_size=size))
        self.params, self.image_fn = make_param(r, batch, size, generator=self.gen, device=acts.device)
        self.v = torch.randn(batch, acts.shape[0], generator=self.gen).to(acts.device)
        self.opt = torch.optim.Adam(self.params, lr=0.05)
        self.tf = named_transforms(transforms, size)

    def step(self) -> float:
        from atlas.ops.objectives import direction_cossim

        _sync(self.acts.device)
        t0 = time.perf_counter()
        self.opt.zero_grad()
        h = self.call(self.acts.normalize(self.tf(self.image_fn(), self.gen))).float()
        (-direction_cossim(h, self.v, power=4.0).sum()).backward()
        self.opt.step()
        _sync(self.acts.device)
        return time.perf_counter() - t0


def _interleaved(loops: dict[str, _Loop], rounds: int) -> dict[str, dict[str, float]]:
    """Time every loop once per round, in turn (2 untimed warm-up rounds): min and median seconds per step."""
    times: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(rounds + 2):
        for k, loop in loops.items():
            t = loop.step()
            if r >= 2:
                times[k].append(t)
    return {k: {"min": float(np.min(v)), "median": float(np.median(v))} for k, v in times.items()}


def _speed(args: argparse.Namespace, preset: dict[str, Any], net: Any, device: torch.device) -> dict[str, Any]:
    """Seconds per step of the network variants (interleaved, so load hits all alike), of the
    parameterisations and transform sets, batched against one at a time; torch.compile apart."""
    from atlas.models._activations import LayerActivations
    from atlas.ops.inversion import fit_batch_size

    base = {**preset["render"], **json.loads(args.set or "{}")}
    size, batch = int(base["icon_size"]), min(int(base["batch_size"]), args.speed_batch)
    cl = device.type == "cuda"
    nets = {
        "folded BN, NCHW (render stage today on CPU)": LayerActivations(net, args.layer, device, channels_last=False),
        "folded BN, channels_last (collect's setting)": LayerActivations(net, args.layer, device, channels_last=True),
        "unfolded BN, NCHW": LayerActivations(net, args.layer, device, fold_bn=False, channels_last=False),
    }
    stage = LayerActivations(net, args.layer, device, channels_last=cl)
    half = max(8, size // 2)
    loops = {f"network: {k}": _Loop(a, size, batch) for k, a in nets.items()}
    loops.update({
        f"fft {size} px, standard transforms": _Loop(stage, size, batch),
        f"fft {size} px, icon transforms": _Loop(stage, size, batch, transforms="icon"),
        f"fft {half} px, icon transforms (coarse phase)": _Loop(stage, half, batch, transforms="icon"),
        f"fft {size} px, no transforms (polish)": _Loop(stage, size, batch, transforms="none"),
        f"maco {size} px, icon transforms": _Loop(stage, size, batch, param="maco", transforms="icon"),
        f"pyramid {size} px, icon transforms": _Loop(stage, size, batch, param="pyramid", transforms="icon"),
        f"fft {size} px, standard, one icon": _Loop(stage, size, 1),
    })
    res = _interleaved(loops, args.repeats)
    out: dict[str, Any] = {"icon_size": size, "batch": batch, "rounds": args.repeats, "per_step": res}
    for k, v in res.items():
        print(f"{k:>58}: {v['min'] * 1000:8.1f} ms/step min, {v['median'] * 1000:8.1f} median", flush=True)
    one = res[f"fft {size} px, standard, one icon"]["min"]
    out["batched speed-up (per icon-step, min)"] = one * batch / res[f"fft {size} px, standard transforms"]["min"]
    print(f"batched vs one at a time: {out['batched speed-up (per icon-step, min)']:.2f}x per icon", flush=True)
    if args.compile:
        t0 = time.perf_counter()
        try:
            compiled = torch.compile(stage.__call__, dynamic=False)
            loop = _Loop(stage, size, batch, call=compiled)
            for _ in range(2):
                loop.step()
            out["compile_seconds"] = time.perf_counter() - t0
            ref = _Loop(stage, size, batch)
            both = _interleaved({"eager": ref, "compiled": loop}, args.repeats)
            out["torch.compile"] = both
            print(f"torch.compile: {both['compiled']['min'] * 1000:.1f} ms/step against eager "
                  f"{both['eager']['min'] * 1000:.1f} (compiling: {out['compile_seconds']:.0f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - report, do not fail the benchmark
            out["torch.compile"] = f"failed: {type(e).__name__}: {str(e)[:200]}"
            print("torch.compile failed:", out["torch.compile"], flush=True)
    out["fit_batch_size"] = fit_batch_size(stage, size)
    return out


# --------------------------------------------------------------------------- main


def _table(records: list[dict[str, Any]]) -> str:
    lines = ["| idea | steps | seconds | CPU seconds | median cossim | p10 | retrieval@1 | retrieval@5 | per level (cossim / r@1) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lv = ", ".join(f"{s}: {v['median_cossim']:.2f} / {v['retrieval@1']:.2f}" for s, v in r["levels"].items())
        lines.append(f"| {r['idea']} | {r['steps']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['median_cossim']:.3f} | "
                     f"{r['p10_cossim']:.3f} | {r['retrieval@1']:.3f} | {r['retrieval@5']:.3f} | {lv} |")
    return "\n".join(lines)


def _pivot(records: list[dict[str, Any]]) -> str:
    """Curves as a markdown table: one row per idea, per step budget ``median cossim / retrieval@1 (seconds)``."""
    steps = sorted({r["steps"] for r in records})
    ideas = list(dict.fromkeys(r["idea"] for r in records))
    by = {(r["idea"], r["steps"]): r for r in records}
    head = "| idea | " + " | ".join(f"{s} steps: cossim / r@1 (s)" for s in steps) + " |"
    lines = [head, "|---|" + "---|" * len(steps)]
    for i in ideas:
        cells = []
        for s in steps:
            r = by.get((i, s))
            cells.append("" if r is None else f"{r['median_cossim']:.3f} / {r['retrieval@1']:.2f} ({r['seconds']:.0f})")
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=tuple(PRESETS), default="demo")
    ap.add_argument("--mode", choices=("quality", "speed"), default="quality")
    ap.add_argument("--ideas", default="baseline", help=f"comma- (or, with JSON, semicolon-) separated ideas, `all`, `curves` (CURVES), `a+b` (merged) or "
                    f"`name={{json}}`: {', '.join(IDEAS)}")
    ap.add_argument("--steps", default=None, help="comma-separated step budgets (default: the preset's)")
    ap.add_argument("--set", default=None, help='JSON of render settings over the preset\'s, e.g. \'{"batch_size": 32}\'')
    ap.add_argument("--every", type=int, default=1, help="render every n-th cell of each level (ranks still use every target)")
    ap.add_argument("--run", default=str(DEFAULT_RUN), help="run dir with a finished grid (built when missing)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: the preset's)")
    ap.add_argument("--layer", default="blocks.5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--save-icons", action="store_true", help="quality mode: write each level's icons as a mosaic "
                    "PNG under benchmarks/out/icons/")
    ap.add_argument("--channels-last", action="store_true", help="quality mode: run the network channels_last")
    ap.add_argument("--compile", action="store_true", help="speed mode: also time torch.compile")
    ap.add_argument("--repeats", type=int, default=8, help="speed mode: timed rounds (each variant once per round)")
    ap.add_argument("--speed-batch", type=int, default=64, help="speed mode: icons per batch")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/out/render-<preset>.json)")
    ap.add_argument("--report", default=None, help="print the curves of this JSON file as a markdown table and exit")
    args = ap.parse_args()
    if args.report:
        print(_pivot(json.loads(Path(args.report).read_text())["records"]))
        return
    preset = PRESETS[args.preset]
    if args.preset == "gpu" and args.ideas == "baseline":
        args.ideas = "curves"
    if args.threads:
        torch.set_num_threads(args.threads)

    from atlas.config import ModelConfig
    from atlas.models import load_network, resolve_device
    from atlas.models._activations import LayerActivations

    device = resolve_device(args.device or preset["device"])
    net = load_network(ModelConfig(layer=args.layer))
    info = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "layer": args.layer,
            "preset": args.preset, "render": preset["render"]}
    print(f"device {info['device']} ({info['device_name']}), {info['threads']} threads, layer {args.layer}, "
          f"preset {args.preset}: {preset['render']}", flush=True)
    out_path = Path(args.out or OUT / f"render-{args.preset}{'-speed' if args.mode == 'speed' else ''}.json")
    if args.mode == "speed":
        result = {**info, **_speed(args, preset, net, device)}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2))
        return
    acts = LayerActivations(net, args.layer, device, channels_last=args.channels_last or device.type == "cuda")
    records = _quality(args, preset, acts, lambda rec: _save(out_path, info, rec, device))
    print()
    print(_table(records))


def _save(path: Path, info: dict[str, Any], rec: dict[str, Any], device: torch.device) -> None:
    """Merge one record into the JSON file (replacing an older record of the same idea, steps and every)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()).get("records", []) if path.exists() else []
    key = (rec["idea"], rec["steps"], rec.get("every", 1))
    merged = [r for r in old if (r["idea"], r["steps"], r.get("every", 1)) != key] + [rec]
    payload: dict[str, Any] = {**info, "records": merged}
    if device.type == "cuda":
        payload["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    path.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
