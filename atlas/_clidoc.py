"""``docs/cli.md``, generated from the argument parser: ``python -m atlas._clidoc > docs/cli.md``."""

from __future__ import annotations

import argparse
import os

from .cli import build_parser

__all__ = ["cli_markdown"]

_INTRO = """# CLI reference

Generated from the argument parser in `atlas/cli.py` by `python -m atlas._clidoc > docs/cli.md`.
Every command that takes a CONFIG also takes `--set key=value` overrides (any key of
`docs/configuration.md`). A CONFIG is a YAML file or, when no such file exists, a built-in
name (`demo`, `folder`, `imagenet-lite0`, `imagenet-lite0-hf`, `imagenet-googlenet-mixed4c`: the configs that
`atlas init` writes into `pipelines/`). Options go anywhere after the command, spelled out in
full (`--stage` is not `--stages`; a misspelled command, option or built-in name gets a "did
you mean"). `--help`, `--version` and argument errors answer at once (no torch import). Exit status: 0 done, 2 a problem to fix (the message
says which and how, on one line; no traceback), 130 interrupted, 143 terminated by SIGTERM;
rerun to resume (`atlas serve` stops with 0), 141 the reader of the output went away
(`atlas layers | head`).
"""


def cli_markdown(width: int = 100) -> str:
    """Every subcommand's ``--help``, in parser order, as Markdown."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parts = [_INTRO, "```text", parser.format_help().rstrip(), "```"]
        for name, p in sub.choices.items():
            parts += ["", f"## `atlas {name}`", "", "```text", p.format_help().rstrip(), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


if __name__ == "__main__":  # pragma: no cover
    print(cli_markdown(), end="")
