"""The pipeline's stages. Each module has ``STAGE``, ``run(cfg, *, shard)`` and ``status(run)``."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._base import StageStatus, parse_shard

__all__ = ["STAGES", "StageStatus", "get_stage", "parse_shard", "available_stages"]

STAGES: tuple[str, ...] = ("collect", "reduce", "grid", "render", "tile")


def get_stage(name: str) -> ModuleType:
    """The stage module ``name``; a clear error for unknown or not-yet-built stages."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__name__}.{name}":
            raise NotImplementedError(f"stage `{name}` is not implemented in this version of atlas") from None
        raise


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
