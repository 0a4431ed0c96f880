"""atlas: activation atlases at scale for any PyTorch image model.

The pipeline has five resumable, shardable stages over one run directory:
collect -> reduce -> grid -> render -> tile. Use the `atlas` command, or:

    >>> import atlas
    >>> cfg = atlas.load("pipelines/demo.yaml", ["images.demo_count=200"])
    >>> atlas.run(cfg, stages=["collect"])          # doctest: +SKIP
    >>> atlas.status(cfg.run_dir)                   # doctest: +SKIP
"""

from __future__ import annotations

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
