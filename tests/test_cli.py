"""The `atlas` command's own behaviour: pipes, argument checks, messages, exit codes, `init`.

Most tests call :func:`atlas.cli.main` in-process (capsys); the ones about pipes and
signals run the real command in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import atlas
from atlas import api, viewer_assets
from atlas.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
BUILTINS = ["demo", "demo-layers", "folder", "imagenet-googlenet-mixed4c", "imagenet-lite0", "imagenet-lite0-hf"]


def _atlas(*args: str) -> list[str]:
    return [sys.executable, "-m", "atlas", *args]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("atlas: error: ") and "Traceback" not in err
    return lines[0]


def _fake_run(path: Path) -> Path:
    """A run directory as the stages leave it before any unit: just its config (``run_dir`` as an
    earlier version recorded it: the file's folder is the run, whatever it says)."""
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("run_dir: x\nprovenance: {atlas: '0.0'}\n")
    return path


# --------------------------------------------------------------------------- pipes


def _into_closed_pipe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run atlas with stdout into a pipe whose reader is already gone (`atlas ... | head -0`)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(_atlas(*args), check=False, stdout=w, stderr=subprocess.PIPE, text=True, cwd=cwd, timeout=300)
    finally:
        os.close(w)
    return proc


@pytest.mark.parametrize("args", [("layers",), ("status", "RUN", "--json"), ("status", "RUN")])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, args):
    run = _fake_run(tmp_path / "run")
    proc = _into_closed_pipe(*[str(run) if a == "RUN" else a for a in args], cwd=tmp_path)
    assert proc.returncode in (0, 141), proc.stderr
    assert proc.stderr == ""


def test_layers_piped_into_head_ends_quietly(tmp_path):
    """The real pipeline: head exits after two lines while atlas is still writing."""
    err = tmp_path / "err.txt"
    cmd = " ".join(_atlas("layers")) + f" 2>{err} | head -2"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=False, capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert len(proc.stdout.splitlines()) == 2
    assert proc.returncode in (0, 141)
    assert err.read_text() == ""


# --------------------------------------------------------------------------- arguments


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"atlas {atlas.__version__}"


@pytest.mark.parametrize("text, want", [
    ("collect, reduce", ["collect", "reduce"]),
    ("collect,reduce", ["collect", "reduce"]),
    (" grid ", ["grid"]),
])
def test_stages_accept_spaces(text, want):
    assert build_parser().parse_args(["run", "demo", "--stages", text]).stages == want


@pytest.mark.parametrize("text, why", [("", "no stage named"), (" , ", "no stage named"),
                                       ("collect,,grid", "empty name"), ("collect,plot", "unknown stage 'plot'")])
def test_stages_empty_or_unknown_is_an_error(capsys, monkeypatch, text, why):
    monkeypatch.setattr(api, "run", lambda *a, **k: pytest.fail("must not run"))
    with pytest.raises(SystemExit) as info:
        main(["run", "demo", "--stages", text])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--stages" in err and why in err


