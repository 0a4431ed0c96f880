"""Stage 1, collect: one random spatial activation per image (+ class attribution) to Zarr.

Unit of work: one Zarr chunk of ``collect.chunk_rows`` rows (``chunk-000012``). A unit
writes its rows, then its side data (second moment, bad inputs), then its done
marker. ``--shard i/n`` owns chunks ``i, i+n, ...``; the shard that finishes last
reduces the per-chunk second moments (in chunk order, so any split gives the same
sums) and writes the bad-input report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zarr

from ..config import Config
from ..ops.sampling import sample_positions
from ..progress import progress, stage_logger
from ..store import RunDir, StoreError, atomic_save_npz, atomic_write_text, close_inherited_leases
from ._base import StageStatus, my_units, save_run_config

__all__ = ["STAGE", "run", "status", "finished", "plan_units"]

STAGE = "collect"
FINAL = "final"

# Settings that change what a chunk contains: a rerun with other values would mix runs.
_FINGERPRINT_KEYS = ("seed", "images", "model", "collect.chunk_rows", "collect.border",
                     "collect.attribution", "collect.top_k", "collect.dtype", "collect.fold_bn")


@dataclass
class _Context:
    """Everything a process needs to run collect units (built once per process)."""

    cfg: Config
    run: RunDir
    group: zarr.Group
    manifest: Any
    sampler: Any
    net: Any
    layer_shape: tuple[int, int, int]
    n: int
    log: logging.Logger


def _fingerprint(cfg: Config) -> str:
    d = {"seed": cfg.seed, "images": vars(cfg.images), "model": vars(cfg.model)}
    for key in _FINGERPRINT_KEYS[3:]:
        d[key] = getattr(cfg.collect, key.split(".")[1])
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def unit_name(j: int) -> str:
    return f"chunk-{j:06d}"


def plan_units(n: int, chunk_rows: int) -> list[str]:
    """Unit names for ``n`` rows in chunks of ``chunk_rows``."""
    return [unit_name(j) for j in range((n + chunk_rows - 1) // chunk_rows)]


# --------------------------------------------------------------------------- set-up


def _open_manifest(cfg: Config, run: RunDir, log: logging.Logger) -> Any:
    from ..sources import read_manifest, scan_source, write_manifest

    if (run.root / "manifest.json").exists():
        return read_manifest(run.root)
    log.info("scanning images at %s", cfg.images.path)
    manifest = scan_source(cfg.images)
    write_manifest(manifest, run.root)
    log.info("%d images (%s), %d labels", len(manifest), manifest.kind, len(manifest.label_names))
    return manifest


def _create_group(cfg: Config, run: RunDir, n: int, shape: tuple[int, int, int], net: Any,
                  manifest: Any) -> zarr.Group:
    from ..sources import STATUS_NAMES

    c = shape[0]
    r = min(cfg.collect.chunk_rows, max(n, 1))
    k = cfg.collect.top_k
    tmp = run.root / f".{STAGE}.creating"
    shutil.rmtree(tmp, ignore_errors=True)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    g.create_array("activations", shape=(n, c), chunks=(r, c), dtype=cfg.collect.dtype, fill_value=0,
                   dimension_names=("row", "channel"))
    g.create_array("positions", shape=(n, 2), chunks=(r, 2), dtype="int16", fill_value=-1, dimension_names=("row", "yx"))
    g.create_array("index", shape=(n,), chunks=(r,), dtype="int64", fill_value=-1, dimension_names=("row",))
    g.create_array("status", shape=(n,), chunks=(r,), dtype="uint8", fill_value=0, dimension_names=("row",))
    g.create_array("labels", shape=(n,), chunks=(r,), dtype="int32", fill_value=-1, dimension_names=("row",))
    if cfg.collect.attribution:
        g.create_array("attr_classes", shape=(n, k), chunks=(r, k), dtype="int16", fill_value=-1,
                       dimension_names=("row", "top"))
        g.create_array("attr_values", shape=(n, k), chunks=(r, k), dtype="float32", fill_value=0,
                       dimension_names=("row", "top"))
    g.attrs.update({
        "model": cfg.model.name, "layer": cfg.model.layer, "layer_shape": list(shape),
        "input_size": net.input_size, "seed": cfg.seed, "border": cfg.collect.border,
        "n_images": n, "chunk_rows": r, "attribution": cfg.collect.attribution,
        "top_k": k if cfg.collect.attribution else 0, "class_names": list(net.class_names),
        "label_names": list(manifest.label_names), "status_codes": {str(s): v for s, v in STATUS_NAMES.items()},
        "fingerprint": _fingerprint(cfg), "weights_sha256": net.weights_sha256,
    })
    os.replace(tmp, run.stage_path(STAGE))  # the group appears whole or not at all
    return run.open_group(STAGE, mode="r+")


def _check_fingerprint(cfg: Config, group: zarr.Group, run: RunDir) -> None:
    if group.attrs.get("fingerprint") != _fingerprint(cfg):
        raise StoreError(
            f"{run.stage_path(STAGE)} was collected with other settings (seed, images, model or "
            "collect chunk_rows/border/attribution/top_k/dtype differ); use a new run_dir, or delete "
            "that folder to start this stage again"
        )


def _prepare(cfg: Config, run: RunDir, shard: tuple[int, int]) -> _Context:
    from ..models import LayerSampler, layer_shape, load_network, pin_threads, resolve_device

    log = stage_logger(run.root, STAGE, shard)
    pin_threads(cfg.collect.threads)
    net = load_network(cfg.model)
    shape = layer_shape(net, cfg.model.layer)
    sample_positions(cfg.seed, np.zeros(1, np.int64), shape[1], shape[2], cfg.collect.border)  # validates border
    with run.stage_lock(STAGE):
        manifest = _open_manifest(cfg, run, log)
        n = len(manifest)
        if run.has_group(STAGE):
            group = run.open_group(STAGE, mode="r+")
            _check_fingerprint(cfg, group, run)
        else:
            save_run_config(cfg, run, {"weights_sha256": net.weights_sha256, "weights_path": net.weights_path})
            group = _create_group(cfg, run, n, shape, net, manifest)
    device = resolve_device(cfg.model.device)
    sampler = LayerSampler(net, cfg.model.layer, attribution=cfg.collect.attribution, top_k=cfg.collect.top_k,
                           device=device, channels_last=cfg.collect.channels_last, autocast=device.type == "cuda",
                           fold_bn=cfg.collect.fold_bn)
    return _Context(cfg, run, group, manifest, sampler, net, shape, n, log)


# --------------------------------------------------------------------------- data


class _Rows(torch.utils.data.Dataset):
    """Decodes image rows; a bad image becomes a zero image plus its status and reason."""

    def __init__(self, locations: list[str], size: int, max_pixels: int, min_side: int) -> None:
        self.locations, self.size, self.max_pixels, self.min_side = locations, size, max_pixels, min_side

    def __len__(self) -> int:
        return len(self.locations)

    def __getitem__(self, row: int) -> tuple[int, np.ndarray, int, str]:
        from ..sources import STATUS_OK, BadInput, load_image

        try:
            img = load_image(self.locations[row], size=self.size, max_pixels=self.max_pixels, min_side=self.min_side)
            return row, img, STATUS_OK, ""
        except BadInput as e:
            return row, np.zeros((self.size, self.size, 3), np.uint8), e.status, e.reason


def _collate(items: list[tuple[int, np.ndarray, int, str]]) -> tuple[np.ndarray, torch.Tensor, np.ndarray, list[str]]:
    rows = np.array([it[0] for it in items], dtype=np.int64)
    imgs = torch.from_numpy(np.stack([it[1] for it in items]))
    status = np.array([it[2] for it in items], dtype=np.uint8)
    return rows, imgs, status, [it[3] for it in items]


def _batches(chunks: list[int], n: int, chunk_rows: int, batch_size: int) -> list[list[int]]:
    """Row batches aligned to chunks: a batch never spans two chunks, so the batches of a
    chunk (and so its numerics) are the same whatever the shard split."""
    out = []
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
    close_inherited_leases()


def _loader(ctx: _Context, chunks: list[int]) -> torch.utils.data.DataLoader:
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


def _write_chunk(ctx: _Context, buf: _ChunkBuffer) -> None:
    g, sl = ctx.group, slice(buf.start, buf.stop)
    g["activations"][sl] = buf.act
    g["positions"][sl] = buf.pos
    g["index"][sl] = np.arange(buf.start, buf.stop, dtype=np.int64)
    g["status"][sl] = buf.status
    g["labels"][sl] = ctx.manifest.labels[sl].astype(np.int32)
    if ctx.cfg.collect.attribution:
        g["attr_classes"][sl] = buf.cls
        g["attr_values"][sl] = buf.val
    ok = buf.act[buf.status == 1].astype(np.float64)
    name = unit_name(buf.j)
    atomic_save_npz(ctx.run.unit_data_path(STAGE, name), second_moment=ok.T @ ok, ok_count=np.int64(len(ok)))
    atomic_write_text(ctx.run.unit_data_path(STAGE, name, ".json"), json.dumps(buf.bad))
    ctx.run.mark_done(STAGE, name, {"rows": [buf.start, buf.stop], "ok": int(len(ok)), "bad": len(buf.bad)})


def _iter_batches(ctx: _Context, chunks: list[int]) -> Iterator[tuple[np.ndarray, torch.Tensor, np.ndarray, list[str]]]:
    with torch.no_grad():
        yield from _loader(ctx, chunks)


def _run_chunks(ctx: _Context, chunks: list[int]) -> None:
    rows_todo = sum(min((j + 1) * ctx.cfg.collect.chunk_rows, ctx.n) - j * ctx.cfg.collect.chunk_rows for j in chunks)
    bar = progress(total=rows_todo, desc="collect", unit="img")
    bufs: dict[int, _ChunkBuffer] = {}
    t0, done = time.time(), 0
    for rows, imgs, status, reasons in _iter_batches(ctx, chunks):
        j = int(rows[0]) // ctx.cfg.collect.chunk_rows
        buf = bufs.setdefault(j, _ChunkBuffer(ctx, j))
        _run_batch(ctx, buf, rows, imgs, status, reasons)
        bar.update(len(rows))
        done += len(rows)
        if buf.full():
            _write_chunk(ctx, bufs.pop(j))
            rate = done / max(time.time() - t0, 1e-9)
            ctx.log.info("%s done (%d/%d rows this shard, %.1f img/s, ETA %.0f s)", unit_name(j), done,
                         rows_todo, rate, (rows_todo - done) / max(rate, 1e-9))
    bar.close()


# --------------------------------------------------------------------------- finish


def _finalize(ctx: _Context) -> None:
    """Sum per-chunk second moments in chunk order; write ok_count and the bad-input report."""
    run, c = ctx.run, ctx.layer_shape[0]
    total = np.zeros((c, c), np.float64)
    ok_count, bad_lines = 0, ["row\tlocation\tstatus\treason"]
    for name in plan_units(ctx.n, ctx.cfg.collect.chunk_rows):
        with np.load(run.unit_data_path(STAGE, name)) as z:
            total += z["second_moment"]
            ok_count += int(z["ok_count"])
        for b in json.loads(run.unit_data_path(STAGE, name, ".json").read_text()):
            bad_lines.append(f"{b['row']}\t{b['location']}\t{b['status']}\t{b['reason']}".replace("\n", " "))
    g = ctx.group
    g.create_array("second_moment", shape=(c, c), chunks=(c, c), dtype="float64", overwrite=True,
                   dimension_names=("channel", "channel_t"))[:] = total
    g.attrs.update({"ok_count": ok_count, "bad_count": len(bad_lines) - 1})
    atomic_write_text(run.logs_path() / "bad_inputs.tsv", "\n".join(bad_lines) + "\n")
    run.mark_done(STAGE, FINAL, {"ok_count": ok_count, "bad_count": len(bad_lines) - 1})
    ctx.log.info("collect complete: %d ok, %d bad (see logs/bad_inputs.tsv)", ok_count, len(bad_lines) - 1)


def _maybe_finalize(ctx: _Context) -> None:
    units = plan_units(ctx.n, ctx.cfg.collect.chunk_rows)
    with ctx.run.stage_lock(STAGE):
        done = ctx.run.done_units(STAGE)
        if FINAL in done:
            return
        missing = [u for u in units if u not in done]
        if missing:
            ctx.log.info("%d chunks still to do by other shards; the last shard finishes the stage", len(missing))
            return
        _finalize(ctx)


def run(cfg: Config, *, shard: tuple[int, int] = (0, 1)) -> None:
    """Collect this shard's unfinished chunks, then finish the stage if every chunk is done."""
    run_dir = RunDir(cfg.run_dir)
    ctx = _prepare(cfg, run_dir, shard)
    units = plan_units(ctx.n, cfg.collect.chunk_rows)
    mine = set(my_units(units, shard))
    done = run_dir.done_units(STAGE)
    todo = [j for j, u in enumerate(units) if u in mine and u not in done]
    ctx.log.info("shard %d/%d: %d of its %d chunks to do (%d images, layer %s %s)", shard[0], shard[1],
                 len(todo), len(mine), ctx.n, cfg.model.layer, "x".join(map(str, ctx.layer_shape)))
    for k in range(0, len(todo), _LEASE_WINDOW):
        _run_leased(ctx, todo[k:k + _LEASE_WINDOW])
    _maybe_finalize(ctx)


