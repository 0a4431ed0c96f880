"""Plain functions behind the CLI (and for notebooks): load a config, run stages, report status."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config
from .stages import ANALYSES, STAGES, available_stages, get_stage, parse_shard, stage_status
from .store import RunDir, StoreError

__all__ = ["load", "load_run", "run", "run_stage", "status", "format_status", "layers", "user_errors", "slurm_plan",
           "resolve_config", "resolve_run", "builtin_configs", "init_project", "version", "format_layer", "use_model", "class_atlas",
           "locate", "patch_test", "model_names", "for_layer", "compare", "compare_view"]

log = logging.getLogger("atlas")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's to fix: printed as one line, no traceback.

    ModelError and SourceError are ValueErrors; they are listed once loaded, never imported here
    (that would import torch on the way to printing any error).
    """
    errors: list[type[BaseException]] = [ConfigError, StoreError, NotImplementedError, FileNotFoundError, ValueError]
    for module, name in (("atlas.models._network", "ModelError"), ("atlas.sources._errors", "SourceError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)



def version() -> str:
    """This atlas's version."""
    from . import __version__

    return __version__


def builtin_configs() -> list[str]:
    """The config names that need no file: ``demo``, ``folder``, ``imagenet-lite0``, ... (``atlas init`` writes them)."""
    from .templates import config_names

    return config_names()


def resolve_config(path: str | os.PathLike[str] | None) -> Path | None:
    """A config argument as a file: an existing file, a run directory (its ``config.yaml``: the
    run as it was last started), else a built-in name (``demo``, see :func:`builtin_configs`),
    else the path as given (loading it says it does not exist).

    Another folder is refused with a ConfigError: a config is a YAML file.
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "config.yaml").is_file():
            return p / "config.yaml"
        found = sorted(f.name for f in p.glob("*.yaml"))[:4]
        hint = f"; it holds {', '.join(found)}" if found else ""
        raise ConfigError(f"{path} is a folder, not a config file nor a run directory (no config.yaml in it): pass a "
                          f"YAML config such as pipelines/demo.yaml, a built-in name ({', '.join(builtin_configs())}) "
                          f"or a run directory{hint}")
    if p.exists():
        return p
    from .templates import builtin_config

    return builtin_config(path) or p


def resolve_run(arg: str | os.PathLike[str]) -> Path:
    """A run argument as the run directory: a folder as given; a run's own ``config.yaml`` (or any
    run config file) as the run it means: its folder, or the ``run_dir`` a config of your own
    names; a built-in config name that is no file here as its ``run_dir``. Errors are one line
    (:func:`status` and ``atlas serve`` check the folder is a run)."""
    p = Path(arg).expanduser()
    if p.is_dir():
        return p
    if p.is_file() and p.suffix.lower() not in (".yaml", ".yml"):
        raise StoreError(f"{arg} is a file, not a run directory: pass a run directory or its config.yaml, "
                         "e.g. `atlas status runs/demo` or `atlas status runs/demo/config.yaml`")
    if p.is_file() or (not p.exists() and str(arg) in builtin_configs()):
        return Path(load(str(arg)).run_dir)
    return p


def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load and validate a run config: a YAML file, a built-in name such as ``demo``
    (:func:`resolve_config`), or ``None`` (the defaults)."""
    return load_config(resolve_config(path), overrides)


def init_project(dest: str | Path = ".", *, force: bool = False) -> list[Path]:
    """Write a starting project into ``dest``: ``pipelines/*.yaml`` (the built-in configs),
    ``scripts/slurm/`` (submit.sh and the stage scripts) and a README.md; returns the files.

    Refuses (FileExistsError, nothing written) when any of them exists, unless ``force``.
    """
    from .templates import write_project

    return write_project(dest, force=force)


def load_run(run_dir: str | Path) -> Config:
    """The resolved config a run was last started with (``RUN/config.yaml``, provenance left out;
    its ``run_dir`` is ``run_dir``, wherever the run was made)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run directory (run a stage first)")
    return load_config(path)


def run_stage(name: str, cfg: Config, *, shard: str | tuple[int, int] | None = None, client: Any = None) -> None:
    """Run one stage: one shard of it when ``shard`` is given (``"i/n"``, ``(i, n)`` or ``"slurm"``),
    else all of it on ``cfg.cluster.engine`` (``client``: an open dask Client to reuse)."""
    from .cluster import dask_client, run_shard, run_stage_on_dask

    get_stage(name)
    if shard is not None or (cfg.cluster.engine == "local" and client is None):
        run_shard(name, cfg, shard if isinstance(shard, tuple) else parse_shard(shard))
    elif client is not None:
        run_stage_on_dask(client, name, cfg)
    else:
        with dask_client(cfg.cluster, cfg.run_dir) as c:
            run_stage_on_dask(c, name, cfg)


def for_layer(cfg: Config, layer: str | None) -> Config:
    """``--layer NAME``: the config of that layer's run directory (``RUN/layers/<slug>`` for a
    further layer of ``model.layers``; None or the first layer: ``cfg``)."""
    from .layers import for_layer as pick

    return pick(cfg, layer)


def _layer_plan(cfg: Config, todo: list[str], layer: str | None) -> list[tuple[str, Config]]:
    """(stage, config) in the order ``atlas run`` runs them: the run's collect (every layer in one
    pass), then each layer's later stages (only ``layer``'s when given)."""
    from .layers import layer_configs, root_config

    root = root_config(cfg)
    if layer is None and cfg.model.layer_of is not None:
        layer = cfg.model.layer
    subs = [c for c in layer_configs(root) if layer is None or c.model.layer == layer]
    plan = [("collect", root)] if "collect" in todo else []
    plan += [(name, sub) for sub in subs for name in todo if name != "collect" or sub is not root]
    return plan


def run(cfg: Config, stages: list[str] | None = None, layer: str | None = None) -> list[str]:
    """Run stages in pipeline order, skipping finished work; returns the stages run. With
    ``model.layers``: the run's collect pass (every layer), then each layer's later stages (only
    ``layer``'s when given), then ``follow`` (where each cell's images land in the other layers)."""
    wanted = stages or list(STAGES)
    bad = [s for s in wanted if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage {bad[0]!r} in --stages; stages are {', '.join(STAGES)}")
    have = available_stages()
    todo = [s for s in STAGES if s in wanted and s in have]
    plan = _layer_plan(cfg, todo, layer)
    with contextlib.ExitStack() as stack:
        client = None
        if cfg.cluster.engine == "dask":
            from .cluster import dask_client

            client = stack.enter_context(dask_client(cfg.cluster, cfg.run_dir))
        for name, sub in plan:
            log.info("== %s%s", name, f" (layer {sub.model.layer})" if len(sub.model.all_layers) > 1 or
                     sub.model.layer_of else "")
            run_stage(name, sub, client=client)
        root = plan[0][1] if plan else cfg
        if len(root.model.all_layers) > 1 and "tile" in todo and layer is None:
            log.info("== follow")
            run_stage("follow", root, client=client)
    missing = [s for s in STAGES if s in wanted and s not in have]
    if missing:
        print(f"atlas: ran {', '.join(todo)}; not in this version yet: {', '.join(missing)}")
    tiles = Path(cfg.run_dir) / "tiles" / "index.html"
    if "tile" in todo and tiles.exists() and cfg.classes.parent is None:  # a class atlas: class_atlas says it
        print(f"atlas: the atlas is ready. Open it with\n  atlas serve {cfg.run_dir}\n"
              f"and browse http://127.0.0.1:8000/ (or open {tiles.resolve()} directly).")
    return todo


def status(run_dir: str | Path, layer: str | None = None) -> dict[str, Any]:
    """Per stage: state (done / partial / not started), units done/total and details. ``run_dir``:
    a run directory or its config.yaml (:func:`resolve_run`); ``layer``: a further layer's run
    (``RUN/layers/<slug>``) of a run of several layers."""
    run = RunDir(resolve_run(run_dir))
    if layer is not None:
        _check_run_dir(run.root)
        run = RunDir(for_layer(load_run(run.root), layer).run_dir)
    _check_run_dir(run.root)
    report: dict[str, Any] = {"run_dir": str(run.root), "stages": []}
    cfg = None
    with contextlib.suppress(FileNotFoundError, ValueError):  # the stages as the run's config has them
        cfg = load_run(run.root)
    for name in STAGES + tuple(a for a in ANALYSES if run.state_path(a).is_dir()):  # analyses once started
        try:
            stage = get_stage(name, cfg)
        except NotImplementedError:
            report["stages"].append({"stage": name, "state": "not available", "done": 0, "total": None})
            continue
        st = stage_status(stage, run).as_dict()
        st["failures"] = [{k: f.get(k) for k in ("key", "shard", "reason", "host", "time", "slurm_job") if f.get(k)}
                          for f in run.failures(name)]
        report["stages"].append(st)
    from .classes import class_atlas_status
    from .layers import layers_status

    report["class_atlases"] = class_atlas_status(run.root)
    from .compare import compare_status

    report["comparisons"] = compare_status(run.root)
    report["layers"] = layers_status(cfg, run.root)
    if cfg is not None:
        report["remaining"] = _remaining_all(cfg, run, report)
    return report


def _remaining_all(cfg: Config, run: RunDir, report: dict[str, Any]) -> dict[str, Any] | None:
    """The run's remaining time, each further layer's added (its stages as ``layer/stage``)."""
    from .layers import layer_config

    left = _remaining(cfg, run, report["stages"])
    for entry in report.get("layers") or []:
        sub = _remaining(layer_config(cfg, entry["layer"]), RunDir(entry["path"]),
                         [{"stage": k, **v} for k, v in entry["stages"].items()])
        if sub is None:
            continue
        if left is None:
            left = {"seconds": {}, "from": {}, "total_seconds": 0.0, "calibration": sub["calibration"]}
        for k, v in sub["seconds"].items():
            left["seconds"][f"{entry['layer']}/{k}"], left["from"][f"{entry['layer']}/{k}"] = v, sub["from"][k]
        left["total_seconds"] = round(left["total_seconds"] + sub["total_seconds"], 1)
    return left


def _remaining(cfg: Config, run: RunDir, stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The time the run's pipeline stages still need (:func:`atlas.estimate.remaining`); None before
    its images are known (no manifest yet) or once every stage is done."""
    import json as _json

    from . import estimate as est
    from .formats import CollectOutput
    from .stages import stage_elapsed

    if all(st["state"] == "done" for st in stages if st["stage"] in STAGES):
        return None
    try:
        n = int(_json.loads((run.root / "manifest.json").read_text())["n"])
    except (OSError, ValueError, KeyError):
        return None
    channels, classes = 512, 1000
    if CollectOutput.exists(run):
        col = CollectOutput.open(run)
        channels, classes = col.layer_shape[0], len(col.class_names)
    model = est.estimate(est.run_calibration(channels, classes, cfg.collect.attribution), cfg, max(n, 1))
    progress = [est.Progress(st["stage"], st["state"], int(st["done"]), st["total"], stage_elapsed(run, st["stage"]))
                for st in stages if st["stage"] in STAGES]
    return est.remaining(model, progress)


