"""Where a run's further layers live: ``RUN/layers/<slug>/``, one run directory per layer.

A config with ``model.layers: [A, B, C]`` collects every layer in one pass over the images; the
first layer's atlas is the run itself (``RUN/collect``, ``RUN/reduce``, ..., ``RUN/tiles``, as a
one-layer run), and each further layer is a run directory of its own under ``RUN/layers/``,
whose ``collect`` group the run's collect pass writes and whose reduce, grid, render, tile,
locate, patch-test and class atlases run there as in any run (docs/layers.md, docs/formats.md).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..store import RunDir

__all__ = ["LAYERS", "layer_slug", "layer_run", "layer_runs"]

LAYERS = "layers"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def layer_slug(layer: str) -> str:
    """The folder name of ``layer``: its name with every character outside ``[A-Za-z0-9._-]``
    replaced by ``_`` (``features.mixed3b`` stays ``features.mixed3b``; ``a/b`` is ``a_b``)."""
    slug = _UNSAFE.sub("_", layer)
    return "_" + slug if slug.startswith(".") else slug


def layer_run(run: RunDir, layer: str) -> RunDir:
    """The run directory of a further layer of ``run``: ``RUN/layers/<slug>``."""
    return run.at(run.root / LAYERS / layer_slug(layer))


def layer_runs(root: str | Path) -> list[Path]:
    """The further layers' run directories present under ``root`` (sorted by folder name)."""
    folder = Path(root) / LAYERS
    return sorted(d for d in folder.iterdir() if d.is_dir()) if folder.is_dir() else []
