"""``atlas compare RUN_A RUN_B``: two networks over the same images, their comparison folder, its two
views and the lines ``atlas status`` shows for them.

A comparison ``RUN_A/compare/<name>/`` holds ``pair.json`` and two views, each a run directory of
its own whose config is written here (:func:`view_config`):

- ``layout-a``: A's layout and cells, B's activations of the same rows (B's network, B's icons);
- ``layout-b``: B's layout and cells, A's activations (the reverse view).

A view's config is the *network* run's resolved config with the *layout* run's grid sizes,
``grid.min_count``, ``grid.examples``, ``render.levels`` and ``collect.chunk_rows`` (so its cells
and chunks are the layout's), no class-atlas or extra-layer keys, and ``compare.layout`` /
``compare.network`` naming the two runs; ``--set`` overrides go on top (both views). Its collect
pairs the rows and its reduce copies the layout (:mod:`atlas.stages._pair`); grid, render and tile
are the usual stages; the ``compare`` analysis then computes the change figures
(:mod:`atlas.stages.compare`).
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, apply_overrides, config_from_dict, config_to_dict, load_config
from .formats import COMPARE, VIEWS, CollectOutput, GridOutput, read_pair, write_pair
from .stages import STAGES, final_info, get_stage, save_run_config, stage_status
from .stages._pair import pairing_mode, same_images
from .store import RunDir, StoreError

__all__ = ["NEEDED", "comparison_name", "comparison_dir", "view_config", "prepare", "compare_status",
           "format_comparisons"]

NEEDED = ("collect", "reduce", "grid", "render")
"""What each compared run must have finished: its rows, layout, cells and icons."""
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def _run_name(run: Path) -> str:
    return _NAME.sub("-", run.resolve().name).strip("-.") or "run"


def comparison_name(a: Path, b: Path) -> str:
    """The default folder name: the two runs' folder names, ``base--finetuned``."""
    return f"{_run_name(a)}--{_run_name(b)}"[:100].rstrip("-.")


def comparison_dir(a: Path, name: str) -> Path:
    """``RUN_A/compare/<name>``."""
    return Path(a) / COMPARE / name


def _finished(run: RunDir) -> None:
    """A compared run: finished up to render (not a class atlas or a view), else one line saying what to run."""
    if not (run.root / "config.yaml").is_file():
        raise StoreError(f"{run.root} is not a run directory (no config.yaml): pass two finished runs, "
                         "`atlas compare RUN_A RUN_B`")
    for stage in NEEDED:
        if final_info(run, stage) is None:
            raise StoreError(f"{run.root} has no finished {stage}: run `atlas run {run.root / 'config.yaml'}` first, then "
                             "`atlas compare` again")


def _load(run: RunDir) -> Config:
    cfg = load_config(run.root / "config.yaml")
    if cfg.compare.layout is not None:
        raise ConfigError(f"{run.root} is a comparison's view: compare the runs it was made from "
                          f"({cfg.compare.layout} and {cfg.compare.network})")
    if cfg.classes.parent is not None:
        raise ConfigError(f"{run.root} is a class atlas (a selection of {cfg.classes.parent}'s rows): compare two main "
                          "runs over the same images")
    return cfg


def _absolute_weights(data: dict[str, Any]) -> None:
    """A relative ``model.weights`` that exists from here, made absolute (the view lives elsewhere)."""
    w = data["model"].get("weights")
    if isinstance(w, str) and not Path(w).expanduser().is_absolute() and Path(w).expanduser().is_file():
        data["model"]["weights"] = str(Path(w).expanduser().resolve())


def view_config(layout: Config, network: Config, folder: Path, view: str, name: str,
                overrides: list[str] | None = None) -> Config:
    """The config of one view (``folder/view``): ``network``'s, on ``layout``'s cells and chunks (module
    docstring), with ``overrides`` (``key=value``) on top."""
    lrun = RunDir(layout.run_dir)
    grid, col = GridOutput.open(lrun), CollectOutput.open(lrun)
    data = config_to_dict(network)
    data["run_dir"] = str(folder / view)
    for key in ("layers", "layer_of"):
        data["model"].pop(key, None)
    _absolute_weights(data)
    data["grid"].update({"sizes": grid.sizes, "min_count": grid.min_count, "examples": layout.grid.examples})
    levels = layout.render.levels
    icon_sizes = data["render"].get("icon_sizes") or {}
    data["render"].update({"levels": levels, "icon_sizes": icon_sizes if set(map(int, icon_sizes)) <= set(grid.sizes)
                                                                    else None})
    data["collect"]["chunk_rows"] = col.chunk_rows
    data["classes"].update({"parent": None, "names": [], "grid_sizes": None})
    data["locate"].update({"images": [], "level": None})
    data["compare"].update({"name": name, "layout": str(Path(layout.run_dir).resolve()),
                            "network": str(Path(network.run_dir).resolve())})
    return config_from_dict(apply_overrides(data, list(overrides or [])))