_RUN_MARKERS = ("config.yaml", "state", *STAGES, "tiles")


def _check_run_dir(root: Path) -> None:
    """A clear error unless ``root`` is a run directory (what a config's run_dir names)."""
    if root.is_file():
        raise StoreError(f"{root} is a file, not a run directory: pass the folder a config's run_dir names, "
                         "e.g. `atlas status runs/demo`")
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist")
    if not any((root / m).exists() for m in _RUN_MARKERS):
        runs = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "config.yaml").is_file())[:4]
        hint = f"; it holds the runs {', '.join(runs)}, e.g. `atlas status {root / runs[0]}`" if runs else \
            ": pass the folder a config's run_dir names, e.g. `atlas status runs/demo`"
        raise StoreError(f"{root} is not a run directory (no config.yaml or state/ in it){hint}")


def _num_key(key: Any) -> tuple[int, float, str]:
    try:
        return (0, float(key), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(key))


def _fmt(value: Any) -> str:
    """A status figure as text: numbers rounded, None/NaN as ``-``, lists comma-separated,
    mappings as ``key:value`` pairs in numeric order."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) >= 0.001 else f"{value:.2g}"
    if isinstance(value, dict):
        return " ".join(f"{k}:{_fmt(value[k])}" for k in sorted(value, key=_num_key))
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    return " ".join(str(value).split())


def format_status(report: dict[str, Any]) -> str:
    """:func:`status` as text: one line per stage, then its failures and warnings."""
    lines = [f"run {report['run_dir']}"]
    for st in report["stages"]:
        total = "?" if st["total"] is None else st["total"]
        extra = {k: v for k, v in st.items()
                 if k not in ("stage", "state", "done", "total", "failures", "empty_levels") and v is not None}
        info = "  ".join(f"{k} {_fmt(v)}" if isinstance(v, dict) else f"{k}={_fmt(v)}" for k, v in extra.items())
        units = f"{st['done']}/{total} unit{'' if total == 1 else 's'}"
        if st["state"] == "partial" and st["done"] == st["total"]:
            units += " (the final step to do)"
        lines.append(f"  {st['stage']:8s} {st['state']:12s} {units}  {info}".rstrip())
        for f in st.get("failures", []):
            where = " ".join(str(f[k]) for k in ("host", "slurm_job", "time") if f.get(k))
            lines.append(f"           FAILED shard {f.get('shard', '?')} ({where}): {f.get('reason')}")
        for s in sorted(st.get("empty_levels") or [], key=_num_key):
            lines.append(f"           WARNING grid level {s} is empty (no cell has grid.min_count points): "
                         f"lower grid.min_count, or remove {s} from grid.sizes")
    left = report.get("remaining")
    if left:
        from .estimate import duration

        parts = [f"{k} {duration(v)} ({left['from'][k]})" for k, v in left["seconds"].items() if v > 0]
        lines.append(f"  remaining: about {duration(left['total_seconds'])}: {', '.join(parts)}")
    from .classes import format_class_atlases
    from .compare import format_comparisons
    from .layers import format_layers

    return "\n".join(lines + format_layers(report.get("layers") or [])
                     + format_class_atlases(report.get("class_atlases") or [])
                     + format_comparisons(report.get("comparisons") or []))


def class_atlas(cfg: Config, names: list[str] | None = None, stages: list[str] | None = None) -> Config:
    """Make (or resume) the class activation atlas of one class, or two to compare, of the run ``cfg``
    names: ``RUN/classes/<slug>/`` with its own config.yaml (:func:`atlas.classes.class_atlas_config`),
    its stages run on ``cfg``'s engine, then the run's atlas index (``RUN/atlases.json``) rewritten.
    ``names`` are matched like the viewer's search; returns the class atlas's config."""
    from .classes import class_atlas_config
    from .stages._atlases import write_index

    sub = class_atlas_config(cfg, list(names or []))
    run(sub, stages)
    write_index(RunDir.of(cfg))
    return sub


def config_layers(cfg: Config) -> list[dict[str, Any]]:
    """``atlas layers CONFIG``: per layer the config collects, its name, grid (C, H, W), run
    directory and each stage's state there."""
    from .layers import layer_configs
    from .models import layer_shape, load_network

    net = load_network(cfg.model)
    out = []
    for sub in layer_configs(cfg):
        run = RunDir(sub.run_dir)
        states = {name: stage_status(get_stage(name, sub), run).state for name in STAGES} if run.root.is_dir() else {}
        out.append({"layer": sub.model.layer, "shape": layer_shape(net, sub.model.layer), "run_dir": str(run.root),
                    "states": states})
    return out


