"""The docs name what the code has: config keys and their defaults, commands and their options,
and (against the session's whole tiny run, ``tests/conftest.py::whole_run``) the unit and log
names of docs/formats.md. A doc that drifts from the code fails here with the file and the name.

Conventions the docs keep so that this can be checked:

- a config key is written in backticks with its section (`` `render.cossim_power` ``);
- a default is written right after its key, in parentheses: `` `classes.cell_rows` (4) `` or
  `` `reduce.fit_max` (default 30,000, ...) ``;
- docs/formats.md's "Units, markers and logs" table lists each stage's units, a run of capital
  letters standing for that many digits (`chunk-NNNNNN`), and its log files (`<i>of<n>`: shard).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from atlas.cli import build_parser
from atlas.config import Config, schema_rows

ROOT = Path(__file__).resolve().parents[1]
GENERATED = {"configuration.md", "cli.md"}  # generated from the schema and the parser, checked in test_config.py
PIPELINE = ("collect", "reduce", "grid", "render", "tile")


def _docs() -> list[Path]:
    """Every hand-written doc: README.md and docs/*.md but the generated references."""
    return [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in GENERATED)]


def _schema() -> dict[str, Any]:
    """Every leaf config key (dotted; per-stage SLURM keys as ``cluster.slurm.stages.<stage>.<key>``) -> its default."""
    return {key: json.loads(default) for key, _, default, _ in schema_rows()}


# --------------------------------------------------------------------------- config keys


_CODE = re.compile(r"`([^`\n]+)`")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_FILE_SUFFIXES = {"py", "yaml", "yml", "sbatch", "md", "json", "js", "pth", "pt", "txt", "csv", "tar"}


def _config_key_pattern() -> re.Pattern[str]:
    sections = "|".join(sorted(Config.model_fields, key=len, reverse=True))
    return re.compile(rf"(?<![\w/.<-])((?:{sections})(?:\.(?:[a-z_][a-z_0-9]*|<[a-z]+>))+)")


def _mentioned_keys(text: str) -> list[str]:
    """Dotted config keys in the backticked spans of ``text`` (file names such as collect.py left out)."""
    pattern = _config_key_pattern()
    found = [k for span in _CODE.findall(text) for k in pattern.findall(span)]
    return [k for k in found if k.rsplit(".", 1)[-1] not in _FILE_SUFFIXES]


def _is_schema_key(key: str, schema: dict[str, Any]) -> bool:
    """``key`` is a leaf or a section of the schema (``<name>`` matches any one part)."""
    parts = key.split(".")

    def same(a: str, b: str) -> bool:
        return a == b or a.startswith("<") or b.startswith("<")

    return any(len(k.split(".")) >= len(parts) and all(same(a, b) for a, b in zip(k.split("."), parts, strict=False))
               for k in schema)


def test_the_key_finder_reads_the_docs_conventions() -> None:
    text = "`render.icon_sizes.8=256`, `grid.sizes: [4, 8]`, `atlas/stages/collect.py`, `collect.py`, `RUN/collect`"
    assert _mentioned_keys(text) == ["render.icon_sizes", "grid.sizes"]
    schema = _schema()
    assert _is_schema_key("grid.sizes", schema) and _is_schema_key("cluster.slurm", schema)
    assert _is_schema_key("cluster.slurm.stages.<stage>.gpus", schema)
    assert not _is_schema_key("grid.nonsense", schema)


def test_every_documented_config_key_exists() -> None:
    schema = _schema()
    unknown = [f"{doc.relative_to(ROOT)}: `{key}`" for doc in _docs() for key in _mentioned_keys(doc.read_text())
               if not _is_schema_key(key, schema)]
    assert not unknown, "config keys the docs name but atlas/config.py does not have:\n" + "\n".join(unknown)


# --------------------------------------------------------------------------- defaults


_DEFAULT = re.compile(r"`([a-z_]+(?:\.[a-z_0-9]+)+)` \((?:default:? )?"
                      r"((?:-?[0-9][0-9,]*(?:\.[0-9]+)?|true|false|null|None)(?=[),;: ])|`[^`]+`(?=\)))")


def _literal(text: str) -> Any:
    """A default as the docs write it: 20,000 -> 20000, None -> None, `[8, 16]` -> [8, 16] (YAML)."""
    if text.startswith("`"):
        return yaml.safe_load(text.strip("`"))
    if text in ("None", "null"):
        return None
    if text in ("true", "false"):
        return text == "true"
    number = text.replace(",", "")
    if re.fullmatch(r"-?[0-9]+", number):
        return int(number)
    try:
        return float(number)
    except ValueError:
        return text


def _documented_defaults(text: str) -> list[tuple[str, Any]]:
    return [(m.group(1), _literal(m.group(2))) for m in _DEFAULT.finditer(text)]


def test_the_default_finder_reads_the_docs_conventions() -> None:
    text = ("`classes.cell_rows` (4) cells, `reduce.fit_max` (default 30,000, chosen), `render.whiten_mix` (0.25),"
            " `classes.threshold` (0 logit), `render.reduce` (`mean`, `center`), `render.whiten` (off by default),"
            " `grid.sizes` (`[8, 16, 32]`), `model.device` (`auto`)")
    assert _documented_defaults(text) == [("classes.cell_rows", 4), ("reduce.fit_max", 30000),
                                          ("render.whiten_mix", 0.25), ("classes.threshold", 0),
                                          ("grid.sizes", [8, 16, 32]), ("model.device", "auto")]


def test_documented_defaults_are_the_schemas() -> None:
    schema = _schema()
    found = [(doc, key, value) for doc in _docs() for key, value in _documented_defaults(doc.read_text())
             if key in schema]
    assert len(found) >= 5, "the docs should quote defaults as `key` (value)"
    wrong = [f"{doc.relative_to(ROOT)}: `{key}` ({value!r}), the default is {schema[key]!r}"
             for doc, key, value in found if value != schema[key]]
    assert not wrong, "defaults the docs quote wrongly:\n" + "\n".join(wrong)


# --------------------------------------------------------------------------- commands


_COMMAND = re.compile(r"^\s*(?:\$ )?(?:[\w.]*/)*atlas ([a-z][a-z-]*)((?: +[^ #`]+)*)")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    actions = build_parser()._subparsers._group_actions  # type: ignore[union-attr]
    return dict(next(a for a in actions if isinstance(a, argparse._SubParsersAction)).choices)


def _documented_commands(text: str) -> list[tuple[str, list[str]]]:
    """(subcommand, its --options) of every command line `atlas ...` (or `.venv/bin/atlas ...`) in
    backticks or fenced code, comments left out."""
    spans = [*_CODE.findall(_FENCE.sub("", text)), *(line.split(" #")[0] for block in _FENCE.findall(text)
                                                      for line in block.splitlines())]
    out = []
    for span in spans:
        if m := _COMMAND.match(span):
            out.append((m.group(1), re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", m.group(2))))
    return out


def test_every_documented_command_and_option_exists() -> None:
    commands = _subparsers()
    found = [(doc, cmd, opts) for doc in _docs() for cmd, opts in _documented_commands(doc.read_text())]
    assert len({cmd for _, cmd, _ in found}) >= 8, "the docs should show the commands"
    wrong = []
    for doc, cmd, opts in found:
        if cmd not in commands:
            wrong.append(f"{doc.relative_to(ROOT)}: `atlas {cmd}` is no command")
            continue
        known = {o for a in commands[cmd]._actions for o in a.option_strings}
        wrong += [f"{doc.relative_to(ROOT)}: `atlas {cmd} {o}` is no option" for o in opts if o not in known]
    assert not wrong, "\n".join(wrong)


# --------------------------------------------------------------------------- units and logs (docs/formats.md)


def _formats_table() -> dict[str, tuple[list[str], list[str]]]:
    """docs/formats.md's units table: stage -> (unit name patterns, log file patterns)."""
    text = (ROOT / "docs" / "formats.md").read_text()
    section = text.split("## Units, markers and logs", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[list[str], list[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[a-z-]+`", cells[0]):
            rows[cells[0].strip("`")] = (_CODE.findall(cells[1]), _CODE.findall(cells[2]))
    return rows


def _unit_regex(pattern: str) -> re.Pattern[str]:
    """`chunk-NNNNNN` -> chunk-\\d{6}; `<...>` -> one name; the rest literally."""
    parts = re.split(r"(<[^>]+>|[A-Z]+)", pattern)
    body = "".join(r"[^/]+" if p.startswith("<") else (rf"[0-9a-f]{{{len(p)}}}" if p and p.isupper() else re.escape(p))
                   for p in parts)
    return re.compile(body)


def _log_regex(pattern: str) -> re.Pattern[str]:
    """`logs/collect-<i>of<n>.log` -> collect-\\d+of\\d+\\.log (the name inside logs/)."""
    name = pattern.removeprefix("logs/")
    return re.compile("".join(r"\d+" if p.startswith("<") else re.escape(p) for p in re.split(r"(<[^>]+>)", name)))


def test_the_unit_patterns_read_as_meant() -> None:
    assert _unit_regex("chunk-NNNNNN").fullmatch("chunk-000012")
    assert not _unit_regex("chunk-NNNNNN").fullmatch("chunk-12")
    assert _unit_regex("tiles-SSSS-LL-RRRRRR").fullmatch("tiles-0016-07-000000")
    assert _unit_regex("<slug>-HHHHHHHH").fullmatch("cat-photo-2455d157")
    assert _log_regex("logs/render-<i>of<n>.log").fullmatch("render-3of16.log")
    assert not _log_regex("logs/render-<i>of<n>.log").fullmatch("render-3.log")


def test_the_formats_table_covers_every_stage() -> None:
    from atlas.stages import ANALYSES, STAGES

    assert set(_formats_table()) == set(STAGES) | set(ANALYSES)


def test_documented_unit_names_are_a_runs(whole_run: Path) -> None:
    """Every unit of every pipeline stage of a real run matches a documented pattern, each
    documented pattern names some unit, and the done markers are the units plus `final`."""
    table = _formats_table()
    for stage in PIPELINE:
        patterns = [_unit_regex(p) for p in table[stage][0]]
        units = json.loads((whole_run / "state" / stage / "units.json").read_text())
        assert units, stage
        stray = [u for u in units if not any(p.fullmatch(u) for p in patterns)]
        assert not stray, f"docs/formats.md: {stage} units {stray[:5]} match none of {table[stage][0]}"
        unused = [p.pattern for p in patterns if not any(p.fullmatch(u) for u in units)]
        assert not unused, f"docs/formats.md: {stage} patterns {unused} name no unit of the run ({units[:5]}...)"
        done = sorted(p.name for p in (whole_run / "state" / stage / "done").iterdir())
        assert done == sorted([*units, "final"]), stage


def test_documented_log_names_are_a_runs(whole_run: Path) -> None:
    """The log files of a real run are those the table and the run-directory tree name."""
    table = _formats_table()
    text = (ROOT / "docs" / "formats.md").read_text()
    tree = text.split("```", 2)[1]
    assert "logs/<stage>-<i>of<n>.log" in tree and "logs/bad_inputs.tsv" in tree
    logs = sorted(p.name for p in (whole_run / "logs").iterdir() if p.is_file())
    expected = {stage: _log_regex(table[stage][1][0]) for stage in PIPELINE}
    for stage, regex in expected.items():
        assert any(regex.fullmatch(name) for name in logs), f"docs/formats.md: no {table[stage][1][0]} in {logs}"
    stray = [n for n in logs if n != "bad_inputs.tsv" and not any(r.fullmatch(n) for r in expected.values())]
    assert not stray, f"log files docs/formats.md does not name: {stray}"


@pytest.mark.parametrize("doc", ["formats.md", "design.md", "cluster.md", "troubleshooting.md"])
def test_no_retired_names(doc: str) -> None:
    """Names that no longer exist: reduce/grid `setup` and `done` units, per-shard `<shard>.log` files."""
    text = (ROOT / "docs" / doc).read_text()
    for retired in ("`setup`", "`done`", "<stage>-<shard>.log", "was collected with other settings"):
        assert retired not in text, f"docs/{doc} names {retired}"
