"""The stage registry and the engines' side of the contract: every stage is a ``STAGE`` value the
engines drive only through its attributes, and the engines and the config never name a stage."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from atlas.config import Config, load_config
from atlas.stages import STAGES, Job, Stage, StageBase, final_info, finished, get_stage, run_stage
from atlas.store import RunDir
from tests.conftest import DEMO, ROOT

ENGINE_FILES = sorted((ROOT / "atlas" / "cluster").glob("*.py")) + [ROOT / "atlas" / "config.py"]


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the docstring constants of the module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def stage_literals(source: str, where: str) -> list[str]:
    """``where:line 'name'`` for every string literal (docstrings aside) that is a stage's name."""
    tree = ast.parse(source, filename=where)
    docs = _docstrings(tree)
    return [f"{where}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
            and node.value in STAGES]


def test_the_engines_and_the_config_hold_no_stage_names() -> None:
    assert len(ENGINE_FILES) >= 4  # atlas/cluster/{__init__,_dask,_local,_slurm}.py and atlas/config.py
    found = [hit for path in ENGINE_FILES for hit in stage_literals(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "engines must ask the stage (atlas.stages.get_stage), not test its name:\n" + "\n".join(found)


def test_the_check_finds_a_stage_name() -> None:
    """It catches ``name == "grid"``, and leaves docstrings and longer strings alone."""
    source = ('"""Runs collect, reduce and grid."""\n\n\ndef f(name):\n    """grid"""\n'
              '    return name == "grid" or name in ("render.levels", "tile size", f"{name} tile")\n')
    assert stage_literals(source, "engine.py") == ["engine.py:6 'grid'"]


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_is_a_stage_value_named_after_its_module(name: str) -> None:
    stage = get_stage(name)
    assert isinstance(stage, Stage) and isinstance(stage, StageBase)
    assert stage is importlib.import_module(f"atlas.stages.{name}").STAGE
    assert stage.name == name and stage.output
    assert all(STAGES.index(i) < STAGES.index(name) for i in stage.inputs)  # inputs come earlier
    assert stage.execution in ("shards", "single", "driver") and stage.on_change in ("refuse", "redo")
    assert stage.lease_window >= 1


def test_unknown_stages_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown stage 'grd'; stages are collect, reduce, grid, render, tile"):
        get_stage("grd")


# --------------------------------------------------------------------------- the runner's hooks


def test_importing_the_config_imports_no_stage() -> None:
    """No import circle joins the config and the stages: the config takes the names from atlas._names."""
    code = "import sys, atlas.config; print(sorted(m for m in sys.modules if m.startswith('atlas.stages')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
    assert "atlas.stages" not in (ROOT / "atlas" / "config.py").read_text()


def test_the_registry_hands_a_class_atlas_its_selection(tmp_path: Path) -> None:
    """``collect`` of a class atlas (classes.parent set) is the selection, a stage of its own; engines
    ask for it by the name only."""
    from atlas.stages import _select, collect

    main = load_config(DEMO, [f"run_dir={tmp_path / 'run'}"])
    sub = load_config(DEMO, [f"run_dir={tmp_path / 'run' / 'classes' / 'x'}", f"classes.parent={tmp_path / 'run'}"])
    assert get_stage("collect") is collect.STAGE and get_stage("collect", main) is collect.STAGE
    picked = get_stage("collect", sub)
    assert picked is _select.STAGE and isinstance(picked, _select.SelectStage) and isinstance(picked, Stage)
    assert picked.name == "collect" and picked.output == "collect" and not picked.inputs and not picked.wants_gpu
    assert all(get_stage(name, sub) is get_stage(name) for name in STAGES[1:])
    assert not any(isinstance(c, ast.Call) and getattr(c.func, "id", "") == "isinstance"
                   for c in ast.walk(ast.parse((ROOT / "atlas" / "stages" / "collect.py").read_text())))


@dataclass
class _ToyCtx:
    folder: Path
    want: list[str]
    gone: set[str]


class _Toy(StageBase[_ToyCtx]):
    """A stage whose units write ``RUN/toy/<unit>.txt``; its scope is the units asked for and done,
    and a deleted output folder makes :meth:`refresh` ask for a redo."""

    name = "toy"
    lease_window = 2

    def __init__(self, want: list[str]) -> None:
        super().__init__()
        self.want, self.ran, self.seen = want, [], {}

    def settings(self, cfg: Config) -> dict[str, Any]:
        return {"format": 1}

    def scope(self, cfg: Config, done: frozenset[str]) -> list[str]:
        return sorted(done | set(self.want))

    def open(self, job: Job) -> _ToyCtx:
        self.seen = dict(job.done)
        folder = job.run.stage_path(self.name)
        return _ToyCtx(folder, list(self.want), {u for u in self.want if not (folder / f"{u}.txt").is_file()})

    def create(self, ctx: _ToyCtx) -> None:
        ctx.folder.mkdir(parents=True)

    def forget(self, ctx: _ToyCtx, done: frozenset[str]) -> set[str]:
        return set(done) & ctx.gone

    def units(self, ctx: _ToyCtx) -> list[str]:
        return ctx.want

    def run_units(self, ctx: _ToyCtx, units: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        for u in units:
            ctx.folder.mkdir(exist_ok=True)
            (ctx.folder / f"{u}.txt").write_text(u)
            self.ran.append(u)
            yield u, {"unit": u}

    def finish(self, ctx: _ToyCtx) -> dict[str, Any]:
        return {"files": sorted(p.name for p in ctx.folder.iterdir())}

    def refresh(self, job: Job) -> bool:
        return not job.run.stage_path(self.name).is_dir()


def _toy_cfg(tmp_path: Path) -> Config:
    return load_config(DEMO, [f"run_dir={tmp_path / 'run'}"])


def test_refresh_true_has_the_runner_redo_a_finished_stage(tmp_path: Path) -> None:
    cfg, toy = _toy_cfg(tmp_path), _Toy(["a", "b", "c"])
    assert run_stage(toy, cfg) and toy.ran == ["a", "b", "c"]
    toy.ran.clear()
    assert run_stage(toy, cfg) and toy.ran == []  # finished, outputs there: nothing to do
    shutil.rmtree(tmp_path / "run" / "toy")
    assert run_stage(toy, cfg) and toy.ran == ["a", "b", "c"]  # refresh said redo: forget names the units gone
    assert sorted(p.name for p in (tmp_path / "run" / "toy").iterdir()) == ["a.txt", "b.txt", "c.txt"]
    assert final_info(RunDir(cfg.run_dir), "toy")["files"] == ["a.txt", "b.txt", "c.txt"]


def test_forget_clears_only_the_named_done_units(tmp_path: Path) -> None:
    cfg, toy = _toy_cfg(tmp_path), _Toy(["a", "b", "c"])
    run = RunDir(cfg.run_dir)
    toy.want = ["a", "b"]
    assert run_stage(toy, cfg)
    (tmp_path / "run" / "toy" / "a.txt").unlink()  # a's data gone while its marker stays
    toy.want, toy.ran = ["a", "b", "c"], []
    assert run_stage(toy, cfg) and toy.ran == ["a", "c"]  # a forgotten and run again, b kept, c new
    assert run.done_units("toy") == {"a", "b", "c", "final"}


def test_scope_gets_the_done_units_and_more_adds_units_without_a_redo(tmp_path: Path) -> None:
    cfg, toy = _toy_cfg(tmp_path), _Toy(["a", "b"])
    run = RunDir(cfg.run_dir)
    assert run_stage(toy, cfg)
    setup = (run.state_path("toy") / "setup.json").read_bytes()
    toy.want, toy.ran = ["c"], []
    assert run_stage(toy, cfg) and toy.ran == ["c"]  # one more unit; a and b stay done
    assert toy.seen == {"a": {"unit": "a"}, "b": {"unit": "b"}}  # Job.done: the runner's records
    assert final_info(run, "toy")["scope"] == ["a", "b", "c"] and (run.state_path("toy") / "setup.json").read_bytes() == setup
    toy.want, toy.ran = ["a"], []
    assert finished(toy, cfg) and run_stage(toy, cfg) and toy.ran == []  # asked again for a done one: nothing


def test_the_stages_leave_the_markers_to_the_runner() -> None:
    """No stage module touches done markers outside ``detail`` (``atlas status``, read only): the
    runner's hooks hand a stage what it needs (``scope``'s done units, ``forget``, ``Job.done``)."""
    found = [hit for p in sorted((ROOT / "atlas" / "stages").rglob("*.py")) if p.name not in ("_runner.py", "_protocol.py")
             for hit in marker_uses(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "\n".join(found)


def test_the_marker_check_finds_a_marker_use() -> None:
    source = ('"""Markers live in state/x/done/."""\n\n\ndef f(run):\n    run.clear_done("x", "a")\n'
              '    return run.read_json("state/x/done/a")\n\n\ndef detail(run):\n    return run.done_units("x")\n')
    assert marker_uses(source, "s.py") == ["s.py:5 clear_done", "s.py:6 'state/x/done/a'"]


_MARKER_CALLS = ("clear_done", "mark_done", "done_units", "is_done")


def marker_uses(source: str, where: str) -> list[str]:
    """``where:line what`` for each use of the done markers (their methods, ``FINAL``, a path into
    ``state/<stage>/done/``) outside docstrings and outside functions named ``detail``."""
    tree = ast.parse(source, filename=where)
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    spans = [(n.lineno, n.end_lineno or n.lineno) for n in ast.walk(tree)
             if isinstance(n, ast.FunctionDef) and n.name == "detail"]
    hits = []
    for n in ast.walk(tree):
        what = (n.attr if isinstance(n, ast.Attribute) and n.attr in _MARKER_CALLS else
                n.id if isinstance(n, ast.Name) and n.id == "FINAL" else
                repr(n.value) if isinstance(n, ast.Constant) and isinstance(n.value, str) and "/done/" in n.value
                and id(n) not in docs else
                "FINAL" if isinstance(n, ast.alias) and n.name == "FINAL" else None)
        line = getattr(n, "lineno", 0)
        if what and not any(a <= line <= b for a, b in spans):
            hits.append(f"{where}:{line} {what}")
    return sorted(set(hits), key=lambda h: int(h.split(":")[1].split()[0]))
