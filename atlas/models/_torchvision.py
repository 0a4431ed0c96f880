"""Any torchvision classifier by name, built without weights and loaded strictly from a local file.

The file is ``model.weights`` when given, else torchvision's own download target in
the torch hub cache (``<torch.hub.get_dir()>/checkpoints/<file of the default
weights' URL>``). Nothing is ever downloaded. Construction mirrors torchvision's
pretrained builders where they differ from ``weights=None`` (GoogLeNet /
Inception-v3 aux heads and input transform, ViT / MaxViT input size, DenseNet's
legacy key names). The number of classes is read from the file (a fine-tuned head
loads), a ViT's input size from its position embedding, and a file without a head
gives a backbone (see :mod:`atlas.models._heads`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision

from .._cache import cached
from ..config import ModelConfig
from ._classes import class_names_for
from ._heads import built_on_meta, classes_in_state, drop_heads, head_names
from ._network import ModelError, Network, file_sha256, read_state_dict, resolve_preprocessing

__all__ = ["torchvision_names", "default_weights_path", "load_torchvision"]

_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def _names() -> tuple[str, ...]:
    """torchvision's classifier names (listed once per process and torchvision version)."""
    return cached("models.torchvision_names", torchvision.__version__,
                  lambda: tuple(torchvision.models.list_models(module=torchvision.models)))


def torchvision_names() -> list[str]:
    """Names of torchvision's image classifiers (``googlenet``, ``resnet50``, ``vgg16``, ...)."""
    return list(_names())


def _default_weights(name: str) -> Any:
    return torchvision.models.get_model_weights(name).DEFAULT


def default_weights_path(name: str) -> Path:
    """Where torchvision would download ``name``'s default weights: the hub cache's checkpoints folder."""
    file_name = Path(urlparse(_default_weights(name).url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _builder_kwargs(name: str, weights: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Constructor arguments torchvision's pretrained builder would use for ``name``, fitted to ``state``:
    aux heads only when the file has them, a ViT's input size from its position embedding."""
    if name == "googlenet":
        aux = any(k.startswith("aux1.") for k in state)
        return {"aux_logits": aux, "transform_input": True, "init_weights": False}
    if name == "inception_v3":
        aux = any(k.startswith("AuxLogits.") for k in state)
        return {"aux_logits": aux, "transform_input": True, "init_weights": False}
    if name.startswith("vit_"):
        return {"image_size": _vit_image_size(state) or weights.meta["min_size"][0]}
    if name.startswith("maxvit"):
        return {"input_size": weights.meta["min_size"]}
    return {}


def _vit_image_size(state: dict[str, torch.Tensor]) -> int | None:
    """A torchvision ViT's input side from its weights: sqrt(positions - 1) patches of the patch size."""
    pos, proj = state.get("encoder.pos_embedding"), state.get("conv_proj.weight")
    if pos is None or proj is None or pos.ndim != 3 or proj.ndim != 4:
        return None
    grid = round((int(pos.shape[1]) - 1) ** 0.5)
    return grid * int(proj.shape[-1]) if grid * grid == int(pos.shape[1]) - 1 else None


def _heads(name: str, kwargs: dict[str, Any]) -> list[str]:
    """Names of the classifier heads of torchvision's ``name``: the layers with 1000 outputs at the default."""
    meta = built_on_meta(lambda: torchvision.models.get_model(name, weights=None, **kwargs))
    heads: list[torch.nn.Module] = [
        m for m in meta.modules() if (isinstance(m, torch.nn.Linear) and m.out_features == 1000)
        or (isinstance(m, torch.nn.Conv2d) and m.out_channels == 1000)]
    return head_names(meta, heads)


_AUX_HEADS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


def _drop_aux_heads(name: str, module: torch.nn.Module) -> None:
    """After loading, remove the auxiliary heads like torchvision does (they are not pretrained)."""
    if name not in _AUX_HEADS:
        return
    for key, value in {"aux_logits": False, **dict.fromkeys(_AUX_HEADS[name])}.items():
        setattr(module, key, value)  # nn.Module's __setattr__ is typed for tensors and modules only


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
    """Build torchvision's ``model.name`` with ``weights=None`` and load the local weights file with strict=True.

    The number of classes is read from the file's head (a fine-tuned head loads); a file
    without a head is a backbone (no classifier, no attribution).
    """
    weights = _default_weights(model.name)
    path = _weights_file(model)
    state = _fix_keys(model.name, read_state_dict(path, model.name))
    kwargs = _builder_kwargs(model.name, weights, state)
    heads = _heads(model.name, kwargs)
    num_classes = classes_in_state(state, heads, path, model.name)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*default weight initialization", category=FutureWarning)
        module = torchvision.models.get_model(model.name, weights=None, num_classes=num_classes or 1000, **kwargs)
    if num_classes == 0:
        drop_heads(module, heads)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights file {path} does not fit torchvision's `{model.name}`: {e}. Pass that model's weights in model.weights (or fix model.name)") from None
    _drop_aux_heads(model.name, module)
    transform = weights.transforms()
    size = kwargs.get("image_size", int(transform.crop_size[0]))
    input_size, mean, std = resolve_preprocessing(model, size, _rgb(transform.mean), _rgb(transform.std))
    categories = list(weights.meta["categories"])
    return Network(
        module=module.eval(),
        name=model.name,
        input_size=input_size,
        mean=mean,
        std=std,
        class_names=categories if num_classes == len(categories) else class_names_for(num_classes),
        weights_path=str(path),
        weights_sha256=file_sha256(path),
    )
