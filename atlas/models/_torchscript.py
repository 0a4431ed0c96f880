"""TorchScript models whose top-level module is an ``nn.Sequential`` (possibly nested).

Python forward hooks never run inside scripted code, so layers are the dotted paths
of the Sequential's (nested) children and the sampler runs the children one by one
in Python (see ``_layers.run_tapped``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..config import ModelConfig
from ._classes import class_names_for
from ._layers import is_script_sequential, logits_of
from ._network import ModelError, Network, file_sha256, resolve_preprocessing

__all__ = ["load_torchscript"]


def _jit_load(path: Path) -> torch.nn.Module:
    if not path.is_file():
        raise ModelError(f"TorchScript file {path} does not exist; set model.weights to the file saved with torch.jit.save")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*deprecated", category=FutureWarning)
            module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")
            return module
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ModelError(f"cannot load {path} as TorchScript ({e}); save the model with torch.jit.save(torch.jit.script(model), path)") from None


def _check_sequential(module: torch.nn.Module, path: Path) -> None:
    if not is_script_sequential(module):
        kind = getattr(module, "original_name", type(module).__name__)
        raise ModelError(
            f"TorchScript model {path} is a `{kind}`, not an nn.Sequential: Python hooks cannot see layers inside scripted "
            "code, so only Sequential models (whose children are run one by one) are supported. Fix: script an "
            "nn.Sequential of the network's stages (torch.jit.script(nn.Sequential(...))), or use the eager model "
            "through its torchvision name (model.name=resnet50, ...)"
        )


def _num_classes(module: torch.nn.Module, input_size: int, path: Path) -> int:
    """K for logits [1, K]; 0 for any other output (no classifier)."""
    with torch.no_grad():
        try:
            out = module(torch.zeros(1, 3, input_size, input_size))
        except Exception as e:  # noqa: BLE001 - report any failure with the input that caused it
            raise ModelError(f"TorchScript model {path} fails on an input [1, 3, {input_size}, {input_size}] ({e}); check model.input_size") from None
    try:
        return int(logits_of(out).shape[1])
    except ModelError:
        return 0


def load_torchscript(model: ModelConfig) -> Network:
    """Load ``model.weights`` (a TorchScript Sequential) on the CPU; needs model.input_size, model.mean, model.std."""
    if model.weights is None:
        raise ModelError("model `torchscript` needs the TorchScript file: --set model.weights=/path/to/model.pt")
    path = Path(model.weights).expanduser()
    input_size, mean, std = resolve_preprocessing(model, None, None, None)
    module = _jit_load(path)
    _check_sequential(module, path)
    module.eval()
    return Network(
        module=module,
        name=model.name,
        input_size=input_size,
        mean=mean,
        std=std,
        class_names=class_names_for(_num_classes(module, input_size, path)),
        weights_path=str(path),
        weights_sha256=file_sha256(path),
    )
