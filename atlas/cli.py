"""The `atlas` command: parse arguments, load the config, call a plain function. Nothing else."""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import api
from .stages import STAGES
from .store import WRITE_ERRNOS, explain_oserror

__all__ = ["main", "build_parser"]


def _add_config_args(p: argparse.ArgumentParser, shard: bool, engine: bool = True) -> None:
    p.add_argument("config", help="YAML run config, e.g. pipelines/demo.yaml, or a built-in name: "
                                  + ", ".join(api.builtin_configs()))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set images.path=/data/imgs (repeatable)")
    if shard:
        p.add_argument("--shard", default=None, metavar="I/N",
                       help="run only shard I of N (0-based; units are split round robin), or `slurm`: "
                            "this array task's shard from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT")
    if engine:
        p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on this dask scheduler (sets cluster.engine=dask, cluster.scheduler)")
        p.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run on a dask LocalCluster of N worker processes (sets cluster.engine=dask)")


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
        raise argparse.ArgumentTypeError(f"unknown stage {bad[0]!r}; stages are {', '.join(STAGES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atlas", description="Activation atlases at scale.")
    parser.add_argument("--version", action="version", version=f"atlas {api.version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="write a starting project: configs, SLURM scripts, README.md",
                       description="Write a starting project into DIR: pipelines/*.yaml (the built-in configs "
                                   f"{', '.join(api.builtin_configs())}), scripts/slurm/ (submit.sh and one "
                                   "script per stage) and README.md. Existing files are not overwritten.")
    p.add_argument("dir", nargs="?", default=".", help="folder to write into, created if needed (default: .)")
    p.add_argument("--force", action="store_true", help="overwrite files that already exist")

    p = sub.add_parser("layers", help="list a model's hookable layers: layout, grid (rows x cols x channels), output shape")
    p.add_argument("--model", default="efficientnet_lite0",
                   help="model name as in model.name: a torchvision name, timm:<name>, or your own name with --factory "
                        "(default: efficientnet_lite0)")
    p.add_argument("--weights", default=None, help="weights file (a state_dict; the TorchScript file for torchscript)")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the model's)")
    p.add_argument("--factory", default=None, metavar="PACKAGE.MODULE:FUNCTION",
                   help="a function of your own code returning the network (as model.factory)")
    p.add_argument("--layout", default="auto", choices=("auto", "nchw", "nhwc", "tokens"),
                   help="read every layer in this layout (as model.layout; default: probed)")
    p.add_argument("--prefix-tokens", type=int, default=None, metavar="N",
                   help="class/register tokens before the patch grid of token layers (as model.prefix_tokens)")

    p = sub.add_parser("run", help="run the stages in order, skipping finished work")
    _add_config_args(p, shard=False)
    p.add_argument("--stages", default=None, type=_stage_list, metavar="LIST",
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all)")

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
                        "case-insensitive, part of a name, #<index>)")
    p.add_argument("--to", dest="to_class", default=None, metavar="CLASS_B", help="the class the patch should cause")
    p.add_argument("--patch", default=None, metavar="PATCH",
                   help="cell:<grid>:<row>,<col> (that cell's icon), example:<grid>:<row>,<col>[:k] (its k-th "
                        "dataset example crop) or an image file")
    p.add_argument("--images", default=None, metavar="PATH",
                   help="held-out images: a folder, a .txt/.csv list or tar shards (default: demo images the run "
                        "did not collect)")
    p.add_argument("--sizes", default=None, metavar="LIST", help="patch sides as fractions of the input side, e.g. 0.2,0.3,0.4")
    p.add_argument("--positions", default=None, metavar="LIST",
                   help="center, corners, top-left, top-right, bottom-left, bottom-right, random:N; e.g. center,random:4")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="test at most N images of CLASS_A")
    p.add_argument("--name", default=None, help="the test's folder name under RUN/patch-test/ (default: from the classes and the patch)")

    p = sub.add_parser("serve", help="serve a run's atlases (RUN_DIR/tiles, its class atlases) on 127.0.0.1")
    p.add_argument("run_dir")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")

    p = sub.add_parser("status", help="per stage: units done/total, failures with reasons, bad inputs")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = sub.add_parser("slurm-plan", help="per stage: todo/done and its sbatch options (used by scripts/slurm/submit.sh)")
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
    if args.command == "init":
        written = api.init_project(args.dir, force=args.force)
        print(f"atlas: wrote {len(written)} files into {args.dir}:")
        for path in written:
            print(f"  {path}")
        print(f"Next: read {os.path.join(args.dir, 'README.md')}, or run `atlas run demo`")
        return 0
    if args.command == "layers":
        for spec in api.layers(args.model, weights=args.weights, input_size=args.input_size, layout=args.layout,
                               prefix_tokens=args.prefix_tokens, factory=args.factory):
            print(api.format_layer(spec))
        return 0
    if args.command == "serve":
        from .serve import serve

        try:
            serve(args.run_dir, host=args.host, port=args.port)
        except Terminated:  # `kill`, or the job ended: a server just stops
            pass
        return 0
    if args.command == "status":
        report = api.status(args.run_dir)
        print(json.dumps(_json_safe(report), indent=2, allow_nan=False) if args.json else api.format_status(report))
        return 0
    if args.command == "patch-test":
        return _patch_test(args)
    cfg = api.load(args.config, args.overrides + _engine_overrides(args))
    if args.command == "slurm-plan":
        for stage, finished, opts in api.slurm_plan(cfg):
            print("\t".join([stage, "done" if finished else "todo", *opts]))
        return 0
    if args.command == "run":
        api.run(cfg, stages=args.stages)
        return 0
    if args.command == "locate":
        _print_located(api.locate(cfg, args.images, shard=args.shard), cfg.run_dir)
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


