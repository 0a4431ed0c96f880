"""Analysis ``follow``: where each layer's images land in the other layers (``model.layers``).

Run by ``atlas run`` once every layer of a several-layer run is tiled (or by ``atlas follow
CONFIG``). The rows of every layer are the same images in the same order, so a cell's images at
one layer can be found on another layer's atlas from the two layouts alone. Units: one per layer
(``layer-<i>``, i in ``model.layers`` order): its atlas coordinates written for the viewer and its
images' k nearest images on its layout (side data). The last process measures, per pair of
layers, how many of each image's k nearest images stay its neighbours (:mod:`atlas.ops.persistence`),
and writes the index the viewer's layer picker and follow overlay read. Output: ``RUN/follow``
(:mod:`atlas.formats._follow`). Inputs: the run's tile, and each further layer's tile (their
fingerprints are this step's settings, so a layer redone redoes it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Config
from ..formats import CollectOutput, FollowOutput, GridOutput, ReduceOutput, layer_run, layer_slug
from ..ops.persistence import chance_share, layout_neighbours, shared_neighbours
from ..store import RunDir, StoreError, atomic_save_npz
from ._protocol import Job, Resources, StageBase
from ._runner import final_info

__all__ = ["STAGE", "FollowStage"]

NAME = "follow"


def _runs(cfg: Config) -> list[RunDir]:
    """Each layer's run directory, the run's first."""
    run = RunDir.of(cfg)
    return [run] + [layer_run(run, layer) for layer in cfg.model.all_layers[1:]]


def _further_tiles(cfg: Config) -> dict[str, str]:
    """Each further layer's finished tile fingerprint; a one-line error naming the unfinished one."""
    out = {}
    for layer, run in zip(cfg.model.all_layers[1:], _runs(cfg)[1:]):
        final = final_info(run, "tile")
        if final is None:
            raise StoreError(f"`follow` needs every layer's atlas, and layer {layer}'s is not tiled in {run.root}: run "
                             f"`atlas run {RunDir(cfg.run_dir).root / 'config.yaml'} --layer {layer}`")
        out[layer] = str(final["fingerprint"])
    return out


@dataclass
class FollowContext:
    cfg: Config
    run: RunDir
    runs: list[RunDir]
    log: logging.Logger

    @property
    def out(self) -> FollowOutput:
        return FollowOutput(self.run.root)


def _layer_unit(ctx: FollowContext, i: int) -> dict[str, Any]:
    """Layer i's coordinates for the viewer and its images' neighbours on its layout (side data)."""
    coords = np.asarray(ReduceOutput.open(ctx.runs[i]).coords[...], np.float32)
    ctx.out.write_coords(i, coords)
    nearest = layout_neighbours(coords, ctx.cfg.follow.k)
    atomic_save_npz(ctx.run.unit_data_path(NAME, f"layer-{i}"), neighbours=nearest)
    placed = int(np.isfinite(coords).all(axis=1).sum())
    ctx.log.info("layer %s: %d images placed, their %d nearest found", ctx.cfg.model.all_layers[i], placed,
                 ctx.cfg.follow.k)
    return {"placed": placed}


def _layer_entry(ctx: FollowContext, i: int) -> dict[str, Any]:
    run, layer = ctx.runs[i], ctx.cfg.model.all_layers[i]
    col = CollectOutput.open(run)
    c, h, w = col.layer_shape
    return {"layer": layer, "slug": layer_slug(layer), "tiles": run.root.relative_to(ctx.run.root).joinpath("tiles")
            .as_posix().removeprefix("./") + "/", "channels": c, "grid": [h, w],
            "sizes": GridOutput.open(run).sizes, "coords": f"coords-{i}.js"}


def _finish(ctx: FollowContext) -> dict[str, Any]:
    """Per pair of layers, the neighbours kept; then the index (last)."""
    k, layers = ctx.cfg.follow.k, ctx.cfg.model.all_layers
    nearest = []
    for i in range(len(layers)):
        with np.load(ctx.run.unit_data_path(NAME, f"layer-{i}")) as z:
            nearest.append(z["neighbours"])
    placed = nearest[0][:, 0] >= 0
    pairs, figures = [], {}
    for i in range(len(layers)):
        for j in range(i + 1, len(layers)):
            shared = shared_neighbours(nearest[i], nearest[j])
            mean = float(shared[placed].mean() / k) if placed.any() else float("nan")
            chance = chance_share(int(placed.sum()), k)
            name = ctx.out.write_shared(i, j, shared, placed, k)
            pairs.append({"a": i, "b": j, "mean_share": round(mean, 4), "chance": round(chance, 6), "shared": name})
            figures[f"{layers[i]}~{layers[j]}"] = round(mean, 3)
            ctx.log.info("layers %s and %s: %.1f%% of each image's %d nearest images kept (chance %.2f%%)",
                         layers[i], layers[j], 100 * mean, k, 100 * chance)
    ctx.out.write_index({"format": 1, "n_rows": int(len(placed)), "k": k, "top_cells": ctx.cfg.follow.top_cells,
                         "layers": [_layer_entry(ctx, i) for i in range(len(layers))], "pairs": pairs})
    return {"neighbours_kept": figures}


class FollowStage(StageBase[FollowContext]):
    """Analysis: where each layer's images land in the other layers -> ``RUN/follow``."""

    name = NAME
    inputs = ("tile",)
    execution = "shards"
    on_change = "redo"
    resources = Resources(tasks=1, time="01:00:00", cpus=4, mem="16G", gpus=0)

    def check(self, cfg: Config, run: RunDir) -> None:
        if len(cfg.model.all_layers) < 2:
            raise StoreError(f"`follow` compares the layers of a run of several layers, and {run.root} has one "
                             f"({cfg.model.layer}): list them in model.layers")
        _further_tiles(cfg)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return {"layers": cfg.model.all_layers, "k": cfg.follow.k, "top_cells": cfg.follow.top_cells,
                "further_tiles": _further_tiles(cfg)}

    def open(self, job: Job) -> FollowContext:
        return FollowContext(job.cfg, job.run, _runs(job.cfg), job.log)

    def units(self, ctx: FollowContext) -> list[str]:
        return [f"layer-{i}" for i in range(len(ctx.runs))]

    def run_units(self, ctx: FollowContext, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for unit in units:
            yield unit, _layer_unit(ctx, int(unit.split("-")[1]))

    def finish(self, ctx: FollowContext) -> dict[str, Any]:
        return _finish(ctx)

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Per pair of layers, the share of each image's nearest images kept (mean)."""
        doc = FollowOutput(run.root).index()
        if not doc:
            return {}
        names = [e["layer"] for e in doc["layers"]]
        return {"neighbours_kept": {f"{names[p['a']]}~{names[p['b']]}": p["mean_share"] for p in doc["pairs"]},
                "k": doc["k"]}


STAGE = FollowStage()
