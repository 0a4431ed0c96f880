"""Stage 1, collect: one random spatial activation per image (+ class attribution) to Zarr.

Unit of work: one Zarr chunk of ``collect.chunk_rows`` rows (``chunk-000012``). A unit
writes its rows, then its side data (second moment, bad inputs); the runner then writes
its done marker. ``--shard i/n`` owns chunks ``i, i+n, ...``; the process that finishes
last reduces the per-chunk second moments (in chunk order, so any split gives the same
sums) and writes the bad-input report. Other settings on an existing run are refused
(the collected activations are the run's most expensive data).

In a class atlas (``classes.parent`` set, ``atlas class-atlas``) the registry hands out the
selection instead (:class:`atlas.stages._select.SelectStage`, the same stage name and output): it
copies the parent run's rows that support the atlas's classes, without the network.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import Config, with_updates
from ..formats import CollectHeader, CollectOutput, CollectRows, create_collect
from ..ops.sampling import sample_positions
from ..progress import plural, progress
from ..store import RunDir, atomic_save_npz, atomic_write_text, close_inherited_leases
from . import _select
from ._protocol import Job, Resources, Stage, StageBase

__all__ = ["STAGE", "CollectStage", "plan_units", "unit_name"]

NAME = "collect"

# Settings that change what a chunk contains: a rerun with other values would mix runs.
_CONTENT_KEYS = ("chunk_rows", "border", "attribution", "top_k", "dtype", "fold_bn")


@dataclass
class _Context:
    """Everything a process needs to run collect units (built once per process)."""

    cfg: Config
    run: RunDir
    manifest: Any
    sampler: Any
    net: Any
    layer_shape: tuple[int, int, int]
    n: int
    log: logging.Logger
    _out: CollectOutput | None = None
    device: dict[str, Any] = field(default_factory=dict)  # device_record of this process (state/collect/device.json)
    device_checked: bool = False

    @property
    def out(self) -> CollectOutput:
        """The run's collect group, opened for writing (once)."""
        if self._out is None:
            self._out = CollectOutput.open(self.run, mode="r+")
        return self._out


def _settings(cfg: Config) -> dict[str, Any]:
    model = cfg.model.model_dump(mode="json", exclude={"device"})
    return {"seed": cfg.seed, "images": cfg.images.model_dump(mode="json"), "model": model,
            "collect": {k: getattr(cfg.collect, k) for k in _CONTENT_KEYS}}


def unit_name(j: int) -> str:
    return f"chunk-{j:06d}"


