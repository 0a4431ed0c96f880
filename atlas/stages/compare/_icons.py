"""The layout network's icons as sheets in the view (``changes/icons/<s>/<k>.png``): what the viewer's
A/B switch draws in place of the view's own icons. Units ``icons-SSSS-KKKK``: sheet k of grid s."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from ...formats import RenderOutput
from ...formats._compare import icon_sheet_path
from ...store import DurableWriter
from ._context import Context, sheet_cols

__all__ = ["icon_units", "icon_unit", "icon_slots"]


def _per_sheet(icon: int) -> int:
    return sheet_cols(icon) ** 2


def icon_units(ctx: Context) -> list[str]:
    """``icons-SSSS-KKKK`` for every sheet of every rendered level of the layout run."""
    render = RenderOutput.open(ctx.layout)
    out = []
    for s, n in ctx.render_levels().items():
        per = _per_sheet(render.level(s).icons.shape[1])
        out += [f"icons-{s:04d}-{k:04d}" for k in range(-(-n // per))]
    return out


def icon_slots(ctx: Context, s: int) -> tuple[np.ndarray, int, int]:
    """Grid ``s``'s layout icons: (the icon row of each cell, int64 [s, s], -1: none), the icon side
    and the icons per sheet row. Icon row i lies in sheet i // cols**2 at slot i % cols**2."""
    level = RenderOutput.open(ctx.layout).level(s)
    idx = level.cell_index()
    rendered = np.isfinite(np.asarray(level.cossim[...]))
    idx = np.where((idx >= 0) & rendered[np.maximum(idx, 0)], idx, -1)
    side = int(level.icons.shape[1])
    return idx, side, sheet_cols(side)


def icon_unit(ctx: Context, unit: str) -> dict[str, Any]:
    """Sheet k of grid s: icons ``k * cols**2 ..`` of the layout run's render level, row-major, as PNG."""
    _, s_text, k_text = unit.split("-")
    s, k = int(s_text), int(k_text)
    icons = RenderOutput.open(ctx.layout).level(s).icons
    side = int(icons.shape[1])
    cols, per = sheet_cols(side), _per_sheet(side)
    lo, hi = k * per, min((k + 1) * per, int(icons.shape[0]))
    block = np.asarray(icons[lo:hi])
    rows = -(-(hi - lo) // cols)
    sheet = np.zeros((rows * side, cols * side, 3), np.uint8)
    for i, icon in enumerate(block):
        r, c = divmod(i, cols)
        sheet[r * side:(r + 1) * side, c * side:(c + 1) * side] = icon
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, "PNG", compress_level=6)
    writer = DurableWriter()
    writer.put(ctx.out / icon_sheet_path(s, k), buf.getvalue())
    writer.sync()
    return {"size": s, "sheet": k, "icons": hi - lo}
