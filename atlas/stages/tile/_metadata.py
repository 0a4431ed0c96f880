"""The tile stage's metadata documents: ``cells-<s>.json`` per grid size and ``atlas.json``,
each with a ``.js`` twin assigning it to a global (``window.ATLAS_CELLS_<s>``, ``window.ATLAS``)
so the viewer works from ``file://``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ...formats import CollectOutput, GridLevel, GridOutput, RenderOutput
from ...ops.canvas import crop_box
from ...ops.dzi import grid_switch_px
from ...store import DurableWriter
from ._classes import identity, pair_values
from ._context import HEAT_BLOCK, NAME, Context, dzi_name, sheet_cols
from ._inputs import Inputs
from ._plan import level_examples

# What the values of the cells' top lists and of the heatmap mean, by class kind (the viewer shows it).
VALUE_TEXT = {
    "attribution": ("logit", "Attribution: how much this cell's activations raise each class's logit: "
                    "h \u00b7 \u2202logit/\u2202h at each sampled position, averaged over the cell (logit units; "
                    "0 where the class was not among an activation's top classes)."),
    "attribution-top": ("logit", "Attribution: how much this cell's activations raise each class's logit: "
                        "h \u00b7 \u2202logit/\u2202h at each sampled position, averaged over the cell (logit units; "
                        "only each cell's top classes were stored)."),
    "labels": ("share", "Labels: the share of the cell's activations whose image carries each source label."),
    "none": ("", "No class attribution or labels were stored for this atlas."),
}


def _r(x: float, digits: int = 5) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else float(f"{x:.{digits}g}")


def _js(var: str, doc: Any) -> str:
    return f"window.{var} = {json.dumps(doc, separators=(',', ':'), sort_keys=True)};\n"


def _top_classes(gl: GridLevel, inp: Inputs, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cell of grid ``s``: (top classes [s, s, k] (-1: none), their values) of the kind shown:
    the grid's attribution top classes, else its label counts, else nothing."""
    stored_c, stored_v, lcs = gl.top_classes, gl.top_values, gl.label_counts
    if inp.class_kind in ("attribution", "attribution-top") and stored_c is not None and stored_v is not None:
        return np.asarray(stored_c[:], np.int64), np.asarray(stored_v[:], np.float64)
    if inp.class_kind == "labels" and lcs is not None:
        lc = np.asarray(lcs[:], np.int64)
        top_c = np.argsort(-lc, axis=2, kind="stable")[:, :, :5]
        top_v = np.take_along_axis(lc, top_c, axis=2).astype(np.float64)
        return np.where(top_v > 0, top_c, -1), top_v
    return np.full((s, s, 0), -1), np.zeros((s, s, 0))


