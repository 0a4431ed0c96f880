"""The stage's last step: ``RUN/locate/index.json`` (+ its ``index.js`` twin for the viewer from
file://) listing every located image of the run, and ``bad_inputs.tsv`` for the skipped ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...formats import LocateOutput, write_locate_index
from ...progress import plural
from ...store import DurableWriter
from .._atlases import write_index as write_run_index
from ._context import NAME, Context

__all__ = ["write_index", "read_index"]


def _entries(ctx: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(located, skipped) of every unit done in this attempt, by unit name: this call's and earlier ones'
    (``ctx.done``: what the runner recorded for each)."""
    located, skipped = [], []
    for unit in sorted(ctx.done):
        info = ctx.done[unit]
        if info.get("status") != 1:
            skipped.append({"unit": unit, "name": info.get("name"), "source": info.get("source"),
                            "status": info.get("status"), "reason": info.get("reason")})
            continue
        doc = LocateOutput(ctx.run.root).located(unit)
        located.append({"unit": unit, "name": doc["name"], "source": doc["source"], "layer_grid": doc["layer_grid"],
                        "level": doc["level"], "cells_hit": doc["cells_hit"],
                        "top_class": doc["top_classes"][0]["name"] if doc["top_classes"] else None,
                        "points": f"{unit}/points.js", "overlay": f"{unit}/overlay.png",
                        "activation_grid": f"{unit}/activation-grid.png", "located": f"{unit}/located.json"})
    return located, skipped


def write_index(ctx: Context) -> dict[str, Any]:
    """index.json, index.js and bad_inputs.tsv; returns what the ``final`` marker records."""
    located, skipped = _entries(ctx)
    doc = {"model": ctx.collect.model, "layer": ctx.collect.layer, "sizes": ctx.grid.sizes,
           "level": ctx.level, "images": located, "skipped": skipped}
    out, writer = ctx.run.stage_path(NAME), DurableWriter()
    write_locate_index(ctx.run.root, doc, writer)
    writer.sync()
    write_run_index(ctx.run)  # the viewers' list of atlases counts the located images
    ctx.log.info("%s located, %d skipped: %s", plural(len(located), "image"), len(skipped), out / "index.json")
    return {"located": len(located), "skipped": len(skipped)}


def read_index(root: str | Path) -> dict[str, Any] | None:
    """``RUN/locate/index.json`` of a run directory, or None before the stage first finished."""
    return LocateOutput(root).index()
