"""The `atlas` command as a newcomer meets it: one table of command lines, each run as a real
subprocess from a scratch folder, with its exit status and its one line of error.

Every row checks: the exit status; stderr, less the usage block argparse prints before its own
errors (which must be the subcommand's usage when ``usage`` is given), is exactly one line and
matches ``line``; no traceback; and the scratch folder holds nothing new (a mistake starts no run).

Adding a case is one ``Case(...)`` line. Command lines are split like a shell's (``shlex``) after
filling in these places (files made fresh for each row):

- ``{run}``: a run directory before any unit (just its ``config.yaml``);
- ``{site}``: a run with a viewer (``tiles/index.html``) to serve;
- ``{bad_yaml}``, ``{unknown_key}``, ``{wrong_type}``: configs with those mistakes;
- ``{folder}``: a folder holding a YAML file (not a config, not a run);
- ``{busy}``: a TCP port on 127.0.0.1 another socket listens on;
- ``{whole}``: a copy of the session's whole tiny atlas (``whole_run``; made only for rows that name it).

The in-process tests of the same messages (their exact wording) are in tests/test_cli.py:
``test_stages_empty_or_unknown_is_an_error``, ``test_a_folder_is_not_a_config``,
``test_status_of_a_file_or_a_folder_that_is_not_a_run``, ``test_other_oserrors_without_errno_are_one_line``.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from atlas.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


class Case(NamedTuple):
    argv: str  # after `atlas`, split like a shell's, with the {places} filled in
    code: int  # the exit status
    line: str  # a regex the one line of stderr must match (re.search)
    usage: str | None = None  # exit 2 from the parser: the usage shown is this command's, e.g. "atlas locate"
    max_len: int = 400  # the line is short enough to read
    unrecorded: str | None = None  # a run's failure records that must stay absent: a mistake is not a failure


CASES = [
    # point 1: options anywhere, the subcommand's own usage, no abbreviations, did you mean
    Case("stauts", 2, r"^atlas: error: unknown command 'stauts'; did you mean status\? \(commands: init, layers, ",
         usage="atlas"),
    Case("status {run} --jsn", 2, r"^atlas status: error: unrecognized option --jsn; did you mean --json\?$",
         usage="atlas status"),
    Case("run demo --stage collect", 2, r"unrecognized option --stage; did you mean --stages\?$", usage="atlas run"),
    Case("run demo --stages colect", 2, r"argument --stages: unknown stage 'colect'; did you mean collect\?",
         usage="atlas run"),
    Case("run dmeo", 2, r"config file dmeo does not exist; did you mean demo\?.*built-in name \(demo, demo-layers, folder, "
                        r"imagenet-googlenet-mixed4c, imagenet-lite0, imagenet-lite0-hf\)$"),
    Case("locate {run} --set locate.level=8 cat.png --bogus", 2,
         r"^atlas locate: error: unrecognized option --bogus \(atlas locate takes --help, --layer, --scheduler, --set, ",
         usage="atlas locate"),
    Case("locate {run}/config.yaml --set locate.level=8 cat.png", 2, r"^atlas: error: no such image or folder: .*cat\.png"),
    Case("status {run} extra", 2, r"unrecognized argument 'extra' \(see atlas status --help\)$", usage="atlas status"),
    Case("status", 2, r"^atlas status: error: the following arguments are required: RUN_DIR$", usage="atlas status"),
    Case("", 2, r"^atlas: error: the following arguments are required: COMMAND$", usage="atlas"),
    Case("--versoin", 2, r"^atlas: error: unrecognized option --versoin; did you mean --version\?$", usage="atlas"),
    # point 3: no traceback from bad arguments; ports and hosts checked; hints name the flag typed
    Case("serve {site} --port 7655000", 2, r"argument --port: 7655000 is not a TCP port: give 1 to 65535",
         usage="atlas serve"),
    Case("serve {site} --port http", 2, r"argument --port: expects a port number, got 'http'", usage="atlas serve"),
    Case("serve {site} --host 999.1.1.1", 2, r"^atlas: error: --host 999\.1\.1\.1 is neither an IP address nor a host "
                                             r"name this machine resolves"),
    Case("serve {site} --host 'no such host'", 2, r"^atlas: error: --host no such host is neither"),
    Case("serve {site} --host 192.0.2.1", 2, r"^atlas: error: cannot listen on 192\.0\.2\.1:8000: .*; --host must be "
                                             r"an address of this machine"),
    Case("serve {site} --port {busy}", 2, r"^atlas: error: cannot listen on 127\.0\.0\.1:\d+: port \d+ is in use; "
                                          r"choose another --port"),
    Case("run demo --workers -2", 2, r"argument --workers: must be at least 1, got -2$", usage="atlas run"),
    Case("run demo --workers two", 2, r"argument --workers: expects a whole number, got 'two'$", usage="atlas run"),
    Case("run demo --scheduler ''", 2, r"argument --scheduler: is empty", usage="atlas run"),
    Case("patch-test demo --max-images 0", 2, r"argument --max-images: must be at least 1, got 0$",
         usage="atlas patch-test"),
    Case("patch-test demo --sizes 0.2,2", 2, r"^atlas: error: --sizes item 2 must be <= 1, got 2\.0$"),
    Case("patch-test demo --name 'a b'", 2, r"^atlas: error: --name must be a folder name"),
    Case("grid demo --layer blocks.9", 2, r"^atlas: error: --layer blocks\.9: this run's layers are blocks\.5 "
                                          r"\(model\.layers\); did you mean blocks\.5\?$"),
    Case("follow demo --set run_dir={run}", 2, r"^atlas: error: `follow` needs a finished `tile`|`follow` compares the "
                                                r"layers of a run of several layers"),
    Case("layers --input-size 0", 2, r"argument --input-size: must be at least 1, got 0$", usage="atlas layers"),
    Case("layers --model nosuchnet", 2, r"^atlas: error: unknown model `nosuchnet`; .*--model .*"
                                        r"`atlas layers --list-models`.*--factory", max_len=300),
    # point 7: one-line YAML errors naming the file and the line
    Case("run {bad_yaml}", 2, r"^atlas: error: config file .*bad\.yaml is not valid YAML at line 3, column 10: "
                              r"mapping values are not allowed here$"),
    # handled before this table (see the module docstring): unknown keys, wrong types, bad shards, missing files
    Case("run {unknown_key}", 2, r"^atlas: error: unknown config key `images\.pth`; allowed keys in images: "),
    Case("run demo --set images.pth=x", 2, r"^atlas: error: unknown config key `images\.pth`"),
    Case("run {wrong_type}", 2, r"^atlas: error: config key `collect\.batch_size` must be an integer, got 'abc'$"),
    Case("run demo --set collect.batch_size=abc", 2, r"config key `collect\.batch_size` must be an integer"),
    Case("run demo --set images.demo_count", 2, r"--set expects key=value"),
    Case("collect demo --shard 3/2", 2, r"argument --shard: expects I/N with 0 <= I < N, such as 0/4, or slurm; "
                                        r"got '3/2'$", usage="atlas collect"),
    Case("locate {run} cat.png --shard x", 2, r"argument --shard: expects I/N .* got 'x'$", usage="atlas locate"),
    Case("run nosuch.yaml", 2, r"^atlas: error: config file nosuch\.yaml does not exist; give a YAML file"),
    Case("run {folder}", 2, r"is a folder, not a config file.*it holds mine\.yaml", max_len=600),
    Case("status nowhere", 2, r"^atlas: error: run directory nowhere does not exist$"),
    Case("serve nowhere", 2, r"^atlas: error: run directory nowhere does not exist$"),
    Case("init {run}/config.yaml", 2, r"is a file: `atlas init` needs a folder"),
    # point 2 and 5: every command takes RUN or RUN/config.yaml; a mistake found before any work is
    # refused in one line and leaves no failure record
    Case("collect demo --set run_dir={tmp}/new --set images.kind=auto --set images.path={tmp}/nope", 2,
         r"images\.path.*does not exist", unrecorded="{tmp}/new/state/collect/failed"),
    Case("reduce demo --set run_dir={tmp}/new", 2, r"needs a finished `collect`",
         unrecorded="{tmp}/new/state/reduce/failed"),
    Case("patch-test {whole} --from 'no such class' --to '#1' --patch cell:8:0,0", 2, r"--from",
         unrecorded="{whole}/state/patch-test/failed"),
    Case("run {tmp}", 2, r"not a config file nor a run directory"),
    Case("status {whole}/manifest.tsv", 2, r"is a file, not a run directory"),
    Case("estimate", 2, r"^atlas estimate: error: the following arguments are required: CONFIG$", usage="atlas estimate"),
    Case("estimate demo --images 0", 2, r"argument --images: must be at least 1, got 0$", usage="atlas estimate"),
    Case("estimate demo --images many", 2, r"argument --images: expects a whole number, got 'many'$",
         usage="atlas estimate"),
    Case("estimate demo --calibrate-second 5", 2, r"unrecognized option --calibrate-second; did you mean "
                                                  r"--calibrate-seconds\?$", usage="atlas estimate"),
    Case("estimate dmeo --no-calibrate", 2, r"config file dmeo does not exist; did you mean demo\?"),
]


@pytest.fixture
def places(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The files and folders the rows name, in a scratch folder that is also the rows' current folder."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run_dir: elsewhere\nprovenance: {atlas: '0.0'}\n")
    site = tmp_path / "site"
    (site / "tiles").mkdir(parents=True)
    (site / "config.yaml").write_text((run / "config.yaml").read_text())
    (site / "tiles" / "index.html").write_text("<!doctype html>")
    (tmp_path / "bad.yaml").write_text("run_dir: r\nimages:\n  path: a: b\n")
    (tmp_path / "unknown.yaml").write_text("run_dir: r\nimages:\n  pth: /data\n")
    (tmp_path / "wrong.yaml").write_text("run_dir: r\ncollect:\n  batch_size: abc\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "mine.yaml").write_text("run_dir: r\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield {"tmp": str(tmp_path), "run": str(run), "site": str(site), "bad_yaml": str(tmp_path / "bad.yaml"),
               "unknown_key": str(tmp_path / "unknown.yaml"), "wrong_type": str(tmp_path / "wrong.yaml"),
               "folder": str(tmp_path / "folder"), "busy": str(busy.getsockname()[1])}


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "ATLAS_PROGRESS": "0"}
    env.pop("SLURM_ARRAY_TASK_ID", None)
    return env


def _atlas(argv: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atlas", *argv], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=300)


def _error_line(stderr: str, usage: str | None) -> str:
    """stderr's one line, after the usage block when ``usage`` names the command whose usage it must be."""
    lines = stderr.strip().splitlines()
    if usage is not None:
        assert lines and lines[0].startswith(f"usage: {usage} "), stderr
        lines = lines[1:]
        while lines and lines[0].startswith(" "):  # the usage's continuation lines
            lines = lines[1:]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.argv or "(nothing)" for c in CASES])
