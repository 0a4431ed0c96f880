"""collect in a comparison's view (``RUN_A/compare/<name>/layout-a|b``, ``compare.layout`` set): the
other network's activation of every row of the layout run, so that the view's grid averages the
other network's activations over the layout's cells.

A view is a run directory of its own (``atlas compare`` writes its config: the *network* run's
config, with the layout run's grid sizes and chunking and the ``compare`` keys), so grid, render
(the network's icons of those means, with the network) and tile run on it unchanged. The registry
hands out :data:`STAGE` (or :data:`STAGE_RUN`) for its ``collect`` and
:data:`atlas.stages._pair_layout.STAGE` for its ``reduce`` (:func:`view_stage`).

- **Same images**: the two runs' manifests must be the same file (``manifest.tsv``, byte for byte):
  row i of both is image i. Otherwise one line naming the first difference.
- **Pairing** (:func:`pairing_mode`): row i's position is a function of the seed, i, the layer grid
  and ``collect.border`` (:mod:`atlas.ops.sampling`), so two runs with the same seed, border and
  layer grid sampled every image at the same place: ``exact``, the network run's rows are copied.
  Otherwise ``mapped``: the layout run's position is mapped onto the network's grid by relative
  location (:func:`atlas.ops.compare.map_positions`: the cell holding the centre of the layout's
  cell) and the network is run over the images there (its attribution too), as collect runs it.
- **Rows**: row i is ok when it is ok in both runs; the view's manifest is the layout run's.
- **Settings**: both runs' collect fingerprints (their ``final`` markers), the chunking and the
  mode (and, when mapped, what decides the network's numbers): redoing either run's collect redoes
  the view (``on_change: redo``), and so, stale in turn, its grid, render and tile.
- **Units** ``chunk-NNNNNN`` of ``collect.chunk_rows`` rows; the last process sums their second
  moments in chunk order, as collect does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..config import Config
from ..formats import CollectOutput, CollectRows, PairInfo, create_pair_collect
from ..ops.compare import map_positions
from ..progress import plural, progress
from ..store import RunDir, StoreError, atomic_save_npz, atomic_write_text
from ._protocol import Job, Resources, Stage, StageBase
from ._runner import final_info

__all__ = ["STAGE", "STAGE_RUN", "PairStage", "PairContext", "view_stage", "pairing_mode", "same_images", "view_runs"]

NAME = "collect"


def view_stage(name: str, cfg: Config) -> Stage[Any]:
    """The stage ``name`` (collect or reduce) of a comparison's view ``cfg``."""
    if name == "reduce":
        from ._pair_layout import STAGE as LAYOUT

        return LAYOUT
    try:
        mode = pairing_mode(*(CollectOutput.open(r) for r in view_runs(cfg)))
    except StoreError:  # a run not collected yet: its settings() say so, in one line
        mode = "exact"
    return STAGE_RUN if mode == "mapped" else STAGE


def view_runs(cfg: Config) -> tuple[RunDir, RunDir]:
    """(the layout run, the network run) of a view."""
    if cfg.compare.layout is None or cfg.compare.network is None:
        raise StoreError(f"{cfg.run_dir} is not a comparison's view (compare.layout and compare.network are not both "
                         "set): make views with `atlas compare RUN_A RUN_B`")
    return RunDir(cfg.compare.layout), RunDir(cfg.compare.network)


def _finished_collect(run: RunDir) -> dict[str, Any]:
    final = final_info(run, NAME)
    if final is None:
        raise StoreError(f"the compared run {run.root} has no finished collect: run `atlas run {run.root / 'config.yaml'}` "
                         "first, then `atlas compare` again")
    return final


def pairing_mode(layout: CollectOutput, network: CollectOutput) -> str:
    """``exact`` when the two runs sampled every image at the same position (same seed, border and
    layer grid), else ``mapped``."""
    same = (layout.seed, layout.border, layout.layer_grid) == (network.seed, network.border, network.layer_grid)
    return "exact" if same else "mapped"


def same_images(a: RunDir, b: RunDir) -> None:
    """The two runs' manifests are one file (row i is image i in both), else a one-line StoreError
    naming the first difference."""
    from ..sources import read_manifest

    ta, tb = a.root / "manifest.tsv", b.root / "manifest.tsv"
    for run, path in ((a, ta), (b, tb)):
        if not path.is_file():
            raise StoreError(f"{run.root} has no manifest.tsv (not a run directory, or its collect never started): "
                             f"run `atlas collect {run.root / 'config.yaml'}` first")
    if ta.read_bytes() == tb.read_bytes():
        return
    ma, mb = read_manifest(a.root), read_manifest(b.root)
    if len(ma) != len(mb):
        why = f"{len(ma)} images against {len(mb)}"
    else:
        i = next(k for k in range(len(ma)) if ma.locations[k] != mb.locations[k] or ma.labels[k] != mb.labels[k])
        why = f"image {i} is {ma.locations[i]} in one and {mb.locations[i]} in the other"
    raise StoreError(f"{a.root} and {b.root} were not collected from the same images ({why}): compare two runs of "
                     "one image source (the same images: section), e.g. one config with another model.weights")


