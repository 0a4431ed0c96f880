"""The device of collect's and render's rows: recorded in the run's state and provenance; a resume
on another precision is refused, on the same precision and another device marked (tested on the
CPU by faking the recorded device)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml

from atlas.config import load_config
from atlas.stages import run_stage
from atlas.stages._device import check_device, describe, device_record
from atlas.store import RunDir, StoreError
from tests.conftest import DEMO
from tests.stages.test_render import STAGE, _grid, _ov

H100 = {"device": "cuda", "gpu": "NVIDIA H100 80GB HBM3", "torch": "2.5.1", "cuda": "12.4", "cudnn": 90100,
        "precision": "bfloat16"}
LOG = logging.getLogger("test")


def test_the_record_of_a_cpu_process():
    rec = device_record(torch.device("cpu"), autocast=True)
    assert rec["device"] == "cpu" and rec["precision"] == "float32" and rec["gpu"] is None and rec["cudnn"] is None
    assert describe(rec) == "cpu, float32"
    assert describe(H100) == "cuda (NVIDIA H100 80GB HBM3, CUDA 12.4, cuDNN 90100), bfloat16"


def test_check_device_records_refuses_and_marks(tmp_path):
    run = RunDir(tmp_path / "run")
    first = check_device(run, "collect", H100, LOG)
    assert first["devices"] == [H100] and first["mixed"] is False
    assert check_device(run, "collect", dict(H100), LOG) == first  # the same device resumes silently
    cpu = device_record(torch.device("cpu"), autocast=True)
    with pytest.raises(StoreError) as e:
        check_device(run, "collect", cpu, LOG)
    msg = str(e.value)
    assert "\n" not in msg and "NVIDIA H100" in msg and "cpu, float32" in msg and "model.device=cuda" in msg
    a100 = {**H100, "gpu": "NVIDIA A100-SXM4-80GB", "cudnn": 8902}
    marked = check_device(run, "collect", a100, LOG)
    assert marked["mixed"] is True and marked["devices"] == [H100, a100]
    assert json.loads((run.state_path("collect") / "device.json").read_text()) == marked


def _stop_before_last_unit(run_dir) -> None:
    """A render that was killed before its last unit: no final marker, one unit to do."""
    run = RunDir(run_dir)
    units = sorted(run.done_units("render") - {"final"})
    run.clear_done("render", "final")
    run.clear_done("render", units[-1])


def test_a_render_resumed_on_another_precision_is_refused_and_on_the_same_marked(tmp_path):
    run_dir = tmp_path / "run"
    _grid(run_dir)
    cfg = load_config(DEMO, _ov(run_dir, "render.levels=[2]", "render.steps=1", "render.restarts=1"))
    assert run_stage(STAGE, cfg)
    state = RunDir(run_dir).state_path("render") / "device.json"
    rec = json.loads(state.read_text())
    assert rec["device"] == "cpu" and rec["precision"] == "float32" and rec["mixed"] is False
    prov = yaml.safe_load((run_dir / "config.yaml").read_text())["provenance"]
    assert prov["render_device"]["device"] == "cpu"

    _stop_before_last_unit(run_dir)
    state.write_text(json.dumps({**H100, "devices": [H100], "mixed": False}))  # started on a GPU node
    with pytest.raises(StoreError, match=r"started on cuda \(NVIDIA H100.*bfloat16 and float32 rows"):
        run_stage(STAGE, cfg)

    other = {**H100, "device": "cpu", "gpu": None, "cuda": None, "cudnn": None, "precision": "float32",
             "torch": "0.0"}
    state.write_text(json.dumps({**other, "devices": [other], "mixed": False}))  # float32 on another stack
    assert run_stage(STAGE, cfg)
    rec = json.loads(state.read_text())
    assert rec["mixed"] is True and len(rec["devices"]) == 2
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["provenance"]["render_device"]["mixed"] is True
    assert "recorded as a mixed run" in (run_dir / "logs" / "render-0of1.log").read_text()
