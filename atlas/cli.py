"""The `atlas` command: parse arguments, load the config, call a plain function. Nothing else."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import re
import select
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._names import STAGES

__all__ = ["main", "build_parser"]


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default where it has one worth showing (not None, off, [])."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = action.option_strings or action.nargs in ("?", "*")
        if (not shown or "default" in text or default is None or default is False or default == []
                or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: {default})"


def _suggest(word: str, choices: Sequence[str]) -> str:
    """``; did you mean 'status'?`` for the closest of ``choices``, else nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _unrecognized(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """One line for arguments a command does not take: the first, the closest option, the fix."""
    flagged = [a for a in extras if a.startswith("-") and not _NUMBER.fullmatch(a)]
    first = (flagged or list(extras))[0]
    if flagged:
        flags = sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")})
        hint = _suggest(first.split("=", 1)[0], flags) or f" ({parser.prog} takes {', '.join(flags)})"
        return f"unrecognized option {first}{hint}"
    return f"unrecognized argument {first!r} (see {parser.prog} --help)"


_NUMBER = re.compile(r"-\d+(\.\d*)?")


class _Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """The subcommand's own parser reads the rest, options anywhere among its arguments
    (``atlas locate RUN --set k=v cat.png``); its errors show its own usage."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        name, *rest = [str(v) for v in values or [""]]
        setattr(namespace, self.dest, name)
        sub = self._name_parser_map[name]  # an unknown name failed _Parser._check_value already
        found, extras = sub.parse_known_intermixed_args(rest)
        if extras:
            sub.error(_unrecognized(sub, extras))
        for key, value in vars(found).items():
            setattr(namespace, key, value)


class _Parser(argparse.ArgumentParser):
    """No abbreviated options (``--stage`` is not ``--stages``), defaults shown in the help,
    subcommands parsed intermixed, and a suggestion for a misspelled command or option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Commands)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if isinstance(action, argparse._SubParsersAction) and action.choices is not None and value not in action.choices:
            names = list(action.choices)
            raise argparse.ArgumentError(None, f"unknown command {value!r}{_suggest(value, names)} "
                                               f"(commands: {', '.join(names)})")
        super()._check_value(action, value)

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            message = _unrecognized(self, message.removeprefix(prefix).split(" "))
        super().error(message)


