"""Any torchvision classifier by name, built without weights and loaded strictly from a local file.

The file is ``model.weights`` when given, else torchvision's own download target in
the torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file of the default
weights' URL>``). Nothing is ever downloaded. Construction mirrors torchvision's
pretrained builders where they differ from ``weights=None`` (GoogLeNet /
Inception-v3 aux heads and input transform, ViT / MaxViT input size, DenseNet's
legacy key names).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision

from ..config import ModelConfig
from ._network import ModelError, Network, file_sha256, read_state_dict, resolve_preprocessing

__all__ = ["torchvision_names", "default_weights_path", "load_torchvision"]

_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


def torchvision_names() -> list[str]:
    """Names of torchvision's image classifiers (``googlenet``, ``resnet50``, ``vgg16``, ...)."""
    return list(_names())


def _default_weights(name: str) -> Any:
    return torchvision.models.get_model_weights(name).DEFAULT


def default_weights_path(name: str) -> Path:
    """Where torchvision would download ``name``'s default weights: the hub cache's checkpoints folder."""
    file_name = Path(urlparse(_default_weights(name).url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _builder_kwargs(name: str, weights: Any) -> dict[str, Any]:
    """Constructor arguments torchvision's pretrained builder would use for ``name``."""
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": True, "transform_input": True, "init_weights": False}
    if name.startswith("vit_"):
        return {"image_size": weights.meta["min_size"][0]}
    if name.startswith("maxvit"):
        return {"input_size": weights.meta["min_size"]}
    return {}


def _drop_aux_heads(name: str, module: torch.nn.Module) -> None:
    """After loading, remove the auxiliary heads like torchvision does (they are not pretrained)."""
    if name == "googlenet":
        module.aux_logits = False
        module.aux1 = None
        module.aux2 = None
    elif name == "inception_v3":
        module.aux_logits = False
        module.AuxLogits = None


def _fix_keys(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DenseNet checkpoints use the legacy ``norm.1`` key names; rename as torchvision does."""
    if not name.startswith("densenet"):
        return state
    return {(_DENSENET_KEY.sub(r"\1\2", k)): v for k, v in state.items()}


def _rgb(values: list[float]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _weights_file(model: ModelConfig) -> Path:
    """``model.weights`` when set, else the torch cache file; ModelError naming both paths when it is missing."""
    cache = default_weights_path(model.name)
    path = Path(model.weights).expanduser() if model.weights is not None else cache
    if path.is_file():
        return path
    if model.weights is None:
        problem = f"model.weights=None (not set) and the torch cache file {cache} does not exist"
    else:
        cached = f"the torch cache file {cache} exists: unset model.weights to use it" if cache.is_file() else f"neither does the torch cache file {cache}"
        problem = f"model.weights={model.weights} does not exist ({cached})"
    raise ModelError(
        f"no weights for torchvision model `{model.name}`: {problem}. Fix: pass the file with "
        f"--set model.weights=/path/to/{cache.name}, or copy it to {cache}. On a machine with network, "
        f"`python -c \"import torchvision; torchvision.models.get_model('{model.name}', weights='DEFAULT')\"` downloads it "
        f"into that machine's torch cache (from {_default_weights(model.name).url})."
    )


def load_torchvision(model: ModelConfig) -> Network:
    """Build torchvision's ``model.name`` with ``weights=None`` and load the local weights file with strict=True."""
    weights = _default_weights(model.name)
    path = _weights_file(model)
    state = _fix_keys(model.name, read_state_dict(path, model.name))
    categories = list(weights.meta["categories"])
    module = torchvision.models.get_model(model.name, weights=None, num_classes=len(categories), **_builder_kwargs(model.name, weights))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights file {path} does not fit torchvision's `{model.name}`: {e}. Pass that model's weights in model.weights (or fix model.name)") from None
    _drop_aux_heads(model.name, module)
    transform = weights.transforms()
    input_size, mean, std = resolve_preprocessing(model, int(transform.crop_size[0]), _rgb(transform.mean), _rgb(transform.std))
    return Network(
        module=module.eval(),
        name=model.name,
        input_size=input_size,
        mean=mean,
        std=std,
        class_names=categories,
        weights_path=str(path),
        weights_sha256=file_sha256(path),
    )