def _pair_info(cfg: Config, layout: CollectOutput, network: CollectOutput) -> PairInfo:
    return PairInfo(str(cfg.compare.layout), str(cfg.compare.network), pairing_mode(layout, network),
                    layout.layer_grid, network.layer_grid)


def settings(cfg: Config) -> dict[str, Any]:
    """Both runs' collect fingerprints, the chunking and the pairing (mapped: what decides the numbers)."""
    layout, network = view_runs(cfg)
    lf, nf = _finished_collect(layout), _finished_collect(network)
    mode = pairing_mode(CollectOutput.open(layout), CollectOutput.open(network))
    out: dict[str, Any] = {"layout_collect": lf["fingerprint"], "network_collect": nf["fingerprint"],
                           "chunk_rows": cfg.collect.chunk_rows, "mode": mode}
    if mode == "mapped":
        out["network"] = {"model": cfg.model.model_dump(mode="json", exclude={"device", "layers", "layer_of"}),
                          "collect": {k: getattr(cfg.collect, k) for k in ("batch_size", "channels_last", "fold_bn")},
                          "decode": {k: getattr(cfg.images, k) for k in ("max_pixels", "min_side")}}
    return out


# --------------------------------------------------------------------------- set-up


@dataclass
class PairContext:
    """What a process of a view's collect works from."""

    cfg: Config
    run: RunDir
    layout: CollectOutput
    network: CollectOutput
    info: PairInfo
    log: logging.Logger
    manifest: Any = None
    sampler: Any = None
    device: dict[str, Any] = field(default_factory=dict)
    _out: CollectOutput | None = None

    @property
    def n(self) -> int:
        return self.layout.n_images

    @property
    def chunk_rows(self) -> int:
        return min(self.cfg.collect.chunk_rows, max(self.n, 1))

    @property
    def out(self) -> CollectOutput:
        if self._out is None:
            self._out = CollectOutput.open(self.run, mode="r+")
        return self._out


def open_context(job: Job) -> PairContext:
    layout_run, network_run = view_runs(job.cfg)
    same_images(layout_run, network_run)
    layout, network = CollectOutput.open(job.run.at(layout_run.root)), CollectOutput.open(job.run.at(network_run.root))
    info = _pair_info(job.cfg, layout, network)
    job.log.info("comparison view: %s's activations of the rows of %s (%s; %s pairing: layer grid %s on %s)",
                 network_run.root, layout_run.root, plural(layout.n_images, "image"), info.mode,
                 "x".join(map(str, info.network_grid)), "x".join(map(str, info.layout_grid)))
    return PairContext(job.cfg, job.run, layout, network, info, job.log)


def create(ctx: PairContext) -> None:
    """The view's collect group (the network's header with the layout's rows and chunking; attribute
    ``compare``), then its manifest: the layout run's."""
    from ..sources import read_manifest, write_manifest

    header = replace(ctx.network.header, n_images=ctx.n, chunk_rows=ctx.chunk_rows,
                     label_names=ctx.layout.label_names)
    create_pair_collect(ctx.run, header, str(ctx.network.dtype), ctx.info)
    write_manifest(read_manifest(ctx.layout.run.root), ctx.run.root)


# --------------------------------------------------------------------------- units


def _unit(j: int) -> str:
    return f"chunk-{j:06d}"


