"""Models from more places: timm by name, a factory in the user's code, a module object, fine-tuned heads,
backbones without a head, class names from a file, and layouts that cannot be told.

Every architecture is built by torchvision / timm with random weights saved to tmp files;
nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
import zarr
from torch import nn

from atlas import api
from atlas.config import ConfigError, ModelConfig
from atlas.models import (
    LayerActivations,
    LayerSampler,
    ModelError,
    imagenet_class_names,
    layer_shape,
    layer_spec,
    list_layers,
    load_network,
)
from atlas.models._factory import import_factory
from tests.conftest import DEMO, ROOT

# A tiny network of the user's own: a patch embedding into 16 tokens plus a class token, then a head.
MYNETS = '''
import torch
from torch import nn


class TinyViT(nn.Module):
    """[B, 3, 32, 32] -> patches 8 px -> tokens [B, 1 + 16, 24] -> logits [B, 5]."""

    def __init__(self, classes=5):
        super().__init__()
        self.embed = nn.Conv2d(3, 24, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, 24))
        self.blocks = nn.Sequential(nn.LayerNorm(24), nn.Linear(24, 24), nn.GELU())
        self.head = nn.Linear(24, classes) if classes else None

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1)
        t = self.blocks(t)
        return self.head(t[:, 0]) if self.head is not None else t


def build():
    torch.manual_seed(0)
    return TinyViT(), {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def backbone():
    torch.manual_seed(0)
    return TinyViT(classes=0), {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


class Cube(nn.Module):
    """Only 8 x 8 inputs; its middle layer outputs [B, 8, 8, 8]: nchw or nhwc cannot be told."""

    def __init__(self):
        super().__init__()
        self.lift = nn.Linear(3, 8)
        self.mix = nn.Identity()
        self.head = nn.Linear(512, 4)

    def forward(self, x):
        h = self.mix(self.lift(x.permute(0, 2, 3, 1)))  # [B, 8, 8, 8], channels last
        return self.head(h.flatten(1))


def cube():
    torch.manual_seed(0)
    return Cube(), {"input_size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def not_a_module():
    return 42
'''


@pytest.fixture
def mynets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of the user's, importable as ``mynets_<test>``; returns its name."""
    name = f"mynets_{abs(hash(str(tmp_path))) % 10**8}"
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(MYNETS)
    monkeypatch.syspath_prepend(str(folder))
    return name


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-init state dicts: fine-tuned resnet18 (10 classes), its backbone, timm models."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    out = {}
    tuned = torchvision.models.resnet18(num_classes=10)
    torch.save(tuned.state_dict(), out.setdefault("resnet18_10", folder / "resnet18-10.pth"))
    tuned.fc = nn.Identity()
    torch.save(tuned.state_dict(), out.setdefault("resnet18_backbone", folder / "resnet18-backbone.pth"))
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(),
               out.setdefault("timm_vit", folder / "vit_tiny.pth"))
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=7).state_dict(),
               out.setdefault("timm_resnet18_7", folder / "timm_resnet18_7.pth"))
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(),
               out.setdefault("timm_resnet18_0", folder / "timm_resnet18_0.pth"))
    (folder / "classes.txt").write_text("".join(f"kind {i}\n" for i in range(10)) + "\n")
    out["classes"] = folder / "classes.txt"
    return out


def _collect(run_dir: Path, *more: str) -> zarr.Group:
    cfg = api.load(DEMO, [f"run_dir={run_dir}", "images.demo_count=8", "images.demo_size=64", "collect.chunk_rows=8",
                          "collect.batch_size=8", "collect.workers=0", "collect.top_k=3", *more])
    api.run_stage("collect", cfg)
    return zarr.open_group(str(run_dir / "collect"), mode="r")


# --------------------------------------------------------------------------- heads and classes


def test_fine_tuned_head_loads_with_its_classes(files: dict[str, Path]) -> None:
    net = load_network(ModelConfig(name="resnet18", weights=str(files["resnet18_10"]), input_size=64))
    assert net.has_classifier and net.class_names == [f"class {i}" for i in range(10)]
    assert net.module.fc.out_features == 10
    vectors, values, classes = LayerSampler(net, "layer3", attribution=True, top_k=20)(
        torch.randn(2, 3, 64, 64), torch.tensor([[1, 1], [2, 3]]))
    assert vectors.shape == (2, 256) and values is not None and classes is not None
    assert values.shape == (2, 10) and int(classes.max()) < 10  # top_k clipped to the 10 classes