def format_config_layers(entries: list[dict[str, Any]]) -> str:
    """:func:`config_layers` as text, one line per layer."""
    lines = []
    for e in entries:
        c, h, w = e["shape"]
        done = [n for n, st in e["states"].items() if st == "done"]
        state = "not started" if not done else f"done through {done[-1]}" if len(done) < len(e["states"]) else "done"
        lines.append(f"{e['layer']:24s} {h}x{w}x{c:<8d} {e['run_dir']:40s} {state}")
    return "\n".join(lines)


def slurm_plan(cfg: Config) -> list[tuple[str, bool, list[str]]]:
    """Per stage in order: (name, finished, sbatch options) for scripts/slurm/submit.sh; with
    ``model.layers``, each further layer's stages as ``<stage>@<layer>``, then ``follow``."""
    from .cluster import sbatch_options, stage_finished

    plan = _layer_plan(cfg, list(STAGES), None)
    rows = [(name if sub is plan[0][1] else f"{name}@{sub.model.layer}", stage_finished(name, sub),
             sbatch_options(sub, name)) for name, sub in plan]
    if len(cfg.model.all_layers) > 1:  # then where each layer's images land in the others
        rows.append(("follow", stage_finished("follow", cfg), sbatch_options(cfg, "follow")))
    return rows


