"""`atlas estimate`: what a run will cost per stage (time, disk, peak memory, units) before it starts.

Two parts, kept apart so the model can be tested on made-up figures:

* :func:`estimate` is a pure function: calibration figures (:class:`Calibration`) + config + the
  image count -> one :class:`StageEstimate` per stage, plus warnings about settings that will not fit.
* :func:`calibrate` measures the figures on this machine (the real ``atlas collect`` on the
  configured images for a few seconds, in a temporary run directory; a few render steps through
  :func:`~atlas.ops.inversion.render_icons` at the configured icon size and batch);
  :func:`default_calibration` gives the CPU figures of docs/benchmarks.md instead.

Reduce, grid and tile are never timed here: their figures are the CPU measurements of
docs/benchmarks.md, reduce as a documented model (UMAP fit ~ m log m on the fitted sample m =
min(N, ``reduce.fit_max``), placement linear in the rows outside it).

Disk figures are the formats' raw sizes (docs/formats.md). Icons and tiles are counted as
uncompressed RGB (s x s x 3 bytes); the stores' default compression (Zarr's, JPEG's) makes them
smaller, so those rows are upper bounds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .config import Config

__all__ = ["Calibration", "StageEstimate", "Estimate", "FILL", "estimate", "default_calibration", "calibrate",
           "image_count", "format_estimate", "cell_counts", "tree_mib"]

FILL = 0.3
"""Share of a grid's cells that hold icons: ``min(FILL * s², N // grid.min_count)`` icons at grid s. A prior,
measured on the demo's layouts (docs/benchmarks.md): 102 of 336 cells at grids 4, 8, 16 with 2,000 images,
1,708 of 5,376 at grids 16, 32, 64 with 50,000; coarser grids fill more of their cells, finer ones less.
Varied photos (not crops of 16) spread a layout more evenly: expect more icons there."""

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Calibration:
    """Per-unit costs on one machine. Times in seconds, memory in MiB."""

    source: str                      # "measured on this machine" or "docs/benchmarks.md (CPU)"
    device: str                      # "cpu", "cuda", ...
    channels: int                    # C of the configured layer
    classes: int                     # logits of the network (attribution's and the grid's classes)
    collect_s_per_image: float       # with the configured attribution setting
    collect_peak_mib: float
    render_s_per_icon_step: float    # one icon, one step at full size ``render_ref_side``
    render_ref_side: int
    render_peak_mib: float
    reduce_fit_s: float              # UMAP fit + kNN on ``reduce_fit_ref`` points
    reduce_fit_ref: int
    reduce_place_s_per_row: float    # placement of a row outside the fitted sample
    reduce_peak_mib: float
    grid_s_per_row_level: float      # per row and grid level
    grid_peak_mib: float
    tile_s_per_tile: float
    reduce_start_s: float = 0.0      # fixed: UMAP's kernels compiled (numba) in a fresh process
    tile_s_per_example: float = 0.0  # one example crop decoded and written
    notes: tuple[str, ...] = ()
    render_side_s: tuple[tuple[int, float], ...] = ()  # (side, s per icon-step) measured at the configured batch
    grid_start_s: float = 0.0        # fixed: reading the collect store, planning


@dataclass
class StageEstimate:
    stage: str
    seconds: float
    disk_bytes: int
    peak_mib: float | None
    units: int
    detail: str = ""
    tasks: int | None = None         # SLURM array size / dask tasks (cluster configs only)
    cpu_hours: float | None = None
    gpu_hours: float | None = None


@dataclass
class Estimate:
    images: int
    calibration: Calibration
    stages: list[StageEstimate]
    warnings: list[str] = field(default_factory=list)
    cluster: str | None = None       # "slurm", "dask" or None

    @property
    def total_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def as_json(self) -> dict[str, Any]:
        return {"images": self.images, "total_seconds": round(self.total_seconds, 3),
                "total_disk_bytes": sum(s.disk_bytes for s in self.stages), "cluster": self.cluster,
                "calibration": asdict(self.calibration),
                "stages": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(s).items()}
                           for s in self.stages],
                "warnings": list(self.warnings)}


# --------------------------------------------------------------------------- the CPU figures of docs/benchmarks.md

# collect: the demo measured end to end (2026-12-06, idle 2-core machine): 2,000 images with attribution in 32.3 s;
# attribution costs about 1.6x the truncated forward. Peak 1300 MB.
_ATTRIBUTION_FACTOR = 1.6
_COLLECT_IMAGES_PER_S = 2000 / 32.3 * _ATTRIBUTION_FACTOR
# render: the defaults (80 px, 512 steps, coarse 0.5 at half side) took 104 s for 34 icons: 5.97 ms per icon-step,
# of which a full-size step is 1 / (0.5 + 0.5 * 0.25) = 1.6x.
_RENDER_ICON_STEP_S = 104.0 / (34 * 512) / (0.5 + 0.5 * 0.25)
# reduce (benchmarks/reduce.py --n 200000 --methods ours, 2026-12-07, idle): 1.8 s kNN + 20.9 s UMAP fit on the
# 30k sample, 7.9 s placing the other 170k rows; 1.6 GiB peak.
_REDUCE_FIT_S, _REDUCE_FIT_REF, _REDUCE_PLACE_S = 1.8 + 20.9, 30_000, 7.9 / 170_000
# grid (benchmarks/grid.py, in-process, 2026-12-06): 2.1 s for 20,000 rows x 3 levels, 4.3 s for 200,000 x 4:
# 1.92 s fixed + 2.97 us per row and level; 297 MiB.
_GRID_S_PER_ROW_LEVEL = (4.3 - 2.1) / (200_000 * 4 - 20_000 * 3)
_GRID_START_S = 2.1 - 20_000 * 3 * _GRID_S_PER_ROW_LEVEL
# tile (benchmarks/tile.py --only 160 --workers 0, 2026-12-07, idle): 21.4 s for 6,819 tiles (160 x 160 atlas,
# 1,000 classes).
_TILE_S = 21.4 / 6819
# The demo measured end to end (2026-12-06, idle 2-core machine): reduce 7.1 s for 2,000 points, of which the
# m log m term above gives 1 s (the rest is UMAP's numba compilation in a fresh process); tile 2.0 s for 98
# tiles and 1,344 example crops (0.4 s of tiles): 1.2 ms per crop.
_REDUCE_START_S = 5.0
_TILE_S_PER_EXAMPLE = 1.6 / 1344
# tile's JPEG files against raw RGB (benchmarks/tile.py --only 160: 170.6 MB of files for 6,819 tiles of 256 px,
# 1.34 GB raw, heat files and sheets included): about an eighth.
_JPEG_RATIO = 0.127


def default_calibration(channels: int, classes: int = 1000, attribution: bool = True) -> Calibration:
    """The CPU figures of docs/benchmarks.md (a shared 2-core machine), for ``channels`` and ``classes``."""
    per_image = (1.0 / _COLLECT_IMAGES_PER_S) * (_ATTRIBUTION_FACTOR if attribution else 1.0)
    return Calibration(source="docs/benchmarks.md (CPU, 2 shared cores)", device="cpu", channels=channels,
                       classes=classes, collect_s_per_image=per_image, collect_peak_mib=1300 * 1e6 / _MIB,
                       render_s_per_icon_step=_RENDER_ICON_STEP_S, render_ref_side=80, render_peak_mib=1300.0,
                       reduce_fit_s=_REDUCE_FIT_S, reduce_fit_ref=_REDUCE_FIT_REF, reduce_place_s_per_row=_REDUCE_PLACE_S,
                       reduce_peak_mib=1607.0, grid_s_per_row_level=_GRID_S_PER_ROW_LEVEL, grid_peak_mib=297.0,
                       grid_start_s=_GRID_START_S,
                       tile_s_per_tile=_TILE_S, reduce_start_s=_REDUCE_START_S,
                       tile_s_per_example=_TILE_S_PER_EXAMPLE)


# --------------------------------------------------------------------------- the model (pure)


def cell_counts(sizes: list[int], n: int, min_count: int) -> dict[int, int]:
    """Expected non-empty cells per grid size: ``min(round(FILL * s²), N // min_count)``, at least 1."""
    return {s: max(1, min(round(FILL * s * s), n // min_count)) for s in sizes}


def _n_neighbors(cfg: Config, fitted: int) -> int:
    return cfg.reduce.n_neighbors or (20 if fitted < 10_000 else 50)


def _tile_plan(cfg: Config, sizes: list[int], icons: dict[int, int], sides: dict[int, int],
               classes: int) -> tuple[int, int, int]:
    """(tiles, units, examples) of the tile stage, as ``tile/_plan.py`` plans them."""
    from .ops.dzi import level_size, max_level, tile_counts
    from .stages.tile._context import BASE_PX, HEAT_BLOCK, sheet_cols

    t = cfg.tile
    tiles = units = 0
    for s in sizes:
        w = s * sides[s]
        top = max_level(w, w)
        base = next(lv for lv in range(top, -1, -1) if level_size(w, w, lv)[0] <= BASE_PX)
        for lv in range(top + 1):
            cols, rows = tile_counts(*level_size(w, w, lv), t.tile_size)
            tiles += cols * rows
            if lv > base:
                units += -(-rows // max(1, t.unit_tiles // cols))
        units += 1  # the base level and every level below it
        units += -(-icons[s] // sheet_cols(sides[s]) ** 2)
        units += -(-classes // HEAT_BLOCK) if classes else 0
    if t.example_levels is None:
        ex_sizes = sizes
    else:
        ex_sizes = sizes[len(sizes) - t.example_levels:] if t.example_levels else []
    examples = sum(icons[s] * cfg.grid.examples for s in ex_sizes)
    units += -(-examples // t.examples_per_unit)
    return tiles, units, examples


def estimate(cal: Calibration, cfg: Config, n: int, *, cuda: bool = False, free_disk: int | None = None) -> Estimate:
    """Per-stage time, disk, peak memory and units of a run of ``cfg`` over ``n`` images, from ``cal``.

    ``cuda``: whether render will run on a GPU (for the CPU-render warning); ``free_disk``: free bytes
    where the run directory goes (None: not checked). Pure: reads nothing but its arguments."""
    if n < 1:
        raise ValueError(f"the image count must be at least 1, got {n}")
    c, k, classes = cal.channels, cfg.collect.top_k, cal.classes
    attribution = cfg.collect.attribution and classes > 0
    dtype_bytes = 2 if cfg.collect.dtype == "float16" else 4
    rows: list[StageEstimate] = []

    # collect: per image the activation, attribution, positions/index/status/labels and its manifest line
    per_image = c * dtype_bytes + (6 * min(k, classes) if attribution else 0) + 17 + 64
    rows.append(StageEstimate("collect", n * cal.collect_s_per_image, n * per_image, cal.collect_peak_mib,
                              -(-n // cfg.collect.chunk_rows), f"{cfg.collect.chunk_rows} rows per unit"))

    # reduce: UMAP fit ~ m log m on the fitted sample, placement linear in the rest
    m = min(n, cfg.reduce.fit_max)
    ref = cal.reduce_fit_ref
    fit = cal.reduce_fit_s * (m * math.log(max(m, 2))) / (ref * math.log(ref))
    place = max(0, n - m) * cal.reduce_place_s_per_row
    rows.append(StageEstimate("reduce", cal.reduce_start_s + fit + place, 16 * n + 12 * _n_neighbors(cfg, m) * m, cal.reduce_peak_mib, 1,
                              f"UMAP fit on {m:,} points, {max(0, n - m):,} placed"))

    # grid: per level, the cells' mean activations, class attribution and examples
    sizes = sorted(cfg.grid.sizes)
    icons = cell_counts(sizes, n, cfg.grid.min_count)
    cell_bytes = 4 * c + 2 * classes + 3 * 8 * cfg.grid.examples + 8
    rows.append(StageEstimate("grid", cal.grid_start_s + n * len(sizes) * cal.grid_s_per_row_level,
                              sum(s * s for s in sizes) * cell_bytes + 8 * c * c, cal.grid_peak_mib, 1,
                              f"{len(sizes)} levels, {sum(s * s for s in sizes):,} cells"))

    # render: icons x steps x the cost of a step at the level's side (the coarse phase at its own side)
    r = cfg.render
    finest = max(sizes)
    sides = {s: r.level_icon_size(s, finest) for s in sizes}
    levels = sorted(r.levels) if r.levels else sizes
    batch = r.batch_size if isinstance(r.batch_size, int) else 100

    from .ops.inversion import resolve

    def per_icon(side: int) -> float:
        rr = resolve(r.model_copy(update={"icon_size": side}))
        coarse = rr.coarse_steps
        return (rr.steps - coarse) * icon_step_s(cal, side) + coarse * icon_step_s(cal, rr.coarse_size)

    render_s = sum(icons[s] * r.restarts * per_icon(sides[s]) for s in levels)
    n_icons = sum(icons[s] for s in levels)
    render_disk = sum(icons[s] * (3 * sides[s] ** 2 + 4 * c + 12) for s in levels)
    rows.append(StageEstimate("render", render_s, render_disk, cal.render_peak_mib,
                              sum(-(-icons[s] // batch) for s in levels),
                              f"{n_icons:,} icons, {r.steps} steps, {batch} per unit"))

    # tile: the pyramids of the rendered levels, icon sheets, heat files, example crops
    tiles, tile_units, examples = _tile_plan(cfg, levels, icons, sides, classes)
    crop = 96
    ratio = _JPEG_RATIO if cfg.tile.format in ("jpg", "webp") else 1.0
    tile_disk = round((tiles * cfg.tile.tile_size ** 2 * 3 + examples * crop * crop * 3) * ratio)
    rows.append(StageEstimate("tile", tiles * cal.tile_s_per_tile + examples * cal.tile_s_per_example, tile_disk, None, tile_units,
                              f"{tiles:,} tiles, {examples:,} example crops"))

    est = Estimate(images=n, calibration=cal, stages=rows)
    est.warnings = _warnings(cfg, est, icons, cuda=cuda, free_disk=free_disk)
    return est


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.1f} min"


def _warnings(cfg: Config, est: Estimate, icons: dict[int, int], *, cuda: bool, free_disk: int | None) -> list[str]:
    out: list[str] = []
    n = est.images
    render = next(s for s in est.stages if s.stage == "render")
    n_icons = sum(icons[s] for s in (cfg.render.levels or cfg.grid.sizes))
    on_cpu = cfg.model.device == "cpu" or (cfg.model.device == "auto" and not cuda)
    if on_cpu and n_icons >= 10_000:
        out.append(f"render on the CPU with {n_icons:,} icons takes about {_hours(render.seconds)}: render on a GPU "
                   "(model.device: cuda, or a SLURM GPU array), or fewer levels (render.levels) or steps (render.steps)")
    finest = max(cfg.grid.sizes)
    per_cell = n / finest ** 2
    if per_cell < cfg.grid.min_count:
        fits = [s for s in sorted(cfg.grid.sizes) if n / s ** 2 >= cfg.grid.min_count]
        hint = f"the finest grid {n:,} images support is {fits[-1]}" if fits else "no grid size fits"
        out.append(f"grid {finest} x {finest} is finer than {n:,} images support: {per_cell:.2g} images per cell on "
                   f"average, below grid.min_count ({cfg.grid.min_count}), so most cells stay empty; {hint} "
                   "(or add images)")
    total_disk = sum(s.disk_bytes for s in est.stages)
    if free_disk is not None and total_disk > free_disk:
        out.append(f"the run needs about {_size(total_disk)} but {_size(free_disk)} is free where run_dir goes")
    return out


def with_cluster(est: Estimate, cfg: Config) -> Estimate:
    """Add CPU- and GPU-hours per stage and the array sizes (SLURM) or tasks (dask) the config would use."""
    from .cluster._slurm import stage_resources

    kind = "dask" if cfg.cluster.engine == "dask" else "slurm" if _slurm_configured(cfg) else None
    if kind is None:
        return est
    stages = []
    for row in est.stages:
        res = stage_resources(cfg, row.stage)
        tasks = int(res["tasks"]) if kind == "slurm" else (cfg.cluster.tasks or 2 * cfg.cluster.workers)
        tasks = min(tasks, row.units) if row.stage in ("collect", "render", "tile") else 1
        hours = row.seconds / 3600
        stages.append(replace(row, tasks=tasks, cpu_hours=hours * int(res["cpus"]) if kind == "slurm" else hours,
                              gpu_hours=hours * int(res["gpus"]) if res["gpus"] else None))
    return replace(est, stages=stages, cluster=kind)


def _slurm_configured(cfg: Config) -> bool:
    sc = cfg.cluster.slurm
    return bool(sc.partition or sc.account or sc.stages or sc.extra or sc.max_parallel or cfg.cluster.jobqueue.jobs)


# --------------------------------------------------------------------------- inputs and calibration (not pure)


def image_count(cfg: Config, images: int | None) -> int:
    """``--images``, else the source's count: the demo's ``demo_count``, a folder or list scanned (then
    ``images.limit``); tar shards need ``--images``."""
    if images is not None:
        return images
    from .sources import SourceError, detect_kind, scan_source

    kind = cfg.images.kind if cfg.images.kind != "auto" else detect_kind(cfg.images.path)
    if kind == "demo":
        n = cfg.images.demo_count
    elif kind in ("folder", "list"):
        n = len(scan_source(cfg.images))
    else:
        raise SourceError(f"cannot count the images of {kind} source {cfg.images.path!r} quickly; give --images N")
    return min(n, cfg.images.limit) if cfg.images.limit else n


def _rss_mib() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def tree_mib(proc: Any) -> float:
    """Memory of a process and its children (MiB): their summed PSS (RSS where PSS is not readable)."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except psutil.Error:
            pass
    return total / _MIB


def _done_times(run_dir: Any) -> list[float]:
    """Modification times of the collect units' done markers (sorted)."""
    done = run_dir / "state" / "collect" / "done"
    try:
        return sorted(p.stat().st_mtime for p in done.iterdir() if p.name.startswith("chunk-"))
    except FileNotFoundError:
        return []


def _calibrate_collect(cfg: Config, seconds: float, start_timeout: float = 600.0) -> tuple[float, float, int] | None:
    """(seconds per image, peak MiB, images timed) of the real ``atlas collect`` of ``cfg`` on its first
    images: a child process in a temporary run directory, one unit per batch, stopped ``seconds``
    after its first unit is done. The rate counts the units done after the first, so the start-up
    (model, decode workers, the source's scan) is not in it, but decoding, the data loader, the
    network and the writes are, as in a run. None when fewer than 3 units were done."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import psutil

    from .config import dump_config, with_updates

    bs = cfg.collect.batch_size
    with tempfile.TemporaryDirectory(prefix="atlas-calibrate-") as d:
        run_dir = Path(d) / "run"
        sub = with_updates(cfg, {"run_dir": str(run_dir), "collect.chunk_rows": bs, "model.layers": None,
                                 "cluster.engine": "local"})
        (Path(d) / "calibrate.yaml").write_text(dump_config(sub))
        cmd = [sys.executable, "-m", "atlas", "collect", str(Path(d) / "calibrate.yaml"), "--set", f"run_dir={run_dir}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        peak, first, t0 = 0.0, None, time.monotonic()
        try:
            ps = psutil.Process(proc.pid)
            while proc.poll() is None:
                peak = max(peak, tree_mib(ps))
                times = _done_times(run_dir)
                if first is None and times:
                    first = time.monotonic()
                if (first is not None and time.monotonic() - first >= seconds) or time.monotonic() - t0 > start_timeout:
                    break
                time.sleep(0.5)
        finally:
            _kill_tree(proc)
        times = _done_times(run_dir)
    if len(times) < 3:
        return None
    images = (len(times) - 1) * bs
    return max(times[-1] - times[0], 1e-9) / images, peak, images


def _kill_tree(proc: Any) -> None:
    import os
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _collect_loop(cfg: Config, net: Any, seconds: float, device: Any) -> tuple[float, float]:
    """(seconds per image, peak MiB) of decode + the network on demo images in this process, batch by
    batch: the fallback when the real stage did too few units (a tiny source)."""
    import numpy as np
    import torch

    from .models import LayerSampler, layer_shape
    from .sources import load_image
    from .sources._demo import demo_location

    _, h, w = layer_shape(net, cfg.model.layer)
    sampler = LayerSampler(net, cfg.model.layer, attribution=cfg.collect.attribution, top_k=cfg.collect.top_k,
                           device=device, channels_last=cfg.collect.channels_last, autocast=device.type == "cuda",
                           fold_bn=cfg.collect.fold_bn)
    bs = min(cfg.collect.batch_size, 32)
    pos = torch.tensor([[h // 2, w // 2]] * bs, dtype=torch.long)

    def batch(i: int) -> float:
        t0 = time.perf_counter()
        imgs = [load_image(demo_location(i * bs + j, 320), size=net.input_size, max_pixels=cfg.images.max_pixels,
                           min_side=1) for j in range(bs)]
        sampler(net.preprocess(torch.from_numpy(np.stack(imgs))), pos)
        return time.perf_counter() - t0

    batch(0)  # warm-up (allocations, first-call overheads)
    spent, done = 0.0, 0
    while done < 2 or (spent < seconds and done < 20):
        spent += batch(done + 1)
        done += 1
    return spent / (done * bs), _rss_mib()


def calibrate(cfg: Config, seconds: float = 30.0, log: Any = None) -> Calibration:
    """Measure collect and render on this machine in about ``seconds`` (model loading excluded):
    the real ``atlas collect`` on the configured images for half of it (:func:`_calibrate_collect`),
    then render steps of one configured batch at the finest grid's icon size. Reduce, grid and tile
    keep the CPU figures."""
    import torch

    from .models import layer_shape, load_network, pin_threads, resolve_device
    from .models._activations import LayerActivations
    from .ops.inversion import render_icons

    say = log or (lambda msg: None)
    pin_threads(cfg.collect.threads)
    net = load_network(cfg.model)
    c = layer_shape(net, cfg.model.layer)[0]
    device = resolve_device(cfg.model.device)
    base = default_calibration(c, len(net.class_names), cfg.collect.attribution and net.has_classifier)

    # collect: the real stage on the configured images, in a child process, for half the budget
    measured = _calibrate_collect(cfg, seconds * 0.5)
    if measured is None:
        per_image, collect_peak = _collect_loop(cfg, net, seconds * 0.5, device)
        say(f"collect: {1 / per_image:.1f} images/s (decode and network in this process: too few images "
            "for the real stage's units)")
    else:
        per_image, collect_peak, images = measured
        say(f"collect: {1 / per_image:.1f} images/s (`atlas collect` on {images:,} of the configured images, "
            f"start-up not counted)")

    # render: full-size steps of one configured batch at each icon side the levels use (and their
    # coarse phases' sides), smallest first, within the other half of the budget
    r = cfg.render
    n_icons = r.batch_size if isinstance(r.batch_size, int) else 100
    acts = LayerActivations(net, cfg.model.layer, device, channels_last=device.type == "cuda")
    targets = torch.randn(n_icons, c, generator=torch.Generator().manual_seed(0)).abs()

    def steps(side: int, k: int) -> float:
        settings = r.model_copy(update={"steps": k, "coarse": 0.0, "restarts": 1})
        t0 = time.perf_counter()
        render_icons(acts, targets, settings, generator=torch.Generator().manual_seed(0), icon_size=side)
        return time.perf_counter() - t0

    costs: dict[int, float] = {}
    started = time.perf_counter()
    for side in render_sides(cfg):
        if costs and time.perf_counter() - started > seconds * 0.5:
            break  # the larger sides are scaled from the largest one measured
        one, k = steps(side, 1), 2  # one step includes set-up and the final scoring
        more = steps(side, 1 + k)
        while more - one < 1.0 and k < 16:  # at least a second of steps: a few fast ones are noise
            k *= 2
            more = steps(side, 1 + k)
        costs[side] = max(more - one, 1e-9) / k / n_icons
    say("render: " + ", ".join(f"{side} px {v * 1000:.2f}" for side, v in costs.items())
        + f" ms per icon-step (batches of {n_icons})")
    ref = max(costs)
    return replace(base, source="measured on this machine (collect, render); docs/benchmarks.md CPU figures "
                                "(reduce, grid, tile)", device=device.type,
                   collect_s_per_image=per_image, collect_peak_mib=collect_peak,
                   render_s_per_icon_step=costs[ref], render_ref_side=ref, render_peak_mib=_rss_mib(),
                   render_side_s=tuple(sorted(costs.items())))


def render_sides(cfg: Config) -> list[int]:
    """The icon sides a render of ``cfg`` optimises at: each rendered level's, and its coarse phase's. Ascending."""
    from .ops.inversion import resolve

    sizes = sorted(cfg.grid.sizes)
    out = set()
    for s in sorted(cfg.render.levels) if cfg.render.levels else sizes:
        side = cfg.render.level_icon_size(s, max(sizes))
        r = resolve(cfg.render.model_copy(update={"icon_size": side}))
        out |= {side, r.coarse_size} if r.coarse_steps else {side}
    return sorted(out)


def icon_step_s(cal: Calibration, side: int) -> float:
    """Seconds of one icon's full-size optimisation step at ``side`` px: the measured figure of that side,
    else the nearest measured side's scaled by the pixels (the docs' figure at ``render_ref_side`` without
    measurements). Larger batches of larger icons cost more per pixel on a CPU (caches), hence per side."""
    table = dict(cal.render_side_s) or {cal.render_ref_side: cal.render_s_per_icon_step}
    if side in table:
        return table[side]
    near = min(table, key=lambda t: (abs(math.log(t / side)), -t))
    return table[near] * (side / near) ** 2


def layer_channels(cfg: Config) -> tuple[int, int, str | None]:
    """(channels, classes, note) of the configured layer without running it; (512, 1000, note) when the
    model cannot be loaded here."""
    from .models import ModelError, layer_shape, load_network

    try:
        net = load_network(cfg.model)
        return layer_shape(net, cfg.model.layer)[0], len(net.class_names), None
    except (ModelError, OSError) as e:
        return 512, 1000, f"the model did not load here ({e}); assumed 512 channels and 1,000 classes"


# --------------------------------------------------------------------------- text


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def format_estimate(est: Estimate) -> str:
    cl = est.cluster is not None
    head = ["stage", "time", "disk", "peak memory", "units"] + (["tasks", "CPU-hours", "GPU-hours"] if cl else []) + ["what"]
    table = [head]
    for s in est.stages:
        row = [s.stage, duration(s.seconds), _size(s.disk_bytes),
               "-" if s.peak_mib is None else f"{s.peak_mib:,.0f} MiB", f"{s.units:,}"]
        if cl:
            row += [str(s.tasks), f"{s.cpu_hours or 0:,.2f}", "-" if s.gpu_hours is None else f"{s.gpu_hours:,.2f}"]
        table.append(row + [s.detail])
    table.append(["total", duration(est.total_seconds), _size(sum(s.disk_bytes for s in est.stages)), "", ""]
                 + (["", "", ""] if cl else []) + [""])
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = [f"atlas: estimate for {est.images:,} images; figures: {est.calibration.source}"]
    lines += ["  ".join(cell.ljust(wd) for cell, wd in zip(r, widths)).rstrip() for r in table]
    lines.append("Times are one process on this machine" + (" (divide by the tasks for wall time on the cluster)"
                                                           if cl else "") + "; disk is before Zarr's "
                 "compression (icons as raw RGB), tiles as JPEG at about an eighth of raw RGB.")
    lines += [f"note: {n}" for n in est.calibration.notes]
    lines += [f"warning: {w}" for w in est.warnings]
    return "\n".join(lines)




# --------------------------------------------------------------------------- a run in progress


@dataclass
class Progress:
    """One stage of a run as ``atlas status`` sees it."""

    stage: str
    state: str                 # not started, partial, done, stale
    done: int
    total: int | None
    elapsed_s: float | None    # attempt start to the newest done unit (None before one is done)


def remaining(est: Estimate, progress: list[Progress]) -> dict[str, Any]:
    """The time left per stage and in all: a stage done takes 0; one under way its own rate so far
    (elapsed / units done, times the units left) when a unit is done, else the model's time for the
    units left; one not started (or stale) the model's (:func:`estimate`). Pure."""
    model = {s.stage: s for s in est.stages}
    left: dict[str, float] = {}
    how: dict[str, str] = {}
    for p in progress:
        if p.stage not in model:
            continue
        if p.state == "done":
            left[p.stage], how[p.stage] = 0.0, "done"
        elif p.state == "partial" and p.total and p.done and p.elapsed_s:
            left[p.stage], how[p.stage] = p.elapsed_s / p.done * (p.total - p.done), "this run's rate"
        else:
            share = 1.0 if not p.total or p.state != "partial" else (p.total - p.done) / p.total
            left[p.stage], how[p.stage] = model[p.stage].seconds * share, "model"
    return {"seconds": {k: round(v, 1) for k, v in left.items()}, "from": how,
            "total_seconds": round(sum(left.values()), 1), "calibration": est.calibration.source}


def run_calibration(channels: int, classes: int, attribution: bool) -> Calibration:
    """The model's calibration for a run that exists (no network loaded): the CPU figures of
    docs/benchmarks.md for its layer's channels and classes."""
    return default_calibration(channels, classes, attribution)
