"""Layer layouts (nchw, nhwc, tokens): probing, listing, sampling and rendering on any of them.

Architectures are built by torchvision with random weights saved to tmp files (nothing is
downloaded) and loaded through ``load_network``; inputs are small where the architecture
allows (a torchvision ViT takes the size its weights were built for: 64 px here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import zarr

from atlas import api
from atlas.config import ModelConfig, RenderConfig
from atlas.models import (
    LayerActivations,
    LayerSampler,
    ModelError,
    Network,
    layer_shape,
    layer_spec,
    layer_specs,
    list_layers,
    load_network,
)
from atlas.models._layouts import detect_layout
from atlas.ops.objectives import cosine
from atlas.stages.render import render_icons
from tests.conftest import DEMO
from tests.stages.contract import mark_finished
from tests.synthetic_grid import make_grid

# name -> (builder, input size, layer, layout, (C, rows, cols), prefix)
CASES: dict[str, tuple[Callable[[], torch.nn.Module], int, str, str, tuple[int, int, int], int]] = {
    "vit_b_16": (lambda: torchvision.models.vit_b_16(image_size=64), 64, "encoder.layers.encoder_layer_5",
                 "tokens", (768, 4, 4), 1),
    "swin_t": (torchvision.models.swin_t, 112, "features.5", "nhwc", (384, 7, 7), 0),
    "convnext_tiny": (torchvision.models.convnext_tiny, 64, "features.5.2.block.3", "nhwc", (1536, 4, 4), 0),
    "resnet50": (torchvision.models.resnet50, 64, "layer3", "nchw", (1024, 4, 4), 0),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """name -> a state dict file of the randomly initialised torchvision architecture (made once per module)."""
    folder = tmp_path_factory.mktemp("weights")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            torch.manual_seed(0)
            path = folder / f"{name}.pth"
            torch.save(CASES[name][0]().state_dict(), path)
            made[name] = path
        return made[name]

    return get


@pytest.fixture(scope="module")
def nets(weights: Callable[[str], Path]) -> Callable[[str], Network]:
    loaded: dict[str, Network] = {}

    def get(name: str) -> Network:
        if name not in loaded:
            if name == "efficientnet_lite0":
                loaded[name] = load_network(ModelConfig(input_size=128))
            else:
                loaded[name] = load_network(ModelConfig(name=name, weights=str(weights(name)), input_size=CASES[name][1]))
        return loaded[name]

    return get


def _hooked(module: torch.nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """The layer's output by a plain forward hook on a full forward pass."""
    got: dict[str, torch.Tensor] = {}
    handle = module.get_submodule(layer).register_forward_hook(lambda m, i, o: got.setdefault("out", o))
    with torch.no_grad():
        module(x)
    handle.remove()
    return got["out"]


def _at(out: torch.Tensor, layout: str, prefix: int, positions: torch.Tensor) -> torch.Tensor:
    """Written out per layout: the vectors at (y, x) of a hooked output."""
    rows = []
    for b, (y, x) in enumerate(positions.tolist()):
        if layout == "nchw":
            rows.append(out[b, :, y, x])
        elif layout == "nhwc":
            rows.append(out[b, y, x, :])
        else:
            g = round((out.shape[1] - prefix) ** 0.5)
            rows.append(out[b, prefix + y * g + x, :])
    return torch.stack(rows)


# --------------------------------------------------------------------------- probing and listing


@pytest.mark.parametrize("name", list(CASES))
def test_layout_and_grid_of_torchvision_layers(name: str, nets: Callable[[str], Network]) -> None:
    _, size, layer, layout, shape, prefix = CASES[name]
    net = nets(name)
    spec = layer_spec(net, layer)
    assert (spec.layout, spec.shape, spec.prefix) == (layout, shape, prefix)
    assert layer_shape(net, layer) == shape and dict(list_layers(net))[layer] == shape


def test_swin_lists_channels_last_layers_with_their_real_grid(nets: Callable[[str], Network]) -> None:
    """The issue: `features.0.1` is [B, 28, 28, 96] at 112 px, not 28 channels on a 28 x 96 grid."""
    specs = {s.name: s for s in layer_specs(nets("swin_t"))}
    assert specs["features.0.0"].layout == "nchw" and specs["features.0.0"].shape == (96, 28, 28)  # the patch conv
    assert specs["features.0.1"].layout == "nhwc" and specs["features.0.1"].shape == (96, 28, 28)
    assert specs["features.0.1"].output == (28, 28, 96)
    assert specs["features.7"].shape == (768, 4, 4) and specs["norm"].layout == "nhwc"
    assert specs["permute"].layout == "nchw" and specs["avgpool"].shape == (768, 1, 1)
    assert all(s.layout is not None for s in specs.values())


