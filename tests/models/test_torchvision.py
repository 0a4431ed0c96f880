"""torchvision classifiers from a local weights file (never downloaded)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from atlas.config import ModelConfig
from atlas.models import (
    LayerSampler,
    ModelError,
    Network,
    imagenet_class_names,
    layer_shape,
    list_layers,
    load_network,
    model_names,
)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def empty_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME in a tmp folder so the real torch cache is never used."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def googlenet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State dict of a freshly built torchvision GoogLeNet with aux heads, as torchvision's weights have."""
    torch.manual_seed(0)
    model = torchvision.models.googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    path = tmp_path_factory.mktemp("weights") / "googlenet-1378be20.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def googlenet(googlenet_file: Path) -> Network:
    return load_network(ModelConfig(name="googlenet", weights=str(googlenet_file), layer="inception4c"))


def test_googlenet_loads_from_model_weights(googlenet: Network, googlenet_file: Path) -> None:
    assert googlenet.weights_path == str(googlenet_file) and len(googlenet.weights_sha256 or "") == 64
    assert (googlenet.input_size, googlenet.mean, googlenet.std) == (224, IMAGENET_MEAN, IMAGENET_STD)
    assert googlenet.class_names == imagenet_class_names()
    module = googlenet.module
    assert module.aux1 is None and module.aux2 is None and not module.aux_logits and module.transform_input
    saved = torch.load(googlenet_file, weights_only=True)
    assert torch.equal(module.state_dict()["inception4c.branch1.conv.weight"], saved["inception4c.branch1.conv.weight"])
    with torch.no_grad():
        assert module(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def test_googlenet_layers_and_sampling(googlenet: Network) -> None:
    shapes = dict(list_layers(googlenet))
    assert shapes["inception4c"] == (512, 14, 14) and shapes["inception3a"] == (256, 28, 28)
    assert not any(n.startswith("aux") for n in shapes)
    x, positions = torch.randn(2, 3, 224, 224), torch.tensor([[4, 5], [13, 0]])
    off, _, _ = LayerSampler(googlenet, "inception4c", attribution=False)(x, positions)
    on, values, classes = LayerSampler(googlenet, "inception4c", attribution=True, top_k=5)(x, positions)
    assert torch.equal(off, on) and off.shape == (2, 512)
    assert values is not None and classes is not None and values.shape == classes.shape == (2, 5)
    # reference: activation . gradient at the position (reverse mode) for the top class
    h: dict[str, torch.Tensor] = {}
    handle = googlenet.module.inception4c.register_forward_hook(lambda m, i, o: h.setdefault("h", o))
    logits = googlenet.module(x)
    handle.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, :1]).sum(), h["h"])
    b = torch.arange(2)
    expected = (grad[b, :, positions[:, 0], positions[:, 1]] * on).sum(1)
    torch.testing.assert_close(values[:, 0], expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())


def test_missing_weights_names_both_paths(empty_torch_cache: Path) -> None:
    cache_file = empty_torch_cache / "googlenet-1378be20.pth"
    with pytest.raises(ModelError) as info:
        load_network(ModelConfig(name="googlenet"))
    message = str(info.value)
    assert "model.weights=None" in message and str(cache_file) in message
    assert "--set model.weights=" in message
    with pytest.raises(ModelError) as info:
        load_network(ModelConfig(name="googlenet", weights="/no/such/googlenet.pth"))
    assert "/no/such/googlenet.pth" in str(info.value) and str(cache_file) in str(info.value)


def test_missing_model_weights_points_at_the_cached_file(resnet18_file: Path, empty_torch_cache: Path) -> None:
    empty_torch_cache.mkdir(parents=True)
    shutil.copy(resnet18_file, empty_torch_cache / resnet18_file.name)
    with pytest.raises(ModelError, match="unset model.weights to use it"):
        load_network(ModelConfig(name="resnet18", weights="/no/such/resnet18.pth"))


def test_resnet18_from_the_torch_cache(resnet18_file: Path, empty_torch_cache: Path) -> None:
    empty_torch_cache.mkdir(parents=True)
    cached = empty_torch_cache / resnet18_file.name
    shutil.copy(resnet18_file, cached)
    net = load_network(ModelConfig(name="resnet18"))
    assert net.weights_path == str(cached) and net.input_size == 224
    assert dict(list_layers(net))["layer3"] == (256, 14, 14)
    vectors, values, _ = LayerSampler(net, "layer3", attribution=True, top_k=3)(torch.randn(1, 3, 224, 224), torch.tensor([[7, 7]]))
    assert vectors.shape == (1, 256) and values is not None and values.shape == (1, 3)


def test_module_run_twice_is_not_a_layer(resnet18_file: Path) -> None:
    net = load_network(ModelConfig(name="resnet18", weights=str(resnet18_file)))
    assert "layer1.0.relu" not in dict(list_layers(net))  # BasicBlock calls its ReLU twice
    with pytest.raises(ModelError, match="runs 2 times"):
        layer_shape(net, "layer1.0.relu")


def test_wrong_weights_file(resnet18_file: Path) -> None:
    with pytest.raises(ModelError, match="does not fit torchvision's `googlenet`"):
        load_network(ModelConfig(name="googlenet", weights=str(resnet18_file)))


def test_unknown_model_name_lists_the_registry() -> None:
    with pytest.raises(ModelError) as info:
        load_network(ModelConfig(name="inceptionv1"))
    message = str(info.value)  # one short line: the closest name, and where the whole list is
    assert message.startswith("unknown model `inceptionv1`; did you mean googlenet? ") and len(message) < 300
    assert "atlas layers --list-models" in message and "timm:" in message and "model.factory" in message
    names = model_names()  # what `atlas layers --list-models` prints
    assert {"efficientnet_lite0", "torchscript", "googlenet"} <= set(names)


def test_overrides_apply_to_torchvision_models(googlenet_file: Path) -> None:
    net = load_network(ModelConfig(name="googlenet", weights=str(googlenet_file), input_size=256, mean=[0.5, 0.5, 0.5]))
    assert (net.input_size, net.mean, net.std) == (256, (0.5, 0.5, 0.5), IMAGENET_STD)


def test_inception_v3_drops_its_aux_head(tmp_path: Path) -> None:
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False)
    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save(model.state_dict(), path)
    net = load_network(ModelConfig(name="inception_v3", weights=str(path)))
    assert net.input_size == 299 and net.module.AuxLogits is None and not net.module.aux_logits
    assert layer_shape(net, "Mixed_6e") == (768, 17, 17)
