"""Networks for the atlas: loading (bundled EfficientNet-Lite, torchvision, timm, TorchScript, the user's own
code), layers and their layouts, sampling.

``load_network(cfg.model)`` gives a :class:`Network` (module in eval mode on the CPU
plus its preprocessing and class names); :func:`list_layers` / :func:`layer_shape`
describe its hookable layers as (C, rows, cols) grids whatever their layout
(:func:`layer_specs` / :func:`layer_spec` add the layout: ``nchw``, ``nhwc`` or
``tokens``); :class:`LayerSampler` returns per-image layer vectors at given positions
and, optionally, their top-K class attributions. :func:`register_model` makes a module
object loadable as ``model.name: object:<name>`` in this process.
"""

from ._activations import LayerActivations
from ._classes import class_names_for, imagenet_class_names, read_class_names
from ._factory import network_from_module, register_model, registered_objects
from ._fold import fold_batchnorm
from ._layers import layer_output, layer_shape, layer_spec, layer_specs, list_layers
from ._layouts import LAYOUTS, LayerSpec
from ._network import ModelError, Network
from ._registry import load_network, model_names, registered_models
from ._sampler import LayerSampler, LayerSamplers, pin_threads, resolve_device
from ._torchvision import default_weights_path, torchvision_names
from ._whole_grid import layer_grid

__all__ = [
    "ModelError",
    "Network",
    "load_network",
    "list_layers",
    "layer_shape",
    "layer_spec",
    "layer_specs",
    "layer_output",
    "LayerSpec",
    "LAYOUTS",
    "LayerSampler",
    "LayerSamplers",
    "layer_grid",
    "pin_threads",
    "LayerActivations",
    "fold_batchnorm",
    "resolve_device",
    "registered_models",
    "model_names",
    "register_model",
    "registered_objects",
    "network_from_module",
    "torchvision_names",
    "default_weights_path",
    "imagenet_class_names",
    "class_names_for",
    "read_class_names",
]
