"""Networks for the atlas: loading (bundled EfficientNet-Lite, torchvision, TorchScript), layers, sampling.

``load_network(cfg.model)`` gives a :class:`Network` (module in eval mode on the CPU
plus its preprocessing and class names); :func:`list_layers` / :func:`layer_shape`
describe its hookable layers; :class:`LayerSampler` returns per-image layer vectors
at given positions and, optionally, their top-K class attributions.
"""

from ._classes import class_names_for, imagenet_class_names
from ._layers import layer_output, layer_shape, list_layers
from ._network import ModelError, Network
from ._registry import load_network, registered_models
from ._activations import LayerActivations
from ._fold import fold_batchnorm
from ._sampler import LayerSampler, pin_threads, resolve_device
from ._torchvision import default_weights_path, torchvision_names

__all__ = [
    "ModelError",
    "Network",
    "load_network",
    "list_layers",
    "layer_shape",
    "layer_output",
    "LayerSampler",
    "pin_threads",
    "LayerActivations",
    "fold_batchnorm",
    "resolve_device",
    "registered_models",
    "torchvision_names",
    "default_weights_path",
    "imagenet_class_names",
    "class_names_for",
]
