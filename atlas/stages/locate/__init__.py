"""Analysis ``locate``: where one image lands on a finished atlas (Building Blocks' activation grid).

``atlas locate CONFIG IMAGE...`` runs every position of the layer for each image (decoded as
collect decodes: the same resize and centre crop, the network's own input size) and places
each position's vector on the atlas with reduce's placement for rows outside its fitted sample
(nearest fitted points' weighted mean, then the normalisation: :mod:`atlas.ops.placement`),
then bins it into every grid level as the grid does.

Units: one per image, named by a slug of its file name and a short hash of its bytes
(``cat-1a2b3c4d``). The images are the stage's *scope*, not its settings: locating more images
later adds units and leaves the finished ones alone, asking again for located ones does
nothing; other ``locate.*`` settings redo the stage with the images asked for. The model is the
run's (another one is refused before anything is written). Outputs, ``RUN/locate/``::

    <unit>/located.json          source, layer grid H x W, the network's top-5 classes, per position
                                 its atlas point (x, y) and its cell (row, col) at every grid level
    <unit>/positions.npy         float32 [H, W, 2]: the positions' atlas points (x, y)
    <unit>/overlay.png           the image, each position's square tinted by its cell's colour at
                                 ``locate.level`` (a 2-D colour map of the atlas), and a thumbnail
                                 of the atlas's cells in those colours (the image's cells outlined)
    <unit>/activation-grid.png   H x W: each position's icon (the finest rendered level <= level
                                 with an icon in its cell)
    <unit>/points.js             the points for the viewer's "Located" overlay
    index.json, index.js         every located image of the run (and the skipped ones)
    bad_inputs.tsv               images that could not be decoded: unit, location, status, reason

A file that does not decode is skipped: its unit is done with its status and reason, listed in
``bad_inputs.tsv`` and ``index.json``. Inputs: collect, reduce, grid and render, finished.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...config import Config
from ...store import RunDir
from .._protocol import Job, Resources, StageBase
from ._context import NAME, Context, open_context, settings
from ._images import absolute_arguments, expand_images, image_refs
from ._index import read_index, write_index
from ._unit import FILES, run_unit

__all__ = ["STAGE", "LocateStage", "FILES", "absolute_arguments", "expand_images", "image_refs", "read_index"]


class LocateStage(StageBase[Context]):
    """Analysis: every position of new images placed on the atlas -> ``RUN/locate``."""

    name = NAME
    inputs = ("collect", "reduce", "grid", "render")
    execution = "shards"
    wants_gpu = False
    on_change = "redo"
    lease_window = 1
    resources = Resources(tasks=1, time="01:00:00", cpus=8, mem="16G", gpus=0)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return settings(cfg)

    def scope(self, cfg: Config, done: frozenset[str]) -> list[str]:
        """The images located so far (``done``, the runner's) and asked for now (unit names): asking
        for more adds units without a redo; asking again for some already located does nothing."""
        return sorted(done | {r.unit for r in image_refs(cfg.locate.images)})

    def open(self, job: Job) -> Context:
        return open_context(job.cfg, job.run, job.log, job.done, job.inputs)

    def units(self, ctx: Context) -> list[str]:
        return list(ctx.refs)

    def run_units(self, ctx: Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for unit in units:
            yield unit, run_unit(ctx, unit)

    def finish(self, ctx: Context) -> dict[str, Any]:
        return write_index(ctx)

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Images located and skipped so far."""
        doc = read_index(run.root)
        return {} if doc is None else {"located": len(doc["images"]), "skipped": len(doc["skipped"])}


STAGE = LocateStage()
