"""list_layers / layer_shape / layer_output on the real Lite0."""

from __future__ import annotations

import warnings

import pytest
import torch

from atlas.models import ModelError, Network, layer_output, layer_shape, list_layers


def test_lite0_layers_and_shapes(lite0: Network) -> None:
    layers = list_layers(lite0)
    names = [n for n, _ in layers]
    shapes = dict(layers)
    assert shapes["blocks.4"] == (112, 14, 14)
    assert shapes["blocks.5"] == (192, 7, 7)
    assert shapes["conv_stem"] == (32, 112, 112) and names[0] == "conv_stem"
    assert shapes["blocks"] == (320, 7, 7) and shapes["conv_head"] == (1280, 7, 7)
    assert "" not in shapes and "classifier" not in shapes  # root and 2-D outputs are not layers
    assert len(names) == len(set(names))
    # execution order: a container's output comes after its children's
    assert names.index("blocks.4.2") < names.index("blocks.4") < names.index("blocks.5.0") < names.index("blocks.5")
    assert all(len(s) == 3 for s in shapes.values())


def test_layer_shape(lite0: Network) -> None:
    assert layer_shape(lite0, "blocks.5") == (192, 7, 7)
    assert layer_shape(lite0, "blocks.6.0.conv_pw") == (1152, 7, 7)


def test_unknown_layer_lists_the_layers(lite0: Network) -> None:
    with pytest.raises(ModelError) as info:
        layer_shape(lite0, "blocks.55")
    message = str(info.value)
    assert "blocks.55" in message and "atlas layers --model efficientnet_lite0" in message
    assert "blocks.4.2.conv_pwl" in message and "conv_head" in message  # the whole list
    assert "Did you mean `blocks.5`" in message


def test_layer_output_is_differentiable_and_truncated(lite0: Network) -> None:
    x = torch.zeros(1, 3, 224, 224, requires_grad=True)
    h = layer_output(lite0, "blocks.4", x)
    assert h.shape == (1, 112, 14, 14)
    h.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_eager_model_with_a_scripted_part() -> None:
    """Hooks cannot enter TorchScript: the scripted child is not a layer, the eager ones around it are."""
    from torch import nn

    from atlas.models import class_names_for

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()))
    module = nn.Sequential(nn.Conv2d(3, 4, 3), scripted, nn.Conv2d(4, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    net = Network(module, "mixed", 8, (0.0,) * 3, (1.0,) * 3, class_names_for(2))
    assert [n for n, _ in list_layers(net)] == ["0", "2", "3"]


def test_input_size_the_network_cannot_take() -> None:
    from torch import nn

    from atlas.models import class_names_for

    module = nn.Sequential(nn.Conv2d(3, 4, 5), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)).eval()  # needs 8 x 8 inputs
    with pytest.raises(ModelError, match=r"fails on an input \[1, 3, 10, 10\]"):
        list_layers(Network(module, "fixed", 10, (0.0,) * 3, (1.0,) * 3, class_names_for(2)))
