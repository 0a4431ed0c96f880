"""reduce in a comparison's view: the layout run's layout, copied, so that the view's grid bins the
network's activations into the layout's cells (the same coordinates, the same cells at every size).

The registry hands it out for ``reduce`` when ``compare.layout`` is set
(:func:`atlas.stages._pair.view_stage`). Inputs: the view's collect (the paired rows). Settings: the
layout run's reduce fingerprint (its ``final`` marker) and the chunking: redoing the layout redoes
the copy, and so the view's later stages. Units ``chunk-NNNNNN`` copy ``coords`` and ``raw_coords``
rows, ``knn`` the fitted rows and their graph; ``finish`` copies the parameters, bounds and quality
figures. A row the network could not pair (not ok in the view's collect) keeps its coordinates; the
grid skips it by its status.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..formats import ReduceOutput, copy_layout_knn, copy_layout_rows, create_reduce, finish_layout
from ..store import RunDir, StoreError
from ._pair import view_runs
from ._protocol import Job, Resources, StageBase
from ._runner import final_info

__all__ = ["STAGE", "LayoutCopyStage"]

NAME = "reduce"
KNN = "knn"


@dataclass
class _Context:
    cfg: Config
    run: RunDir
    src: ReduceOutput
    n: int
    chunk_rows: int
    log: logging.Logger
    _out: ReduceOutput | None = None

    @property
    def out(self) -> ReduceOutput:
        if self._out is None:
            self._out = ReduceOutput.open(self.run, mode="r+")
        return self._out


def _layout_final(cfg: Config) -> dict[str, Any]:
    layout, _ = view_runs(cfg)
    final = final_info(layout, NAME)
    if final is None:
        raise StoreError(f"the compared run {layout.root} has no finished reduce: run `atlas run {layout.root / 'config.yaml'}` "
                         "first, then `atlas compare` again")
    return final


def _open(job: Job) -> _Context:
    layout, _ = view_runs(job.cfg)
    src = ReduceOutput.open(job.run.at(layout.root))
    n = int(src.coords.shape[0])
    return _Context(job.cfg, job.run, src, n, min(job.cfg.collect.chunk_rows, max(n, 1)), job.log)


def _unit(j: int) -> str:
    return f"chunk-{j:06d}"


class LayoutCopyStage(StageBase[_Context]):
    """reduce of a comparison's view: the layout run's layout, copied -> ``RUN/reduce``."""

    name = NAME
    inputs = ("collect",)
    execution = "shards"
    on_change = "redo"
    lease_window = 64
    resources = Resources(tasks=1, time="00:30:00", cpus=2, mem="8G", gpus=0)

    def check(self, cfg: Config, run: RunDir) -> None:
        _layout_final(cfg)

    def settings(self, cfg: Config) -> dict[str, Any]:
        """The layout run's reduce fingerprint and the chunking."""
        return {"layout_reduce": _layout_final(cfg)["fingerprint"], "chunk_rows": cfg.collect.chunk_rows}

    def open(self, job: Job) -> _Context:
        return _open(job)

    def create(self, ctx: _Context) -> None:
        src = ctx.src
        fit, k = src.knn_indices.shape
        create_reduce(ctx.run, ctx.n, ctx.chunk_rows, int(fit), int(k), src.params)
        ctx._out = None

    def units(self, ctx: _Context) -> list[str]:
        return [KNN, *(_unit(j) for j in range(-(-ctx.n // ctx.chunk_rows)))]

    def run_units(self, ctx: _Context, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for unit in units:
            if unit == KNN:
                copy_layout_knn(ctx.out, ctx.src)
                yield unit, {"fit_rows": int(ctx.src.fit_rows.shape[0])}
                continue
            j = int(unit.split("-")[1])
            lo, hi = j * ctx.chunk_rows, min((j + 1) * ctx.chunk_rows, ctx.n)
            copy_layout_rows(ctx.out, ctx.src, lo, hi)
            yield unit, {"rows": [lo, hi]}

    def finish(self, ctx: _Context) -> dict[str, Any]:
        finish_layout(ctx.out, ctx.src)
        ctx.log.info("layout copied from %s (%d rows)", ctx.src.run.root, ctx.n)
        return {"trustworthiness": ctx.src.trustworthiness}

    def detail(self, run: RunDir) -> dict[str, Any]:
        """The layout's trustworthiness (the layout run's)."""
        red = ReduceOutput.open(run)
        return {"layout": "copied", "trustworthiness": red.trustworthiness}


STAGE = LayoutCopyStage()