def units(ctx: PairContext) -> list[str]:
    return [_unit(j) for j in range(-(-ctx.n // ctx.chunk_rows))]


def _copied(ctx: PairContext, rows: np.ndarray) -> CollectRows:
    """Exact pairing: the network run's rows, ok where both runs are."""
    mine = ctx.network.take(rows)
    theirs = np.asarray(ctx.layout.status[rows[0]:rows[-1] + 1])
    both = (mine.status == 1) & (theirs == 1)
    lpos = np.asarray(ctx.layout.positions[rows[0]:rows[-1] + 1])
    if not np.array_equal(mine.positions[both], lpos[both]):
        raise StoreError(f"{ctx.network.path} and {ctx.layout.path} sampled other positions for the same images although "
                         "their seeds, borders and layer grids agree: redo one of the two collects")
    status = np.where(theirs != 1, theirs, mine.status).astype(np.uint8)
    return CollectRows(mine.activations, mine.positions, mine.index, status, mine.labels, mine.attr_classes,
                       mine.attr_values)


def _sampler(ctx: PairContext) -> Any:
    """The network run's LayerSampler, as its collect built it (loaded once per process)."""
    if ctx.sampler is None:
        from ..models import LayerSampler, load_network, pin_threads, resolve_device
        from ._device import device_record

        cfg = ctx.cfg
        pin_threads(cfg.compare.threads)
        net = load_network(cfg.model)
        if (net.weights_sha256, cfg.model.layer) != (ctx.network.weights_sha256, ctx.network.layer):
            raise StoreError(f"this view's model ({cfg.model.name} layer {cfg.model.layer}, weights "
                             f"{str(net.weights_sha256)[:12]}) is not the one {ctx.network.path} was collected with "
                             f"(layer {ctx.network.layer}, weights {str(ctx.network.weights_sha256)[:12]}): run "
                             "`atlas compare` again to rewrite the view's config")
        device = resolve_device(cfg.model.device)
        ctx.sampler = LayerSampler(net, cfg.model.layer, attribution=ctx.network.has_attribution,
                                   top_k=max(ctx.network.top_k, 1), device=device, channels_last=cfg.collect.channels_last,
                                   autocast=device.type == "cuda", fold_bn=cfg.collect.fold_bn)
        ctx.device = device_record(device, autocast=ctx.sampler.autocast)
    return ctx.sampler


def _mapped(ctx: PairContext, rows: np.ndarray, bar: Any) -> CollectRows:
    """Mapped pairing: the network run at the layout's positions mapped onto its grid."""
    import torch

    from ..sources import STATUS_OK, BadInput, load_image

    sampler = _sampler(ctx)
    if ctx.manifest is None:
        from ..sources import read_manifest

        ctx.manifest = read_manifest(ctx.layout.run.root)
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    m, c, k = hi - lo, ctx.network.n_channels, ctx.network.top_k if ctx.network.has_attribution else 0
    status = np.asarray(ctx.layout.status[lo:hi]).astype(np.uint8)
    pos = map_positions(np.asarray(ctx.layout.positions[lo:hi]), ctx.info.layout_grid, ctx.info.network_grid)
    act, cls, val = np.zeros((m, c), ctx.network.dtype), np.full((m, k), -1, np.int16), np.zeros((m, k), np.float32)
    size, images = sampler.net.input_size, ctx.cfg.images
    for b0 in range(0, m, ctx.cfg.collect.batch_size):
        todo = [i for i in range(b0, min(m, b0 + ctx.cfg.collect.batch_size)) if status[i] == STATUS_OK]
        pixels, kept = [], []
        for i in todo:
            try:
                pixels.append(load_image(ctx.manifest.locations[lo + i], size=size, max_pixels=images.max_pixels,
                                         min_side=images.min_side))
                kept.append(i)
            except BadInput as e:
                status[i] = e.status
        if kept:
            x = sampler.net.preprocess(torch.from_numpy(np.stack(pixels)))
            vec, values, classes = sampler(x, torch.from_numpy(pos[kept].astype(np.int64)))
            act[kept] = vec.numpy().astype(act.dtype)
            if values is not None and k:
                val[kept], cls[kept] = values.numpy(), classes.numpy().astype(np.int16)
        bar.update(min(m, b0 + ctx.cfg.collect.batch_size) - b0)
    pos[status != STATUS_OK] = -1
    labels = np.asarray(ctx.layout.labels[lo:hi]).astype(np.int32)
    return CollectRows(act, pos, np.arange(lo, hi, dtype=np.int64), status, labels, cls if k else None,
                       val if k else None)


def _write(ctx: PairContext, j: int, rows: CollectRows) -> dict[str, Any]:
    lo = j * ctx.chunk_rows
    ctx.out.write_rows(lo, rows)
    ok = rows.activations[rows.status == 1].astype(np.float64)
    atomic_save_npz(ctx.run.unit_data_path(NAME, _unit(j)), second_moment=ok.T @ ok, ok_count=np.array(len(ok), np.int64))
    bad = [{"row": lo + int(i), "status": int(rows.status[i])} for i in np.flatnonzero(rows.status != 1)]
    atomic_write_text(ctx.run.unit_data_path(NAME, _unit(j), ".json"), json.dumps(bad))
    return {"rows": [lo, lo + len(rows.status)], "ok": int(len(ok)), "bad": len(bad)}


def run_units(ctx: PairContext, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    mapped = ctx.info.mode == "mapped"
    if mapped:
        from ._device import check_device

        _sampler(ctx)
        check_device(ctx.run, NAME, ctx.device, ctx.log, ctx.cfg)
    r = ctx.chunk_rows
    total = sum(min((int(u.split("-")[1]) + 1) * r, ctx.n) - int(u.split("-")[1]) * r for u in names)
    bar = progress(total=total, desc="pair", unit="img")
    t0, done = time.time(), 0
    for name in names:
        j = int(name.split("-")[1])
        rows = np.arange(j * r, min((j + 1) * r, ctx.n), dtype=np.int64)
        paired = _mapped(ctx, rows, bar) if mapped else _copied(ctx, rows)
        if not mapped:
            bar.update(len(rows))
        info = _write(ctx, j, paired)
        done += len(rows)
        ctx.log.info("%s done (%s, %d paired, %.1f img/s)", name, plural(len(rows), "row"), info["ok"],
                     done / max(time.time() - t0, 1e-9))
        yield name, info
    bar.close()


def finish(ctx: PairContext) -> dict[str, Any]:
    """Sum the chunks' second moments in chunk order; the rows not paired (logs/bad_inputs.tsv)."""
    c = ctx.network.n_channels
    total, ok_count, bad = np.zeros((c, c), np.float64), 0, ["row\tlocation\tstatus\treason"]
    from ..sources import read_manifest

    locations = read_manifest(ctx.run.root).locations
    for name in units(ctx):
        with np.load(ctx.run.unit_data_path(NAME, name)) as z:
            total += z["second_moment"]
            ok_count += int(z["ok_count"])
        for b in json.loads(ctx.run.unit_data_path(NAME, name, ".json").read_text()):
            bad.append(f"{b['row']}\t{locations[b['row']]}\t{b['status']}\tnot ok in both compared runs".replace("\n", " "))
    ctx.out.write_totals(total, ok_count, len(bad) - 1)
    atomic_write_text(ctx.run.logs_path() / "bad_inputs.tsv", "\n".join(bad) + "\n")
    ctx.log.info("paired collect complete: %d rows ok in both runs, %d not (%s pairing)", ok_count, len(bad) - 1,
                 ctx.info.mode)
    return {"ok_count": ok_count, "bad_count": len(bad) - 1, "mode": ctx.info.mode}


class PairStage(StageBase[PairContext]):
    """collect of a comparison's view: the network run's activations of the layout run's rows -> ``RUN/collect``.

    Same name, output and contract as collect; :data:`STAGE` copies rows (``exact`` pairing, no
    network), :data:`STAGE_RUN` runs the network (``mapped``: another layer grid, seed or border)."""

    name = NAME
    inputs = ()
    execution = "shards"
    wants_gpu: ClassVar[bool] = False
    on_change = "redo"
    lease_window = 1
    resources = Resources(tasks=4, time="01:00:00", cpus=4, mem="16G", gpus=0)

    def check(self, cfg: Config, run: RunDir) -> None:
        """Both runs collected, from the same images (before anything is written)."""
        layout, network = view_runs(cfg)
        _finished_collect(layout)
        _finished_collect(network)
        same_images(layout, network)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return settings(cfg)

    def open(self, job: Job) -> PairContext:
        return open_context(job)

    def create(self, ctx: PairContext) -> None:
        create(ctx)

    def units(self, ctx: PairContext) -> list[str]:
        return units(ctx)

    def run_units(self, ctx: PairContext, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        return run_units(ctx, names)

    def finish(self, ctx: PairContext) -> dict[str, Any]:
        return finish(ctx)

    def provenance(self, ctx: PairContext) -> dict[str, Any]:
        """The two runs and the pairing."""
        return {"compare_layout": str(Path(ctx.info.layout).resolve()), "compare_network": str(Path(ctx.info.network).resolve()),
                "compare_pairing": ctx.info.mode, "weights_sha256": ctx.network.weights_sha256}

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Rows, ok and bad counts, model and layer, the pairing."""
        from ..formats import pair_info

        col = CollectOutput.open(run)
        st = col.status_all()
        info = pair_info(col)
        return {"images": col.n_images, "ok": int((st == 1).sum()), "bad": int((st >= 2).sum()),
                "model": col.model, "layer": col.layer, "pairing": info.mode if info else None}


class _PairRunStage(PairStage):
    """The mapped pairing runs the network: a GPU per SLURM task by default, as collect."""

    wants_gpu: ClassVar[bool] = True
    lease_window = 1
    resources = Resources(tasks=16, time="04:00:00", cpus=8, mem="32G", gpus=1)


STAGE = PairStage()
STAGE_RUN = _PairRunStage()