def test_a_folder_is_not_a_config(tmp_path, capsys):
    (tmp_path / "mine.yaml").write_text("run_dir: x\n")
    assert main(["collect", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert f"{tmp_path} is a folder, not a config file" in line and "mine.yaml" in line


def test_builtin_config_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert api.builtin_configs() == BUILTINS
    for name in BUILTINS:
        path = api.resolve_config(name)
        assert path.read_bytes() == (ROOT / "pipelines" / f"{name}.yaml").read_bytes()
    assert api.resolve_config("demo.yaml") == api.resolve_config("demo")
    assert str(api.load("demo", [f"run_dir={tmp_path / 'r'}"]).run_dir) == str(tmp_path / "r")
    (tmp_path / "demo").write_text("run_dir: mine\n")  # an existing file wins over the built-in name
    assert api.resolve_config("demo") == Path("demo")
    assert api.resolve_config("nope") == Path("nope")  # loading it says it does not exist
    assert api.resolve_config("sub/demo") == Path("sub/demo")  # a path is never a built-in name


# --------------------------------------------------------------------------- messages


def test_layers_without_weights_names_the_layers_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights
    assert main(["layers", "--model", "googlenet"]) == 2
    line = _error_line(capsys)
    assert "--weights /path/to/googlenet" in line and "--weights not given" in line
    assert "model.weights" not in line and "--set" not in line


def test_a_pickled_model_as_weights_says_to_save_a_state_dict(tmp_path, capsys):
    import torch
    import torchvision

    whole = tmp_path / "whole.pth"
    torch.save(torchvision.models.resnet18(weights=None), whole)
    assert main(["layers", "--model", "resnet18", "--weights", str(whole)]) == 2
    line = _error_line(capsys)
    assert "torch.save(model.state_dict(), PATH)" in line and "torchvision.models.resnet.ResNet" in line
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["layers", "--model", "resnet18", "--weights", str(tmp_path / "junk.pth")]) == 2
    assert "not a file that torch.save wrote" in _error_line(capsys)


def test_status_of_a_file_or_a_folder_that_is_not_a_run(tmp_path, capsys):
    run = _fake_run(tmp_path / "runs" / "demo")
    assert main(["status", str(run / "config.yaml")]) == 0  # a run's config.yaml means that run
    assert capsys.readouterr().out.splitlines()[0] == f"run {run}"
    (run / "notes.txt").write_text("mine\n")
    assert main(["status", str(run / "notes.txt")]) == 2
    assert "is a file, not a run directory" in _error_line(capsys)
    (tmp_path / "other").mkdir()
    assert main(["status", str(tmp_path / "other")]) == 2
    assert "is not a run directory" in _error_line(capsys)
    assert main(["status", str(tmp_path / "runs")]) == 2
    assert f"`atlas status {run}`" in _error_line(capsys)
    assert main(["status", str(tmp_path / "missing")]) == 2
    assert "does not exist" in _error_line(capsys)


def test_status_prints_numbers_in_level_order():
    report = {"run_dir": "runs/x", "stages": [
        {"stage": "collect", "state": "partial", "done": 1, "total": 1, "failures": []},
        {"stage": "reduce", "state": "done", "done": 5, "total": 5, "knn": "exact", "knn_recall": None,
         "trustworthiness": 0.91234, "failures": []},
        {"stage": "grid", "state": "done", "done": 4, "total": 4, "purity": {"16": 0.5, "8": 0.61234, "32": math.nan},
         "empty_levels": [32], "failures": []},
        {"stage": "render", "state": "partial", "done": 1, "total": 3, "median_cossim": {"16": 0.58, "8": 0.61},
         "level_units": {"16": "0/1", "8": "1/1"}, "failures": []},
        {"stage": "tile", "state": "not started", "done": 0, "total": None, "grids": [8, 16], "complete": False},
    ]}
    text = api.format_status(report)
    assert "None" not in text and "{" not in text and "nan" not in text
    assert "trustworthiness=0.912" in text and "knn_recall" not in text
    assert "purity 8:0.612 16:0.5 32:-" in text
    assert "median_cossim 8:0.61 16:0.58" in text and "level_units 8:1/1 16:0/1" in text
    assert "grids=8,16" in text and "complete=no" in text and "0/? units" in text
    assert "1/1 unit (the final step to do)" in text and "5/5 units" in text and "1/3 units" in text
    warning = [line for line in text.splitlines() if "WARNING" in line]
    assert len(warning) == 1 and "grid level 32 is empty" in warning[0]
    assert "grid.min_count" in warning[0] and "grid.sizes" in warning[0]


def test_status_json_is_strict_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(api, "status", lambda run_dir, layer=None: {"run_dir": run_dir, "stages": [
        {"stage": "grid", "purity": {"8": math.nan, "4": 0.5}}]})
    assert main(["status", "somewhere", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert doc["stages"][0]["purity"] == {"8": None, "4": 0.5}


# --------------------------------------------------------------------------- OSErrors without an errno


def _no_openseadragon(monkeypatch, tmp_path):
    monkeypatch.delenv("ATLAS_OPENSEADRAGON", raising=False)
    monkeypatch.setattr(viewer_assets, "PACKAGED_OPENSEADRAGON", tmp_path / "pkg" / "openseadragon")
    monkeypatch.setattr(viewer_assets, "CHECKOUT_ROOT", tmp_path / "checkout")


def test_missing_openseadragon_names_both_fixes(tmp_path, monkeypatch):
    _no_openseadragon(monkeypatch, tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        viewer_assets.openseadragon_dir()
    assert info.value.errno is None
    msg = str(info.value)
    assert "npm ci --prefix viewer" in msg and "reinstall the package" in msg
    assert str(tmp_path / "pkg") in msg and str(tmp_path / "checkout") in msg
    monkeypatch.setattr(viewer_assets, "CHECKOUT_ROOT", ROOT)  # the development checkout (make setup ran)
    assert viewer_assets.openseadragon_dir() == ROOT / "viewer/node_modules/openseadragon/build/openseadragon"


def test_missing_openseadragon_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    """As in the tile stage of an installed atlas: an OSError with only a message, whose
    ``filename`` an engine may fill in on the way up, is that message, not ``[Errno None] None``."""
    _no_openseadragon(monkeypatch, tmp_path)

    def tile_stage(name, cfg, **kw):
        try:
            viewer_assets.openseadragon_dir()
        except OSError as e:
            e.filename = str(cfg.run_dir)
            raise

    monkeypatch.setattr(api, "run_stage", tile_stage)
    assert main(["tile", "demo", "--set", f"run_dir={tmp_path / 'run'}"]) == 2
    line = _error_line(capsys)
    assert "Errno" not in line and "None" not in line
    assert "OpenSeadragon is not installed" in line and "npm ci --prefix viewer" in line


def test_other_oserrors_without_errno_are_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "README.md").write_text("mine\n")
    assert main(["init", str(tmp_path)]) == 2  # FileExistsError("...") from atlas init
    line = _error_line(capsys)
    assert "README.md" in line and "--force" in line and "Errno" not in line
    assert (tmp_path / "README.md").read_text() == "mine\n" and not (tmp_path / "pipelines").exists()

    def broken(run_dir, layer=None):
        raise TimeoutError("the shared file system did not answer\nwithin 30 s")

    monkeypatch.setattr(api, "status", broken)
    assert main(["status", str(tmp_path)]) == 2
    assert _error_line(capsys) == "atlas: error: the shared file system did not answer within 30 s"


# --------------------------------------------------------------------------- init


def test_init_writes_a_starting_project(tmp_path, capsys):
    dest = tmp_path / "proj"
    assert main(["init", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "README.md" in out
    for name in BUILTINS:
        assert (dest / "pipelines" / f"{name}.yaml").read_bytes() == (ROOT / "pipelines" / f"{name}.yaml").read_bytes()
    slurm = sorted(p.name for p in (ROOT / "scripts" / "slurm").iterdir())
    assert sorted(p.name for p in (dest / "scripts" / "slurm").iterdir()) == slurm
    for name in slurm:
        path = dest / "scripts" / "slurm" / name
        assert path.read_bytes() == (ROOT / "scripts" / "slurm" / name).read_bytes()
        assert path.stat().st_mode & stat.S_IXUSR
        assert "/work/" not in path.read_text() and "${ATLAS:-" in path.read_text() or name == "submit.sh"
    assert "atlas run pipelines/demo.yaml" in (dest / "README.md").read_text()

    (dest / "pipelines" / "demo.yaml").write_text("edited\n")
    assert main(["init", str(dest)]) == 2
    assert "pass --force" in _error_line(capsys)
    assert (dest / "pipelines" / "demo.yaml").read_text() == "edited\n"
    assert main(["init", str(dest), "--force"]) == 0
    assert (dest / "pipelines" / "demo.yaml").read_bytes() == (ROOT / "pipelines" / "demo.yaml").read_bytes()

    capsys.readouterr()
    assert main(["init", str(dest / "README.md")]) == 2
    assert "is a file" in _error_line(capsys)


def test_submit_script_uses_atlas_from_path(tmp_path):
    """The copied submit.sh runs from any folder: the stage scripts next to it, `atlas` from PATH."""
    assert main(["init", str(tmp_path)]) == 0
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls.txt"
    (bindir / "atlas").write_text(f'#!/bin/sh\necho "atlas $*" >> {log}\nprintf "collect\\ttodo\\t--time=1:00\\n"\n')
    (bindir / "sbatch").write_text(f'#!/bin/sh\necho "sbatch $*" >> {log}\necho 42\n')
    for f in bindir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    env.pop("ATLAS", None)
    proc = subprocess.run([str(tmp_path / "scripts/slurm/submit.sh"), "pipelines/demo.yaml"], check=False,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text()
    assert "atlas slurm-plan pipelines/demo.yaml" in calls
    assert f"{tmp_path}/scripts/slurm/collect.sbatch pipelines/demo.yaml" in calls


def test_serve_sigterm_exits_quietly(tmp_path):
    run = tmp_path / "run"
    (run / "tiles").mkdir(parents=True)
    (run / "tiles" / "index.html").write_text("<!doctype html>")
    proc = subprocess.Popen(_atlas("serve", str(run), "--port", "0"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().startswith("Serving ")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert err == ""


# --------------------------------------------------------------------------- SIGTERM during collect


def test_sigterm_to_the_process_group_during_collect_prints_only_the_atlas_line(tmp_path: Path) -> None:
    """SLURM's scancel and walltime signal every process of the step: the decode workers too.
    The user sees the one atlas line (exit 143), never a DataLoader worker error."""
    import time

    from tests.conftest import DEMO, TINY

    run_dir = tmp_path / "run"
    sets = [f"--set={o}" for o in [f"run_dir={run_dir}", *TINY, "collect.workers=2", "images.demo_count=400"]]
    proc = subprocess.Popen(_atlas("collect", str(DEMO), *sets), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    done = run_dir / "state" / "collect" / "done"
    t0 = time.time()
    while not (done.is_dir() and any(done.iterdir())) and proc.poll() is None and time.time() - t0 < 240:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    import psutil

    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers, "collect.workers=2 should have started decode workers"
    for w in workers:  # the signal reaches the workers first (the race that showed a DataLoader error)
        w.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGTERM)  # then the whole group, as SLURM does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if not ln.startswith("[collect]")]
    assert lines == ["atlas: terminated by SIGTERM (walltime, preemption or scancel?); rerun the same command to "
                     "resume"], err
    assert "DataLoader" not in err and "Traceback" not in err
