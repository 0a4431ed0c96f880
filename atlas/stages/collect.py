"""Stage 1, collect: one random spatial activation per image (+ class attribution) to Zarr.

Unit of work: one Zarr chunk of ``collect.chunk_rows`` rows of one layer (``chunk-000012`` for
the first layer, ``chunk-000012.<slug>`` for a further layer of ``model.layers``). A unit
writes its rows, then its side data (second moment, bad inputs); the runner then writes
its done marker. ``--shard i/n`` owns units ``i, i+n, ...``; the process that finishes
last reduces the per-chunk second moments (in chunk order, so any split gives the same
sums) and writes the bad-input report. Other settings on an existing run are refused
(the collected activations are the run's most expensive data).

**Several layers** (``model.layers``): the units of one chunk run on one decoded batch
(:class:`atlas.models.LayerSamplers`: one forward pass cut after the deepest layer, or one
forward-mode pass per layer with attribution); each layer samples its own position per image
from the seed, the image index and *its grid* (never its name), so a layer's arrays are the same
bytes whether it was collected alone or with others. The first layer's group is ``RUN/collect``;
a further layer's is ``RUN/layers/<slug>/collect`` (:func:`atlas.formats.layer_run`), with a copy
of the manifest. The further layers are the stage's *scope*: adding one to a finished run
collects only that layer, and leaves the others' bytes untouched.

In a class atlas (``classes.parent`` set, ``atlas class-atlas``) the registry hands out the
selection instead (:class:`atlas.stages._select.SelectStage`, the same stage name and output): it
copies the parent run's rows that support the atlas's classes, without the network.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import Config, with_updates
from ..formats import CollectHeader, CollectOutput, CollectRows, create_collect, layer_run, layer_slug
from ..ops.sampling import sample_positions
from ..progress import plural, progress
from ..store import RunDir, atomic_save_npz, atomic_write_bytes, atomic_write_text, close_inherited_leases
from . import _layer, _select
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
    sampler: Any                               # LayerSamplers over ``layers``
    net: Any
    shapes: dict[str, tuple[int, int, int]]    # (C, H, W) per layer, in ``model.layers`` order
    n: int
    log: logging.Logger
    _outs: dict[str, CollectOutput] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)  # device_record of this process (state/collect/device.json)
    device_checked: bool = False

    @property
    def layers(self) -> list[str]:
        return list(self.shapes)

    def layer_run(self, layer: str) -> RunDir:
        """The run directory holding ``layer``'s group: the run for the first layer, else RUN/layers/<slug>."""
        return self.run if layer == self.layers[0] else layer_run(self.run, layer)

    def out(self, layer: str) -> CollectOutput:
        """``layer``'s collect group, opened for writing (once)."""
        if layer not in self._outs:
            self._outs[layer] = CollectOutput.open(self.layer_run(layer), mode="r+")
        return self._outs[layer]


def _settings(cfg: Config) -> dict[str, Any]:
    return {"seed": cfg.seed, "images": cfg.images.source_settings(), "model": cfg.model.network_settings(),
            "collect": {k: getattr(cfg.collect, k) for k in _CONTENT_KEYS}}


def unit_name(j: int, layer: str | None = None) -> str:
    """Chunk ``j`` of the first layer (``layer`` None), or of a further layer."""
    return f"chunk-{j:06d}" if layer is None else f"chunk-{j:06d}.{layer_slug(layer)}"


