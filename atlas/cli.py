"""The `atlas` command: parse arguments, load the config, call a plain function. Nothing else."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import api
from .stages import STAGES

__all__ = ["main", "build_parser"]


def _add_config_args(p: argparse.ArgumentParser, shard: bool) -> None:
    p.add_argument("config", help="YAML run config, e.g. pipelines/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set images.path=/data/imgs (repeatable)")
    if shard:
        p.add_argument("--shard", default=None, metavar="I/N",
                       help="run only shard I of N (0-based); units are split round robin")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atlas", description="Activation atlases at scale.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("layers", help="list a model's hookable layers with their output shapes")
    p.add_argument("--model", default="efficientnet_lite0", help="model name (default: efficientnet_lite0)")
    p.add_argument("--weights", default=None, help="weights file (torchvision models, torchscript)")
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the model's)")

    p = sub.add_parser("run", help="run the stages in order, skipping finished work")
    _add_config_args(p, shard=False)
    p.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)}")

    for name in STAGES:
        p = sub.add_parser(name, help=f"run the {name} stage")
        _add_config_args(p, shard=True)

    p = sub.add_parser("serve", help="serve RUN_DIR/tiles (the atlas viewer) on 127.0.0.1")
    p.add_argument("run_dir")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")

    p = sub.add_parser("status", help="per stage: done / partial / not started, bad inputs")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "layers":
        for name, shape in api.layers(args.model, weights=args.weights, input_size=args.input_size):
            print(f"{name:40s} {'x'.join(map(str, shape))}")
        return 0
    if args.command == "serve":
        from .serve import serve

        serve(args.run_dir, host=args.host, port=args.port)
        return 0
    if args.command == "status":
        report = api.status(args.run_dir)
        print(json.dumps(report, indent=2) if args.json else api.format_status(report))
        return 0
    cfg = api.load(args.config, args.overrides)
    if args.command == "run":
        stages = args.stages.split(",") if args.stages else None
        api.run(cfg, stages=stages)
        return 0
    api.run_stage(args.command, cfg, shard=args.shard)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except api.user_errors() as e:
        print(f"atlas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atlas: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