def test_vit_encoder_blocks_are_token_layers(nets: Callable[[str], Network]) -> None:
    specs = {s.name: s for s in layer_specs(nets("vit_b_16"))}
    for i in range(12):
        s = specs[f"encoder.layers.encoder_layer_{i}"]
        assert (s.layout, s.prefix, s.shape, s.output) == ("tokens", 1, (768, 4, 4), (17, 768))
    assert specs["conv_proj"].layout == "nchw" and specs["encoder.ln"].layout == "tokens"
    assert not any("self_attention" == n.rsplit(".", 1)[-1] for n in specs)  # returns a tuple: not a layer


def test_cli_lists_layout_and_grid(weights: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    from atlas.cli import main

    assert main(["layers", "--model", "swin_t", "--weights", str(weights("swin_t")), "--input-size", "112"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["features.0.1"][1:] == ["nhwc", "28x28x96", "output", "28x28x96"]
    assert rows["features.0.0"][1:] == ["nchw", "28x28x96", "output", "96x28x28"]
    assert main(["layers", "--model", "vit_b_16", "--weights", str(weights("vit_b_16"))]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["encoder.layers.encoder_layer_0"][1:] == ["tokens(1+4x4)", "4x4x768", "output", "17x768"]


def test_one_probe_rules() -> None:
    """Networks that take one input size only are judged from one probe."""
    tok = detect_layout("t", (197, 768), None, 224, None)
    assert tok is not None and (tok.layout, tok.prefix, tok.shape) == ("tokens", 1, (768, 14, 14))
    reg = detect_layout("t", (261, 384), None, 224, None)  # class token + 4 registers, patch 14 on 224 px
    assert reg is not None and (reg.prefix, reg.shape) == (5, (384, 16, 16))
    assert detect_layout("t", (17, 768), None, 64, None, known_grids={4}).prefix == 1  # type: ignore[union-attr]
    assert detect_layout("c", (96, 56, 56), None, 224, None).layout == "nchw"  # type: ignore[union-attr]
    assert detect_layout("c", (56, 56, 96), None, 224, None).layout == "nhwc"  # type: ignore[union-attr]
    assert detect_layout("a", (3, 197, 64), None, 224, None) is None  # attention heads: no grid
    amb = detect_layout("a", (8, 8, 8), None, 64, None)
    assert amb is not None and amb.layout is None and amb.shape is None
    assert detect_layout("a", (8, 8, 8), None, 64, None, conv2d=True).layout == "nchw"  # type: ignore[union-attr]
    # two probes: the axes that scale with the input are the grid
    assert detect_layout("s", (8, 8, 8), (6, 6, 8), 64, 48).layout == "nhwc"  # type: ignore[union-attr]
    assert detect_layout("s", (8, 8, 8), (8, 6, 6), 64, 48).layout == "nchw"  # type: ignore[union-attr]
    two = detect_layout("t", (197, 64), (145, 64), 224, 192)
    assert two is not None and (two.prefix, two.shape) == (1, (64, 14, 14))


def test_overrides_settle_and_check_the_layout() -> None:
    s = detect_layout("a", (8, 8, 8), None, 64, None, layout="nhwc")
    assert s is not None and s.layout == "nhwc"
    t = detect_layout("t", (20, 32), None, 64, None, layout="tokens", prefix=4)
    assert t is not None and (t.layout, t.prefix, t.shape) == ("tokens", 4, (32, 4, 4))
    bad = detect_layout("t", (21, 32), None, 64, None, layout="tokens", prefix=4, strict=True)
    assert bad is not None and bad.layout is None and "not a square grid" in bad.problem
    wrong_rank = detect_layout("c", (8, 4, 4), None, 64, None, layout="tokens", strict=True)
    assert wrong_rank is not None and wrong_rank.layout is None and "model.layout=tokens" in wrong_rank.problem


def test_overrides_from_the_config(weights: Callable[[str], Path]) -> None:
    net = load_network(ModelConfig(name="vit_b_16", weights=str(weights("vit_b_16")), layout="tokens", prefix_tokens=1))
    assert layer_spec(net, "encoder.ln").prefix == 1
    net.prefix_tokens = 2  # 17 - 2 = 15 tokens: no square grid
    with pytest.raises(ModelError, match="model.prefix_tokens"):
        layer_spec(net, "encoder.ln")
    net.layout, net.prefix_tokens = "nhwc", None
    with pytest.raises(ModelError, match=r"model\.layout=nhwc does not fit"):
        layer_spec(net, "encoder.ln")


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("name", [*CASES, "efficientnet_lite0"])
def test_sampled_vector_is_the_layer_output_at_its_position(name: str, nets: Callable[[str], Network]) -> None:
    net = nets(name)
    layer, layout, shape, prefix = (("blocks.5", "nchw", (192, 4, 4), 0) if name == "efficientnet_lite0"
                                    else CASES[name][2:])
    c, rows, cols = shape
    x = torch.randn(3, 3, net.input_size, net.input_size, generator=torch.Generator().manual_seed(1))
    positions = torch.tensor([[0, 0], [rows - 1, cols - 1], [rows // 2, 1]])
    want = _at(_hooked(net.module, layer, x), layout, prefix, positions)
    exact = LayerSampler(net, layer, attribution=False, channels_last=False, fold_bn=False)
    got, _, _ = exact(x, positions)
    assert got.shape == (3, c)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    attributed, values, classes = LayerSampler(net, layer, attribution=True, top_k=3, channels_last=False, fold_bn=False)(x, positions)
    torch.testing.assert_close(attributed, want, rtol=0, atol=0)
    assert values is not None and classes is not None and values.shape == (3, 3)
    fast, _, _ = LayerSampler(net, layer, attribution=False)(x, positions)  # channels_last, BatchNorm folded
    torch.testing.assert_close(fast, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_attribution_is_activation_times_gradient_at_the_position(name: str, nets: Callable[[str], Network]) -> None:
    net = nets(name)
    _, _, layer, layout, _, prefix = CASES[name]
    x = torch.randn(2, 3, net.input_size, net.input_size, generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([[1, 2], [3, 0]])
    vectors, values, classes = LayerSampler(net, layer, attribution=True, top_k=4, channels_last=False,
                                            fold_bn=False)(x, positions)
    assert values is not None and classes is not None
    got: dict[str, torch.Tensor] = {}
    handle = net.module.get_submodule(layer).register_forward_hook(lambda m, i, o: got.setdefault("out", o))
    logits = net.module(x)
    handle.remove()
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, :1]).sum(), got["out"])
    expected = (_at(grad, layout, prefix, positions) * vectors).sum(1)
    torch.testing.assert_close(values[:, 0], expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()))


def test_collect_stage_on_swin_stores_real_grid_vectors(tmp_path: Path, weights: Callable[[str], Path],
                                                        nets: Callable[[str], Network]) -> None:
    """The issue's run: collect at `features.5` of swin_t stored (24, 14)-shaped rows at positions like (4, 254)."""
    from atlas.sources import load_image, read_manifest

    run_dir = tmp_path / "run"
    cfg = api.load(DEMO, [f"run_dir={run_dir}", "images.demo_count=12", "images.demo_size=96", "model.name=swin_t",
                          f"model.weights={weights('swin_t')}", "model.layer=features.5", "model.input_size=112",
                          "collect.chunk_rows=6", "collect.batch_size=6", "collect.workers=0", "collect.dtype=float32",
                          "collect.top_k=3"])
    api.run_stage("collect", cfg)
    g = zarr.open_group(str(run_dir / "collect"), mode="r")
    assert g.attrs["layer_shape"] == [384, 7, 7] and g["activations"].shape == (12, 384)
    pos = g["positions"][:]
    assert pos.min() >= 1 and pos.max() <= 5  # border 1 on the 7 x 7 patch grid
    manifest = read_manifest(run_dir)
    net = nets("swin_t")
    imgs = np.stack([load_image(loc, size=112, max_pixels=cfg.images.max_pixels, min_side=cfg.images.min_side)
                     for loc in manifest.locations])
    want = _at(_hooked(net.module, "features.5", net.preprocess(torch.from_numpy(imgs))), "nhwc", 0,
               torch.from_numpy(pos.astype(np.int64)))
    np.testing.assert_allclose(g["activations"][:], want.numpy(), rtol=1e-3, atol=1e-3 * float(want.abs().max()))
    assert g["attr_classes"][:].min() >= 0 and len(g.attrs["class_names"]) == 1000


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_layer_activations_give_nchw_for_any_layout(name: str, nets: Callable[[str], Network]) -> None:
    net = nets(name)
    _, size, layer, layout, (c, rows, cols), prefix = CASES[name]
    acts = LayerActivations(net, layer, "cpu")
    assert acts.shape == (c, rows, cols)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3), requires_grad=True)
    h = acts(x)
    assert h.shape == (2, c, rows, cols) and h.requires_grad
    want = _hooked(net.module, layer, x.detach())
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    for y, xx in zip(ys.flatten().tolist(), xs.flatten().tolist()):
        torch.testing.assert_close(h[:, :, y, xx].detach(), _at(want, layout, prefix, torch.tensor([[y, xx]] * 2)),
                                   rtol=1e-4, atol=1e-4)
    h.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    small = acts(torch.zeros(1, 3, 32, 32))  # icons: a ViT gets them resized to its size, a Swin takes them
    assert small.shape[:2] == (1, c) and (small.shape[2] == rows) == (name == "vit_b_16")


RENDER_LAYERS = {"vit_b_16": ("encoder.layers.encoder_layer_1", 768), "swin_t": ("features.5", 384)}


def _photos(n: int, size: int) -> torch.Tensor:
    """n demo photos as float [n, 3, size, size] in [0, 1]."""
    from atlas.sources import demo_image

    return torch.from_numpy(np.stack([np.asarray(demo_image(i, size)) for i in range(n)])).permute(0, 3, 1, 2) / 255.0


@pytest.mark.parametrize("name,reduce", [("vit_b_16", "mean"), ("vit_b_16", "center"), ("swin_t", "mean")])
def test_rendered_icons_beat_a_random_image(name: str, reduce: str, nets: Callable[[str], Network]) -> None:
    net = nets(name)
    layer, _ = RENDER_LAYERS[name]
    acts = LayerActivations(net, layer, "cpu")
    with torch.no_grad():
        maps = acts(acts.normalize(_photos(4, net.input_size))).float()
    targets = maps[:, :, 1:3, 1:3].mean(dim=(2, 3))[:2]  # like grid cells: means of a few real vectors
    settings = RenderConfig(icon_size=32, steps=16, restarts=1, reduce=reduce)
    res = render_icons(acts, targets, settings, generator=torch.Generator().manual_seed(0))
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = cosine(acts(acts.normalize(noise)).float(), targets, reduce).numpy()
    assert res.icons.shape == (2, 32, 32, 3) and np.isfinite(res.cossim).all()
    assert (res.cossim > base + 0.05).all(), (res.cossim, base)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_b_16", "swin_t"])
def test_render_stage_records_faithfulness(name: str, tmp_path: Path, weights: Callable[[str], Path],
                                           nets: Callable[[str], Network]) -> None:
    net = nets(name)
    layer, c = RENDER_LAYERS[name]
    acts = LayerActivations(net, layer, "cpu")
    with torch.no_grad():
        vectors = acts(acts.normalize(_photos(6, net.input_size))).float().permute(0, 2, 3, 1).reshape(-1, c).numpy()
    run_dir = tmp_path / "run"
    make_grid(run_dir, [2], c, seed=0, min_count=2, vectors=vectors)
    mark_finished(run_dir, "collect", "reduce", "grid")
    cfg = api.load(DEMO, [f"run_dir={run_dir}", f"model.name={name}", f"model.weights={weights(name)}",
                          f"model.layer={layer}", f"model.input_size={CASES[name][1]}", "grid.sizes=[2]",
                          "grid.min_count=2", "render.icon_size=32", "render.steps=24", "render.batch_size=4",
                          "render.restarts=1", "model.device=cpu", "render.threads=2"])
    api.run_stage("render", cfg)
    g = zarr.open_group(str(run_dir / "render"), mode="r")
    f = g.attrs["faithfulness"]["2"]
    assert f["n"] >= 1 and f["median"] is not None
    targets = torch.from_numpy(np.asarray(zarr.open_group(str(run_dir / "grid"), mode="r")["level-2/mean_activation"][...]))
    cells = g["level-2/cells"][...]
    t = targets[cells[:, 0], cells[:, 1]].float()
    noise = torch.rand(len(t), 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        base = cosine(acts(acts.normalize(noise)).float(), t).numpy()
    assert f["median"] > float(np.median(base)), (f, base)
