"""A run's config.yaml means that run, wherever it is and from any folder; side commands never
rewrite it; every command takes RUN or RUN/config.yaml; a mistake found before any work starts
is refused in one line and leaves no failure record. Real runs (a copy of the session's whole
tiny atlas) through the real `atlas` executable, from a folder that is not the repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from atlas.sources._demo import demo_image
from tests.cluster.util import ATLAS, STAGES, env
from tests.stages.contract import copy_run


def _atlas(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ATLAS, *args], capture_output=True, text=True, env=env(), cwd=cwd, timeout=900)


def _one_line(p: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    assert p.returncode == code, f"exit {p.returncode}, expected {code}:\n{p.stderr[-3000:]}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    for w in words:
        assert w in lines[0], f"{w!r} not in: {lines[0]}"
    return lines[0]


@pytest.fixture(scope="module")
def moved(whole_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole tiny atlas copied elsewhere, its config.yaml recording ``run_dir: runs/demo`` as
    an earlier version wrote it (the folder it was made in, relative to where it was made)."""
    run = copy_run(whole_run, tmp_path_factory.mktemp("moved") / "my run")
    cfg = run / "config.yaml"
    lines = cfg.read_text().splitlines(keepends=True)
    cfg.write_text("".join("run_dir: runs/demo\n" if ln.startswith("run_dir:") else ln for ln in lines))
    return run


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """Another current folder: no runs/ in it, so a command that ignored the run would start a new one here."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def test_a_moved_run_is_that_run_from_any_folder(moved: Path, elsewhere: Path) -> None:
    before = (moved / "config.yaml").read_bytes()
    for arg in (moved / "config.yaml", moved):
        p = _atlas("status", str(arg), "--json", cwd=elsewhere)
        assert p.returncode == 0, p.stderr
        report = json.loads(p.stdout)
        assert report["run_dir"] == str(moved)
        assert [(st["stage"], st["state"]) for st in report["stages"]] == [(s, "done") for s in STAGES]
    p = _atlas("run", str(moved / "config.yaml"), cwd=elsewhere)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("is already complete") == len(STAGES), p.stderr[-3000:]  # the fingerprints moved with it
    p = _atlas("slurm-plan", str(moved), cwd=elsewhere)
    assert p.returncode == 0 and [ln.split("\t")[:2] for ln in p.stdout.splitlines()] == [[s, "done"] for s in STAGES]
    assert list(elsewhere.iterdir()) == [] and (moved / "config.yaml").read_bytes() == before


def test_locate_on_a_moved_run_writes_into_it_and_keeps_its_config(moved: Path, elsewhere: Path) -> None:
    before = (moved / "config.yaml").read_bytes()
    demo_image(70, 96).save(elsewhere / "cat.png")
    p = _atlas("locate", str(moved / "config.yaml"), "--set", "locate.level=8", "cat.png", cwd=elsewhere)
    assert p.returncode == 0, p.stderr[-3000:]
    [entry] = json.loads((moved / "locate" / "index.json").read_text())["images"]
    assert entry["source"] == str(elsewhere / "cat.png") and (moved / "locate" / entry["unit"] / "overlay.png").is_file()
    assert (moved / "config.yaml").read_bytes() == before  # a side command never rewrites the run's config
    recorded = (moved / "state" / "locate" / "config.yaml").read_text()  # its inputs are in its own state
    assert str(elsewhere / "cat.png") in recorded and "level: 8" in recorded
    assert sorted(p.name for p in elsewhere.iterdir()) == ["cat.png"]


# The refusals of a mistake (one line, no failure record) are rows of tests/test_cli_table.py.
