"""Model names -> loaders; ``load_network`` dispatches on ``model.name`` (and ``model.factory``)."""

from __future__ import annotations

from collections.abc import Callable

from ..config import ModelConfig
from ._classes import read_class_names
from ._efficientnet import LITE_MODELS, load_efficientnet_lite
from ._factory import OBJECT_PREFIX, load_factory, load_object
from ._network import ModelError, Network
from ._timm import TIMM_PREFIX, load_timm
from ._torchscript import load_torchscript
from ._torchvision import load_torchvision, torchvision_names

__all__ = ["REGISTRY", "registered_models", "load_network"]

REGISTRY: dict[str, Callable[[ModelConfig], Network]] = {
    **{name: load_efficientnet_lite for name in LITE_MODELS},
    "torchscript": load_torchscript,
}


def registered_models() -> list[str]:
    """Names with their own loader (any torchvision classifier name, ``timm:<name>`` and ``object:<name>`` work as well)."""
    return list(REGISTRY)


def _picks_a_network(name: str) -> bool:
    return name in REGISTRY or name in torchvision_names() or name.startswith((TIMM_PREFIX, OBJECT_PREFIX))


def _load(model: ModelConfig) -> Network:
    if model.factory is not None:
        if _picks_a_network(model.name):
            raise ModelError(
                f"model.factory={model.factory} builds the network, but model.name={model.name} names another one; "
                "set model.name to a name of your own for this network (it labels the run), e.g. --set model.name=my_net"
            )
        return load_factory(model)
    if model.name.startswith(TIMM_PREFIX):
        return load_timm(model)
    if model.name.startswith(OBJECT_PREFIX):
        return load_object(model)
    loader = REGISTRY.get(model.name)
    if loader is not None:
        return loader(model)
    if model.name in torchvision_names():
        return load_torchvision(model)
    raise ModelError(
        f"unknown model `{model.name}`; set model.name to one of {', '.join(REGISTRY)}, any torchvision classifier "
        f"name (e.g. googlenet, resnet50, vit_b_16, swin_t; all: {', '.join(torchvision_names())}), timm:<architecture> "
        "(e.g. timm:vit_small_patch16_224) with model.weights, or set model.factory=package.module:function "
        "to build your own"
    )


def load_network(model: ModelConfig) -> Network:
    """Load the network ``model`` describes (eval mode, CPU), its weights checked into ``weights_sha256``.

    ``efficientnet_lite0`` (default) / ``efficientnet_lite2``: bundled weights;
    ``torchscript``: the file in ``model.weights``; any torchvision classifier name:
    ``model.weights`` or the torch hub cache; ``timm:<architecture>``: ``model.weights``;
    ``model.factory``: the user's function; ``object:<name>``: a module registered in this
    process (``api.use_model``). Never downloads. ``model.layout`` / ``model.prefix_tokens``
    are carried by the network (how its layers hold their grid); ``model.class_names``
    names its classes.
    """
    net = _load(model)
    net.layout = model.layout
    net.prefix_tokens = model.prefix_tokens
    if model.class_names is not None:
        net.class_names = read_class_names(model.class_names, len(net.class_names), model.name)
    return net
