"""Analysis ``units``: the units behind every cell (Building Blocks' semantic dictionary on the atlas).

``atlas units CONFIG [--basis channels|nmf:K|sae:K]`` on a finished atlas: one feature visualisation
per unit of the layer (its channels by default; NMF's neuron groups or a sparse autoencoder's features
with ``units.basis``), rendered by the render stage's kernel with render's settings (``units.*`` where
they differ) and measured by its *self-rank*; the collected rows where each unit is strongest, cropped
like the cell examples; each cell's dictionary (its top units by share of its mean coefficients, and by
share of its top class's attribution); each unit's mean coefficient over the cells of every grid level
(the viewer's heatmap); and each located image's semantic dictionary picture. A channel batch is a
batch of one-hot targets for the one renderer; a learned unit's target is its direction.

Units of work (``RUN/state/units/units.json``), in order:

``basis``             (``nmf:K``, ``sae:K`` only) learn the basis, resumable from its checkpoint (``_basis``)
``stats``             the pass over the collected rows (``_stats``)
``icons-NNNNNN``      a batch of ``units.batch_size`` (default: render's) units' icons (``_icons``)
``examples-NNNNNN``   the example crops of 128 units (every unit, icon or not; ``_icons``)
``attribution-NNNNNN``  a batch of example images' gradients (``_attribution``)

A unit that needs the basis or the pass before its own unit is done makes it first, under a lock
(``basis.json`` / ``stats.json`` are written last, atomically: present means whole), so any shard split
works and gives the same bytes. Its last step (``_finish``): the self-ranks, the attribution
dictionaries, the viewer's files, the located images' pictures and the run's ``atlases.json`` (which
tells the viewer there are units). The located images are the stage's scope: images located after it
finished are drawn by the next ``atlas units`` (nothing else is redone). Other settings on existing
units are refused (icons are the expensive part); inputs: collect, reduce, grid. Outputs:
``RUN/units/`` (:mod:`atlas.formats._units`, docs/formats.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...config import Config
from ...formats._units import UnitsOutput, create_units
from ...ops.inversion import CPU_BATCH
from ...store import RunDir
from .._protocol import Job, Resources, StageBase
from ._context import NAME, Context, open_context, settings
from ._located import located_units

__all__ = ["STAGE", "UnitsStage"]


def _resolve_batch_size(ctx: Context) -> int:
    bs = ctx.cfg.units.batch_size if ctx.cfg.units.batch_size is not None else ctx.cfg.render.batch_size
    if bs != "auto":
        return int(bs)
    from ...ops.inversion import auto_batch_size, fit_batch_size

    fit = fit_batch_size(ctx.activations(), ctx.icon_size, restarts=ctx.cfg.render.restarts)
    bs = auto_batch_size(fit, ctx.n_icons)
    ctx.log.info("units batch_size auto: %d (%s, %d icons)", bs,
                 f"{fit} icons fit the free GPU memory" if fit else f"{CPU_BATCH} off CUDA", ctx.n_icons)
    return bs


def _create(ctx: Context) -> None:
    from ._basis import write_channel_basis

    bs = _resolve_batch_size(ctx)
    cfg = ctx.cfg
    create_units(ctx.run, kind=ctx.kind, n_units=ctx.n_units, channels=ctx.channels, n_icons=ctx.n_icons,
                 icon_size=ctx.icon_size, batch_size=bs, examples=cfg.units.examples, top=cfg.units.dictionary,
                 sizes=ctx.sizes, attribution=ctx.pairs is not None,
                 attrs={"basis": cfg.units.basis, "model": cfg.model.name, "layer": cfg.model.layer, "seed": cfg.seed,
                        "settings": settings(cfg)})
    if ctx.kind == "channels":
        write_channel_basis(ctx)


class UnitsStage(StageBase[Context]):
    """Analysis: a feature visualisation, examples and a heatmap per unit, a dictionary per cell -> ``RUN/units``."""

    name = NAME
    inputs = ("collect", "reduce", "grid")
    execution = "shards"
    wants_gpu = True
    on_change = "refuse"
    lease_window = 1
    resources = Resources(tasks=4, time="08:00:00", cpus=8, mem="32G", gpus=1)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return settings(cfg)

    def scope(self, cfg: Config, done: frozenset[str]) -> list[str]:
        """The located images of the run (their dictionary pictures): images located later are drawn by
        the next call without a redo."""
        return [str(d["unit"]) for d in located_units(cfg.run_dir)]

    def open(self, job: Job) -> Context:
        return open_context(job.cfg, job.run, job.log, job.done)

    def create(self, ctx: Context) -> None:
        _create(ctx)

    def units(self, ctx: Context) -> list[str]:
        return ctx.plan.names()

    def run_units(self, ctx: Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        from ._attribution import run_attribution
        from ._icons import run_examples, run_icons

        for unit in units:
            if unit == "basis":
                ctx.basis()
                info = dict(ctx.output().basis_info() or {})
            elif unit == "stats":
                info = dict(ctx.stats().info)
            elif unit.startswith("icons-"):
                self._check_device(ctx)
                info = run_icons(ctx, unit)
            elif unit.startswith("examples-"):
                info = run_examples(ctx, unit)
            else:
                info = run_attribution(ctx, unit)
            yield unit, info

    @staticmethod
    def _check_device(ctx: Context) -> None:
        if not ctx.device_checked:  # no bf16-rendered icons among float32 ones
            from .._device import check_device

            check_device(ctx.run, NAME, ctx.device, ctx.log)
            ctx.device_checked = True

    def provenance(self, ctx: Context) -> dict[str, Any]:
        return {"units_device": ctx.device}

    def finish(self, ctx: Context) -> dict[str, Any]:
        from ._finish import finish

        return finish(ctx)

    def detail(self, run: RunDir) -> dict[str, Any]:
        """The basis, its units and icons, and the icons' self-rank (median, share ranked first)."""
        doc = UnitsOutput.files(run).index()
        if not doc:
            return {}
        sr = doc.get("self_rank") or {}
        return {"basis": doc.get("basis"), "units": doc.get("n_units"), "icons": doc.get("n_icons"),
                "self_rank_median": sr.get("median"), "self_rank_first": sr.get("first")}


STAGE = UnitsStage()