def _manifest_sha(run: RunDir) -> str:
    h = hashlib.sha256()
    with open(run.root / "manifest.tsv", "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _side(cfg: Config) -> dict[str, Any]:
    col = CollectOutput.open(RunDir(cfg.run_dir))
    return {"name": _run_name(Path(cfg.run_dir)), "run": str(Path(cfg.run_dir).resolve()), "model": col.model,
            "layer": col.layer, "grid": list(col.layer_grid), "weights_sha256": col.weights_sha256}


def _pair_doc(a: Config, b: Config, name: str) -> dict[str, Any]:
    ca, cb = (CollectOutput.open(RunDir(c.run_dir)) for c in (a, b))
    sa, sb = _side(a), _side(b)
    if sa["name"] == sb["name"] and sa["run"] != sb["run"]:  # two runs of one folder name: tell them apart
        sa["name"], sb["name"] = (f"{Path(s['run']).parent.name}/{s['name']}" for s in (sa, sb))
    return {"format": 1, "name": name, "a": sa, "b": sb, "images": ca.n_images,
            "manifest_sha256": _manifest_sha(RunDir(a.run_dir)),
            "views": {VIEWS[0]: {"layout": "a", "network": "b", "pairing": pairing_mode(ca, cb)},
                      **({} if sa["run"] == sb["run"] else
                         {VIEWS[1]: {"layout": "b", "network": "a", "pairing": pairing_mode(cb, ca)}})}}


def _write_config(cfg: Config, extra: dict[str, Any]) -> None:
    """The view's config.yaml, when new or another config (its provenance aside)."""
    run = RunDir(cfg.run_dir)
    path = run.root / "config.yaml"
    with contextlib.suppress(FileNotFoundError, ConfigError, yaml.YAMLError):
        if config_to_dict(load_config(path)) == config_to_dict(cfg):
            return
    run.root.mkdir(parents=True, exist_ok=True)
    save_run_config(cfg, run, extra)


def prepare(a: str | Path, b: str | Path, *, name: str | None = None, overrides: list[str] | None = None) -> list[Config]:
    """Check the two runs (finished up to render, the same images), write ``RUN_A/compare/<name>/pair.json``
    and the two views' config.yaml; returns the views' configs (``layout-a``, ``layout-b``; a run compared
    with itself has one view, ``layout-a``: the reverse is the same). ``overrides`` (``key=value``, both
    views) are recorded in pair.json; none given: the recorded ones (a rerun needs not repeat them)."""
    ra, rb = RunDir(a), RunDir(b)
    for run in (ra, rb):
        _finished(run)
    same_images(ra, rb)
    ca, cb = _load(ra), _load(rb)
    base = apply_overrides({"compare": config_to_dict(ca)["compare"]}, [o for o in overrides or [] if o.startswith("compare.")])
    name = name or base["compare"].get("name") or comparison_name(ra.root, rb.root)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise ConfigError(f"--name {name!r} is not a folder name: use letters, digits, . _ - (at most 100)")
    folder = comparison_dir(ra.root, name)
    old = read_pair(folder)
    doc = _pair_doc(ca, cb, name)
    if old is not None and (old.get("a", {}).get("run"), old.get("b", {}).get("run")) != (doc["a"]["run"], doc["b"]["run"]):
        raise StoreError(f"{folder} compares {old['a']['run']} with {old['b']['run']}: pass another --name, or delete "
                         f"{folder} to compare these runs there")
    overrides = list(overrides or (old or {}).get("overrides") or [])  # none given: those it was made with
    doc["overrides"] = overrides
    views = [view_config(ca, cb, folder, VIEWS[0], name, overrides)]
    if ra.root.resolve() != rb.root.resolve():  # a run against itself: the reverse view is the same one
        views.append(view_config(cb, ca, folder, VIEWS[1], name, overrides))
    folder.mkdir(parents=True, exist_ok=True)
    write_pair(folder, doc)
    for cfg in views:
        _write_config(cfg, {"comparison": name})
    return views


# --------------------------------------------------------------------------- status


def compare_status(root: str | Path) -> list[dict[str, Any]]:
    """One entry per view of every comparison of the run ``root``: name, view, path, state (``done``,
    ``partial (<stage> done/total)``, ``stale``, ``not started``) and the finest grid's mean change."""
    from .formats import CompareOutput

    out = []
    folder = Path(root) / COMPARE
    for d in sorted(folder.iterdir()) if folder.is_dir() else []:
        pair = read_pair(d)
        if pair is None:
            continue
        for view in VIEWS:
            run = RunDir(d / view)
            if view not in pair.get("views", {}) or not (run.root / "config.yaml").is_file():
                continue
            cfg = None
            with contextlib.suppress(ConfigError, FileNotFoundError):
                cfg = load_config(run.root / "config.yaml")
            states = [stage_status(get_stage(s, cfg), run) for s in (*STAGES, "compare")]
            first = next((st for st in states if st.state != "done"), None)
            if first is None or any(st.state == "stale" for st in states):
                state = "done" if first is None else "stale"
            elif all(st.state == "not started" for st in states):
                state = "not started"
            else:
                state = f"partial ({first.stage} {first.done}/{first.total if first.total is not None else '?'})"
            doc = CompareOutput(run.root).summary() or {}
            finest = (doc.get("levels") or {}).get(str((doc.get("sizes") or [0])[-1])) or {}
            out.append({"name": d.name, "view": view, "path": str(run.root), "state": state,
                        "layout": (pair.get(pair["views"][view]["layout"]) or {}).get("name"),
                        "mean_change": (finest.get("mean") or {}).get("change")})
    return out


def format_comparisons(entries: list[dict[str, Any]]) -> list[str]:
    """``atlas status`` lines for the comparisons (none when there are none)."""
    if not entries:
        return []
    lines = ["  comparisons (atlas status RUN/compare/<name>/<view> for details):"]
    for e in entries:
        change = f"  mean change {e['mean_change']:.3f}" if isinstance(e.get("mean_change"), float) else ""
        lines.append(f"    {e['name'] + '/' + e['view']:36s} {e['state']:20s} on {e['layout']}'s layout{change}".rstrip())
    return lines
