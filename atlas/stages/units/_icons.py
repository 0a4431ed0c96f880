"""Units ``icons-NNNNNN`` and ``examples-NNNNNN``: a batch of units' icons, and their dataset examples.

An icon batch is one call of the render stage's kernel, :func:`atlas.ops.inversion.render_icons`, with
the units' directions as targets (a channel's is the one-hot e_c, so the objective of a batch is one
vectorised function over one-hot targets, as render's is over cell means), render's settings with
the ``units.*`` values that are set, no whitening, and a generator seeded by (seed, batch): a batch
redone after a kill gives the same pixels. Its rows of ``icons``, ``objective``, ``cossim`` and
``activation`` are written, then ``icons/<u>.<fmt>`` for the viewer.

An examples batch (128 units, icons or not) crops the rows where its units are strongest around their
sampled positions (:func:`atlas.formats.example_crop`, ``tile.example_window`` layer cells, as the
viewer's cell examples) into ``examples/<row>.jpg``; a row several units share is cropped once, by the
batch of the lowest of them.
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...formats import example_crop, run_manifest
from ...formats._units import units_folder
from ...ops.inversion import render_icons
from ...progress import progress
from ...store import DurableWriter
from ._context import Context, render_settings, unit_seed

__all__ = ["run_icons", "run_examples", "encode_image", "icon_file"]


def encode_image(arr: np.ndarray, fmt: str, quality: int) -> bytes:
    """uint8 [h, w, 3] -> the bytes of a ``jpg``, ``png`` or ``webp`` file."""
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(arr))
    if fmt == "png":
        img.save(buf, format="PNG", optimize=False)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, method=4)
    else:
        img.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def icon_file(u: int, fmt: str) -> str:
    return f"icons/{u}.{fmt}"


def _batch(unit: str) -> int:
    return int(unit.rsplit("-", 1)[1])


def _step_counter(bar: Any, m: int, steps: int) -> Any:
    def on_step(step: int) -> None:
        bar.update((step + 1) * m // steps - step * m // steps)

    return on_step


def run_icons(ctx: Context, unit: str) -> dict[str, Any]:
    b = _batch(unit)
    lo, hi = ctx.plan.icon_batches()[b]
    t0 = time.time()
    basis, acts, rs = ctx.basis(), ctx.activations(), render_settings(ctx.cfg)
    gen = torch.Generator().manual_seed(unit_seed(ctx.cfg.seed, b))
    bar = progress(total=hi - lo, desc="units: icons", unit="icon")
    res = render_icons(acts, torch.from_numpy(basis.directions[lo:hi].copy()), rs, generator=gen,
                       on_step=_step_counter(bar, hi - lo, int(rs.steps)), icon_size=ctx.icon_size)
    bar.close()
    ctx.output().write_icons(lo, hi, res.icons, res.objective, res.cossim, res.activation)
    t = ctx.cfg.tile
    writer, out = DurableWriter(), units_folder(ctx.run.root)
    for i, u in enumerate(range(lo, hi)):
        writer.put(out / icon_file(u, t.format), encode_image(res.icons[i], t.format, t.quality))
    writer.sync()
    seconds = round(time.time() - t0, 3)
    ctx.log.info("%s: units %d-%d, median cosine to their directions %.3f (%.2f s per icon)", unit, lo, hi - 1,
                 float(np.median(res.cossim)), seconds / max(hi - lo, 1))
    return {"units": [lo, hi], "seconds": seconds, "median_cossim": round(float(np.median(res.cossim)), 6)}


def run_examples(ctx: Context, unit: str) -> dict[str, Any]:
    lo, hi = ctx.plan.example_batches()[_batch(unit)]
    st = ctx.stats()
    rows, pos = st.examples, st.example_positions
    first: dict[int, int] = {}
    for u in range(rows.shape[0]):  # each row is cropped by the batch of the lowest unit listing it
        for r in rows[u].tolist():
            if r >= 0:
                first.setdefault(int(r), u)
    col, cfg = ctx.collect, ctx.cfg
    manifest = run_manifest(ctx.run.root)
    writer, out = DurableWriter(), units_folder(ctx.run.root)
    written, failed = 0, 0
    for u in range(lo, hi):
        for i, r in enumerate(rows[u].tolist()):
            if r < 0 or first[int(r)] != u:
                continue
            crop = example_crop(manifest, int(r), (int(pos[u, i, 0]), int(pos[u, i, 1])), col.layer_grid, col.input_size,
                                cfg.tile.example_window, cfg.images)
            if crop.pixels is None:
                failed += 1
                continue
            writer.put(out / "examples" / f"{int(r)}.jpg", encode_image(crop.pixels, "jpg", cfg.tile.quality))
            written += 1
    writer.sync()
    if failed:
        ctx.log.info("%s: %d example images could not be read again", unit, failed)
    return {"units": [lo, hi], "crops": written, "unreadable": failed}

