"""atlas: activation atlases at scale for any PyTorch image model.

The pipeline has five resumable, shardable stages over one run directory:
collect -> reduce -> grid -> render -> tile. Use the `atlas` command, or:

    >>> import atlas
    >>> cfg = atlas.load("pipelines/demo.yaml", ["images.demo_count=200"])
    >>> atlas.run(cfg, stages=["collect"])          # doctest: +SKIP
    >>> atlas.status(cfg.run_dir)                   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import format_status, layers, load, run, run_stage, status
    from .config import Config, ConfigError
    from .store import RunDir, StoreError

__all__ = [
    "Config",
    "ConfigError",
    "RunDir",
    "StoreError",
    "format_status",
    "layers",
    "load",
    "run",
    "run_stage",
    "status",
]

__version__ = "0.1.0"

_HOMES = {"format_status": "api", "layers": "api", "load": "api", "run": "api", "run_stage": "api", "status": "api",
          "Config": "config", "ConfigError": "config", "RunDir": "store", "StoreError": "store"}


def __getattr__(name: str) -> Any:
    """The public names, imported on first use: ``import atlas.config`` then loads no stage."""
    if name not in _HOMES:
        raise AttributeError(f"module 'atlas' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