def plan_units(n: int, chunk_rows: int, further: list[str] | None = None) -> list[str]:
    """Unit names for ``n`` rows in chunks of ``chunk_rows``, chunk by chunk: the first layer's, then
    each ``further`` layer's (so a lease window holds a chunk's layers together: decoded once)."""
    chunks = range((n + chunk_rows - 1) // chunk_rows)
    return [unit_name(j, layer) for j in chunks for layer in [None, *(further or [])]]


def _parse_unit(unit: str, layers: list[str]) -> tuple[int, str]:
    """(chunk, layer) of a unit name."""
    head, _, slug = unit.partition(".")
    j = int(head.split("-")[1])
    if not slug:
        return j, layers[0]
    return j, next(layer for layer in layers[1:] if layer_slug(layer) == slug)


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


def _create_group(ctx: _Context, layer: str) -> None:
    """``layer``'s collect group, created whole (:func:`atlas.formats.create_collect`); a further
    layer's run directory gets the run's manifest first (its example crops read it)."""
    from ..sources import STATUS_NAMES

    cfg, n, net = ctx.cfg, ctx.n, ctx.net
    run = ctx.layer_run(layer)
    if run != ctx.run:
        import shutil

        shutil.rmtree(run.stage_path(NAME), ignore_errors=True)
        run.root.mkdir(parents=True, exist_ok=True)
        for name in ("manifest.tsv", "manifest.json"):  # the json last: it marks the manifest complete
            atomic_write_bytes(run.root / name, (ctx.run.root / name).read_bytes())
    attribution = cfg.collect.attribution
    header = CollectHeader(
        model=cfg.model.name, layer=layer, layer_shape=ctx.shapes[layer], input_size=net.input_size,
        seed=cfg.seed, border=cfg.collect.border, n_images=n, chunk_rows=min(cfg.collect.chunk_rows, max(n, 1)),
        attribution=attribution, top_k=cfg.collect.top_k if attribution else 0, class_names=list(net.class_names),
        label_names=list(ctx.manifest.label_names), status_codes={str(s): v for s, v in STATUS_NAMES.items()},
        weights_sha256=net.weights_sha256)
    create_collect(run, header, cfg.collect.dtype)
    ctx._outs.pop(layer, None)


def _forget_missing_layers(ctx: _Context, done: frozenset[str]) -> set[str]:
    """A further layer without its group (new in ``model.layers``, or deleted): create it; its
    done units (if any) are obsolete."""
    gone: set[str] = set()
    for layer in ctx.layers[1:]:
        if not CollectOutput.exists(ctx.layer_run(layer)):
            ctx.log.info("layer %s: creating its collect group in %s", layer, ctx.layer_run(layer).root)
            _create_group(ctx, layer)
            gone |= {u for u in done if u.endswith("." + layer_slug(layer))}
    return gone


def _open(job: Job) -> _Context:
    from ..models import LayerSamplers, layer_shape, load_network, pin_threads, resolve_device
    from ._device import device_record

    cfg, run, log = job.cfg, job.run, job.log
    pin_threads(cfg.collect.threads)
    net = load_network(cfg.model)
    _check_slugs(cfg.model.all_layers)
    shapes = {layer: layer_shape(net, layer) for layer in cfg.model.all_layers}
    for shape in shapes.values():  # validates border on every grid
        sample_positions(cfg.seed, np.zeros(1, np.int64), shape[1], shape[2], cfg.collect.border)
    with run.stage_lock(NAME):
        manifest = _open_manifest(cfg, run, log)
    device = resolve_device(cfg.model.device)
    sampler = LayerSamplers(net, list(shapes), attribution=cfg.collect.attribution, top_k=cfg.collect.top_k,
                            device=device, channels_last=cfg.collect.channels_last, autocast=device.type == "cuda",
                            fold_bn=cfg.collect.fold_bn)
    if cfg.collect.attribution and not sampler.attribution:  # a network without a classifier (the sampler said so)
        cfg = with_updates(cfg, {"collect.attribution": False})
    return _Context(cfg, run, manifest, sampler, net, shapes, len(manifest), log,
                    device=device_record(device, autocast=sampler.autocast))


def _check_slugs(layers: list[str]) -> None:
    """Two layers whose folder names would be the same are refused."""
    seen: dict[str, str] = {}
    for layer in layers:
        other = seen.setdefault(layer_slug(layer), layer)
        if other != layer:
            raise ValueError(f"config key `model.layers`: layers {other!r} and {layer!r} would share the folder "
                             f"layers/{layer_slug(layer)}: collect them in two runs")


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


def _daemonic() -> bool:
    """Inside a daemonic process (a dask worker), which may not start DataLoader worker processes."""
    import multiprocessing

    return multiprocessing.current_process().daemon


def _worker_init(_: int) -> None:
    """A decode worker: drop the parent's leases; leave SIGTERM to the parent, which stops
    its workers as it unwinds (a worker killed first would surface as a DataLoader error)."""
    import signal

    close_inherited_leases()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader(ctx: _Context, chunks: list[int]) -> Iterable[_Batch]:
    """The chunks' batches, decoded by ``collect.workers`` DataLoader processes (pinned for CUDA); in a
    daemonic process (a dask worker), which may not start processes, by as many threads instead
    (PIL decodes and resizes outside the GIL), in order."""
    cfg = ctx.cfg
    ds = _Rows(ctx.manifest.locations, ctx.net.input_size, cfg.images.max_pixels, cfg.images.min_side)
    batches = _batches(chunks, ctx.n, cfg.collect.chunk_rows, cfg.collect.batch_size)
    workers = cfg.collect.workers
    if workers and _daemonic():
        ctx.log.info("in a daemonic process (a dask worker?): decoding with %d threads instead of DataLoader "
                     "processes", workers)
        return _threaded(ds, batches, workers)
    return torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=workers, collate_fn=_collate, prefetch_factor=4 if workers else None,
        persistent_workers=False, worker_init_fn=_worker_init if workers else None,
        pin_memory=ctx.sampler.device.type == "cuda",
    )


