"""Model names -> loaders; ``load_network`` dispatches on ``model.name``."""

from __future__ import annotations

from collections.abc import Callable

from ..config import ModelConfig
from ._efficientnet import LITE_MODELS, load_efficientnet_lite
from ._network import ModelError, Network
from ._torchscript import load_torchscript
from ._torchvision import load_torchvision, torchvision_names

__all__ = ["REGISTRY", "registered_models", "load_network"]

REGISTRY: dict[str, Callable[[ModelConfig], Network]] = {
    **{name: load_efficientnet_lite for name in LITE_MODELS},
    "torchscript": load_torchscript,
}


def registered_models() -> list[str]:
    """Names with their own loader (any torchvision classifier name works as well)."""
    return list(REGISTRY)


def load_network(model: ModelConfig) -> Network:
    """Load the network ``model.name`` names (eval mode, CPU), its weights checked into ``weights_sha256``.

    ``efficientnet_lite0`` (default) / ``efficientnet_lite2``: bundled weights;
    ``torchscript``: the file in ``model.weights``; any torchvision classifier name:
    ``model.weights`` or the torch hub cache. Never downloads.
    """
    loader = REGISTRY.get(model.name)
    if loader is not None:
        return loader(model)
    if model.name in torchvision_names():
        return load_torchvision(model)
    raise ModelError(
        f"unknown model `{model.name}`; set model.name to one of {', '.join(REGISTRY)}, or any torchvision classifier "
        f"name (e.g. googlenet, resnet50, vgg16, inception_v3; all: {', '.join(torchvision_names())})"
    )