def test_command_line(case: Case, places: dict[str, str], request: pytest.FixtureRequest) -> None:
    if "{whole}" in case.argv:
        from tests.stages.contract import copy_run

        places["whole"] = str(copy_run(request.getfixturevalue("whole_run"), Path(places["tmp"]) / "whole"))
    before = sorted(os.listdir(places["tmp"]))
    proc = _atlas(shlex.split(case.argv.format(**places)), cwd=places["tmp"])
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == case.code, f"exit {proc.returncode}, expected {case.code}:\n{proc.stderr}"
    line = _error_line(proc.stderr, case.usage)
    assert re.search(case.line, line), f"{case.line!r} does not match:\n{line}"
    assert len(line) <= case.max_len, f"{len(line)} characters: {line}"
    assert sorted(os.listdir(places["tmp"])) == before, "the command left something in the current folder"
    if case.unrecorded is not None:
        assert not Path(case.unrecorded.format(**places)).exists(), "a refusal was recorded as a failure"


# --------------------------------------------------------------------------- the parser itself


def test_options_anywhere_among_the_arguments() -> None:
    args = build_parser().parse_args(["locate", "RUN/config.yaml", "--set", "locate.level=8", "cat.png", "--shard",
                                      "0/2", "dog.png"])
    assert (args.config, args.images, args.overrides, args.shard) == ("RUN/config.yaml", ["cat.png", "dog.png"],
                                                                      ["locate.level=8"], "0/2")
    args = build_parser().parse_args(["class-atlas", "--class", "cat", "demo", "--set", "seed=1", "--class", "dog"])
    assert (args.config, args.classes, args.overrides) == ("demo", ["cat", "dog"], ["seed=1"])


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_and_option_has_help_and_shows_its_default() -> None:
    for name, p in _commands().items():
        assert p.description, f"atlas {name} has no description"
        assert not p.allow_abbrev, f"atlas {name} takes abbreviated options"
        text = " ".join(p.format_help().split())
        for action in p._actions:
            assert action.help, f"atlas {name} {action.option_strings or action.dest}: no help"
            default = action.default
            if action.option_strings and default not in (None, False, [], argparse.SUPPRESS):
                assert f"(default: {default})" in text or "default:" in " ".join(action.help.split()), (
                    f"atlas {name} {action.option_strings[0]}: default {default!r} not shown")