def _threaded(ds: _Rows, batches: list[list[int]], threads: int) -> Iterator[_Batch]:
    """``batches`` of ``ds`` decoded on ``threads`` threads, at most ``4 * threads`` batches ahead, in order."""
    import collections
    from concurrent.futures import Future, ThreadPoolExecutor

    def decode(rows: list[int]) -> _Batch:
        return _collate([ds[r] for r in rows])

    with ThreadPoolExecutor(threads, thread_name_prefix="atlas-decode") as pool:
        ahead: collections.deque[Future[_Batch]] = collections.deque()
        todo = iter(batches)
        for rows in todo:
            ahead.append(pool.submit(decode, rows))
            if len(ahead) >= 4 * threads:
                break
        while ahead:
            yield ahead.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(pool.submit(decode, nxt))


# --------------------------------------------------------------------------- units


class _ChunkBuffer:
    """The rows of one chunk of one layer, filled batch by batch, written in one piece."""

    def __init__(self, ctx: _Context, j: int, layer: str) -> None:
        r, c = ctx.cfg.collect.chunk_rows, ctx.shapes[layer][0]
        self.layer, self.unit = layer, unit_name(j, None if layer == ctx.layers[0] else layer)
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


def _run_batch(ctx: _Context, bufs: list[_ChunkBuffer], rows: np.ndarray, imgs: torch.Tensor,
               status: np.ndarray, reasons: list[str]) -> None:
    """One decoded batch of one chunk through the network, for each layer of ``bufs``."""
    from ..sources import STATUS_OK

    local = rows - bufs[0].start
    bad = [{"row": int(row), "location": ctx.manifest.locations[row], "status": int(st), "reason": why}
           for row, st, why in zip(rows, status, reasons) if st != STATUS_OK]
    for buf in bufs:
        buf.status[local] = status
        buf.filled += len(rows)
        buf.bad += bad
    ok = status == STATUS_OK
    if not ok.any():
        return
    pos = {buf.layer: sample_positions(ctx.cfg.seed, rows[ok], *ctx.shapes[buf.layer][1:], ctx.cfg.collect.border)
           for buf in bufs}
    # uint8 to the device (a quarter of float32's bytes; pinned when on CUDA), normalised there
    x = ctx.net.preprocess(imgs[torch.from_numpy(ok)].to(ctx.sampler.device, non_blocking=True))
    got = ctx.sampler(x, {layer: torch.from_numpy(p.astype(np.int64)) for layer, p in pos.items()})
    for buf in bufs:
        vec, vals, classes = got[buf.layer]
        buf.act[local[ok]] = vec.numpy().astype(buf.act.dtype)
        buf.pos[local[ok]] = pos[buf.layer]
        if vals is not None and classes is not None:
            buf.val[local[ok]] = vals.numpy()
            buf.cls[local[ok]] = classes.numpy().astype(np.int16)


