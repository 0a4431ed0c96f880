"""A run over several layers (``model.layers``): each further layer's run directory and config.

The first layer's atlas is the run itself; each further layer is ``RUN/layers/<slug>/``
(:func:`atlas.formats.layer_run`), a run directory whose config is the run's with ``model.layer``
that layer and ``model.layer_of`` the run: its collect is :class:`atlas.stages._layer.LayerStage`
(the rows the run's one collect pass wrote), every later stage and command runs there as in any
run. ``--layer NAME`` on a command picks a layer's run (:func:`for_layer`); ``atlas run`` runs the
run's stages, then each further layer's (:func:`layer_configs`), then ``follow``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ._names import STAGES
from .config import Config, ConfigError, with_updates
from .formats import layer_run, layer_slug
from .store import RunDir

__all__ = ["layer_config", "layer_configs", "for_layer", "root_config", "layers_status", "format_layers"]


def root_config(cfg: Config) -> Config:
    """The config of the run that collected ``cfg``'s layer (``cfg`` itself for a run's first layer)."""
    if cfg.model.layer_of is None:
        return cfg
    from .config import load_config

    return load_config(Path(cfg.run_dir) / cfg.model.layer_of / "config.yaml")


def layer_config(cfg: Config, layer: str) -> Config:
    """The config of ``layer`` of the run ``cfg``: ``cfg`` for its first layer, else the further
    layer's run (``RUN/layers/<slug>``, ``model.layer_of`` naming the run)."""
    layers = cfg.model.all_layers
    if layer == layers[0]:
        return cfg
    if layer not in layers:
        raise ConfigError(f"--layer {layer}: this run's layers are {', '.join(layers)} (model.layers); add it there "
                          "to collect it")
    return with_updates(cfg, {"run_dir": str(layer_run(RunDir(cfg.run_dir), layer).root), "model.layers": None,
                              "model.layer": layer, "model.layer_of": str(Path("..", ".."))})


def layer_configs(cfg: Config) -> list[Config]:
    """Every layer's config, the run's first."""
    return [layer_config(cfg, layer) for layer in cfg.model.all_layers]


def for_layer(cfg: Config, layer: str | None) -> Config:
    """``--layer``: the config of that layer's run (None: ``cfg``). A layer's own config and its
    own name give itself."""
    if layer is None or (cfg.model.layer_of is not None and layer == cfg.model.layer):
        return cfg
    if cfg.model.layer_of is not None:
        raise ConfigError(f"{cfg.run_dir} is the run of layer {cfg.model.layer}: pass the config of the run it was "
                          f"collected with, {Path(cfg.run_dir) / cfg.model.layer_of / 'config.yaml'}, with --layer")
    if layer not in cfg.model.all_layers:
        close = difflib.get_close_matches(layer, cfg.model.all_layers, n=1, cutoff=0.6)
        raise ConfigError(f"--layer {layer}: this run's layers are {', '.join(cfg.model.all_layers)} "
                          f"(model.layers){f'; did you mean {close[0]}?' if close else ''}")
    return layer_config(cfg, layer)


# --------------------------------------------------------------------------- status


def layers_status(cfg: Config | None, root: Path) -> list[dict[str, Any]]:
    """One entry per further layer of the run: layer, slug, path and each stage's state."""
    from .stages import get_stage, stage_status

    if cfg is None or not cfg.model.layers or len(cfg.model.layers) < 2:
        return []
    out = []
    for layer in cfg.model.layers[1:]:
        sub = layer_config(cfg, layer)
        run = RunDir.of(sub)
        stages = {}
        for name in STAGES:
            st = stage_status(get_stage(name, sub), run)
            stages[name] = {"state": st.state, "done": st.done, "total": st.total}
        out.append({"layer": layer, "slug": layer_slug(layer), "path": str(run.root), "stages": stages})
    return out


def format_layers(entries: list[dict[str, Any]]) -> list[str]:
    """``atlas status`` lines for the further layers (none for a one-layer run)."""
    if not entries:
        return []
    lines = ["  further layers (atlas status RUN --layer NAME for details):"]
    for e in entries:
        parts = []
        for name, st in e["stages"].items():
            total = "?" if st["total"] is None else st["total"]
            parts.append(f"{name} {st['state']}" + (f" {st['done']}/{total}" if st["state"] == "partial" else ""))
        lines.append(f"    {e['layer']:20s} " + ", ".join(parts))
    return lines
