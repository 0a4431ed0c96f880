"""TorchScript nn.Sequential models: children run one by one in Python, so layers can be tapped."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from atlas.config import ModelConfig
from atlas.models import (
    LayerSampler,
    ModelError,
    Network,
    class_names_for,
    imagenet_class_names,
    list_layers,
    load_network,
)

SIZE = 16


def _small_sequential(num_classes: int = 5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.Tanh()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, num_classes),
    ).eval()


def _save_script(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated upstream, still supported
        torch.jit.script(module).save(str(path))
    return path


def _config(path: Path, **kw: object) -> ModelConfig:
    return ModelConfig(name="torchscript", weights=str(path), **{"input_size": SIZE, "mean": [0.5] * 3, "std": [0.25] * 3, **kw})


@pytest.fixture(scope="module")
def eager() -> nn.Sequential:
    return _small_sequential()


@pytest.fixture(scope="module")
def scripted(eager: nn.Sequential, tmp_path_factory: pytest.TempPathFactory) -> Network:
    return load_network(_config(_save_script(eager, tmp_path_factory.mktemp("ts") / "small.pt")))


def test_loads_with_metadata(scripted: Network) -> None:
    assert isinstance(scripted.module, torch.jit.ScriptModule)
    assert (scripted.input_size, scripted.mean, scripted.std) == (SIZE, (0.5,) * 3, (0.25,) * 3)
    assert scripted.class_names == class_names_for(5) == [f"class {i}" for i in range(5)]
    assert scripted.weights_path is not None and len(scripted.weights_sha256 or "") == 64


def test_layers_are_dotted_child_paths(scripted: Network) -> None:
    assert list_layers(scripted) == [
        ("0", (8, 8, 8)),
        ("1", (8, 8, 8)),
        ("2.0", (6, 8, 8)),
        ("2.1", (6, 8, 8)),
        ("2", (6, 8, 8)),
        ("3", (6, 1, 1)),
    ]


@pytest.mark.parametrize("layer", ["1", "2.0", "2"])
def test_sampling_matches_the_eager_model(scripted: Network, eager: nn.Sequential, layer: str) -> None:
    eager_net = Network(eager, "eager", SIZE, scripted.mean, scripted.std, scripted.class_names)
    x, positions = torch.randn(3, 3, SIZE, SIZE), torch.tensor([[0, 0], [3, 7], [7, 2]])
    got = LayerSampler(scripted, layer, attribution=True, top_k=3)(x, positions)
    want = LayerSampler(eager_net, layer, attribution=True, top_k=3)(x, positions)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[2], want[2])
    off = LayerSampler(scripted, layer, attribution=False)(x, positions)
    assert torch.equal(off[0], got[0]) and off[1] is None


def test_attribution_equals_jvp(scripted: Network, eager: nn.Sequential) -> None:
    x, positions = torch.randn(2, 3, SIZE, SIZE), torch.tensor([[1, 1], [6, 4]])
    vectors, values, classes = LayerSampler(scripted, "2.0", attribution=True, top_k=5, channels_last=False)(x, positions)
    assert values is not None and classes is not None
    with torch.no_grad():
        h = eager[2][0](eager[1](eager[0](x)))
        b = torch.arange(2)
        t = torch.zeros_like(h)
        t[b, :, positions[:, 0], positions[:, 1]] = h[b, :, positions[:, 0], positions[:, 1]]
        _, full = torch.func.jvp(nn.Sequential(eager[2][1], *eager[3:]), (h,), (t,))
    torch.testing.assert_close(vectors, h[b, :, positions[:, 0], positions[:, 1]])
    torch.testing.assert_close(values, full.gather(1, classes), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(values, full.sort(dim=1, descending=True).values)


class _Counter(nn.Module):
    """Identity that counts its calls in a buffer (visible from Python after scripted runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += 1
        return x


def test_truncation_stops_after_the_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.Conv2d(4, 4, 1), _Counter()), _Counter(), nn.Flatten(), nn.LazyLinear(3))
    seq(torch.zeros(1, 3, SIZE, SIZE))  # materialise the lazy layer
    net = load_network(_config(_save_script(seq.eval(), tmp_path / "counting.pt")))
    for attribution, expected in ((False, 0), (True, 1)):
        sampler = LayerSampler(net, "1.0", attribution=attribution)
        children = dict(sampler.module.named_children())
        inner = dict(children["1"].named_children())
        for counter in (inner["1"], children["2"]):
            counter.count.zero_()
        sampler(torch.randn(1, 3, SIZE, SIZE), torch.tensor([[0, 0]]))
        assert [int(inner["1"].count), int(children["2"].count)] == [expected, expected]


def test_imagenet_names_for_1000_classes(tmp_path: Path) -> None:
    net = load_network(_config(_save_script(_small_sequential(1000), tmp_path / "big.pt")))
    assert net.class_names == imagenet_class_names()


def test_needs_input_size_mean_std(tmp_path: Path, eager: nn.Sequential) -> None:
    path = _save_script(eager, tmp_path / "small.pt")
    with pytest.raises(ModelError) as info:
        load_network(ModelConfig(name="torchscript", weights=str(path)))
    assert all(key in str(info.value) for key in ("model.input_size", "model.mean", "model.std"))
    with pytest.raises(ModelError, match="model.weights"):
        load_network(ModelConfig(name="torchscript", input_size=SIZE, mean=[0.5] * 3, std=[0.25] * 3))
    with pytest.raises(ModelError, match="does not exist"):
        load_network(_config(tmp_path / "missing.pt"))


class _NotSequential(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_non_sequential_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = _save_script(_NotSequential(), tmp_path / "ns.pt")
    with pytest.raises(ModelError) as info:
        load_network(_config(path))
    message = str(info.value)
    assert "_NotSequential" in message and "nn.Sequential" in message and "torchvision" in message


def test_not_torchscript_file(tmp_path: Path) -> None:
    path = tmp_path / "state.pth"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ModelError, match="TorchScript"):
        load_network(_config(path))
