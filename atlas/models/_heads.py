"""Classifier heads: how many classes a weights file's head has, or that it has none (a backbone).

The architecture is first built on the ``meta`` device (no memory, no initialisation cost;
a CPU build when an architecture cannot be built there) to find the modules of its head;
the number of classes is then the first dimension of their weights in the file. A file
without them is a backbone: the head modules are replaced by ``nn.Identity`` and the
network has no classifier (no attribution).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ._network import ModelError

__all__ = ["built_on_meta", "head_names", "classes_in_state", "drop_heads"]


def built_on_meta(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` on the meta device (no weights allocated), or on the CPU when that fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return build()
        except Exception:  # noqa: BLE001 - some builders read tensor values while constructing
            return build()


def head_names(module: torch.nn.Module, heads: list[torch.nn.Module]) -> list[str]:
    """The names in ``module`` of the given head modules."""
    ids = {id(h) for h in heads}
    return [n for n, m in module.named_modules() if n and id(m) in ids]


def classes_in_state(state: dict[str, torch.Tensor], heads: list[str], path: Path, name: str) -> int:
    """Classes of the head in ``state`` (the first dimension of its weights), 0 when the file has no head."""
    counts = {h: int(state[f"{h}.weight"].shape[0]) for h in heads if f"{h}.weight" in state}
    if not counts:
        return 0
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{h}: {k}" for h, k in counts.items())
        raise ModelError(f"the heads in weights file {path} for `{name}` disagree on the number of classes ({shown}); "
                         "save a state dict whose classifier heads all have the same number of outputs")
    return next(iter(counts.values()))


def drop_heads(module: torch.nn.Module, heads: list[str]) -> None:
    """Replace the head modules by ``nn.Identity`` (a backbone: the output is the features before the head)."""
    for h in heads:
        module.set_submodule(h, torch.nn.Identity())