def _patch_test(args: argparse.Namespace) -> int:
    """``atlas patch-test``: the flags become ``patch_test`` overrides (so the test's config.yaml repeats it)."""
    flags = {"from_class": args.from_class, "to_class": args.to_class, "patch": args.patch, "images": args.images,
             "name": args.name}
    extra = [f"patch_test.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    if args.sizes is not None:
        extra.append(f"patch_test.sizes={_list_flag(args.sizes, number=True)}")
    if args.positions is not None:
        extra.append(f"patch_test.positions={_list_flag(args.positions, number=False)}")
    if args.max_images is not None:
        extra.append(f"patch_test.max_images={args.max_images}")
    cfg = api.load(args.config, args.overrides + extra + _engine_overrides(args))
    res = api.patch_test(cfg, shard=args.shard)
    print(f"atlas: {res['headline']}")
    print(f"{res['images']['tested']} {res['from']['name']} images ({res['images']['source']}); patch: "
          f"{res['patch']['what']}; shares of trials:\n")
    print(res["table"])
    print(f"atlas: results in {res['folder']}/ ({', '.join(['results.json', *res['files']])})")
    return 0


def _print_located(doc: dict[str, Any], run_dir: str) -> None:
    """Where ``atlas locate``'s outputs are: one line per image asked for."""
    out, asked = doc["output"], set(doc["asked"])
    mine = [d for d in doc["images"] if d["unit"] in asked]
    bad = [d for d in doc["skipped"] if d["unit"] in asked]
    print(f"atlas: located {len(mine)} image(s) on the atlas of {run_dir} (in {out}/):")
    for d in mine:
        print(f"  {d['name']}: {out}/{d['unit']}/ (overlay.png, activation-grid.png, located.json); "
              f"top class {d['top_class'] or '-'}")
    if bad:
        print(f"skipped {len(bad)} image(s) that do not decode (listed in {out}/bad_inputs.tsv):")
        for d in bad:
            print(f"  {d['source']}: {d['reason']}")
    if len(asked) > len(mine) + len(bad):
        print(f"{len(doc['done'])} of {len(asked)} image(s) done; the shard that finishes the last one writes "
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except Terminated:
        print("atlas: terminated by SIGTERM (walltime, preemption or scancel?); rerun the same command to resume",
              file=sys.stderr)
        return 143
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        _quiet_stdout()  # the reader (head, less) has what it wanted: end quietly, like other tools
        return 128 + signal.SIGPIPE
    except api.user_errors() as e:
        print(f"atlas: error: {_message(e)}", file=sys.stderr)
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
        print("atlas: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