def test_class_names_file_names_the_classes_in_collect(files: dict[str, Path], tmp_path: Path) -> None:
    net = load_network(ModelConfig(name="resnet18", weights=str(files["resnet18_10"]), class_names=str(files["classes"])))
    assert net.class_names == [f"kind {i}" for i in range(10)]
    g = _collect(tmp_path / "run", "model.name=resnet18", f"model.weights={files['resnet18_10']}", "model.layer=layer3",
                 "model.input_size=64", f"model.class_names={files['classes']}")
    assert g.attrs["class_names"] == [f"kind {i}" for i in range(10)]
    assert g["attr_classes"][:].max() < 10


def test_class_names_file_must_fit(files: dict[str, Path], tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("cat\ndog\n")
    with pytest.raises(ModelError, match=r"has 2 lines but `resnet18` outputs 10 classes"):
        load_network(ModelConfig(name="resnet18", weights=str(files["resnet18_10"]), class_names=str(short)))
    with pytest.raises(ModelError, match="does not exist"):
        load_network(ModelConfig(name="resnet18", weights=str(files["resnet18_10"]), class_names=str(tmp_path / "no.txt")))
    with pytest.raises(ModelError, match="has no classifier"):
        load_network(ModelConfig(name="resnet18", weights=str(files["resnet18_backbone"]), class_names=str(short)))


def test_googlenet_saved_without_aux_heads_loads() -> None:
    """torchvision's pretrained GoogLeNet drops its aux heads: a state dict saved from it has none."""
    import tempfile

    model = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "googlenet.pth"
        torch.save(model.state_dict(), path)
        net = load_network(ModelConfig(name="googlenet", weights=str(path), input_size=64))
    assert net.class_names == imagenet_class_names() and net.module.aux1 is None


@pytest.fixture
def fresh_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which networks were already said to have no classifier (said once per process)."""
    from atlas.models import _sampler

    monkeypatch.setattr(_sampler, "_told_no_classifier", set())


def test_backbone_without_head_runs_without_attribution(files: dict[str, Path], tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture, fresh_notes: None) -> None:
    net = load_network(ModelConfig(name="resnet18", weights=str(files["resnet18_backbone"]), input_size=64))
    assert not net.has_classifier and net.class_names == [] and isinstance(net.module.fc, nn.Identity)
    with caplog.at_level(logging.WARNING, logger="atlas"):
        sampler = LayerSampler(net, "layer4", attribution=True)
        LayerSampler(net, "layer3", attribution=True)
    assert not sampler.attribution
    said = [r for r in caplog.records if "no classifier" in r.getMessage()]
    assert len(said) == 1 and "attribution is off" in said[0].getMessage()  # once
    vectors, values, classes = sampler(torch.randn(1, 3, 64, 64), torch.tensor([[1, 0]]))
    assert vectors.shape == (1, 512) and values is None and classes is None
    g = _collect(tmp_path / "run", "model.name=resnet18", f"model.weights={files['resnet18_backbone']}",
                 "model.layer=layer3", "model.input_size=64")
    assert g.attrs["attribution"] is False and "attr_classes" not in g and g.attrs["class_names"] == []
    assert np.abs(g["activations"][:]).sum(1).min() > 0


# --------------------------------------------------------------------------- timm


def test_timm_vit_by_name(files: dict[str, Path]) -> None:
    net = load_network(ModelConfig(name="timm:vit_tiny_patch16_224", weights=str(files["timm_vit"])))
    assert net.input_size == 224 and net.mean == (0.5, 0.5, 0.5) and net.class_names == imagenet_class_names()
    spec = layer_spec(net, "blocks.6")
    assert (spec.layout, spec.prefix, spec.shape) == ("tokens", 1, (192, 14, 14))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0, 13], [7, 2]])
    vectors, values, _ = LayerSampler(net, "blocks.6", attribution=True, top_k=5, fold_bn=False, channels_last=False)(x, positions)
    got: dict[str, torch.Tensor] = {}
    handle = net.module.blocks[6].register_forward_hook(lambda m, i, o: got.setdefault("out", o))
    with torch.no_grad():
        net.module(x)
    handle.remove()
    torch.testing.assert_close(vectors, got["out"][torch.arange(2), 1 + positions[:, 0] * 14 + positions[:, 1]])
    assert values is not None and values.shape == (2, 5)


def test_timm_fine_tuned_head_and_backbone(files: dict[str, Path]) -> None:
    seven = load_network(ModelConfig(name="timm:resnet18", weights=str(files["timm_resnet18_7"]), input_size=64))
    assert seven.class_names == [f"class {i}" for i in range(7)] and layer_shape(seven, "layer3") == (256, 4, 4)
    bare = load_network(ModelConfig(name="timm:resnet18", weights=str(files["timm_resnet18_0"]), input_size=64))
    assert not bare.has_classifier and dict(list_layers(bare))["layer4"] == (512, 2, 2)


def test_timm_vit_size_from_its_weights_and_register_tokens(tmp_path: Path) -> None:
    """A ViT's input size comes from its position embedding; DINOv2's 4 register tokens + class token are prefix
    tokens; a self-supervised encoder has no classifier."""
    torch.manual_seed(0)
    small = tmp_path / "vit96.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96).state_dict(), small)
    net = load_network(ModelConfig(name="timm:vit_tiny_patch16_224", weights=str(small)))
    assert net.input_size == 96 and layer_shape(net, "blocks.3") == (192, 6, 6)
    dino = tmp_path / "dinov2.pth"
    torch.save(timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=112).state_dict(), dino)
    enc = load_network(ModelConfig(name="timm:vit_small_patch14_reg4_dinov2", weights=str(dino)))
    spec = layer_spec(enc, "blocks.3")
    assert enc.input_size == 112 and not enc.has_classifier
    assert (spec.layout, spec.prefix, spec.shape, spec.output) == ("tokens", 5, (384, 8, 8), (69, 384))


def test_timm_errors(files: dict[str, Path]) -> None:
    with pytest.raises(ModelError, match=r"not a timm architecture.*Did you mean `timm:vit_tiny_patch16_224`"):
        load_network(ModelConfig(name="timm:vit_tiny_patch16_22"))
    with pytest.raises(ModelError, match=r"needs its weights file.*never downloads"):
        load_network(ModelConfig(name="timm:resnet18"))
    with pytest.raises(ModelError, match="does not fit timm's `resnet34`"):
        load_network(ModelConfig(name="timm:resnet34", weights=str(files["timm_resnet18_7"])))


# --------------------------------------------------------------------------- the user's own code


def test_factory_builds_the_network(mynets: str) -> None:
    net = load_network(ModelConfig(name="tiny", factory=f"{mynets}:build"))
    assert (net.name, net.input_size, net.mean, net.std) == ("tiny", 32, (0.5,) * 3, (0.25,) * 3)
    assert net.class_names == [f"class {i}" for i in range(5)] and net.weights_sha256 is None
    spec = layer_spec(net, "blocks")
    assert (spec.layout, spec.prefix, spec.shape) == ("tokens", 1, (24, 4, 4))
    assert layer_spec(net, "embed").layout == "nchw"
    assert {s.name: s.shape for s in api.layers("tiny", factory=f"{mynets}:build")}["blocks"] == (24, 4, 4)
    vectors, values, _ = LayerSampler(net, "blocks.1", attribution=True, top_k=2)(torch.randn(2, 3, 32, 32),
                                                                                   torch.tensor([[0, 0], [3, 3]]))
    assert vectors.shape == (2, 24) and values is not None


def test_factory_weights_file_and_overrides(mynets: str, tmp_path: Path) -> None:
    module, _ = import_factory(f"{mynets}:build")()
    with torch.no_grad():
        module.head.bias.fill_(3.0)
    path = tmp_path / "tiny.pth"
    torch.save(module.state_dict(), path)
    net = load_network(ModelConfig(name="tiny", factory=f"{mynets}:build", weights=str(path), mean=[0.4, 0.4, 0.4]))
    assert net.weights_sha256 and float(net.module.head.bias[0].detach()) == 3.0 and net.mean == (0.4, 0.4, 0.4)


def test_factory_errors(mynets: str) -> None:
    with pytest.raises(ModelError, match="model.name to a name of your own"):
        load_network(ModelConfig(factory=f"{mynets}:build"))  # model.name left at efficientnet_lite0
    with pytest.raises(ConfigError, match=r"model\.factory.*must be `package.module:function`"):
        api.load(None, ["model.name=tiny", f"model.factory={mynets}.build"])
    with pytest.raises(ModelError, match=r"no module `no_such_nets`.*PYTHONPATH"):
        load_network(ModelConfig(name="tiny", factory="no_such_nets:build"))
    with pytest.raises(ModelError, match="has no function `nope`"):
        load_network(ModelConfig(name="tiny", factory=f"{mynets}:nope"))
    with pytest.raises(ModelError, match="returned a int, not a torch.nn.Module"):
        load_network(ModelConfig(name="tiny", factory=f"{mynets}:not_a_module"))


def test_factory_in_the_working_directory(mynets: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`atlas` as a console script does not put the working directory on sys.path: the factory looks there too."""
    folder = tmp_path / "code"
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    sys.modules.pop(mynets, None)
    assert callable(import_factory(f"{mynets}:build"))


def test_factory_backbone_runs_without_attribution(mynets: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    fresh_notes: None) -> None:
    net = load_network(ModelConfig(name="tiny_backbone", factory=f"{mynets}:backbone"))
    assert not net.has_classifier  # its output is tokens [B, 17, 24], not logits
    with caplog.at_level(logging.WARNING, logger="atlas"):
        g = _collect(tmp_path / "run", "model.name=tiny_backbone", f"model.factory={mynets}:backbone",
                     "model.layer=blocks")
    assert g.attrs["attribution"] is False and g.attrs["layer_shape"] == [24, 4, 4]
    assert sum("no classifier" in r.getMessage() for r in caplog.records) == 1


def test_factory_from_the_cli_in_a_fresh_process(mynets: str, tmp_path: Path) -> None:
    """Each process imports the factory by name (as every cluster worker does)."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "code"), str(ROOT)])}
    sets = [f"run_dir={run_dir}", "images.demo_count=8", "images.demo_size=64", "collect.chunk_rows=4",
            "collect.batch_size=4", "collect.workers=0", "model.name=tiny", f"model.factory={mynets}:build",
            "model.layer=blocks", "collect.top_k=2"]
    p = subprocess.run([sys.executable, "-m", "atlas", "collect", str(DEMO), *[f"--set={s}" for s in sets]],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    g = zarr.open_group(str(run_dir / "collect"), mode="r")
    assert g.attrs["layer_shape"] == [24, 4, 4] and g.attrs["class_names"] == [f"class {i}" for i in range(5)]
    assert g["positions"][:].max() <= 2 and g["positions"][:].min() >= 1


def test_module_object_in_the_api(mynets: str, tmp_path: Path) -> None:
    module, _ = import_factory(f"{mynets}:build")()
    specs = {s.name: s for s in api.layers(module, input_size=32)}
    assert specs["blocks"].layout == "tokens" and specs["blocks"].shape == (24, 4, 4)
    assert "tokens(1+4x4)" in api.format_layer(specs["blocks"])
    name = api.use_model(module, "tiny-object", input_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                         class_names=list("abcde"))
    assert name == "object:tiny-object"
    net = load_network(ModelConfig(name=name))
    assert net.class_names == list("abcde") and net.module is not module  # a copy: the caller's module stays as it is
    g = _collect(tmp_path / "run", f"model.name={name}", "model.layer=blocks.1")
    assert g.attrs["class_names"] == list("abcde") and g["activations"].shape == (8, 24)
    rendered = LayerActivations(net, "blocks.1", "cpu")(torch.zeros(1, 3, 32, 32))
    assert rendered.shape == (1, 24, 4, 4)
    with pytest.raises(ModelError, match=r"exists only in the process that registered it.*model.factory"):
        load_network(ModelConfig(name="object:never-registered"))


# --------------------------------------------------------------------------- layouts that cannot be told


def test_ambiguous_layout_names_both_keys(mynets: str, tmp_path: Path) -> None:
    net = load_network(ModelConfig(name="cube", factory=f"{mynets}:cube"))
    with pytest.raises(ModelError) as info:
        layer_shape(net, "mix")
    message = str(info.value)
    assert "model.layout" in message and "model.prefix_tokens" in message and "`mix`" in message
    with pytest.raises(ModelError, match=r"model\.layout.*model\.prefix_tokens"):
        _collect(tmp_path / "run", "model.name=cube", f"model.factory={mynets}:cube", "model.layer=mix")
    fixed = load_network(ModelConfig(name="cube", factory=f"{mynets}:cube", layout="nhwc"))
    spec = layer_spec(fixed, "mix")
    assert (spec.layout, spec.shape) == ("nhwc", (8, 8, 8))
    x = torch.randn(1, 3, 8, 8)
    vectors, _, _ = LayerSampler(fixed, "mix", attribution=False, channels_last=False)(x, torch.tensor([[2, 5]]))
    torch.testing.assert_close(vectors[0], fixed.module.lift(x.permute(0, 2, 3, 1))[0, 2, 5])


def test_cli_shows_ambiguous_layers(mynets: str) -> None:
    module, _ = import_factory(f"{mynets}:cube")()
    rows = {s.name: api.format_layer(s) for s in api.layers(module, input_size=8)}
    assert "ambiguous" in rows["mix"] and "model.layout" in rows["mix"]
    forced = {s.name: api.format_layer(s) for s in api.layers(module, input_size=8, layout="nhwc")}
    assert forced["mix"].split()[1:3] == ["nhwc", "8x8x8"]


def test_layers_command_takes_factory_layout_and_prefix_flags(mynets: str, capsys: pytest.CaptureFixture[str]) -> None:
    from atlas.cli import main

    assert main(["layers", "--model", "cube", "--factory", f"{mynets}:cube", "--input-size", "8"]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert "ambiguous" in rows["mix"]
    assert main(["layers", "--model", "cube", "--factory", f"{mynets}:cube", "--input-size", "8", "--layout", "nhwc"]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert rows["mix"].split()[1:3] == ["nhwc", "8x8x8"]


def test_unknown_name_mentions_the_new_sources() -> None:
    with pytest.raises(ModelError) as info:
        load_network(ModelConfig(name="my_own_net"))
    assert "timm:<architecture>" in str(info.value) and "model.factory" in str(info.value)


@pytest.mark.slow
def test_factory_timm_and_class_names_on_a_dask_worker(mynets: str, files: dict[str, Path], tmp_path: Path) -> None:
    """A dask worker process rebuilds the network from the config alone: a factory in the user's code and
    a timm name with its weights and class-name file give the arrays of the in-process run, bit for bit."""
    from tests.conftest import assert_groups_equal

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "code"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    base = ["images.demo_count=8", "images.demo_size=64", "collect.chunk_rows=4", "collect.batch_size=4",
            "collect.workers=0", "collect.top_k=2"]
    names = tmp_path / "seven.txt"
    names.write_text("".join(f"kind {i}\n" for i in range(7)))
    models = {"factory": ["model.name=tiny", f"model.factory={mynets}:build", "model.layer=blocks"],
              "timm": ["model.name=timm:resnet18", f"model.weights={files['timm_resnet18_7']}", "model.layer=layer3",
                       "model.input_size=64", f"model.class_names={names}"]}
    for kind, model in models.items():
        for engine in ("local", "dask"):
            sets = [f"run_dir={tmp_path / kind / engine}", *base, *model]
            extra = ["--workers", "1"] if engine == "dask" else []
            p = subprocess.run([sys.executable, "-m", "atlas", "collect", str(DEMO), *[f"--set={s}" for s in sets],
                                *extra], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
            assert p.returncode == 0, p.stderr[-3000:]
        assert_groups_equal(tmp_path / kind / "local" / "collect", tmp_path / kind / "dask" / "collect")
    g = zarr.open_group(str(tmp_path / "timm" / "dask" / "collect"), mode="r")
    assert g.attrs["class_names"] == [f"kind {i}" for i in range(7)] and g["attr_classes"][:].max() < 7