def _heat_summary(ctx: Context, s: int) -> dict[str, np.ndarray]:
    """Grid ``s``'s heat units' side data combined: per cell the positive sum and the best class and
    value (over all classes), per class its positive cells and maximum."""
    inp = ctx.inputs
    n = s * s
    out = {"pos_sum": np.zeros(n), "best_class": np.full(n, -1, np.int64), "best_value": np.full(n, -np.inf),
           "n_pos": np.zeros(inp.n_classes, np.int64), "vmax": np.zeros(inp.n_classes)}
    for part in range(-(-inp.n_classes // HEAT_BLOCK)):
        with np.load(ctx.run.unit_data_path(NAME, f"heat-{s:04d}-{part:04d}")) as z:
            k0 = part * HEAT_BLOCK
            out["pos_sum"] += z["pos_sum"]
            better = z["best_value"] > out["best_value"]  # blocks in class order: ties keep the lower class
            out["best_class"] = np.where(better, z["best_class"], out["best_class"])
            out["best_value"] = np.where(better, z["best_value"], out["best_value"])
            out["n_pos"][k0:k0 + len(z["n_pos"])] = z["n_pos"]
            out["vmax"][k0:k0 + len(z["vmax"])] = z["vmax"]
    return out


def _example_labels(ctx: Context, rows: np.ndarray) -> dict[int, int]:
    """Source label id (into ``label_names``) of each collect row in ``rows``; -1 when unlabelled."""
    col, n = CollectOutput.open(ctx.run), len(ctx.inputs.label_names)
    uniq = np.unique(rows[rows >= 0])
    if not col.has_labels or not n or not uniq.size:
        return {}
    labels = np.asarray(col.labels.get_orthogonal_selection(uniq), np.int64)
    return {int(r): int(lab) if 0 <= lab < n else -1 for r, lab in zip(uniq.tolist(), labels.tolist())}


def example_box(y: int, x: int, layer_shape: list[int], input_size: int, window: float) -> list[float]:
    """Where layer position (y, x) lies in its example crop (:func:`atlas.ops.canvas.crop_box`):
    [top, left, bottom, right] as fractions of the crop, the input-image patch of that one cell
    of the layer's H x W grid. The viewer (``panel.js``, ``exampleBox``) computes the same from the cells'
    ``example_positions``."""
    _, lh, lw = (int(v) for v in layer_shape)
    top, left, bottom, right = crop_box(y, x, lh, lw, input_size, window)

    def frac(a: float, lo: int, hi: int) -> float:
        return min(max((a - lo) / (hi - lo), 0.0), 1.0)

    return [frac(y * input_size / lh, top, bottom), frac(x * input_size / lw, left, right),
            frac((y + 1) * input_size / lh, top, bottom), frac((x + 1) * input_size / lw, left, right)]


def cells_doc(ctx: Context, s: int, failed: set[int], heat: dict[str, np.ndarray]) -> dict[str, Any]:
    """``cells-<s>.json``: every non-empty cell of grid ``s`` with its count, top classes and the top
    class's share, examples (not those in ``failed``) with their sampled (y, x) on the layer's grid and
    their source label ids, icon sheet and slot, and render faithfulness."""
    inp, t = ctx.inputs, ctx.cfg.tile
    gl = GridOutput.open(ctx.run).level(s)
    rl = RenderOutput.open(ctx.run).level(s)
    count = inp.count[s]
    examples, positions = level_examples(gl)
    show_examples = s in ctx.plan["example_sizes"]
    labels = _example_labels(ctx, examples[count >= inp.min_count].ravel()) if show_examples else {}
    objective, cossim = np.asarray(rl.objective[:]), np.asarray(rl.cossim[:])
    rank = np.asarray(rl.rank[:]) if rl.rank is not None else np.zeros(len(cossim), np.int32)
    icon_of = np.full((s, s), -1, np.int64)
    cells = np.asarray(rl.cells[:], dtype=np.int64).reshape(-1, 2)
    icon_of[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
    top_c, top_v = _top_classes(gl, inp, s)
    names = inp.class_names_shown
    slot = np.full((s, s), -1, np.int64)  # position of the cell's icon in the level's sheets
    painted = np.nonzero(inp.index[s] >= 0)
    slot[painted] = np.arange(len(painted[0]))
    per_sheet = sheet_cols(inp.icon_sizes[s]) ** 2
    pos_sum, best_value = heat["pos_sum"].reshape(s, s), heat["best_value"].reshape(s, s)
    pair = pair_values(ctx, s)  # a two-class atlas: each cell's attribution to both classes
    out = []
    for r, c in zip(*np.nonzero(count >= inp.min_count)):
        r, c = int(r), int(c)
        top = [{"class": int(k), "name": names[k] if 0 <= k < len(names) else str(k), "value": _r(v)}
               for k, v in zip(top_c[r, c].tolist(), top_v[r, c].tolist()) if k >= 0 and np.isfinite(v)]
        i = int(icon_of[r, c])
        ex = [(e, p) for e, p in zip(examples[r, c].tolist(), positions[r, c]) if e >= 0 and e not in failed] \
            if show_examples else []
        share = best_value[r, c] / pos_sum[r, c] if pos_sum[r, c] > 0 else np.nan
        cell: dict[str, Any] = {"row": r, "col": c, "count": int(count[r, c]), "top": top,
                                "share": _r(share, 3),
                                "examples": [e for e, _ in ex],
                                "example_positions": [[int(p[0]), int(p[1])] for _, p in ex],
                                "example_labels": [labels.get(e, -1) for e, _ in ex],
                                "icon": [int(slot[r, c]) // per_sheet, int(slot[r, c]) % per_sheet]
                                if slot[r, c] >= 0 else None,
                                "cossim": _r(cossim[i]) if i >= 0 else None,
                                "objective": _r(objective[i]) if i >= 0 else None,
                                "rank": int(rank[i]) if i >= 0 and rank[i] > 0 else None}
        if pair is not None:
            cell["pair"] = [_r(pair[r, c, 0]), _r(pair[r, c, 1])]
        out.append(cell)
    return {"size": s, "cell_px": inp.icon_sizes[s], "top_kind": inp.class_kind, "top_k": int(top_c.shape[2]),
            "icon_url": f"icons/{s}/{{sheet}}.{t.format}", "icon_sheet_cols": sheet_cols(inp.icon_sizes[s]),
            "icon_size": inp.icon_sizes[s], "example_url": "examples/{row}.jpg",
            "example_window": t.example_window, "examples": show_examples, "n_icons": int(len(cossim)), "cells": out}


def atlas_doc(ctx: Context, counts: dict[int, int], heat: dict[int, dict[str, np.ndarray]],
              tops: dict[int, np.ndarray]) -> dict[str, Any]:
    """``atlas.json``: model, layer, image count, the grids and their pyramids (the level of detail),
    the viewer's settings, class names and, per grid, each searchable class's cell counts."""
    p, t, inp = ctx.plan, ctx.cfg.tile, ctx.inputs
    col = inp.collect
    kind = inp.class_kind
    names = inp.class_names_shown
    present = sorted({int(k) for h in heat.values() for k in np.flatnonzero(h["n_pos"])})
    unit, explain = VALUE_TEXT[kind]
    grids = []
    # the level of detail's table: where each grid takes over (the viewer's lod.js reads it, derives nothing)
    switch = grid_switch_px(p["sizes"], {s: p["pyramids"][str(s)]["icon_size"] for s in p["sizes"]}, t.lod_fraction)
    for s in p["sizes"]:
        pyr = p["pyramids"][str(s)]
        grids.append({"size": s, "icon_size": pyr["icon_size"], "width": pyr["width"], "height": pyr["height"],
                      "max_level": pyr["max_level"], "dzi": f"{dzi_name(s)}.dzi", "tiles_url": f"{dzi_name(s)}_files/",
                      "cells": f"cells-{s}.js", "cell_count": counts[s], "switch_px": switch[s]})
    return {
        "format": 2, "model": col.model, "layer": col.layer, "layer_shape": list(col.layer_shape),
        "input_size": col.input_size, "n_images": col.n_images, "ok_images": inp.ok_count,
        "sizes": p["sizes"], "icon_size": p["icon_size"], "icon_sizes": p["icon_sizes"],
        "width": p["width"], "height": p["height"], "grids": grids,
        "lod_fraction": t.lod_fraction, "home_cell_px": t.home_cell_px, "max_zoom": t.max_zoom,
        "label_min_share": t.label_min_share, "background": t.background, "density_scale": t.density_scale,
        "dzi": {"format": t.format, "tile_size": t.tile_size, "overlap": t.overlap},
        "cells": {str(s): f"cells-{s}.json" for s in p["sizes"]},
        "cell_counts": {str(s): n for s, n in counts.items()},
        "example_sizes": p["example_sizes"], "example_window": t.example_window,
        "top_kind": kind, "values": {"unit": unit, "explain": explain},
        "class_names": names, "search_classes": present, "label_names": inp.label_names,
        "heat_url": "heat/{size}/{class}.js",
        "class_cells": {str(s): [int(h["n_pos"][k]) for k in present] for s, h in heat.items()},
        "class_top": {str(s): [int(tops[s][k]) for k in present] for s in heat},
        **identity(ctx),
    }


def _failed_examples(ctx: Context) -> set[int]:
    """Collect rows whose example crop could not be made (the examples units' side files)."""
    failed: set[int] = set()
    for u in ctx.plan["units"]:
        if u["name"].startswith("examples-"):
            failed |= {f["row"] for f in json.loads(ctx.run.unit_data_path(NAME, u["name"], ".json").read_text())}
    return failed


def write_metadata(ctx: Context, writer: DurableWriter) -> None:
    """``cells-<s>.json`` / ``.js`` (one grid size at a time), then ``atlas.json`` / ``.js``."""
    out, failed, inp = ctx.out, _failed_examples(ctx), ctx.inputs
    counts: dict[int, int] = {}
    heat: dict[int, dict[str, np.ndarray]] = {}
    tops: dict[int, np.ndarray] = {}
    for s in ctx.plan["sizes"]:
        h = _heat_summary(ctx, s)
        doc = cells_doc(ctx, s, failed, h)
        counts[s] = len(doc["cells"])
        top_class = h["best_class"][(inp.count[s] >= inp.min_count).ravel() & (h["pos_sum"] > 0)]
        heat[s] = {"n_pos": h["n_pos"]}
        tops[s] = np.bincount(top_class[top_class >= 0], minlength=inp.n_classes)
        writer.put(out / f"cells-{s}.json", json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())
        writer.put(out / f"cells-{s}.js", _js(f"ATLAS_CELLS_{s}", doc).encode())
        del doc
    atlas = atlas_doc(ctx, counts, heat, tops)
    writer.put(out / "atlas.json", json.dumps(atlas, indent=1, sort_keys=True).encode())
    writer.put(out / "atlas.js", _js("ATLAS", atlas).encode())
