"""collect in a further layer's run directory (``RUN/layers/<slug>``, ``model.layer_of`` set).

The run's collect pass (:mod:`atlas.stages.collect`) wrote this layer's rows into
``RUN/layers/<slug>/collect`` together with every other layer of ``model.layers``; this stage
does no work of its own. It is still the stage ``collect`` of the layer's run (its name and state),
so reduce, grid, render, tile, locate, patch-test and class atlases run on the layer unchanged,
and it keeps the contract's bookkeeping:

- **check**: the parent run's collect must be finished *with this layer* (the layer in its
  ``final`` marker's scope), else one line naming the command that collects it.
- **settings**: the parent collect's fingerprint and the layer, so a collect redone in the parent
  redoes this stage, which makes the layer's later stages stale (``atlas run`` redoes them).
- **output**: none of its own (``owns_output`` False): a redo never removes the rows the parent
  wrote.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..config import Config
from ..formats import CollectOutput
from ..store import RunDir, StoreError
from ._protocol import Job, Resources, StageBase
from ._runner import final_info

__all__ = ["STAGE", "LayerStage", "active", "parent_run"]

NAME = "collect"


def active(cfg: Config) -> bool:
    """Whether ``cfg`` is a further layer's run (its rows come from ``model.layer_of``'s collect)."""
    return cfg.model.layer_of is not None


def parent_run(cfg: Config) -> RunDir:
    """The run whose collect pass collected this layer."""
    assert cfg.model.layer_of is not None
    return RunDir.of(cfg).at(os.path.normpath(Path(cfg.run_dir) / cfg.model.layer_of))


def _parent_final(cfg: Config) -> dict[str, Any]:
    """The parent's collect ``final`` marker, finished with this layer; else a one-line error."""
    parent = parent_run(cfg)
    final = final_info(parent, NAME)
    if final is None or cfg.model.layer not in (final.get("scope") or []):
        raise StoreError(f"layer {cfg.model.layer} is not collected yet in {parent.root}: run "
                         f"`atlas collect {parent.root / 'config.yaml'}` (its model.layers names the layer)")
    return final


@dataclass
class LayerContext:
    cfg: Config
    run: RunDir
    log: logging.Logger


class LayerStage(StageBase[LayerContext]):
    """A further layer's collect: the parent's pass wrote the rows; this stage checks and records them."""

    name = NAME
    inputs = ()
    execution = "single"
    on_change = "redo"
    owns_output: ClassVar[bool] = False
    resources = Resources(tasks=1, time="00:10:00", cpus=1, mem="2G")

    def check(self, cfg: Config, run: RunDir) -> None:
        _parent_final(cfg)
        if not CollectOutput.exists(run):
            raise StoreError(f"{run.root / NAME} is missing: run `atlas collect {parent_run(cfg).root / 'config.yaml'}` "
                             "to collect the layer again")

    def settings(self, cfg: Config) -> dict[str, Any]:
        return {"parent_collect": _parent_final(cfg)["fingerprint"], "layer": cfg.model.layer}

    def open(self, job: Job) -> LayerContext:
        return LayerContext(job.cfg, job.run, job.log)

    def units(self, ctx: LayerContext) -> list[str]:
        return []

    def run_units(self, ctx: LayerContext, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        yield from ()

    def finish(self, ctx: LayerContext) -> dict[str, Any]:
        col = CollectOutput.open(ctx.run)
        ctx.log.info("layer %s: %d rows collected by %s", col.layer, col.n_images, parent_run(ctx.cfg).root)
        return {"layer": col.layer, "rows": col.n_images}

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Images, ok and bad counts, model and layer (as in any run's collect)."""
        col = CollectOutput.open(run)
        st = col.status_all()
        return {"images": col.n_images, "ok": int((st == 1).sum()), "bad": int((st >= 2).sum()),
                "model": col.model, "layer": col.layer}


STAGE = LayerStage()
