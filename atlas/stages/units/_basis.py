"""The basis: the layer's channels, or one learned from the collected rows (unit ``basis``).

* ``channels``: nothing to learn; written when the outputs are created.
* ``nmf:K``: multiplicative-update NMF (:func:`atlas.ops.units.nmf_fit`) of the sign split
  [max(x, 0), max(-x, 0)] of a seeded sample of at most ``units.fit_rows`` ok rows.
* ``sae:K``: a sparse autoencoder (:func:`atlas.ops.units.sae_step`) trained on every ok row, streamed
  chunk by chunk from the store: ``units.sae_epochs`` passes, chunks and the rows inside each in an
  order seeded by (seed, epoch, chunk), ``units.sae_batch`` rows per step, inputs scaled by the layer's
  root mean squared norm (from collect's second moment). The training state (parameters, Adam's
  moments, where it is) is saved to ``RUN/state/units/units/basis-checkpoint.npz`` at most every
  ``units.sae_checkpoint_s`` seconds and at each epoch's end, so a killed run resumes there to the
  same bits (on the CPU with the same thread count).

Whatever process needs the basis first learns it, under the lock ``state/units/locks/_basis``; the
others wait for it. ``basis.json`` is written last: its presence means the basis is whole.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import torch

from ...formats._units import UnitsOutput
from ...ops.units import (
    AdamState,
    Basis,
    SAEParams,
    adam_init,
    channel_basis,
    nmf_basis,
    nmf_fit,
    sae_basis,
    sae_init,
    sae_step,
    sign_split,
)
from ...progress import progress
from ...store import atomic_write_bytes, read_rows
from ._context import NAME, Context

__all__ = ["ensure_basis", "write_channel_basis", "learn_basis"]

CHECKPOINT = "basis-checkpoint"


def write_channel_basis(ctx: Context) -> None:
    """``channels``: the identity, written with the outputs."""
    UnitsOutput.open(ctx.run).write_basis(channel_basis(ctx.channels), {"kind": "channels", "k": ctx.n_units,
                                                                        "spec": "channels"})


def ensure_basis(ctx: Context) -> Basis:
    """The whole basis: read back, or learned here (under the lock) when no process has made it yet."""
    if UnitsOutput.files(ctx.run).basis_info() is None:
        with ctx.run.stage_lock(NAME, "_basis"):  # not "basis": the unit's lease is that file
            if UnitsOutput.files(ctx.run).basis_info() is None:
                learn_basis(ctx)
    return ctx.output().basis()


def learn_basis(ctx: Context) -> None:
    """Learn ``units.basis`` and write it (arrays, then basis.json)."""
    t0 = time.time()
    if ctx.kind == "nmf":
        basis, info = _learn_nmf(ctx)
    else:
        basis, info = _learn_sae(ctx)
    info = {**info, "kind": ctx.kind, "k": ctx.n_units, "spec": ctx.cfg.units.basis}  # no timings: the same bytes every run
    ctx.output().write_basis(basis, info)
    ctx.log.info("basis %s learned in %.1f s", ctx.cfg.units.basis, time.time() - t0)


def _ok_rows(ctx: Context) -> np.ndarray:
    return np.flatnonzero(ctx.collect.status_all() == 1)


def _learn_nmf(ctx: Context) -> tuple[Basis, dict[str, Any]]:
    u, col = ctx.cfg.units, ctx.collect
    ok = _ok_rows(ctx)
    rng = np.random.default_rng([ctx.cfg.seed, 0x4E4D46])
    rows = np.sort(rng.choice(ok, u.fit_rows, replace=False)) if ok.size > u.fit_rows else ok
    x = torch.from_numpy(read_rows(col.activations, rows, col.chunk_rows))
    ctx.log.info("nmf: fitting %d groups on the sign split of %d rows (%d rounds)", ctx.n_units, rows.size, u.nmf_iter)
    split = sign_split(x)
    h, w = nmf_fit(split, ctx.n_units, iters=u.nmf_iter, seed=ctx.cfg.seed)
    err = float((split - w @ h).square().sum() / split.square().sum().clamp(min=1e-30))
    return nmf_basis(h.numpy(), u.nmf_iter), {"fit_rows": int(rows.size), "nmf_iter": u.nmf_iter,
                                               "fit_error": round(err, 6),
                                               "input": "sign split [max(x, 0), max(-x, 0)]"}


# --------------------------------------------------------------------------- sparse autoencoder


def _chunks(ctx: Context) -> list[tuple[int, int]]:
    r, n = ctx.collect.chunk_rows, ctx.collect.n_rows
    return [(lo, min(lo + r, n)) for lo in range(0, n, r)]


def _chunk_rows(ctx: Context, lo: int, hi: int) -> np.ndarray:
    """The ok rows' vectors of rows lo .. hi - 1: float32 [m, C]."""
    ok = np.asarray(ctx.collect.status[lo:hi]) == 1
    rows: np.ndarray = np.asarray(ctx.collect.activations[lo:hi], np.float32)[ok]
    return rows