def _write_chunk(ctx: _Context, buf: _ChunkBuffer) -> dict[str, Any]:
    """Write one chunk's rows of one layer, then its side data; returns what its done marker records."""
    attribution = ctx.cfg.collect.attribution
    ctx.out(buf.layer).write_rows(buf.start, CollectRows(
        buf.act, buf.pos, np.arange(buf.start, buf.stop, dtype=np.int64), buf.status,
        ctx.manifest.labels[buf.start:buf.stop].astype(np.int32), buf.cls if attribution else None,
        buf.val if attribution else None))
    ok = buf.act[buf.status == 1].astype(np.float64)
    atomic_save_npz(ctx.run.unit_data_path(NAME, buf.unit), second_moment=ok.T @ ok,
                    ok_count=np.array(len(ok), np.int64))
    atomic_write_text(ctx.run.unit_data_path(NAME, buf.unit, ".json"), json.dumps(buf.bad))
    return {"rows": [buf.start, buf.stop], "ok": int(len(ok)), "bad": len(buf.bad)}


def _iter_batches(ctx: _Context, chunks: list[int]) -> Iterator[_Batch]:
    with torch.no_grad():
        yield from _loader(ctx, chunks)


def _run_chunks(ctx: _Context, todo: dict[int, list[str]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Collect the layers ``todo[j]`` of each chunk j through one DataLoader (each image decoded
    once); yield each (chunk, layer) unit once it is written."""
    r = ctx.cfg.collect.chunk_rows
    chunks = sorted(todo)
    rows_todo = sum(min((j + 1) * r, ctx.n) - j * r for j in chunks)
    bar = progress(total=rows_todo, desc="collect", unit="img")
    bufs: dict[int, list[_ChunkBuffer]] = {}
    t0, done = time.time(), 0
    for rows, imgs, status, reasons in _iter_batches(ctx, chunks):
        j = int(rows[0]) // r
        chunk = bufs.setdefault(j, [_ChunkBuffer(ctx, j, layer) for layer in todo[j]])
        _run_batch(ctx, chunk, rows, imgs, status, reasons)
        bar.update(len(rows))
        done += len(rows)
        if chunk[0].full():
            rate = done / max(time.time() - t0, 1e-9)
            for buf in bufs.pop(j):
                info = _write_chunk(ctx, buf)
                ctx.log.info("%s done (%s, %.1f img/s)", buf.unit, plural(info["rows"][1] - info["rows"][0], "image"),
                             rate)
                yield buf.unit, info
    bar.close()


# --------------------------------------------------------------------------- finish


def _layer_totals(ctx: _Context, layer: str) -> tuple[np.ndarray, int]:
    """(second moment float64 [C, C], ok count) of ``layer``: its chunks' sums in chunk order."""
    c = ctx.shapes[layer][0]
    total, ok_count = np.zeros((c, c), np.float64), 0
    for j in range((ctx.n + ctx.cfg.collect.chunk_rows - 1) // ctx.cfg.collect.chunk_rows):
        with np.load(ctx.run.unit_data_path(NAME, unit_name(j, None if layer == ctx.layers[0] else layer))) as z:
            total += z["second_moment"]
            ok_count += int(z["ok_count"])
    return total, ok_count


def _finalize(ctx: _Context) -> dict[str, Any]:
    """Sum per-chunk second moments in chunk order (per layer); write ok_count and the bad-input report."""
    run = ctx.run
    bad_lines = ["row\tlocation\tstatus\treason"]
    for name in plan_units(ctx.n, ctx.cfg.collect.chunk_rows):  # the first layer's chunks: bad images are the same in all
        for b in json.loads(run.unit_data_path(NAME, name, ".json").read_text()):
            bad_lines.append(f"{b['row']}\t{b['location']}\t{b['status']}\t{b['reason']}".replace("\n", " "))
    ok_count = 0
    for layer in ctx.layers:
        if ctx.out(layer).has_totals:  # finished before a further layer was added: left untouched
            ok_count = ctx.out(layer).ok_count
            continue
        total, ok_count = _layer_totals(ctx, layer)
        ctx.out(layer).write_totals(total, ok_count, len(bad_lines) - 1)
    atomic_write_text(run.logs_path() / "bad_inputs.tsv", "\n".join(bad_lines) + "\n")
    ctx.log.info("collect complete: %d ok, %d bad (see logs/bad_inputs.tsv)%s", ok_count, len(bad_lines) - 1,
                 f"; layers {', '.join(ctx.layers)}" if len(ctx.layers) > 1 else "")
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
        """The class atlas's selection when ``classes.parent`` is set, a further layer's record when
        ``model.layer_of`` is, a comparison view's pairing when ``compare.layout`` is, else this stage."""
        if _layer.active(cfg):
            return _layer.STAGE
        if cfg.compare.layout is not None:  # a comparison's view: the other network's rows on the layout's cells
            from ._pair import view_stage

            return view_stage(NAME, cfg)
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
        for layer in ctx.layers:
            _create_group(ctx, layer)

    def forget(self, ctx: _Context, done: frozenset[str]) -> set[str]:
        return _forget_missing_layers(ctx, done)

    def units(self, ctx: _Context) -> list[str]:
        return plan_units(ctx.n, ctx.cfg.collect.chunk_rows, ctx.layers[1:])

    def scope(self, cfg: Config, done: frozenset[str]) -> Any:
        """The further layers of ``model.layers`` (None with one layer): adding one is no redo."""
        return cfg.model.all_layers[1:] or None

    def run_units(self, ctx: _Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        if not ctx.device_checked:  # before this process writes rows: no bf16 rows among float32 ones
            from ._device import check_device

            check_device(ctx.run, NAME, ctx.device, ctx.log, ctx.cfg)
            ctx.device_checked = True
        todo: dict[int, list[str]] = {}
        for unit in units:
            j, layer = _parse_unit(unit, ctx.layers)
            todo.setdefault(j, []).append(layer)
        ctx.log.info("%s to do (%s in all; %s)", plural(len(units), "chunk"), plural(ctx.n, "image"),
                     ", ".join(f"layer {layer} {'x'.join(map(str, ctx.shapes[layer]))}" for layer in ctx.layers))
        yield from _run_chunks(ctx, {j: sorted(ls, key=ctx.layers.index) for j, ls in todo.items()})

    def finish(self, ctx: _Context) -> dict[str, Any]:
        return _finalize(ctx)

    def provenance(self, ctx: _Context) -> dict[str, Any]:
        return {"weights_sha256": ctx.net.weights_sha256, "weights_path": ctx.net.weights_path,
                "collect_device": ctx.device}

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Images, ok and bad counts, model and layer (and the further layers collected)."""
        from ..formats import layer_runs

        col = CollectOutput.open(run)
        st = col.status_all()
        further = [CollectOutput.open(RunDir(d)).layer for d in layer_runs(run.root) if CollectOutput.exists(RunDir(d))]
        return {"images": col.n_images, "ok": int((st == 1).sum()), "bad": int((st >= 2).sum()),
                "model": col.model, "layer": col.layer, **({"further_layers": further} if further else {})}


STAGE = CollectStage()