def plan_units(n: int, chunk_rows: int) -> list[str]:
    """Unit names for ``n`` rows in chunks of ``chunk_rows``."""
    return [unit_name(j) for j in range((n + chunk_rows - 1) // chunk_rows)]


# --------------------------------------------------------------------------- set-up


def _open_manifest(cfg: Config, run: RunDir, log: logging.Logger) -> Any:
    from ..sources import detect_kind, read_manifest, scan_source, write_manifest

    if (run.root / "manifest.json").exists():
        return read_manifest(run.root)
    if cfg.images.kind == "auto":
        detect_kind(cfg.images.path)  # a source that does not exist: its one-line error, before any log line
    log.info("scanning images at %s", cfg.images.path)
    manifest = scan_source(cfg.images)
    write_manifest(manifest, run.root)
    log.info("%d images (%s), %d labels", len(manifest), manifest.kind, len(manifest.label_names))
    return manifest


def _create_group(ctx: _Context) -> None:
    """The collect group, created whole (:func:`atlas.formats.create_collect`)."""
    from ..sources import STATUS_NAMES

    cfg, n, net = ctx.cfg, ctx.n, ctx.net
    attribution = cfg.collect.attribution
    header = CollectHeader(
        model=cfg.model.name, layer=cfg.model.layer, layer_shape=ctx.layer_shape, input_size=net.input_size,
        seed=cfg.seed, border=cfg.collect.border, n_images=n, chunk_rows=min(cfg.collect.chunk_rows, max(n, 1)),
        attribution=attribution, top_k=cfg.collect.top_k if attribution else 0, class_names=list(net.class_names),
        label_names=list(ctx.manifest.label_names), status_codes={str(s): v for s, v in STATUS_NAMES.items()},
        weights_sha256=net.weights_sha256)
    create_collect(ctx.run, header, cfg.collect.dtype)


def _open(job: Job) -> _Context:
    from ..models import LayerSampler, layer_shape, load_network, pin_threads, resolve_device
    from ._device import device_record

    cfg, run, log = job.cfg, job.run, job.log
    pin_threads(cfg.collect.threads)
    net = load_network(cfg.model)
    shape = layer_shape(net, cfg.model.layer)
    sample_positions(cfg.seed, np.zeros(1, np.int64), shape[1], shape[2], cfg.collect.border)  # validates border
    with run.stage_lock(NAME):
        manifest = _open_manifest(cfg, run, log)
    device = resolve_device(cfg.model.device)
    sampler = LayerSampler(net, cfg.model.layer, attribution=cfg.collect.attribution, top_k=cfg.collect.top_k,
                           device=device, channels_last=cfg.collect.channels_last, autocast=device.type == "cuda",
                           fold_bn=cfg.collect.fold_bn)
    if cfg.collect.attribution and not sampler.attribution:  # a network without a classifier (the sampler said so)
        cfg = with_updates(cfg, {"collect.attribution": False})
    return _Context(cfg, run, manifest, sampler, net, shape, len(manifest), log,
                    device=device_record(device, autocast=sampler.autocast))


# --------------------------------------------------------------------------- data

_Item = tuple[int, np.ndarray, int, str]  # (row, uint8 image [S, S, 3], status, reason)
_Batch = tuple[np.ndarray, torch.Tensor, np.ndarray, list[str]]  # rows, images, statuses, reasons


class _Rows(torch.utils.data.Dataset[_Item]):
    """Decodes image rows; a bad image becomes a zero image plus its status and reason."""

    def __init__(self, locations: list[str], size: int, max_pixels: int, min_side: int) -> None:
        self.locations, self.size, self.max_pixels, self.min_side = locations, size, max_pixels, min_side

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, row: int) -> _Item:
        from ..sources import STATUS_OK, BadInput, load_image

        try:
            img = load_image(self.locations[row], size=self.size, max_pixels=self.max_pixels, min_side=self.min_side)
            return row, img, STATUS_OK, ""
        except BadInput as e:
            return row, np.zeros((self.size, self.size, 3), np.uint8), e.status, e.reason


def _collate(items: list[_Item]) -> _Batch:
    rows = np.array([it[0] for it in items], dtype=np.int64)
    imgs = torch.from_numpy(np.stack([it[1] for it in items]))
    status = np.array([it[2] for it in items], dtype=np.uint8)
    return rows, imgs, status, [it[3] for it in items]


def _batches(chunks: list[int], n: int, chunk_rows: int, batch_size: int) -> list[list[int]]:
    """Row batches aligned to chunks: a batch never spans two chunks, so the batches of a
    chunk (and so its numerics) are the same whatever the shard split."""
    out: list[list[int]] = []
    for j in chunks:
        start, stop = j * chunk_rows, min((j + 1) * chunk_rows, n)
        out.extend(list(range(s, min(s + batch_size, stop))) for s in range(start, stop, batch_size))
    return out


def _decode_workers(ctx: _Context) -> int:
    """``collect.workers``, or 0 inside a daemonic process (a dask worker), which may not fork."""
    import multiprocessing

    if ctx.cfg.collect.workers and multiprocessing.current_process().daemon:
        ctx.log.info("running in a daemonic process (a dask worker?): decoding in-process instead of "
                     "%d DataLoader workers; set distributed.worker.daemon: false to use them", ctx.cfg.collect.workers)
        return 0
    return ctx.cfg.collect.workers


def _worker_init(_: int) -> None:
    """A decode worker: drop the parent's leases; leave SIGTERM to the parent, which stops
    its workers as it unwinds (a worker killed first would surface as a DataLoader error)."""
    import signal

    close_inherited_leases()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader(ctx: _Context, chunks: list[int]) -> torch.utils.data.DataLoader[_Item]:
    cfg = ctx.cfg
    ds = _Rows(ctx.manifest.locations, ctx.net.input_size, cfg.images.max_pixels, cfg.images.min_side)
    workers = _decode_workers(ctx)
    return torch.utils.data.DataLoader(
        ds, batch_sampler=_batches(chunks, ctx.n, cfg.collect.chunk_rows, cfg.collect.batch_size),
        num_workers=workers, collate_fn=_collate, prefetch_factor=4 if workers else None,
        persistent_workers=False, worker_init_fn=_worker_init if workers else None,
    )


# --------------------------------------------------------------------------- units


class _ChunkBuffer:
    """The rows of one chunk, filled batch by batch, written in one piece."""

    def __init__(self, ctx: _Context, j: int) -> None:
        r, c = ctx.cfg.collect.chunk_rows, ctx.layer_shape[0]
        self.j, self.start = j, j * r
        self.stop = min(self.start + r, ctx.n)
        m, k = self.stop - self.start, ctx.cfg.collect.top_k
        self.act = np.zeros((m, c), dtype=ctx.cfg.collect.dtype)
        self.pos = np.full((m, 2), -1, np.int16)
        self.status = np.zeros(m, np.uint8)
        self.cls = np.full((m, k), -1, np.int16)
        self.val = np.zeros((m, k), np.float32)
        self.bad: list[dict[str, Any]] = []
        self.filled = 0

    def full(self) -> bool:
        return self.filled == self.stop - self.start


def _run_batch(ctx: _Context, buf: _ChunkBuffer, rows: np.ndarray, imgs: torch.Tensor,
               status: np.ndarray, reasons: list[str]) -> None:
    from ..sources import STATUS_OK

    local = rows - buf.start
    buf.status[local] = status
    buf.filled += len(rows)
    for row, st, why in zip(rows, status, reasons):
        if st != STATUS_OK:
            buf.bad.append({"row": int(row), "location": ctx.manifest.locations[row], "status": int(st), "reason": why})
    ok = status == STATUS_OK
    if not ok.any():
        return
    h, w = ctx.layer_shape[1:]
    pos = sample_positions(ctx.cfg.seed, rows[ok], h, w, ctx.cfg.collect.border)
    x = ctx.net.preprocess(imgs[torch.from_numpy(ok)])
    vec, vals, classes = ctx.sampler(x, torch.from_numpy(pos.astype(np.int64)))
    buf.act[local[ok]] = vec.numpy().astype(buf.act.dtype)
    buf.pos[local[ok]] = pos
    if vals is not None:
        buf.val[local[ok]] = vals.numpy()
        buf.cls[local[ok]] = classes.numpy().astype(np.int16)


def _write_chunk(ctx: _Context, buf: _ChunkBuffer) -> dict[str, Any]:
    """Write one chunk's rows, then its side data; returns what its done marker records."""
    attribution = ctx.cfg.collect.attribution
    ctx.out.write_rows(buf.start, CollectRows(
        buf.act, buf.pos, np.arange(buf.start, buf.stop, dtype=np.int64), buf.status,
        ctx.manifest.labels[buf.start:buf.stop].astype(np.int32), buf.cls if attribution else None,
        buf.val if attribution else None))
    ok = buf.act[buf.status == 1].astype(np.float64)
    name = unit_name(buf.j)
    atomic_save_npz(ctx.run.unit_data_path(NAME, name), second_moment=ok.T @ ok, ok_count=np.array(len(ok), np.int64))
    atomic_write_text(ctx.run.unit_data_path(NAME, name, ".json"), json.dumps(buf.bad))
    return {"rows": [buf.start, buf.stop], "ok": int(len(ok)), "bad": len(buf.bad)}


def _iter_batches(ctx: _Context, chunks: list[int]) -> Iterator[_Batch]:
    with torch.no_grad():
        yield from _loader(ctx, chunks)


def _run_chunks(ctx: _Context, chunks: list[int]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Collect ``chunks`` through one DataLoader; yield each chunk's unit once it is written."""
    r = ctx.cfg.collect.chunk_rows
    rows_todo = sum(min((j + 1) * r, ctx.n) - j * r for j in chunks)
    bar = progress(total=rows_todo, desc="collect", unit="img")
    bufs: dict[int, _ChunkBuffer] = {}
    t0, done = time.time(), 0
    for rows, imgs, status, reasons in _iter_batches(ctx, chunks):
        j = int(rows[0]) // r
        buf = bufs.setdefault(j, _ChunkBuffer(ctx, j))
        _run_batch(ctx, buf, rows, imgs, status, reasons)
        bar.update(len(rows))
        done += len(rows)
        if buf.full():
            info = _write_chunk(ctx, bufs.pop(j))
            rate = done / max(time.time() - t0, 1e-9)
            ctx.log.info("%s done (%s, %.1f img/s)", unit_name(j), plural(info["rows"][1] - info["rows"][0], "image"),
                         rate)
            yield unit_name(j), info
    bar.close()


# --------------------------------------------------------------------------- finish


def _finalize(ctx: _Context) -> dict[str, Any]:
    """Sum per-chunk second moments in chunk order; write ok_count and the bad-input report."""
    run, c = ctx.run, ctx.layer_shape[0]
    total = np.zeros((c, c), np.float64)
    ok_count, bad_lines = 0, ["row\tlocation\tstatus\treason"]
    for name in plan_units(ctx.n, ctx.cfg.collect.chunk_rows):
        with np.load(run.unit_data_path(NAME, name)) as z:
            total += z["second_moment"]
            ok_count += int(z["ok_count"])
        for b in json.loads(run.unit_data_path(NAME, name, ".json").read_text()):
            bad_lines.append(f"{b['row']}\t{b['location']}\t{b['status']}\t{b['reason']}".replace("\n", " "))
    ctx.out.write_totals(total, ok_count, len(bad_lines) - 1)
    atomic_write_text(run.logs_path() / "bad_inputs.tsv", "\n".join(bad_lines) + "\n")
    ctx.log.info("collect complete: %d ok, %d bad (see logs/bad_inputs.tsv)", ok_count, len(bad_lines) - 1)
    return {"ok_count": ok_count, "bad_count": len(bad_lines) - 1}


class CollectStage(StageBase[_Context]):
    """Stage 1: one random spatial activation per image (+ class attribution) -> ``RUN/collect``.

    In a class atlas (``classes.parent`` set) the registry hands out
    :class:`atlas.stages._select.SelectStage` instead (:meth:`for_config`): it copies the parent
    run's rows that support the atlas's classes, without the network."""

    name = NAME
    inputs = ()
    execution = "shards"
    wants_gpu = True
    on_change = "refuse"
    lease_window = 32  # chunks leased (and decoded by one DataLoader) at a time
    resources = Resources(tasks=16, time="04:00:00", cpus=8, mem="32G", gpus=1)

    def for_config(self, cfg: Config) -> Stage[Any]:
        """The class atlas's selection when ``classes.parent`` is set, else this stage."""
        return _select.STAGE if _select.active(cfg) else self

    def check(self, cfg: Config, run: RunDir) -> None:
        """An image source that does not exist is refused before the run is touched."""
        if not (run.root / "manifest.json").exists():
            from ..sources import check_source

            check_source(cfg.images)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return _settings(cfg)

    def open(self, job: Job) -> _Context:
        return _open(job)

    def create(self, ctx: _Context) -> None:
        _create_group(ctx)

    def units(self, ctx: _Context) -> list[str]:
        return plan_units(ctx.n, ctx.cfg.collect.chunk_rows)

    def run_units(self, ctx: _Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        if not ctx.device_checked:  # before this process writes rows: no bf16 rows among float32 ones
            from ._device import check_device

            check_device(ctx.run, NAME, ctx.device, ctx.log, ctx.cfg)
            ctx.device_checked = True
        ctx.log.info("%s to do (%s in all, layer %s %s)", plural(len(units), "chunk"), plural(ctx.n, "image"),
                     ctx.cfg.model.layer, "x".join(map(str, ctx.layer_shape)))
        yield from _run_chunks(ctx, [int(u.split("-")[1]) for u in units])

    def finish(self, ctx: _Context) -> dict[str, Any]:
        return _finalize(ctx)

    def provenance(self, ctx: _Context) -> dict[str, Any]:
        return {"weights_sha256": ctx.net.weights_sha256, "weights_path": ctx.net.weights_path,
                "collect_device": ctx.device}

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Images, ok and bad counts, model and layer."""
        col = CollectOutput.open(run)
        st = col.status_all()
        return {"images": col.n_images, "ok": int((st == 1).sum()), "bad": int((st >= 2).sum()),
                "model": col.model, "layer": col.layer}


STAGE = CollectStage()