def _scale_and_mean(ctx: Context) -> tuple[float, np.ndarray]:
    """The layer's root mean squared norm over the ok rows (collect's second moment) and the rows' mean."""
    col = ctx.collect
    m = np.asarray(col.second_moment[...], np.float64)
    n = max(col.ok_count, 1)
    scale = float(np.sqrt(max(np.trace(m) / n, 1e-30)))
    total = np.zeros(ctx.channels, np.float64)
    for lo, hi in _chunks(ctx):
        total += _chunk_rows(ctx, lo, hi).astype(np.float64).sum(axis=0)
    return scale, (total / n).astype(np.float32)


def _save(ctx: Context, p: SAEParams, st: AdamState, where: tuple[int, int, float, int], scale: float,
          losses: list[float]) -> None:
    """The training state: parameters, Adam's, ``where`` = (epoch, next chunk position, the epoch's loss
    sum and steps so far), the input scale and the mean loss of each finished epoch."""
    epoch, pos, total, steps = where
    buf = io.BytesIO()
    arrays: dict[str, Any] = {**p.arrays(), **st.arrays(), "epoch": np.int64(epoch), "pos": np.int64(pos),
                              "scale": np.float64(scale), "losses": np.asarray(losses, np.float64),
                              "total": np.float64(total), "steps": np.int64(steps)}
    np.savez(buf, **arrays)
    atomic_write_bytes(ctx.run.unit_data_path(NAME, CHECKPOINT), buf.getvalue())


def _load(ctx: Context) -> tuple[SAEParams, AdamState, tuple[int, int, float, int], float, list[float]] | None:
    path = ctx.run.unit_data_path(NAME, CHECKPOINT)
    if not path.is_file():
        return None
    with np.load(path) as z:
        a = {k: z[k] for k in z.files}
    ctx.log.info("sae: resuming from its checkpoint (epoch %d, chunk %d)", int(a["epoch"]), int(a["pos"]))
    where = (int(a["epoch"]), int(a["pos"]), float(a["total"]), int(a["steps"]))
    return SAEParams.from_arrays(a), AdamState.from_arrays(a), where, float(a["scale"]), [float(v) for v in a["losses"]]


def _learn_sae(ctx: Context) -> tuple[Basis, dict[str, Any]]:
    u, seed = ctx.cfg.units, ctx.cfg.seed
    chunks = _chunks(ctx)
    resumed = _load(ctx)
    if resumed is None:
        scale, mean = _scale_and_mean(ctx)
        p = sae_init(ctx.channels, ctx.n_units, seed=seed, mean=torch.from_numpy(mean / scale))
        state, (epoch0, pos0, total0, steps0), losses = adam_init(p), (0, 0, 0.0, 0), list[float]()
    else:
        p, state, (epoch0, pos0, total0, steps0), scale, losses = resumed
    bar = progress(total=u.sae_epochs * len(chunks), desc="units: sae", unit="chunk")
    bar.update(epoch0 * len(chunks) + pos0)
    saved = time.monotonic()
    for epoch in range(epoch0, u.sae_epochs):
        order = np.random.default_rng([seed, 0x534145, epoch]).permutation(len(chunks))
        total, steps = (total0, steps0) if epoch == epoch0 else (0.0, 0)
        for pos in range(pos0 if epoch == epoch0 else 0, len(chunks)):
            j = int(order[pos])
            x = torch.from_numpy(_chunk_rows(ctx, *chunks[j]) / scale)
            perm = torch.from_numpy(np.random.default_rng([seed, 0x534145, epoch, j]).permutation(len(x)))
            for lo in range(0, len(x), u.sae_batch):
                p, state, loss = sae_step(p, state, x[perm[lo:lo + u.sae_batch]], l1=u.sae_l1, lr=u.sae_lr)
                total, steps = total + loss, steps + 1
            bar.update(1)
            if pos + 1 < len(chunks) and time.monotonic() - saved >= u.sae_checkpoint_s:
                _save(ctx, p, state, (epoch, pos + 1, total, steps), scale, losses)
                saved = time.monotonic()
        losses.append(round(total / max(steps, 1), 6))
        _save(ctx, p, state, (epoch + 1, 0, 0.0, 0), scale, losses)
        saved = time.monotonic()
        ctx.log.info("sae: epoch %d/%d, mean loss %.4f", epoch + 1, u.sae_epochs, losses[-1])
    bar.close()
    return sae_basis(p, scale), {"scale": scale, "epochs": u.sae_epochs, "batch": u.sae_batch, "lr": u.sae_lr,
                                 "l1": u.sae_l1, "loss_by_epoch": losses, "steps": state.t}