def layers(model: Any, *, weights: str | None = None, input_size: int | None = None, layout: str = "auto",
           prefix_tokens: int | None = None, factory: str | None = None) -> list[Any]:
    """Every hookable layer of ``model`` with a spatial grid, as :class:`atlas.models.LayerSpec`: ``name``,
    ``layout`` (``nchw``, ``nhwc``, ``tokens``; None when it cannot be told), ``shape`` (C, rows, cols),
    ``output`` (the output shape without the batch axis) and ``prefix`` (tokens before the patch grid).

    ``model``: a model name as in ``model.name`` (``resnet50``, ``timm:vit_small_patch16_224``,
    ``object:mine``, ...; with ``factory``, as ``model.factory``, a name of your own) or a
    ``torch.nn.Module`` object (a copy is probed; input side ``input_size``, default 224).
    ``layout`` / ``prefix_tokens``: as ``model.layout`` / ``model.prefix_tokens``. :func:`format_layer` formats one as ``atlas layers`` prints it.
    """
    import copy

    import torch

    from .config import ModelConfig
    from .models import ModelError, layer_specs, load_network, network_from_module

    try:
        if isinstance(model, torch.nn.Module):
            cfg = ModelConfig(name=type(model).__name__, weights=weights, input_size=input_size)
            net = network_from_module(cfg, copy.deepcopy(model), {"class_names": [], "mean": [0.5] * 3, "std": [0.5] * 3},
                                      where=f"the {type(model).__name__} object", default_size=224)
        else:
            neutral = [0.5] * 3 if model == "torchscript" else None  # it needs mean/std; layer shapes do not
            net = load_network(ModelConfig(name=model, weights=weights, input_size=input_size, mean=neutral, std=neutral,
                                           factory=factory))
    except ModelError as e:
        raise ModelError(_as_layers_flags(str(e))) from None
    net.layout, net.prefix_tokens = layout, prefix_tokens
    return layer_specs(net)


