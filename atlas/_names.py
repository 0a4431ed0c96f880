"""The stages' names, in one module both :mod:`atlas.config` and :mod:`atlas.stages` import
(so the config never imports the stages, and no import circle joins them)."""

from __future__ import annotations

__all__ = ["ANALYSES", "STAGES"]

STAGES: tuple[str, ...] = ("collect", "reduce", "grid", "render", "tile")
"""The pipeline's stages in order (each module ``atlas.stages.<name>`` defines ``STAGE``)."""

ANALYSES: tuple[str, ...] = ("locate", "patch-test", "follow", "units", "compare")
"""Stages run on a finished atlas by their own commands, not by ``atlas run`` (module
``atlas.stages.<name with - as _>``); they keep the same contract."""
