"""Class activation atlases (``atlas class-atlas``): the config of a class atlas, a run of its own
in ``RUN/classes/<slug>/``, and the lines ``atlas status`` shows for them.

A class atlas's config is the parent's resolved config with ``run_dir`` set to
``RUN/classes/<slug>``, the ``classes`` section naming the parent and the classes, and the
class-atlas layout: ``reduce.n_neighbors`` / ``reduce.min_dist`` from ``classes.n_neighbors`` /
``classes.min_dist`` (Distill: 20 and 0.02) and ``grid.sizes`` from ``classes.grid_sizes`` or the
number of rows selected (:func:`atlas.ops.classes.class_grid_sizes`). Its collect copies the
parent's supporting rows (:mod:`atlas.stages._select`); every other stage runs as in any run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, load_config, with_updates
from .formats import CollectOutput
from .ops.classes import ClassNameError, atlas_slug, class_grid_sizes, match_classes
from .stages import STAGES, final_info, get_stage, save_run_config, stage_status
from .stages._atlases import CLASSES
from .stages._select import selection
from .store import RunDir, StoreError

__all__ = ["class_atlas_config", "class_atlas_dir", "class_atlas_status", "format_class_atlases", "RULE_KEYS"]

RULE_KEYS = ("names", "threshold", "top_k", "max_rows")
"""The ``classes`` keys that decide which rows a class atlas holds (another value: another atlas)."""


def _parent_classes(cfg: Config) -> tuple[RunDir, list[str]]:
    """The parent run and its network's class names; one-line errors for a class atlas's own config or
    a parent whose collect is not finished."""
    if cfg.classes.parent is not None:
        raise ConfigError(f"{cfg.run_dir} is a class atlas (classes.parent is set): pass the config of the run it "
                          f"was made from, {cfg.classes.parent}/config.yaml")
    run = RunDir(cfg.run_dir)
    if final_info(run, "collect") is None:
        raise StoreError(f"a class atlas selects rows of a finished collect, and {run.root} has none: run "
                         "`atlas collect CONFIG` (or `atlas run CONFIG`) first, with the same CONFIG")
    return run, CollectOutput.open(run).class_names


def _stored_names(ks: list[int], names: list[str]) -> list[str]:
    """Class names as ``classes.names`` holds them: the name, or ``#<index>`` when two classes share it
    (as written: names differing in case only resolve as written)."""
    return [names[k] if names.count(names[k]) == 1 else f"#{k}" for k in ks]


def _layout(cfg: Config, n_rows: int) -> dict[str, Any]:
    """The class atlas's layout keys for ``n_rows`` rows (see the module docstring)."""
    c = cfg.classes
    sizes = list(c.grid_sizes or class_grid_sizes(n_rows, cfg.grid.sizes, c.cell_rows))
    levels = [s for s in cfg.render.levels or [] if s in sizes] or None
    return {"reduce.n_neighbors": max(2, min(c.n_neighbors, n_rows - 1)), "reduce.min_dist": c.min_dist,
            "grid.sizes": sizes, "render.levels": levels}


def class_atlas_dir(cfg: Config, slug: str) -> Path:
    """``RUN/classes/<slug>``."""
    return Path(cfg.run_dir) / CLASSES / slug


def _check_existing(path: Path, sub: Config) -> None:
    """A class atlas already made in ``path`` with another rule is refused, naming each key."""
    if not (path / "config.yaml").is_file():
        return
    old = load_config(path / "config.yaml").classes
    changed = [f"classes.{k}: {getattr(old, k)!r} -> {getattr(sub.classes, k)!r}" for k in RULE_KEYS
               if getattr(old, k) != getattr(sub.classes, k)]
    if changed:
        raise StoreError(f"{path} is a class atlas made with another rule ({'; '.join(changed)}): pass its settings "
                         f"again, or delete {path} to redo it with these")


def class_atlas_config(cfg: Config, names: list[str]) -> Config:
    """The config of the class atlas of ``names`` (one class, or two to compare) of the run ``cfg``
    names, written to ``RUN/classes/<slug>/config.yaml`` when it is new. Names are matched like the
    viewer's search (:func:`atlas.ops.classes.match_class`); ``[]``: ``cfg.classes.names``."""
    parent, class_names = _parent_classes(cfg)
    if not (names or cfg.classes.names):
        raise ClassNameError("no class named: pass --class NAME (twice to compare two classes), or set classes.names")
    ks = match_classes(list(names or cfg.classes.names), class_names)
    slug = atlas_slug(ks, class_names)
    path = class_atlas_dir(cfg, slug)
    draft = with_updates(cfg, {"classes.names": _stored_names(ks, class_names)})
    rows, per_class = selection(draft, CollectOutput.open(parent), ks)
    if rows.size < 3:
        counts = ", ".join(f"{class_names[k]!r}: {n}" for k, n in zip(ks, per_class))
        raise StoreError(f"too few rows of {parent.root} support the class ({counts}; a class atlas needs 3 or more): "
                         "lower classes.threshold or raise classes.top_k (--set classes.top_k=10)")
    sub = with_updates(draft, {"run_dir": str(path), "classes.parent": str(cfg.run_dir), **_layout(cfg, int(rows.size)),
                               "model.layers": None, "model.layer_of": None})  # one layer: the parent's
    _check_existing(path, sub)
    if not (path / "config.yaml").is_file():
        save_run_config(sub, RunDir(path), {"class_atlas_rows": int(rows.size)})
    return sub


# --------------------------------------------------------------------------- status


def _summary(run: RunDir) -> tuple[str, dict[str, str]]:
    """A class atlas's state in one word or phrase, and each stage's."""
    states = {name: stage_status(get_stage(name), run) for name in STAGES}
    if all(st.state == "done" for st in states.values()):
        state = "done"
    elif any(st.state == "stale" for st in states.values()):
        state = "stale"
    elif all(st.state == "not started" for st in states.values()):
        state = "not started"
    else:
        first = next(st for st in states.values() if st.state != "done")
        state = f"partial ({first.stage} {first.done}/{first.total if first.total is not None else '?'})"
    return state, {name: st.state for name, st in states.items()}


def class_atlas_status(root: str | Path) -> list[dict[str, Any]]:
    """One entry per class atlas of the run ``root`` (``RUN/classes/<slug>`` holding a config.yaml):
    slug, path, classes, rows, state (``done``, ``partial (<stage> done/total)``, ``stale``, ``not started``)."""
    out = []
    folder = Path(root) / CLASSES
    for d in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not (d / "config.yaml").is_file():
            continue
        names: list[str] = []
        with contextlib.suppress(OSError, yaml.YAMLError, AttributeError, TypeError):
            names = list((yaml.safe_load((d / "config.yaml").read_text()).get("classes") or {}).get("names") or [])
        state, stages = _summary(RunDir(d))
        info = final_info(RunDir(d), "collect") or {}
        out.append({"slug": d.name, "path": str(d), "classes": names, "rows": info.get("ok_count"), "state": state,
                    "stages": stages})
    return out


def format_class_atlases(entries: list[dict[str, Any]]) -> list[str]:
    """``atlas status`` lines for the class atlases (none when there are none)."""
    if not entries:
        return []
    lines = ["  class atlases (atlas status RUN/classes/<slug> for details):"]
    for e in entries:
        rows = f"  rows={e['rows']}" if e.get("rows") is not None else ""
        lines.append(f"    {e['slug']:28s} {e['state']:20s} {' vs '.join(e['classes'])}{rows}".rstrip())
    return lines
