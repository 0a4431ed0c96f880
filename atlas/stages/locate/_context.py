"""The locate stage's context: the config, the finished atlas it reads, and (loaded on first use)
the network and reduce's placement."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..._cache import cached
from ...config import Config
from ...formats import CollectOutput
from ...store import RunDir, StoreError, fingerprint
from ._atlas import AtlasGrid, Icons, Placer, load_grid, load_icons, load_placer
from ._images import ImageRef, image_refs

__all__ = ["NAME", "Context", "open_context", "settings"]

NAME = "locate"


def settings(cfg: Config) -> dict[str, Any]:
    """What decides a located image's outputs besides its inputs' (the images themselves are the
    scope). The model is the run's: collect's fingerprint holds it, and another model is refused
    when a unit runs, before anything is written."""
    return {"images": {k: getattr(cfg.images, k) for k in ("max_pixels", "min_side")},
            "locate": cfg.locate.model_dump(mode="json", exclude={"images", "threads"}),
            "background": cfg.tile.background}


@dataclass
class Context:
    """What a process needs to locate images; the network and the placement index load on first use."""

    cfg: Config
    run: RunDir
    log: logging.Logger
    refs: dict[str, ImageRef]
    collect: CollectOutput  # the atlas's collect: model, layer, input_size, layer_shape, class_names, dtype
    grid: AtlasGrid
    icons: Icons
    level: int
    done: Mapping[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # the runner's unit records
    inputs: Mapping[str, str] = field(default_factory=dict, repr=False)  # the inputs' fingerprints
    _sampler: Any = field(default=None, repr=False)
    _placer: Placer | None = field(default=None, repr=False)

    def sampler(self) -> Any:
        """collect's LayerSampler (its module runs every image: same copy, memory format, folding)."""
        if self._sampler is None:
            from ...models import pin_threads

            pin_threads(self.cfg.locate.threads)
            self._sampler = cached("locate.sampler", fingerprint([self.cfg.model.model_dump(mode="json"), self.cfg.collect.channels_last,
                                                            self.cfg.collect.fold_bn]), lambda: _sampler(self.cfg))
            _check_layer(self, self._sampler.layer_shape)
        return self._sampler

    def placer(self) -> Placer:
        if self._placer is None:
            from ...ops.knn import set_faiss_threads

            set_faiss_threads(self.cfg.locate.threads)
            reduce = self.inputs.get("reduce")
            self._placer = cached("locate.placer", fingerprint([str(self.run.root.resolve()), reduce]),
                                  lambda: load_placer(self.run))
        return self._placer


def _sampler(cfg: Config) -> Any:
    """collect's LayerSampler for ``cfg``: the same module copy, memory format and BatchNorm folding."""
    from ...models import LayerSampler, load_network, resolve_device

    net = load_network(cfg.model)
    device = resolve_device(cfg.model.device)
    return LayerSampler(net, cfg.model.layer, attribution=False, device=device, channels_last=cfg.collect.channels_last,
                        fold_bn=cfg.collect.fold_bn, autocast=device.type == "cuda")


def _check_model(cfg: Config, run: RunDir, col: CollectOutput) -> None:
    """The config's model and layer must be the ones the atlas was collected with."""
    want = (col.model, col.layer)
    if want != (cfg.model.name, cfg.model.layer):
        raise StoreError(f"the atlas in {run.root} was collected with model {want[0]} layer {want[1]}, not "
                         f"{cfg.model.name} layer {cfg.model.layer}: locate with the run's own config, "
                         f"`atlas locate {run.root / 'config.yaml'} IMAGE...`")


def _check_layer(ctx: Context, shape: tuple[int, int, int]) -> None:
    want = ctx.collect.layer_shape
    if shape != want:
        raise StoreError(f"layer `{ctx.cfg.model.layer}` gives a {shape[1]}x{shape[2]}x{shape[0]} grid here but the atlas "
                         f"in {ctx.run.root} was collected from a {want[1]}x{want[2]}x{want[0]} one (another input size?): "
                         f"locate with the run's own config, `atlas locate {ctx.run.root / 'config.yaml'} IMAGE...`")


def _level(cfg: Config, grid: AtlasGrid, icons: Icons, run: RunDir) -> int:
    if cfg.locate.level is not None:
        if cfg.locate.level not in grid.sizes:
            raise ValueError(f"locate.level {cfg.locate.level} is not a level of the grid in {run.root} "
                             f"({grid.sizes}): set locate.level to one of them, or null")
        return cfg.locate.level
    if not icons.levels:
        raise StoreError(f"{run.stage_path('render')} holds no rendered icon: run `atlas render {run.root / 'config.yaml'}`")
    return icons.levels[-1]


def open_context(cfg: Config, run: RunDir, log: logging.Logger, done: Mapping[str, dict[str, Any]] | None = None,
                 inputs: Mapping[str, str] | None = None) -> Context:
    """The atlas read, the model checked; ``done`` and ``inputs``: the runner's (``Job``)."""
    col = CollectOutput.open(run)
    _check_model(cfg, run, col)
    grid, icons = load_grid(run), load_icons(run)
    refs = {r.unit: r for r in image_refs(cfg.locate.images)}
    return Context(cfg, run, log, refs, col, grid, icons, _level(cfg, grid, icons, run),
                   {} if done is None else done, dict(inputs or {}))