_LOADED = """
import sys
from atlas.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in ("torch", "torchvision", "timm", "numpy", "zarr", "pydantic", "atlas.api") if m in sys.modules))
"""


def _loaded(argvs: list[list[str]], cwd: Path) -> tuple[list[str], str]:
    """The heavy modules imported by answering ``argvs`` in one process, and its stderr."""
    proc = subprocess.run([sys.executable, "-c", _LOADED.format(argvs=argvs)], capture_output=True, text=True,
                          cwd=cwd, env=_env(), timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return ast.literal_eval(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_help_version_and_argument_errors_import_nothing_heavy(tmp_path: Path) -> None:
    argvs = [["--help"], ["--version"], ["run", "--help"], ["locate", "--help"], ["stauts"], ["run", "demo", "--stage"],
             ["serve", "x", "--port", "-1"], ["layers", "--input-size", "0"]]
    loaded, err = _loaded(argvs, tmp_path)
    assert loaded == [] and err.count("did you mean") == 2


def test_errors_found_before_any_work_import_no_torch(tmp_path: Path) -> None:
    argvs = [["status", "nowhere"], ["run", "nosuch.yaml"], ["run", "dmeo"], ["collect", "demo", "--shard", "0/2", "--set", "nosuch=1"],
             ["run", "demo", "--set", "nosuch=1"], ["serve", str(tmp_path), "--host", "999.1.1.1"]]
    loaded, err = _loaded(argvs, tmp_path)
    assert "torch" not in loaded and "timm" not in loaded, loaded
    assert err.count("atlas: error: ") == len(argvs), err


def test_a_misspelled_command_answers_within_a_second(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    proc = _atlas(["stauts"], cwd=str(tmp_path))
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2 and "did you mean status?" in proc.stderr
    assert seconds < 1.5, f"`atlas stauts` took {seconds:.2f} s"