_LEASE_WINDOW = 32  # chunks leased (and decoded by one DataLoader) at a time


def _run_leased(ctx: _Context, todo: list[int]) -> None:
    """Run chunks under leases so two processes handed the same chunk never both write it."""
    import contextlib

    with contextlib.ExitStack() as stack:
        mine = []
        for j in todo:
            if stack.enter_context(ctx.run.lease(STAGE, unit_name(j))) and not ctx.run.is_done(STAGE, unit_name(j)):
                mine.append(j)
            else:
                ctx.log.info("%s is held by another process or done; skipping", unit_name(j))
        if mine:
            _run_chunks(ctx, mine)


def status(run: RunDir) -> StageStatus:
    """Chunks done / total and the bad-input count."""
    if not run.has_group(STAGE):
        return StageStatus(STAGE, 0, None)
    g = run.open_group(STAGE)
    n, r = g.attrs["n_images"], g.attrs["chunk_rows"]
    units = plan_units(n, r)
    done = run.done_units(STAGE)
    st = g["status"][:]
    detail = {"images": n, "ok": int((st == 1).sum()), "bad": int((st >= 2).sum()),
              "complete": FINAL in done, "layer": g.attrs["layer"], "model": g.attrs["model"]}
    return StageStatus(STAGE, sum(u in done for u in units), len(units), detail)


def finished(run: RunDir, cfg: Config | None = None) -> bool:
    """The stage is complete: its last marker is written (``cfg`` is not needed)."""
    return run.is_done(STAGE, FINAL)
