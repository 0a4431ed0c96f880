"""The unit of execution every engine shares: one shard of one stage, with its failures recorded."""

from __future__ import annotations

import datetime
import os
import socket
import traceback
from typing import Any

from ..config import Config
from ..stages import finished, get_stage, run_stage
from ..store import RunDir

__all__ = ["run_shard", "stage_finished", "failure_info", "refused"]


def failure_info(stage: str, shard: tuple[int, int], error: BaseException | str) -> dict[str, Any]:
    """What ``atlas status`` shows about a failed shard: the reason, where and when."""
    tail: list[str]
    if isinstance(error, SystemExit) and error.code == 143:
        reason, tail = "terminated by SIGTERM (walltime, preemption or scancel?)", []
    elif isinstance(error, KeyboardInterrupt):
        reason, tail = "interrupted (Ctrl-C or SIGINT)", []
    elif isinstance(error, BaseException):
        reason = f"{type(error).__name__}: {error}"
        tb = traceback.format_exception(type(error), error, error.__traceback__)
        tail = "".join(tb).strip().splitlines()[-12:]
    else:
        reason, tail = error, []
    info: dict[str, Any] = {
        "stage": stage, "shard": f"{shard[0]}/{shard[1]}", "reason": reason, "host": socket.gethostname(),
        "pid": os.getpid(), "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "traceback": tail,
    }
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        info["slurm_job"] = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if "SLURM_ARRAY_TASK_ID" in os.environ else job
    return info


def refused(error: BaseException) -> bool:
    """Whether ``error``, raised before a stage's work starts, is the user's to fix (a config,
    argument, input or selection problem: one line, no traceback) rather than a failure."""
    from ..api import user_errors

    return isinstance(error, user_errors())


def stage_finished(name: str, cfg: Config) -> bool:
    """Whether stage ``name`` of ``cfg``'s run is finished with ``cfg``'s settings."""
    return finished(get_stage(name, cfg), cfg)


def run_shard(name: str, cfg: Config, shard: tuple[int, int] = (0, 1), client: Any = None) -> bool:
    """Run shard ``shard`` of stage ``name`` in this process; returns whether the stage is now complete.

    A failure (any exception, Ctrl-C included) is recorded under ``RUN/state/<stage>/failed/``
    before it propagates; a stage that completes forgets its failure records. A refusal is not
    a failure: a user's mistake found before the work starts (an unfinished input, a bad
    selection, a missing source: :func:`refused`) propagates and records nothing. Idempotent:
    finished units are skipped, so rerunning a shard, or running it twice at once, is safe.
    """
    run = RunDir(cfg.run_dir)
    key = f"shard-{shard[0]}-of-{shard[1]}"
    began: list[bool] = []
    try:
        done = run_stage(get_stage(name, cfg), cfg, shard, client, started=lambda: began.append(True))
    except BaseException as e:
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:  # e.g. Zarr's writer: say where
            e.filename = str(run.root)
        if run.root.is_dir() and (began or not refused(e)):
            try:
                run.record_failure(name, key, failure_info(name, shard, e))
            except Exception:  # the original error matters more (e.g. the disk is full)
                pass
        raise
    run.clear_failure(name, None if done else key)
    return done
