"""Units ``attribution-NNNNNN``: each unit's share of a cell's attribution to its top class.

Collect stores one number per (row, class): the attribution h . d logit / d h of the sampled vector h.
It does not say which units carry it. For each cell of every grid level, its first
``units.attribution_examples`` dataset examples are run again (decoded as collect decoded them, through
collect's module) and the gradient of the cell's top class's logit with respect to the layer's vector
at the example's sampled position is taken (:func:`atlas.models._gradients.position_gradients`); unit
u's linear attribution is ``gain * coef_u(h) * (direction_u . grad)`` (a channel's: ``h_c * grad_c``,
which add up to collect's attribution; :meth:`atlas.ops.units.Basis.attribution`). A unit of work is
a batch of ``units.attribution_batch`` example rows, each with every class it is attributed to; its
side data (``RUN/state/units/units/attribution-NNNNNN.npz``: rows, classes, the attribution per unit)
are added up into each cell's attribution dictionary when the analysis finishes.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from ...formats import run_manifest
from ...ops.units import dictionary
from ...store import atomic_write_bytes
from ._context import NAME, Context

__all__ = ["run_attribution", "attribution_dictionaries"]


def run_attribution(ctx: Context, unit: str) -> dict[str, Any]:
    from ...models._gradients import position_gradients
    from ...sources import BadInput, load_image

    assert ctx.pairs is not None
    b = int(unit.rsplit("-", 1)[1])
    sl = ctx.pairs.batch(b, ctx.cfg.units.attribution_batch)
    rows, pos, classes = ctx.pairs.rows[sl], ctx.pairs.positions[sl], ctx.pairs.classes[sl]
    manifest = run_manifest(ctx.run.root)
    sampler, basis = ctx.sampler(), ctx.basis()
    images, keep = [], []
    for i, r in enumerate(rows.tolist()):
        try:
            images.append(load_image(manifest.locations[r], size=ctx.collect.input_size,
                                     max_pixels=ctx.cfg.images.max_pixels, min_side=ctx.cfg.images.min_side))
            keep.append(i)
        except (BadInput, IndexError):
            continue
    out_rows, out_cls, out_attr = [], [], []
    if keep:
        x = sampler.net.preprocess(torch.from_numpy(np.stack(images)))
        k = np.asarray(keep)
        acts, grads = position_gradients(sampler, x, torch.from_numpy(pos[k]), torch.from_numpy(classes[k]))
        for j in range(classes.shape[1]):
            has = classes[k, j] >= 0
            if not has.any():
                continue
            out_rows.append(rows[k][has])
            out_cls.append(classes[k, j][has])
            out_attr.append(basis.attribution(acts.numpy()[has], grads[:, j].numpy()[has]))
    buf = io.BytesIO()
    np.savez(buf, rows=np.concatenate(out_rows) if out_rows else np.zeros(0, np.int64),
             classes=np.concatenate(out_cls) if out_cls else np.zeros(0, np.int64),
             attribution=np.concatenate(out_attr) if out_attr else np.zeros((0, basis.size), np.float32))
    atomic_write_bytes(ctx.run.unit_data_path(NAME, unit), buf.getvalue())
    return {"rows": int(len(rows)), "unreadable": int(len(rows) - len(keep))}


def attribution_dictionaries(ctx: Context) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per grid size: (units int32 [s, s, T], shares float32 [s, s, T], class int16 [s, s]) from every
    attribution unit's side data: each cell's mean over its examples of the units' attribution to its top class."""
    from ...formats import GridOutput

    if ctx.pairs is None:
        return {}
    table: dict[tuple[int, int], np.ndarray] = {}
    for b in range(ctx.plan.attribution_batches):
        with np.load(ctx.run.unit_data_path(NAME, f"attribution-{b:06d}")) as z:
            for r, k, a in zip(z["rows"].tolist(), z["classes"].tolist(), z["attribution"]):
                table[(int(r), int(k))] = a
    e, top, grid = ctx.cfg.units.attribution_examples, ctx.cfg.units.dictionary, GridOutput.open(ctx.run)
    out = {}
    for s in ctx.sizes:
        lvl = grid.level(s)
        assert lvl.top_classes is not None and lvl.examples is not None
        cls = np.asarray(lvl.top_classes[...])[:, :, 0].astype(np.int16)
        ex = np.asarray(lvl.examples[...])[:, :, :e]
        units = np.full((s, s, top), -1, np.int32)
        shares = np.full((s, s, top), np.nan, np.float32)
        empty = ctx.counts[s] < ctx.min_count
        for r, c in zip(*np.nonzero(~empty & (cls >= 0))):
            got = [table[(int(x), int(cls[r, c]))] for x in ex[r, c].tolist() if (int(x), int(cls[r, c])) in table]
            if got:
                units[r, c], shares[r, c] = (a[0] for a in dictionary(np.mean(np.stack(got).astype(np.float64), axis=0)[None], top))
        out[s] = (units, shares, np.where(empty, -1, cls).astype(np.int16))
    return out
