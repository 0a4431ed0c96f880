"""The device a stage's rows were computed on: recorded per attempt, checked on every resume.

collect and render write float rows whose last bits depend on the device and its precision
(bfloat16 autocast on CUDA, float32 on the CPU), and on the GPU model and the torch, CUDA and
cuDNN versions. A stage's first process records its device in ``RUN/state/<stage>/device.json``
(and in the provenance of ``RUN/config.yaml``); every process checks it before its first unit:

* another precision (bf16 rows into a float32 array, or back): refused, with a one-line error
  naming both devices and the fix (resume on the recorded device, or redo the stage);
* the same precision on another device (another GPU model, another CUDA or cuDNN, a CPU
  node for a CPU run): allowed, with a warning, and *marked*: the record lists every
  device that wrote rows and ``mixed: true`` (``<stage>_device`` in the provenance).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from ..config import Config
from ..store import RunDir, StoreError, atomic_write_text

__all__ = ["device_record", "check_device", "describe"]

_FILE = "device.json"
_SAME = ("device", "gpu", "torch", "cuda", "cudnn")  # what "the same device" means for a resume


def device_record(device: torch.device, autocast: bool) -> dict[str, Any]:
    """What decides the bits of a stage's rows on ``device``: its type, the GPU model, torch / CUDA /
    cuDNN versions, and the precision (``bfloat16`` or ``float16`` under autocast on CUDA, else
    ``float32``; ``tf32`` for CUDA float32 with TF32 convolutions allowed)."""
    cuda = device.type == "cuda"
    if cuda and autocast:
        precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    elif cuda and torch.backends.cudnn.allow_tf32:
        precision = "tf32"
    else:
        precision = "float32"
    cudnn = torch.backends.cudnn.version() if cuda else None  # type: ignore[no-untyped-call]
    return {"device": device.type, "gpu": torch.cuda.get_device_name(device) if cuda else None,
            "torch": torch.__version__.split("+")[0], "cuda": torch.version.cuda if cuda else None,
            "cudnn": cudnn, "precision": precision}


def describe(rec: dict[str, Any]) -> str:
    """``cuda (NVIDIA H100 80GB HBM3, CUDA 12.4, cuDNN 90100), bfloat16`` / ``cpu, float32``."""
    if rec.get("device") == "cuda":
        return f"cuda ({rec.get('gpu')}, CUDA {rec.get('cuda')}, cuDNN {rec.get('cudnn')}), {rec.get('precision')}"
    return f"{rec.get('device')}, {rec.get('precision')}"


def _key(rec: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(rec.get(k) for k in _SAME)


def check_device(run: RunDir, stage: str, rec: dict[str, Any], log: logging.Logger,
                 cfg: Config | None = None) -> dict[str, Any]:
    """Record ``rec`` as the attempt's device, or check it against the recorded one (under the stage
    lock); returns the record now on disk. Another precision raises a one-line StoreError; the
    same precision on another device is added to the record's ``devices`` and marked ``mixed``
    (and, given ``cfg``, in the provenance of ``RUN/config.yaml`` as ``<stage>_device``)."""
    path = run.state_path(stage) / _FILE
    with run.stage_lock(stage):
        try:
            saved: dict[str, Any] = dict(json.loads(path.read_text()))
        except (FileNotFoundError, ValueError):
            saved = {**rec, "devices": [rec], "mixed": False}
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(saved, indent=1))
            return saved
        devices = list(saved.get("devices") or [saved])
        if any(_key(d) == _key(rec) for d in devices):
            return saved
        if rec.get("precision") != saved.get("precision"):
            raise StoreError(
                f"`{stage}` in {run.root} was started on {describe(saved)} and this process runs on {describe(rec)}: "
                f"its arrays would mix {saved.get('precision')} and {rec.get('precision')} rows; resume on the recorded "
                f"device (model.device={saved.get('device')}), or delete {run.stage_path(stage)} and "
                f"{run.state_path(stage)} to redo `{stage}` here")
        log.warning("%s: resumed on %s; rows so far came from %s (same precision, other kernels: the last bits may "
                    "differ between their rows); recorded as a mixed run", stage, describe(rec),
                    "; ".join(describe(d) for d in devices))
        saved = {**saved, "devices": [*devices, rec], "mixed": True}
        atomic_write_text(path, json.dumps(saved, indent=1))
        if cfg is not None:
            from ._runner import save_run_config

            save_run_config(cfg, run, {f"{stage}_device": saved})
        return saved