def _whole(low: int) -> Callable[[str], int]:
    """An option's type: a whole number at least ``low``; argparse names the option in its message."""
    def whole(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a whole number, got {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {n}")
        return n

    return whole


def _port(text: str) -> int:
    """``--port``: 1..65535, or 0 for any free port (``atlas.serve.check_port`` checks the same)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a port number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port: give 1 to 65535 (0 picks a free one)")
    return port


def _builtin_names() -> str:
    from .templates import config_names

    return ", ".join(config_names())


def _add_config_args(p: argparse.ArgumentParser, shard: bool, engine: bool = True, layer: bool = True) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML run config, e.g. pipelines/demo.yaml, or a built-in name: "
                                  + _builtin_names())
    if layer:
        p.add_argument("--layer", default=None, metavar="NAME",
                       help="with model.layers: work on that layer's atlas, RUN/layers/<name> (default: the first "
                            "layer, the run itself)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set images.path=/data/imgs (repeatable; any key of "
                        "docs/configuration.md)")
    if shard:
        p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                       help="run only shard I of N (0-based; units are split round robin), or `slurm`: "
                            "this array task's shard from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT "
                            "(default: every unit)")
    if engine:
        p.add_argument("--scheduler", type=_non_empty, default=None, metavar="ADDRESS",
                       help="run on this dask scheduler, e.g. tcp://host:8786 (sets cluster.engine=dask, "
                            "cluster.scheduler; default: the config's cluster settings)")
        p.add_argument("--workers", type=_whole(1), default=None, metavar="N",
                       help="run on a dask LocalCluster of N worker processes (sets cluster.engine=dask, "
                            "cluster.workers; default: the config's cluster settings)")


def _shard(text: str) -> str:
    """``--shard``: ``I/N`` with 0 <= I < N, or ``slurm`` (its variables are read when the stage starts)."""
    i, _, n = text.partition("/")
    if text != "slurm" and not (i.isdigit() and n.isdigit() and int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"expects I/N with 0 <= I < N, such as 0/4, or slurm; got {text!r}")
    return text


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give an address such as tcp://host:8786")
    return text


_FLAG_KEYS = {  # option dest -> (the flag, the config key it sets): errors about the key name the flag
    "scheduler": ("--scheduler", "cluster.scheduler"), "workers": ("--workers", "cluster.workers"),
    "from_class": ("--from", "patch_test.from_class"), "to_class": ("--to", "patch_test.to_class"),
    "patch": ("--patch", "patch_test.patch"), "sizes": ("--sizes", "patch_test.sizes"),
    "positions": ("--positions", "patch_test.positions"), "max_images": ("--max-images", "patch_test.max_images"),
    "name": ("--name", "patch_test.name"),
    "basis": ("--basis", "units.basis"),
}


def _as_flags(message: str, args: argparse.Namespace | None) -> str:
    """An error about a config key that an option set, naming the option the user typed."""
    keys = {key: flag for dest, (flag, key) in _FLAG_KEYS.items() if getattr(args, dest, None) is not None}
    if getattr(args, "command", None) == "patch-test" and getattr(args, "images", None) is not None:
        keys["patch_test.images"] = "--images"
    for key, flag in keys.items():
        def named(m: re.Match[str], flag: str = flag) -> str:
            return flag + (f" item {int(m[1][1:-1]) + 1}" if m[1] else "")

        message = re.sub(rf"(?:config key )?`{re.escape(key)}((?:\[\d+\])?)`|\b{re.escape(key)}\b", named, message)
    return message


def _engine_overrides(args: argparse.Namespace) -> list[str]:
    extra = []
    if getattr(args, "scheduler", None):
        extra += ["cluster.engine=dask", f"cluster.scheduler={args.scheduler}"]
    if getattr(args, "workers", None) is not None:
        extra += ["cluster.engine=dask", f"cluster.workers={args.workers}"]
    return extra


_STAGE_HELP = {
    "collect": "stream the images through the network; one random spatial activation per image "
               "(+ class attribution) -> RUN/collect",
    "reduce": "kNN graph (faiss) + UMAP: a 2-D layout of the activations -> RUN/reduce",
    "grid": "aligned multi-level grids: per-cell mean activations, labels, examples (dask) -> RUN/grid",
    "render": "feature inversion: one icon per grid cell, many cells per batch -> RUN/render",
    "tile": "Deep Zoom tile pyramid and the web viewer -> RUN/tiles",
}


def _stage_list(text: str) -> list[str]:
    """``--stages``: comma-separated stage names, spaces allowed; empty is an error, not "all"."""
    names = [s.strip() for s in text.split(",")]
    if not any(names):
        raise argparse.ArgumentTypeError(f"no stage named; give some of {','.join(STAGES)} (or leave out --stages for all)")
    if "" in names:
        raise argparse.ArgumentTypeError(f"empty name in {text!r}; e.g. --stages collect,reduce")
    bad = [s for s in names if s not in STAGES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown stage {bad[0]!r}{_suggest(bad[0], STAGES)} "
                                         f"(stages: {', '.join(STAGES)})")
    return names


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="atlas", description="Activation atlases at scale: collect -> reduce -> grid -> render "
                                                "-> tile over one run directory, each stage resumable and shardable. "
                                                "Options go anywhere after the command; `atlas COMMAND --help` for one.")
    parser.add_argument("--version", action="version", version=f"atlas {__version__}",
                        help="print atlas's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    p = sub.add_parser("init", help="write a starting project: configs, SLURM scripts, README.md",
                       description="Write a starting project into DIR: pipelines/*.yaml (the built-in configs "
                                   f"{_builtin_names()}), scripts/slurm/ (submit.sh and one "
                                   "script per stage) and README.md. Existing files are not overwritten.")
    p.add_argument("dir", nargs="?", default=".", help="folder to write into, created if needed")
    p.add_argument("--force", action="store_true", help="overwrite files that already exist")

    p = sub.add_parser("layers", help="list a model's hookable layers: layout, grid (rows x cols x channels), output shape",
                       description="Load the model (never downloading: bundled weights, --weights or the torch hub "
                                   "cache) and list every layer with a spatial grid, one per line: its name (for "
                                   "model.layer), layout (nchw, nhwc or tokens), grid rows x cols x channels and "
                                   "output shape. --list-models lists the model names instead. With CONFIG: the "
                                   "layers that config collects (model.layers), each with its grid, its run "
                                   "directory and how far it got.")
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG",
                   help="a run config or a run's config.yaml: list the layers it collects instead of a model's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of CONFIG (repeatable)")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="model name as in model.name: a torchvision name, timm:<name>, or your own name with --factory")
    p.add_argument("--list-models", action="store_true",
                   help="list the model names that need no --factory (bundled, torchvision) and exit")
    p.add_argument("--weights", default=None,
                   help="weights file (a state_dict; the TorchScript file for torchscript; default: bundled, or "
                        "the torch hub cache)")
    p.add_argument("--input-size", type=_whole(1), default=None, metavar="PIXELS",
                   help="input side in pixels (default: the model's)")
    p.add_argument("--factory", default=None, metavar="PACKAGE.MODULE:FUNCTION",
                   help="a function of your own code returning the network (as model.factory; default: none)")
    p.add_argument("--layout", default="auto", choices=("auto", "nchw", "nhwc", "tokens"),
                   help="read every layer in this layout (as model.layout; default: probed)")
    p.add_argument("--prefix-tokens", type=_whole(0), default=None, metavar="N",
                   help="class/register tokens before the patch grid of token layers (as model.prefix_tokens; "
                        "default: probed)")

    p = sub.add_parser("run", help="run the stages in order, skipping finished work",
                       description="Run collect, reduce, grid, render and tile in order on CONFIG's run directory, "
                                   "skipping the work already finished: rerun the same command to resume. A run's "
                                   "own RUN/config.yaml resumes that run.")
    _add_config_args(p, shard=False)
    p.add_argument("--stages", default=None, type=_stage_list, metavar="LIST",
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all)")

    p = sub.add_parser("follow", help="several layers: where each layer's images land in the others -> RUN/follow",
                       description="For a run of several layers (model.layers), once every layer is tiled: write "
                                   "each layer's atlas coordinates for the viewer's follow overlay and measure, per "
                                   "pair of layers, how many of each image's follow.k nearest images on one layer's "
                                   "atlas stay among its nearest on the other's. `atlas run` runs it last.")
    _add_config_args(p, shard=True, layer=False)

    for name in STAGES:
        p = sub.add_parser(name, help=_STAGE_HELP[name], description=_STAGE_HELP[name])
        _add_config_args(p, shard=True)

    p = sub.add_parser("locate", help="where images land on a finished atlas: every position of the layer placed "
                                      "and binned -> RUN/locate/<image>/",
                       description="Run every position of the layer for each IMAGE (decoded as collect decodes), "
                                   "place it on the atlas as reduce places rows outside its fitted sample, and "
                                   "write per image located.json (atlas points and cells per grid level, top-5 "
                                   "classes), positions.npy, overlay.png (the image tinted by its cells' colours) "
                                   "and activation-grid.png (each position's icon), plus RUN/locate/index.json "
                                   "for the viewer's Located list. Images located before are kept; a file that "
                                   "does not decode is skipped and listed in RUN/locate/bad_inputs.tsv.")
    _add_config_args(p, shard=True)
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files, folders (every image in them) or demo://<size>/<i>; added to locate.images")

    p = sub.add_parser("units", help="the channels (or learned units) behind every cell: an icon, examples and a "
                                     "heatmap per unit, a dictionary per cell -> RUN/units/",
                       description="On a finished atlas: render one feature visualisation per unit of the layer "
                                   "(its channels, or with --basis NMF's neuron groups or a sparse autoencoder's "
                                   "features) with the render stage's renderer and measure its self-rank; crop the "
                                   "collected rows where each unit is strongest; list each cell's top units by "
                                   "share of its activation (and of its top class's attribution); write each "
                                   "unit's heatmap over the cells of every grid and, for images `atlas locate` "
                                   "placed, their semantic dictionary pictures. The viewer shows them in the click "
                                   "panel, and finds a unit by index in the search box (#c17, channel 17).")
    _add_config_args(p, shard=True)
    p.add_argument("--basis", default=None, metavar="SPEC",
                   help="channels, nmf:K or sae:K (sets units.basis; default: the config's, channels)")

    p = sub.add_parser("class-atlas", help="a class activation atlas: the rows supporting one class, or two to compare "
                                           "-> RUN/classes/<slug>",
                       description="Select the collected rows of the run CONFIG names whose attribution supports "
                                   "the class (classes.threshold, classes.top_k, classes.max_rows), lay them out "
                                   "on their own and grid, render and tile them into RUN/classes/<slug>/, a run "
                                   "directory of its own (resume, --shard and SLURM as for any run: "
                                   "`atlas render RUN/classes/<slug>/config.yaml --shard 0/4`). Two classes: one "
                                   "layout of both, each cell coloured by the class it supports more.")
    _add_config_args(p, shard=False)
    p.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME",
                   help="a class name, matched like the viewer's search (case-insensitive, part of a name; "
                        "#<index> for a class by its index); twice to compare two classes")

    p = sub.add_parser("patch-test", help="human-adversarial patches: how often a patch turns held-out CLASS_A images "
                                          "into CLASS_B, against a noise patch -> RUN/patch-test/<slug>/",
                       description="Paste a patch (an atlas icon, a dataset example crop or any image file) at each "
                                   "size and position onto held-out images the network classifies as CLASS_A (the "
                                   "demo images the run did not collect, or --images), and count how often the "
                                   "top-1 prediction becomes CLASS_B, against a uniform-noise patch of the same "
                                   "size at the same places. Writes table.md/.tsv, results.json and examples.png "
                                   "into RUN/patch-test/<slug>/; each test has its own folder, others are kept. "
                                   "The flags set the config's patch_test keys.")
    _add_config_args(p, shard=True)
    p.add_argument("--from", dest="from_class", default=None, metavar="CLASS_A",
                   help="images classified as this class get the patch (matched like the viewer's search: "
                        "case-insensitive, part of a name, #<index>; default: the config's patch_test.from_class)")
    p.add_argument("--to", dest="to_class", default=None, metavar="CLASS_B",
                   help="the class the patch should cause (default: the config's patch_test.to_class)")
    p.add_argument("--patch", default=None, metavar="PATCH",
                   help="cell:<grid>:<row>,<col> (that cell's icon), example:<grid>:<row>,<col>[:k] (its k-th "
                        "dataset example crop) or an image file (default: the config's patch_test.patch)")
    p.add_argument("--images", default=None, metavar="PATH",
                   help="held-out images: a folder, a .txt/.csv list or tar shards (default: demo images the run "
                        "did not collect)")
    p.add_argument("--sizes", default=None, metavar="LIST",
                   help="patch sides as fractions of the input side, e.g. 0.2,0.3,0.4 (default: the config's "
                        "patch_test.sizes, 0.2,0.3,0.4)")
    p.add_argument("--positions", default=None, metavar="LIST",
                   help="center, corners, top-left, top-right, bottom-left, bottom-right, random:N; e.g. "
                        "center,random:4 (default: the config's patch_test.positions, center,corners)")
    p.add_argument("--max-images", type=_whole(1), default=None, metavar="N",
                   help="test at most N images of CLASS_A (default: the config's patch_test.max_images, 50)")
    p.add_argument("--name", default=None, help="the test's folder name under RUN/patch-test/ (default: from the classes and the patch)")

    p = sub.add_parser("compare", help="two networks over the same images: one layout, both networks' icons, what "
                                       "changed per cell -> RUN_A/compare/<name>/",
                       description="Compare two finished runs of the same images (the same manifest; e.g. one config "
                                   "with another model.weights): RUN_A/compare/<name>/layout-a is A's layout with B's "
                                   "activations of the same rows, B's icons and per cell the change figures (coherence in "
                                   "each network, relation change, class shift, a rank by change); layout-b is the "
                                   "reverse. Each view is a run directory of its own (resume, --shard and SLURM as for "
                                   "any run); their atlases join RUN_A's atlas list (atlas serve RUN_A). With one "
                                   "argument, a view's config.yaml: its change figures only. docs/compare.md")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="RUN_A RUN_B: two run directories (or their config.yaml); or one view's config.yaml")
    p.add_argument("--name", dest="compare_name", default=None, metavar="NAME",
                   help="the comparison's folder under RUN_A/compare/ (default: the runs' folder names, A--B)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config key of both views, e.g. --set render.steps=32 or --set compare.top_classes=3 "
                        "(repeatable)")
    p.add_argument("--prepare", action="store_true",
                   help="write the comparison's folder and its views' config.yaml, run nothing (run the views' "
                        "stages elsewhere, e.g. scripts/slurm/submit.sh VIEW/config.yaml, then compare again)")
    p.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="with one view's config.yaml: run only shard I of N of its change figures, or `slurm`")

    p = sub.add_parser("serve", help="serve a run's atlases (RUN_DIR/tiles, its class atlases) on 127.0.0.1",
                       description="Serve the viewer of a finished run (RUN_DIR/tiles, its class atlases and located "
                                   "images; nothing else of the run) over HTTP until Ctrl-C, and print its URL. "
                                   "Loopback only unless --host says otherwise. RUN_DIR/classes/<slug> opens that "
                                   "class atlas.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (its tiles/ written by `atlas tile`), or its config.yaml")
    p.add_argument("--port", type=_port, default=8000, help="TCP port to listen on, 1 to 65535; 0 picks a free one")
    p.add_argument("--host", default="127.0.0.1",
                   help="address or host name to bind; 0.0.0.0 serves every network interface (default: "
                        "127.0.0.1, this machine only)")

    p = sub.add_parser("status", help="per stage: units done/total, failures with reasons, bad inputs",
                       description="Read a run directory without changing it and print, per stage, its state, "
                                   "units done of total, its quality numbers, the failures recorded (with their "
                                   "reasons and log files) and the inputs that did not decode.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory, or its config.yaml (or any config: the run its run_dir names)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")

    p.add_argument("--layer", default=None, metavar="NAME",
                   help="with model.layers: the status of that layer's atlas, RUN/layers/<name> (default: the run)")

    p = sub.add_parser("estimate", help="per stage: time, disk, peak memory and units of a run, from a short calibration",
                       description="Estimate what a run of CONFIG costs per stage (time, disk, peak memory, units of "
                                   "work; CPU- and GPU-hours and array sizes on a SLURM or dask config) and warn about "
                                   "settings that will not fit. It first times a few collect batches and render steps "
                                   "on this machine (--calibrate-seconds); reduce, grid and tile use the CPU figures "
                                   "of docs/benchmarks.md. Nothing is written.")
    _add_config_args(p, shard=False, engine=False, layer=False)
    p.add_argument("--images", type=_whole(1), default=None, metavar="N",
                   help="number of images (default: the source's: demo_count for the demo, a folder or list "
                        "scanned; tar shards need it)")
    p.add_argument("--calibrate-seconds", type=_whole(1), default=30, metavar="S",
                   help="about how long the calibration runs, model loading not counted")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip the calibration: use the CPU figures of docs/benchmarks.md")
    p.add_argument("--json", action="store_true", help="print JSON for scripts (with total_seconds) instead of text")

    p = sub.add_parser("slurm-plan", help="per stage: todo/done and its sbatch options (used by scripts/slurm/submit.sh)",
                       description="Print one tab-separated line per stage: its name, todo or done, then the "
                                   "sbatch options its SLURM job needs (array size, time, CPUs, memory, GPUs) from "
                                   "cluster.slurm. scripts/slurm/submit.sh reads it to submit the stages still to "
                                   "do as dependent jobs.")
    _add_config_args(p, shard=False, engine=False)
    return parser


def _json_safe(value: Any) -> Any:
    """NaN and infinities (an empty grid level's purity) as null: strict JSON for scripts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _dispatch(args: argparse.Namespace) -> int:
    from . import api
    from .progress import plural

    if args.command == "init":
        written = api.init_project(args.dir, force=args.force)
        print(f"atlas: wrote {plural(len(written), 'file')} into {args.dir}:")
        for path in written:
            print(f"  {path}")
        print(f"Next: read {os.path.join(args.dir, 'README.md')}, or run `atlas run demo`")
        return 0
    if args.command == "layers" and args.list_models:
        print("\n".join(api.model_names()))
        return 0
    if args.command == "layers" and args.config is not None:
        print(api.format_config_layers(api.config_layers(api.load(args.config, args.overrides))))
        return 0
    if args.command == "layers":
        for spec in api.layers(args.model, weights=args.weights, input_size=args.input_size, layout=args.layout,
                               prefix_tokens=args.prefix_tokens, factory=args.factory):
            print(api.format_layer(spec))
        return 0
    if args.command == "serve":
        from .serve import serve

        try:
            serve(api.resolve_run(args.run_dir), host=args.host, port=args.port)
        except Terminated:  # `kill`, or the job ended: a server just stops
            pass
        return 0
    if args.command == "status":
        report = api.status(args.run_dir, layer=args.layer)
        print(json.dumps(_json_safe(report), indent=2, allow_nan=False) if args.json else api.format_status(report))
        return 0
    if args.command == "patch-test":
        return _patch_test(args)
    if args.command == "compare":
        return _compare(args)
    if args.command == "units" and args.basis is not None:
        args.overrides = [*args.overrides, f"units.basis={args.basis}"]
    cfg = api.load(args.config, args.overrides + _engine_overrides(args))
    if getattr(args, "layer", None) is not None and args.command != "run":
        cfg = api.for_layer(cfg, args.layer)
    if args.command == "estimate":
        from .estimate import format_estimate

        result = api.estimate(cfg, args.images, calibrate=not args.no_calibrate,
                              calibrate_seconds=args.calibrate_seconds,
                              log=lambda msg: print(f"atlas: calibration: {msg}", file=sys.stderr))
        print(json.dumps(_json_safe(result.as_json()), indent=2, allow_nan=False) if args.json
              else format_estimate(result))
        return 0
    if args.command == "slurm-plan":
        for stage, finished, opts in api.slurm_plan(cfg):
            print("\t".join([stage, "done" if finished else "todo", *opts]))
        return 0
    if args.command == "run":
        api.run(cfg, stages=args.stages, layer=args.layer)
        return 0
    if args.command == "locate":
        _print_located(api.locate(cfg, args.images, shard=args.shard, every_layer=args.layer is None), cfg.run_dir)
        return 0
    if args.command == "units":
        _print_units(api.units(cfg, shard=args.shard), cfg.run_dir)
        return 0
    if args.command == "class-atlas":
        sub = api.class_atlas(cfg, args.classes)
        tiles = f"{os.path.relpath(sub.run_dir, cfg.run_dir)}/tiles/"
        print(f"atlas: the class atlas is ready in {sub.run_dir}. Open it with\n  atlas serve {cfg.run_dir}\n"
              f"and browse http://127.0.0.1:8000/{tiles} (or open {Path(sub.run_dir, 'tiles', 'index.html').resolve()})")
        return 0
    api.run_stage(args.command, cfg, shard=args.shard)
    return 0


def _list_flag(text: str, number: bool) -> str:
    """``--sizes 0.2,0.3`` / ``--positions center,random:4`` as a YAML list for ``--set``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    return json.dumps([float(t) if number and t.replace(".", "", 1).isdigit() else t for t in items])


def _compare(args: argparse.Namespace) -> int:
    """``atlas compare RUN_A RUN_B`` (two views, their stages and figures), or one view's figures."""
    from . import api

    if len(args.runs) > 2:
        raise ValueError(f"atlas compare takes two runs (or one view's config.yaml), got {len(args.runs)}: "
                         "`atlas compare RUN_A RUN_B`")
    if len(args.runs) == 1:
        if args.prepare or args.compare_name:
            raise ValueError("--prepare and --name go with two runs: `atlas compare RUN_A RUN_B --name NAME`")
        cfg = api.load(args.runs[0], args.overrides)
        _print_changes(cfg.run_dir, api.compare_view(cfg, shard=args.shard))
        return 0
    if args.shard is not None:
        raise ValueError("--shard goes with one view's config.yaml (`atlas compare VIEW/config.yaml --shard 0/4`); "
                         "with two runs, shard the views' stages: `atlas render VIEW/config.yaml --shard 0/4`")
    doc = api.compare(args.runs[0], args.runs[1], name=args.compare_name, overrides=args.overrides,
                      prepare_only=args.prepare)
    folder = Path(doc["folder"])
    if args.prepare:
        print(f"atlas: the comparison's views are ready to run in {folder}:")
        for view in doc["views"].values():
            print(f"  atlas run {view['config']}")
        again = f"atlas compare {args.runs[0]} {args.runs[1]}" + (f" --name {args.compare_name}" if args.compare_name else "")
        print(f"then `{again}` again for the change figures.")
        return 0
    for name, view in doc["views"].items():
        _print_changes(str(folder / name), view["summary"] or {})
    root = folder.parent.parent
    print(f"atlas: open them with\n  atlas serve {root}\nand pick them in the viewer's atlas list "
          f"(http://127.0.0.1:8000/{folder.relative_to(root).as_posix()}/layout-a/tiles/)")
    return 0


def _print_changes(view: str, summary: dict[str, Any]) -> None:
    """One view's change figures: the finest grid's mean change and the cells changed most."""
    if not summary:
        print(f"atlas: {view}: the change figures are not finished yet (rerun to resume)")
        return
    s = summary["sizes"][-1]
    level = summary["levels"][str(s)]
    lay, other = summary[summary["layout"]], summary[summary["network"]]
    print(f"atlas: {view}: {lay}'s layout, {other}'s activations ({summary['pairing']} pairing); on the {s} x {s} grid "
          f"{level['cells']} cells, mean change {level['mean']['change']}, coherence {level['mean']['coherence_layout']} "
          f"-> {level['mean']['coherence_network']}, class shift {level['mean']['class_shift']}")
    changed = ", ".join(f"({r}, {c})" for r, c in level["changed"][:8])
    print(f"  changed most: {changed or '-'}; figures in {view}/changes/")


def _patch_test(args: argparse.Namespace) -> int:
    """``atlas patch-test``: the flags become ``patch_test`` overrides (so the test's config.yaml repeats it)."""
    from . import api
    from .progress import plural

    flags = {"from_class": args.from_class, "to_class": args.to_class, "patch": args.patch, "images": args.images,
             "name": args.name}
    extra = [f"patch_test.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    if args.sizes is not None:
        extra.append(f"patch_test.sizes={_list_flag(args.sizes, number=True)}")
    if args.positions is not None:
        extra.append(f"patch_test.positions={_list_flag(args.positions, number=False)}")
    if args.max_images is not None:
        extra.append(f"patch_test.max_images={args.max_images}")
    cfg = api.for_layer(api.load(args.config, args.overrides + extra + _engine_overrides(args)), args.layer)
    res = api.patch_test(cfg, shard=args.shard)
    print(f"atlas: {res['headline']}")
    print(f"{plural(res['images']['tested'], res['from']['name'] + ' image')} ({res['images']['source']}); patch: "
          f"{res['patch']['what']}; shares of trials:\n")
    print(res["table"])
    print(f"atlas: results in {res['folder']}/ ({', '.join(['results.json', *res['files']])})")
    return 0


def _print_units(doc: dict[str, Any], run_dir: str) -> None:
    """Where ``atlas units``'s outputs are, and the icons' self-rank."""
    if not doc.get("n_units"):
        print(f"atlas: units of {run_dir} not finished yet (other shards, or rerun to resume): {doc['output']}/")
        return
    sr = doc.get("self_rank") or {}
    print(f"atlas: {doc['n_units']} {doc['title']}s of layer {doc['layer']} ({doc['basis']}), {doc['n_icons']} icons in "
          f"{doc['output']}/")
    if sr.get("n"):
        print(f"self-rank: median {sr['median']:g} of {sr['units']} (chance {sr['chance_median']:g}); ranked first: "
              f"{100 * sr['first']:.0f} % of the icons")
    print(f"See them on the atlas: atlas serve {run_dir}, click a cell (its top {doc['title']}s), or search #c17.")


def _print_located(doc: dict[str, Any], run_dir: str) -> None:
    """Where ``atlas locate``'s outputs are: one line per image asked for."""
    from .progress import plural

    out, asked = doc["output"], set(doc["asked"])
    mine = [d for d in doc["images"] if d["unit"] in asked]
    bad = [d for d in doc["skipped"] if d["unit"] in asked]
    print(f"atlas: located {plural(len(mine), 'image')} on the atlas of {run_dir} (in {out}/):")
    for d in mine:
        print(f"  {d['name']}: {out}/{d['unit']}/ (overlay.png, activation-grid.png, located.json); "
              f"top class {d['top_class'] or '-'}")
    if bad:
        print(f"skipped {plural(len(bad), 'image')} that {'does' if len(bad) == 1 else 'do'} not decode (listed in {out}/bad_inputs.tsv):")
        for d in bad:
            print(f"  {d['source']}: {d['reason']}")
    if len(asked) > len(mine) + len(bad):
        print(f"{len(doc['done'])} of {plural(len(asked), 'image')} done; the shard that finishes the last one writes "
              f"{out}/index.json (rerun to resume)")
    print(f"See them on the atlas: atlas serve {run_dir}, then pick one in the viewer's Located list.")


class Terminated(SystemExit):
    """SIGTERM arrived (SLURM walltime, preemption, scancel): unwind so the failure is recorded."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(143)


def _message(e: BaseException) -> str:
    """The error's text; an OSError raised with just a message (no errno) as that message on one
    line, not ``[Errno None] None: 'PATH'`` (``filename`` may have been set on the way up)."""
    if isinstance(e, OSError) and e.errno is None:
        text = " ".join(str(a) for a in e.args if a is not None) or str(e.filename or type(e).__name__)
        return " ".join(text.split())
    return str(e)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (``atlas ... | head``)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def _close_bars() -> None:
    """Clear any progress bar still drawn, so nothing is redrawn under the last message."""
    from .progress import close_bars

    close_bars()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    if words and words[0].startswith("-") and words[0] not in ("-h", "--help", "--version"):
        parser.error(_unrecognized(parser, words[:1]))  # before "COMMAND is required": say what was mistyped
    args = parser.parse_args(words)
    from . import api  # after parsing: --help, --version and argument errors answer without it
    from .store import WRITE_ERRNOS, explain_oserror

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except Terminated:
        _close_bars()
        print("atlas: terminated by SIGTERM (walltime, preemption or scancel?); rerun the same command to resume",
              file=sys.stderr)
        return 143
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        _quiet_stdout()  # the reader (head, less) has what it wanted: end quietly, like other tools
        return 128 + signal.SIGPIPE
    except api.user_errors() as e:
        print(f"atlas: error: {_as_flags(_message(e), args)}", file=sys.stderr)
        return 2
    except OSError as e:  # a write outside the store's own helpers, e.g. a Zarr chunk or a log file
        if e.errno is None:  # raised with just a message (a missing file of the installation, ...)
            print(f"atlas: error: {_message(e)}", file=sys.stderr)
            return 2
        if e.errno not in WRITE_ERRNOS:
            raise
        print(f"atlas: error: {explain_oserror(e.filename or 'the run directory', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_bars()
        print("atlas: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
