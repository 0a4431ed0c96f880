"""Stage 5, tile: a Deep Zoom pyramid per grid of the rendered icons, cell metadata, class heat
files and the web viewer -> ``RUN/tiles``.

Output (``RUN/tiles``, a self-contained static folder: open ``index.html`` from disk or
serve it with ``atlas serve RUN``)::

    grid-<s>.dzi                    Deep Zoom descriptor of grid s's pyramid (Format, Overlap, TileSize, Size)
    grid-<s>_files/<level>/<col>_<row>.<fmt>
    atlas.json / atlas.js           model, layer, image count, the grids and their pyramids, viewer
                                    settings, class names, per grid each class's cell counts
    cells-<s>.json / cells-<s>.js   per non-empty cell of grid s: count, top classes and the top one's
                                    share, examples with their outline boxes and labels, icon, cossim
    heat/<s>/<k>.js                 class k's heatmap over grid s (uint8 per cell, scaled to its maximum)
    icons/<s>/<sheet>.<fmt>         every cell's icon at full size (the click panel)
    examples/<row>.jpg              crop of collect row ``row`` around its sampled position
    index.html viewer.css *.js openseadragon/   the viewer: the scripts index.html lists (atlases.js: the atlas list, a
                                    two-class atlas's comparison; it loads the run's RUN/atlases.js)
    located.js                      the Located list: images of `atlas locate` (RUN/locate/index.js)

Finishing (and creating, and refreshing) also rewrites the run's atlas index, ``RUN/atlases.json``
and ``.js`` (:mod:`atlas.stages._atlases`; in a class atlas, the parent run's).

The ``.js`` twins assign the JSON to globals (``window.ATLAS``, ``window.ATLAS_CELLS_<s>``,
``window.ATLAS_HEAT_<s>_<k>``) so the page works from ``file://``, where Chromium refuses ``fetch``.

Pyramids and level of detail. Each grid size ``s`` has its own icons, ``icon_s`` pixels square
(render makes coarser grids' icons larger: ``render.icon_growth``), and its own pyramid,
``W_s = s * icon_s`` pixels square, whose top level shows them at native resolution; cell
(row, col) covers ``[col, col + 1) * W_s / s`` in x (row 0 at the top). Every pyramid spans the
same square of the viewer's world. The viewer shows one grid at a time, chosen by the size of a
cell on screen (:func:`atlas.ops.dzi.grid_for_zoom`): the finest grid whose cells are at least
``tile.lod_fraction * icon_s`` screen pixels, so zooming in switches to the next finer grid when
its icons reach their native size, and the home view shows the coarsest grid.

The levels of a pyramid wider than ``BASE_PX`` (2048) are painted directly from the grid, a
band of whole tile rows at a time, from the cells whose rectangles meet it
(:func:`atlas.ops.canvas.paint_region`), so memory is one band plus its icons (shrunk as they
are read where cells are smaller than icons), whatever the atlas size. The highest level at
most ``BASE_PX`` wide (the *base*) is painted whole by one unit, and every level below it by
halving the one above (a 2 x 2 box filter): there every cell of the grid meets every tile, so
painting each from the icons would read them all again. Levels where a cell is smaller than a
pixel are painted ``k`` times larger (``k`` a power of two) and box-reduced, so every cell
still contributes.

Units of work (``RUN/state/tile/done/<unit>``), split round robin over ``--shard i/n``
and leased while running:

``tiles-<SSSS>-<LL>-<RRRRRR>``  a range of whole tile rows of level LL of grid s's pyramid
                             (about ``tile.unit_tiles`` tiles); for the base level, the whole
                             level and every level below it
``icons-<SSSS>-<KKKK>``   icon sheet k of grid s: the level's non-empty cells in row-major order,
                          16 per sheet row (fewer for icons over 128 px), as many rows (a cell's
                          sheet and slot are in cells-<s>.json)
``heat-<SSSS>-<KKKK>``    the heat files of classes ``64 k .. 64 k + 63`` over grid s, and per-cell
                          sums for the metadata (side data)
``examples-<KKKKKK>``     ``tile.examples_per_unit`` example crops
``final``                 by whichever shard finishes last: metadata, viewer, descriptors, index.html

Files are written to a temporary name and renamed, made durable (:class:`atlas.store.DurableWriter`)
before the unit's marker; outputs are deterministic, so a unit redone after a ``kill -9`` writes
the same bytes.
The plan (units and settings) is kept in ``RUN/state/tile/plan.json``; other settings or a
redone grid or render start the stage over (the runner's fingerprint).

Parts: ``_inputs`` (what collect / grid / render left), ``_plan`` (settings, units, example
rows, the job's context), ``_paint`` (the tiles, icons, heat and examples units), ``_metadata``
(cells-<s>.json, atlas.json), ``_viewer`` (descriptors and static files), ``_pool`` (units through
the job's fan-out: here, on ``cluster.processes`` spawned processes or the engine's dask client),
``_context`` (shared names).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...config import Config
from ...progress import plural
from ...store import DurableWriter, RunDir
from ...viewer_assets import openseadragon_dir, viewer_source_dir
from .._protocol import Job, Resources, StageBase
from ._classes import update_index
from ._context import DZI_NAME, HEAT_BLOCK, ICONS_PER_SHEET, NAME, OUTPUT, SHEET_COLS, Context, dzi_name, sheet_cols
from ._inputs import Inputs, read_inputs
from ._metadata import example_box, write_metadata
from ._paint import encode_image, heat_doc, heat_values
from ._plan import example_sizes, load_plan, open_context, output_settings, save_plan
from ._pool import fan_units
from ._viewer import refresh_viewer, write_viewer

__all__ = ["DZI_NAME", "HEAT_BLOCK", "ICONS_PER_SHEET", "OUTPUT", "SHEET_COLS", "STAGE", "Inputs", "TileStage",
           "dzi_name", "encode_image", "example_box", "example_sizes", "heat_doc", "heat_values", "openseadragon_dir",
           "read_inputs", "sheet_cols", "viewer_source_dir"]


class TileStage(StageBase[Context]):
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
        update_index(ctx.run, ctx.cfg.classes.parent)  # a redone atlas leaves the run's index until finished

    def units(self, ctx: Context) -> list[str]:
        return [u["name"] for u in ctx.plan["units"]]

    def run_units(self, ctx: Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from fan_units(ctx, units)

    def finish(self, ctx: Context) -> dict[str, Any]:
        """Metadata (JSON + JS twins, one level at a time), the descriptor, the viewer (index.html
        last), made durable before the runner writes the final marker."""
        p, writer = ctx.plan, DurableWriter()
        write_metadata(ctx, writer)
        write_viewer(ctx, writer)
        writer.sync()
        update_index(ctx.run, ctx.cfg.classes.parent)
        ctx.log.info("tiles complete: %s in %s (%s), finest %d x %d px; view with `atlas serve %s`",
                     plural(p["tiles"], "tile"), plural(len(p["sizes"]), "pyramid"), plural(p["levels"], "level"),
                     p["width"], p["height"], ctx.run.root)
        return {"tiles": p["tiles"], "levels": p["levels"]}

    def refresh(self, job: Job) -> bool:
        """Bring the viewer's files and the run's atlas index up to date; never a redo."""
        refresh_viewer(job)
        update_index(job.run, job.cfg.classes.parent)
        return False

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Tiles, levels, canvas size, grids and the output folder."""
        plan = load_plan(run)
        return {"tiles": plan["tiles"], "levels": plan["levels"], "size": f"{plan['width']}x{plan['height']}",
                "grids": plan["sizes"], "icon_sizes": plan["icon_sizes"], "output": str(run.stage_path(OUTPUT))}


STAGE = TileStage()