def model_names() -> list[str]:
    """The model names that need no factory (``atlas layers --list-models``): the bundled ones, then
    torchvision's classifiers; ``timm:<architecture>`` and ``object:<name>`` work as well."""
    from .models import model_names as names

    return names()


def format_layer(spec: Any) -> str:
    """One row of ``atlas layers``: name, layout, grid rows x cols x channels, output shape (no batch axis)."""
    output = "x".join(map(str, spec.output))
    if spec.shape is None:
        return f"{spec.name:40s} {'ambiguous':16s} {'?':14s} output {output} (set model.layout / model.prefix_tokens)"
    c, h, w = spec.shape
    return f"{spec.name:40s} {spec.describe():16s} {f'{h}x{w}x{c}':14s} output {output}"


def use_model(module: Any, name: str, *, input_size: int | None = None, mean: Any = None, std: Any = None,
              class_names: list[str] | None = None) -> str:
    """Make ``module`` (a ``torch.nn.Module``) usable as ``model.name`` in this process; returns that name,
    ``object:<name>``, e.g. ``cfg = api.load(None, [f"model.name={api.use_model(net, 'mine', input_size=224)}", ...])``.

    The stages must run in this process (``cluster.engine: local``, the default); other
    processes cannot see the object (use ``model.factory`` there). ``input_size``, ``mean``,
    ``std``: its preprocessing (else ``model.input_size/mean/std`` must be set);
    ``class_names``: names of its outputs ([] = no classifier; None = ``class i`` for a
    [B, K] output). A copy is registered: register again after changing the module.
    """
    from .models import register_model

    return register_model(name, module, input_size=input_size, mean=mean, std=std, class_names=class_names)


_LAYERS_FLAGS = [  # the model loaders speak config keys; `atlas layers` takes flags
    (r"--set model\.weights=", "--weights "),
    (r"model\.weights=None \(not set\)", "--weights not given"),
    (r"unset model\.weights", "leave out --weights"),
    (r"set model\.weights to", "pass --weights with"),
    (r"\bin model\.weights\b", "with --weights"),
    (r"model\.weights=", "--weights "),
    (r" --set model\.(?:mean|std)=\[[^\]]*\]", ""),  # listing layers needs neither
    (r"--set model\.input_size=", "--input-size "),
    (r"\bmodel\.weights\b", "--weights"),
    (r"\bmodel\.input_size\b", "--input-size"),
    (r"set model\.name to", "pass --model with"),
    (r"with model\.factory=", "with --factory "),
]


