"""The pipeline's stages, each a :class:`Stage` value ``STAGE`` in its module, run by one unit runner.

Public: the :class:`Stage` protocol and :class:`StageBase`, :func:`get_stage` (the registry),
:func:`run_stage` (one shard of any stage in this process), :func:`stage_status`,
:func:`finished` and :func:`parse_shard`. A stage never imports another stage: outputs meet
in the run directory (:mod:`atlas.store`).
"""

from __future__ import annotations

import importlib
from typing import Any

from .._names import ANALYSES, STAGES
from ..config import Config
from ._protocol import Execution, Job, Resources, Stage, StageBase, StageStatus
from ._runner import (
    check_inputs,
    final_info,
    finished,
    is_stale,
    my_units,
    run_stage,
    save_run_config,
    stage_elapsed,
    stage_status,
)
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
    "stage_elapsed",
]


def get_stage(name: str, cfg: Config | None = None) -> Stage[Any]:
    """The stage ``name`` (a pipeline stage or an analysis); a clear error for unknown or not-yet-built ones.

    With ``cfg``: the stage that does that config's work under this name (its
    :meth:`~atlas.stages.StageBase.for_config`; collect in a class atlas copies its parent's rows; in a
    comparison's view, ``compare.layout`` set, collect and reduce are :mod:`atlas.stages._pair`'s).
    Without: the module's ``STAGE``, enough for its name, inputs and output."""
    if name not in STAGES and name not in ANALYSES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES + ANALYSES)}")
    module_name = f"{__name__}.{name.replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise NotImplementedError(f"stage `{name}` is not implemented in this version of atlas") from None
        raise
    stage: Stage[Any] = module.STAGE
    return stage if cfg is None else stage.for_config(cfg)


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
