"""The stage registry and the engines' side of the contract: every stage is a ``STAGE`` value the
engines drive only through its attributes, and the engines and the config never name a stage."""

from __future__ import annotations

import ast
import importlib

import pytest

from atlas.stages import STAGES, Stage, StageBase, get_stage
from tests.conftest import ROOT

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
