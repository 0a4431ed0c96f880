"""Stage 5, tile: a Deep Zoom pyramid of the rendered icons, cell metadata and the web viewer -> ``RUN/tiles``.

Output (``RUN/tiles``, a self-contained static folder: open ``index.html`` from disk or
serve it with ``atlas serve RUN``)::

    atlas.dzi                       Deep Zoom descriptor (Format, Overlap, TileSize, Size)
    atlas_files/<level>/<col>_<row>.<fmt>
    atlas.json / atlas.js           model, layer, image count, sizes, LOD table, class names
    cells-<s>.json / cells-<s>.js   per non-empty cell of grid s: count, top classes, examples, cossim
    icons/<s>/<sheet>.<fmt>         every cell's icon at full size (the click panel), 256 per sheet
    examples/<row>.jpg              crop of collect row ``row`` around its sampled position
    index.html viewer.js viewer.css openseadragon/   the viewer

The ``.js`` twins assign the JSON to globals (``window.ATLAS``, ``window.ATLAS_CELLS_<s>``)
so the page works from ``file://``, where Chromium refuses ``fetch``.

Canvas. ``W = H = S * icon`` pixels for the finest rendered grid size ``S``; cell
(row, col) of grid ``s`` covers canvas ``[col, col + 1) * W / s`` in x (row 0 at the top).

Level of detail (:func:`atlas.ops.dzi.lod_grid_size`). DZI level ``L`` (scale
``2^(L - top)``) shows the finest rendered grid whose cells are at least
``tile.lod_fraction * icon`` pixels on that level, the coarsest grid below that. With
the default 1.0 the top level shows the finest grid, the level below the next coarser
grid, each at its icons' native resolution (no resampling), so zooming in one step
doubles the grid; levels below the coarsest grid show it shrunk.

Every level is painted directly from the grid (not by downsampling the level above): a
tile is painted from the cells whose rectangles meet it (:func:`atlas.ops.canvas.paint_region`),
so memory is one tile plus the icons of the unit's band of tile rows, whatever the
atlas size. Levels where a cell is smaller than a pixel are painted ``k`` times larger
(``k`` a power of two) and box-reduced, so every cell still contributes.

Units of work (``RUN/state/tile/done/<unit>``), split round robin over ``--shard i/n``
and leased while running:

``tiles-<LL>-<RRRRRR>``   a range of whole tile rows of DZI level LL (about ``tile.unit_tiles`` tiles)
``icons-<SSSS>-<KKKK>``   icon sheet k of grid s: the level's non-empty cells in row-major order,
                          256 per sheet, 16 per sheet row (a cell's sheet and slot are in cells-<s>.json)
``examples-<KKKKKK>``     ``tile.examples_per_unit`` example crops
``final``                 by whichever shard finishes last: metadata, viewer, descriptor, index.html

Files are written to a temporary name and renamed, made durable (:class:`atlas.store.DurableWriter`)
before the unit's marker; outputs are deterministic, so a unit redone after a ``kill -9`` writes
the same bytes.
The plan (units and settings) is kept in ``RUN/state/tile/plan.json``; other settings or a
redone grid or render start the stage over (the runner's fingerprint).

Parts: ``_inputs`` (what collect / grid / render left), ``_plan`` (settings, units, example
rows, the job's context), ``_paint`` (the tiles, icons and examples units), ``_metadata``
(cells-<s>.json, atlas.json), ``_viewer`` (descriptor and static files), ``_pool`` (units on
spawned worker processes), ``_context`` (shared names).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...config import Config
from ...store import DurableWriter, RunDir
from ...viewer_assets import openseadragon_dir, viewer_source_dir
from .._protocol import Job, Resources, StageBase
from ._context import DZI_NAME, ICONS_PER_SHEET, NAME, OUTPUT, SHEET_COLS, Context
from ._inputs import Inputs, read_inputs
from ._metadata import write_metadata
from ._paint import encode_image, run_units
from ._plan import example_sizes, load_plan, open_context, output_settings, save_plan
from ._pool import pool_units, worker_count
from ._viewer import refresh_viewer, write_viewer

__all__ = ["DZI_NAME", "ICONS_PER_SHEET", "OUTPUT", "SHEET_COLS", "STAGE", "Inputs", "TileStage", "encode_image",
           "example_sizes", "openseadragon_dir", "read_inputs", "viewer_source_dir"]


class TileStage(StageBase):
    """Stage 5: Deep Zoom pyramid, cell metadata and the web viewer -> ``RUN/tiles``."""

    name = NAME
    inputs = ("collect", "grid", "render")
    output = OUTPUT
    execution = "shards"
    lease_window = 256
    resources = Resources(tasks=4, time="02:00:00", cpus=4, mem="16G", gpus=0)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return output_settings(cfg)

    def open(self, job: Job) -> Context:
        return open_context(job)

    def create(self, ctx: Context) -> None:
        save_plan(ctx)

    def units(self, ctx: Context) -> list[str]:
        return [u["name"] for u in ctx.plan["units"]]

    def run_units(self, ctx: Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        workers = worker_count(ctx, len(units))
        yield from (pool_units(ctx, units, workers) if workers > 1 else run_units(ctx, units))

    def finish(self, ctx: Context) -> dict[str, Any]:
        """Metadata (JSON + JS twins, one level at a time), the descriptor, the viewer (index.html
        last), made durable before the runner writes the final marker."""
        p, writer = ctx.plan, DurableWriter()
        write_metadata(ctx, writer)
        write_viewer(ctx, writer)
        writer.sync()
        ctx.log.info("tiles complete: %d tiles on %d levels, %d x %d px; view with `atlas serve %s`", p["tiles"],
                     p["max_level"] + 1, p["width"], p["height"], ctx.run.root)
        return {"tiles": p["tiles"], "levels": p["max_level"] + 1}

    def refresh(self, job: Job) -> None:
        refresh_viewer(job)

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Tiles, levels, canvas size, grids and the output folder."""
        plan = load_plan(run)
        return {"tiles": plan["tiles"], "levels": plan["max_level"] + 1, "size": f"{plan['width']}x{plan['height']}",
                "grids": plan["sizes"], "output": str(run.stage_path(OUTPUT))}


STAGE = TileStage()
