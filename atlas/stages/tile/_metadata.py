"""The tile stage's metadata documents: ``cells-<s>.json`` per grid size and ``atlas.json``,
each with a ``.js`` twin assigning it to a global (``window.ATLAS_CELLS_<s>``, ``window.ATLAS``)
so the viewer works from ``file://``."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ...store import DurableWriter
from ._context import DZI_NAME, ICONS_PER_SHEET, NAME, SHEET_COLS, Context
from ._inputs import Inputs


def _r(x: float, digits: int = 5) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else float(f"{x:.{digits}g}")


def _js(var: str, doc: Any) -> str:
    return f"window.{var} = {json.dumps(doc, separators=(',', ':'), sort_keys=True)};\n"


def _top_classes(gl: Any, inp: Inputs, s: int) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Per cell of grid ``s``: (top classes [s, s, k] (-1: none), their values, class names, kind):
    the grid's class attribution, else its label counts, else nothing."""
    if "top_classes" in gl:
        top_c, top_v = np.asarray(gl["top_classes"][:], np.int64), np.asarray(gl["top_values"][:], np.float64)
        return top_c, top_v, inp.class_names, "attribution"
    if "label_counts" in gl:
        lc = np.asarray(gl["label_counts"][:], np.int64)
        top_c = np.argsort(-lc, axis=2, kind="stable")[:, :, :5]
        top_v = np.take_along_axis(lc, top_c, axis=2).astype(np.float64)
        top_c = np.where(top_v > 0, top_c, -1)
        return top_c, top_v, inp.label_names, "labels"
    return np.full((s, s, 0), -1), np.zeros((s, s, 0)), [], "none"


def cells_doc(ctx: Context, s: int, failed: set[int]) -> dict[str, Any]:
    """``cells-<s>.json``: every non-empty cell of grid ``s`` with its count, top classes, examples
    (not those in ``failed``), icon sheet and slot, and render faithfulness."""
    inp, t = ctx.inputs, ctx.cfg.tile
    gl = ctx.run.open_group("grid")[f"level-{s}"]
    rl = ctx.run.open_group("render")[f"level-{s}"]
    count = inp.count[s]
    examples = np.asarray(gl["examples"][:], dtype=np.int64)
    show_examples = s in ctx.plan["example_sizes"]
    objective, cossim = np.asarray(rl["objective"][:]), np.asarray(rl["cossim"][:])
    icon_of = np.full((s, s), -1, np.int64)
    cells = np.asarray(rl["cells"][:], dtype=np.int64).reshape(-1, 2)
    icon_of[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
    top_c, top_v, names, kind = _top_classes(gl, inp, s)
    slot = np.full((s, s), -1, np.int64)  # position of the cell's icon in the level's sheets
    painted = np.nonzero(inp.index[s] >= 0)
    slot[painted] = np.arange(len(painted[0]))
    out = []
    for r, c in zip(*np.nonzero(count >= inp.min_count)):
        r, c = int(r), int(c)
        top = [{"class": int(k), "name": names[k] if 0 <= k < len(names) else str(k), "value": _r(v)}
               for k, v in zip(top_c[r, c].tolist(), top_v[r, c].tolist()) if k >= 0 and np.isfinite(v)]
        i = int(icon_of[r, c])
        cell: dict[str, Any] = {"row": r, "col": c, "count": int(count[r, c]), "top": top,
                                "examples": [e for e in examples[r, c].tolist() if e >= 0 and e not in failed]
                                if show_examples else [],
                                "icon": [int(slot[r, c]) // ICONS_PER_SHEET, int(slot[r, c]) % ICONS_PER_SHEET]
                                if slot[r, c] >= 0 else None,
                                "cossim": _r(cossim[i]) if i >= 0 else None,
                                "objective": _r(objective[i]) if i >= 0 else None}
        out.append(cell)
    return {"size": s, "cell_px": ctx.plan["width"] // s, "top_kind": kind, "top_k": int(top_c.shape[2]),
            "icon_url": f"icons/{s}/{{sheet}}.{t.format}", "icon_sheet_cols": SHEET_COLS, "icon_size": inp.icon,
            "example_url": "examples/{row}.jpg",
            "examples": show_examples, "cells": out}


def atlas_doc(ctx: Context, kinds: set[str], present: set[int], counts: dict[int, int]) -> dict[str, Any]:
    """``atlas.json``: model, layer, image count, sizes, LOD table, Deep Zoom settings, class names."""
    p, t, inp = ctx.plan, ctx.cfg.tile, ctx.inputs
    ca = inp.collect_attrs
    kind = "attribution" if "attribution" in kinds else "labels" if "labels" in kinds else "none"
    names = inp.class_names if kind == "attribution" else inp.label_names if kind == "labels" else []
    return {
        "format": 1, "model": ca.get("model"), "layer": ca.get("layer"), "layer_shape": ca.get("layer_shape"),
        "input_size": ca.get("input_size"), "n_images": ca.get("n_images"), "ok_images": ca.get("ok_count"),
        "sizes": p["sizes"], "icon_size": p["icon_size"], "width": p["width"], "height": p["height"],
        "max_level": p["max_level"], "lod": p["lod"], "lod_fraction": t.lod_fraction,
        "background": t.background, "density_scale": t.density_scale,
        "dzi": {"url": f"{DZI_NAME}.dzi", "tiles_url": f"{DZI_NAME}_files/", "format": t.format,
                "tile_size": t.tile_size, "overlap": t.overlap},
        "cells": {str(s): f"cells-{s}.json" for s in p["sizes"]},
        "cell_counts": {str(s): n for s, n in counts.items()},
        "example_sizes": p["example_sizes"], "top_kind": kind,
        "class_names": names, "search_classes": sorted(present),
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
    out, failed = ctx.out, _failed_examples(ctx)
    kinds, present, counts = set(), set(), {}
    for s in ctx.plan["sizes"]:
        doc = cells_doc(ctx, s, failed)
        kinds.add(doc["top_kind"])
        present |= {k["class"] for cell in doc["cells"] for k in cell["top"]}
        counts[s] = len(doc["cells"])
        writer.put(out / f"cells-{s}.json", json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())
        writer.put(out / f"cells-{s}.js", _js(f"ATLAS_CELLS_{s}", doc).encode())
        del doc
    atlas = atlas_doc(ctx, kinds, present, counts)
    writer.put(out / "atlas.json", json.dumps(atlas, indent=1, sort_keys=True).encode())
    writer.put(out / "atlas.js", _js("ATLAS", atlas).encode())
