"""The pipeline's stages, each a :class:`Stage` value ``STAGE`` in its module, run by one unit runner.

Public: the :class:`Stage` protocol and :class:`StageBase`, :func:`get_stage` (the registry),
:func:`run_stage` (one shard of any stage in this process), :func:`stage_status`,
:func:`finished` and :func:`parse_shard`. A stage never imports another stage: outputs meet
in the run directory (:mod:`atlas.store`).
"""

from __future__ import annotations

import importlib

from ._protocol import Execution, Job, Resources, Stage, StageBase, StageStatus
from ._runner import check_inputs, final_info, finished, is_stale, my_units, run_stage, save_run_config, stage_status
from ._shard import parse_shard

__all__ = [
    "ANALYSES",
    "STAGES",
    "Execution",
    "Job",
    "Resources",
    "Stage",
    "StageBase",
    "StageStatus",
    "available_stages",
    "check_inputs",
    "final_info",
    "finished",
    "get_stage",
    "is_stale",
    "my_units",
    "parse_shard",
    "run_stage",
    "save_run_config",
    "stage_status",
]

STAGES: tuple[str, ...] = ("collect", "reduce", "grid", "render", "tile")
"""The pipeline's stages in order (each module ``atlas.stages.<name>`` defines ``STAGE``)."""

ANALYSES: tuple[str, ...] = ("locate", "patch-test")
"""Stages run on a finished atlas by their own commands, not by ``atlas run`` (module
``atlas.stages.<name with - as _>``); they keep the same contract."""


def get_stage(name: str) -> Stage:
    """The stage ``name`` (a pipeline stage or an analysis); a clear error for unknown or not-yet-built ones."""
    if name not in STAGES and name not in ANALYSES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES + ANALYSES)}")
    module_name = f"{__name__}.{name.replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise NotImplementedError(f"stage `{name}` is not implemented in this version of atlas") from None
        raise
    stage: Stage = module.STAGE
    return stage


def available_stages() -> list[str]:
    """Stages implemented in this version, in pipeline order."""
    out = []
    for name in STAGES:
        try:
            get_stage(name)
        except NotImplementedError:
            continue
        out.append(name)
    return out