def _as_layers_flags(message: str) -> str:
    """A model loader's message with its config keys as ``atlas layers`` flags."""
    for pattern, repl in _LAYERS_FLAGS:
        message = re.sub(pattern, repl, message)
    return message


def locate(cfg: Config, images: list[str] | None = None, *, shard: str | tuple[int, int] | None = None,
           every_layer: bool = False) -> dict[str, Any]:
    """Place every position of ``images`` (files, folders of images, ``demo://<size>/<i>``; added to
    ``cfg.locate.images``) on the finished atlas of ``cfg.run_dir`` (``atlas locate``): the
    ``locate`` stage, on ``cfg``'s engine (one ``shard`` when given). Images located before are
    kept and not redone. Returns ``RUN/locate/index.json`` (every located and skipped image of
    the run) with ``output`` (that folder), ``asked`` (this call's units) and ``done`` (those of
    them done, by this process or others) added. ``every_layer`` (``atlas locate`` without
    ``--layer``): a run of several layers locates the images on each further layer's atlas too, so
    the viewer shows them on whichever layer it shows."""
    from .config import with_updates
    from .stages.locate import absolute_arguments, image_refs, read_index

    wanted = list(dict.fromkeys([*cfg.locate.images, *absolute_arguments(list(images or []))]))
    if not wanted:
        raise ValueError("no images to locate: pass image files, folders of images or demo://<size>/<i> "
                         "(`atlas locate CONFIG IMAGE...`), or set locate.images")
    cfg = with_updates(cfg, {"locate.images": wanted})
    asked = [r.unit for r in image_refs(wanted)]
    run_stage("locate", cfg, shard=shard)
    if every_layer and cfg.model.layer_of is None:
        from .layers import layer_configs

        for sub in layer_configs(cfg)[1:]:
            log.info("locating on layer %s too (--layer %s locates on one layer)", sub.model.layer, sub.model.layer)
            run_stage("locate", sub, shard=shard)
    doc = read_index(cfg.run_dir) or {"images": [], "skipped": []}
    done = RunDir(cfg.run_dir).done_units("locate")
    return {**doc, "output": str(Path(cfg.run_dir) / get_stage("locate").output), "asked": asked,
            "done": [u for u in asked if u in done]}


def units(cfg: Config, *, shard: str | tuple[int, int] | None = None, basis: str | None = None) -> dict[str, Any]:
    """The units behind every cell of the finished atlas of ``cfg.run_dir`` (``atlas units``): an icon,
    dataset examples and a heatmap per unit of the layer (``basis``, else ``cfg.units.basis``: ``channels``,
    ``nmf:K`` or ``sae:K``), each cell's dictionary, the located images' dictionary pictures; the
    ``units`` analysis on ``cfg``'s engine (one ``shard`` when given). Returns ``RUN/units/index.json``
    (the basis, its units' self-ranks, ...; empty before the analysis finished) with ``output`` (that folder)."""
    from .config import with_updates
    from .formats._units import UnitsOutput

    if basis is not None:
        cfg = with_updates(cfg, {"units.basis": basis})
    run_stage("units", cfg, shard=shard)
    doc = UnitsOutput.files(RunDir(cfg.run_dir)).index() or {}
    return {**doc, "output": str(Path(cfg.run_dir) / get_stage("units").output)}


def patch_test(cfg: Config, *, shard: str | tuple[int, int] | None = None, **updates: Any) -> dict[str, Any]:
    """Run the patch test ``cfg.patch_test`` names (``atlas patch-test``) on the finished atlas of
    ``cfg.run_dir`` and return its results: ``RUN/patch-test/<slug>/results.json`` (headline, rows
    per size and position, the patch against a noise patch of the same size) with ``folder`` and
    ``table`` (Markdown) added. ``updates``: ``patch_test`` keys to set first, e.g.
    ``api.patch_test(cfg, from_class="snorkel", to_class="scuba diver", patch="cell:16:3,4")``.
    A finished test is not redone; other tests of the run are kept. ``shard``: as for any stage
    (patch-test runs as one job, so only ``0/1`` or ``slurm`` with one task is accepted)."""
    from .config import with_updates
    from .stages.patch_test import results_of

    if updates:
        cfg = with_updates(cfg, {f"patch_test.{k}": v for k, v in updates.items()})
    run_stage("patch-test", cfg, shard=shard)
    return results_of(cfg)


