"""The loaded network: module plus everything needed to feed it and name its outputs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, file_sha256  # file_sha256 re-exported for the loaders

__all__ = ["ModelError", "Network", "file_sha256", "read_state_dict", "resolve_preprocessing"]


class ModelError(ValueError):
    """A model problem (unknown name, missing weights, unknown layer, ...) with a message naming the fix."""


@dataclass
class Network:
    """A network ready for sampling.

    ``module`` maps a preprocessed batch float32 [B, 3, S, S] (S = ``input_size``) to
    logits [B, len(class_names)]; a network without a classifier (a backbone, a
    self-supervised encoder) has no ``class_names`` (``[]``) and its output is not used.
    It is in eval mode and on the CPU. ``layout`` / ``prefix_tokens``: how its layers'
    outputs hold their grid (``auto``: probed; see :mod:`atlas.models._layouts`).
    """

    module: torch.nn.Module
    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str]
    weights_path: str | None = None
    weights_sha256: str | None = None
    layout: str = "auto"
    prefix_tokens: int | None = None
    _layer_cache: dict[int, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def has_classifier(self) -> bool:
        """True when the network's output is class logits (its ``class_names`` name them)."""
        return bool(self.class_names)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, S, S, 3] (RGB, already resized/cropped) -> float32 [B, 3, S, S], ``(x/255 - mean)/std``."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ModelError(
                f"Network.preprocess expects uint8 RGB images [B, S, S, 3], got {images.dtype} {tuple(images.shape)}; "
                "decode to uint8 HWC and stack into a batch first"
            )
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()


def _unwrap(state: dict[str, Any]) -> dict[str, Any]:
    """Common checkpoint wrappers: {"state_dict": sd} / {"model": sd}, and DataParallel's ``module.`` prefix."""
    if not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """Load a state dict (.pth) on the CPU without unpickling code; ModelError with the fix when it cannot."""
    if not path.is_file():
        raise ModelError(f"weights file {path} for model `{name}` does not exist; set model.weights to an existing file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if pickled:  # torch.save(model): the file needs the class's code (and would run it) to load
            raise ModelError(f"weights file {path} for `{name}` holds pickled Python objects ({pickled[1]}), such as a "
                             "whole model saved with torch.save(model), not a state dict: save the weights with "
                             "torch.save(model.state_dict(), PATH) and pass that file") from None
        why = "not a file that torch.save wrote, or a damaged one" if "Weights only load failed" in str(e) else \
            next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ModelError(f"cannot read weights file {path} for `{name}` ({why}); pass a PyTorch state dict (.pth) in model.weights") from None
    if not isinstance(state, dict):
        raise ModelError(f"weights file {path} for `{name}` holds a {type(state).__name__}, not a state dict; save model.state_dict() instead")
    return _unwrap(state)


def _triple(key: str, value: list[float], positive: bool) -> tuple[float, float, float]:
    if len(value) != 3 or (positive and any(v <= 0 for v in value)):
        need = "three positive numbers" if positive else "three numbers"
        raise ModelError(f"config key `{key}` must be {need} (one per RGB channel), got {value}; e.g. --set {key}=[0.5,0.5,0.5]")
    return (float(value[0]), float(value[1]), float(value[2]))


def resolve_preprocessing(
    model: ModelConfig,
    input_size: int | None,
    mean: tuple[float, float, float] | None,
    std: tuple[float, float, float] | None,
) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
    """The model's own (input_size, mean, std), each overridden by ``model.input_size/mean/std`` when set.

    A value that is None on both sides raises ModelError naming the config keys to set.
    """
    if model.input_size is not None:
        if model.input_size <= 0:
            raise ModelError(f"config key `model.input_size` must be positive, got {model.input_size}")
        input_size = model.input_size
    if model.mean is not None:
        mean = _triple("model.mean", model.mean, positive=False)
    if model.std is not None:
        std = _triple("model.std", model.std, positive=True)
    missing = [k for k, v in (("model.input_size", input_size), ("model.mean", mean), ("model.std", std)) if v is None]
    if missing:
        raise ModelError(
            f"model `{model.name}` does not define {', '.join(missing)}; set them, e.g. "
            "--set model.input_size=224 --set model.mean=[0.485,0.456,0.406] --set model.std=[0.229,0.224,0.225]"
        )
    assert input_size is not None and mean is not None and std is not None
    return input_size, mean, std
