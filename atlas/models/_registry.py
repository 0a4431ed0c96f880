"""Model names -> loaders; ``load_network`` dispatches on ``model.name`` (and ``model.factory``)."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from ..config import ModelConfig
from ._classes import read_class_names
from ._efficientnet import LITE_MODELS, load_efficientnet_lite
from ._factory import OBJECT_PREFIX, load_factory, load_object
from ._network import ModelError, Network
from ._timm import TIMM_PREFIX, load_timm
from ._torchscript import load_torchscript
from ._torchvision import load_torchvision, torchvision_names

__all__ = ["REGISTRY", "load_network", "model_names", "registered_models"]

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
    raise ModelError(_unknown_model(model.name))


def model_names() -> list[str]:
    """The names ``model.name`` takes without a factory: those with their own loader, then torchvision's
    classifiers (``timm:<architecture>`` and ``object:<name>`` work as well)."""
    return [*REGISTRY, *torchvision_names()]


_ALIASES = {"inceptionv1": "googlenet", "lite0": "efficientnet_lite0", "lite2": "efficientnet_lite2"}
"""Names researchers use for a registered network (InceptionV1 is torchvision's GoogLeNet)."""


def _unknown_model(name: str) -> str:
    """One short line: the closest names, how to list them all, the other ways to name a network."""
    names = model_names()
    alias = _ALIASES.get(name.lower().replace("-", "").replace("_", ""))
    close = [alias] if alias in names else difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]}? Or " if close else ""
    return (f"unknown model `{name}`; {hint}set model.name to one of the {len(names)} names that "
            "`atlas layers --list-models` prints (e.g. resnet50), timm:<architecture> with model.weights, "
            "or a name of your own with model.factory=package.module:function")


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