def compare(run_a: str | Path, run_b: str | Path, *, name: str | None = None, overrides: list[str] | None = None,
            prepare_only: bool = False) -> dict[str, Any]:
    """Compare two networks over the same images (``atlas compare RUN_A RUN_B``): runs A and B (run
    directories or their config.yaml, finished up to render, collected from the same manifest) give
    ``RUN_A/compare/<name>/`` with two views, each a run directory: ``layout-a`` (A's layout and cells,
    B's activations and icons) and ``layout-b`` (the reverse). Their stages run on the views' engine
    (B's and A's configs), then the change figures (the ``compare`` analysis) and the atlas index.
    ``overrides``: ``key=value`` for both views (``render.steps=32``, ``compare.top_classes=3``);
    ``prepare_only``: write the folder and the views' config.yaml only (run their stages elsewhere,
    e.g. as SLURM arrays, then call this again). Returns ``pair.json`` with ``folder`` and, per view,
    its ``config`` and change ``summary`` (None until finished)."""
    from .compare import prepare
    from .formats import CompareOutput

    views = prepare(resolve_run(run_a), resolve_run(run_b), name=name, overrides=overrides)
    if not prepare_only:
        for cfg in views:
            _run_view(cfg)
    folder = Path(views[0].run_dir).parent
    from .formats import read_pair
    from .stages._atlases import write_index

    write_index(RunDir(folder.parent.parent, views[0].cluster.locking))
    doc = read_pair(folder) or {}
    doc["folder"] = str(folder)
    doc["views"] = {Path(v.run_dir).name: {**doc.get("views", {}).get(Path(v.run_dir).name, {}),
                                           "config": str(Path(v.run_dir) / "config.yaml"),
                                           "summary": CompareOutput(v.run_dir).summary()} for v in views}
    return doc


def _run_view(cfg: Config) -> None:
    """A comparison's view: its pipeline stages, then its change figures, on its engine."""
    with contextlib.ExitStack() as stack:
        client = None
        if cfg.cluster.engine == "dask":
            from .cluster import dask_client

            client = stack.enter_context(dask_client(cfg.cluster, cfg.run_dir))
        for name in (*STAGES, "compare"):
            log.info("== %s (%s)", name, Path(cfg.run_dir).name)
            run_stage(name, cfg, client=client)


def compare_view(cfg: Config, *, shard: str | tuple[int, int] | None = None) -> dict[str, Any]:
    """The change figures of one comparison's view (``atlas compare VIEW/config.yaml``: the
    ``compare`` analysis; the view's stages must be finished); returns ``changes/summary.json``."""
    from .formats import CompareOutput

    if cfg.compare.layout is None:
        raise ValueError(f"{cfg.run_dir} is not a comparison's view: compare two runs with `atlas compare RUN_A RUN_B` "
                         "(one argument: a view's config.yaml, RUN_A/compare/<name>/layout-a/config.yaml)")
    run_stage("compare", cfg, shard=shard)
    return CompareOutput(cfg.run_dir).summary() or {}


def estimate(cfg: Config, images: int | None = None, *, calibrate: bool = True, calibrate_seconds: float = 30.0,
             log: Any = None) -> Any:
    """What a run of ``cfg`` over ``images`` images (default: the source's count) will cost per stage:
    an :class:`atlas.estimate.Estimate` (time, disk, peak memory, units; CPU/GPU-hours and array
    sizes on a SLURM or dask config; warnings). ``calibrate``: measure collect and render here for
    about ``calibrate_seconds``; off, the CPU figures of docs/benchmarks.md."""
    import dataclasses
    import shutil

    from . import estimate as est

    n = est.image_count(cfg, images)
    if calibrate:
        cal = est.calibrate(cfg, calibrate_seconds, log=log)
    else:
        channels, classes, note = est.layer_channels(cfg)
        cal = est.default_calibration(channels, classes, cfg.collect.attribution and classes > 0)
        if note:
            cal = dataclasses.replace(cal, notes=(note,))
    from .models import resolve_device

    cuda = resolve_device(cfg.model.device).type == "cuda"
    where = Path(cfg.run_dir).resolve()
    while not where.exists() and where != where.parent:
        where = where.parent
    result = est.estimate(cal, cfg, n, cuda=cuda, free_disk=shutil.disk_usage(where).free)
    return est.with_cluster(result, cfg)
