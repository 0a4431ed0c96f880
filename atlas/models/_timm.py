"""Any timm architecture by name: ``model.name: timm:<architecture>`` with a local weights file.

The architecture is built with ``timm.create_model(name, pretrained=False, num_classes=N)``
(nothing is downloaded), N read from the file's classifier head (0 = a backbone: no
classifier), a ViT's ``img_size`` from the file's position embedding; the file is then
loaded with ``strict=True``. Input size, mean and std are timm's data config for the
architecture (``model.input_size/mean/std`` override them).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ._classes import class_names_for, imagenet_class_names
from ._heads import built_on_meta, classes_in_state, head_names
from ._network import ModelError, Network, file_sha256, read_state_dict, resolve_preprocessing

__all__ = ["TIMM_PREFIX", "load_timm"]

TIMM_PREFIX = "timm:"


def _architecture(name: str) -> str:
    import timm

    arch = name[len(TIMM_PREFIX):]
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3) if arch else []
        hint = f" Did you mean {', '.join(f'`timm:{c}`' for c in close)}?" if close else ""
        raise ModelError(f"`{arch}` is not a timm architecture (model.name={name}).{hint} "
                         "`python -c \"import timm; print(timm.list_models('vit_*'))\"` lists them")
    return arch


def _weights(model: ModelConfig, arch: str) -> Path:
    if model.weights is None:
        raise ModelError(
            f"model `{model.name}` needs its weights file: --set model.weights=/path/to/{arch}.pth (a state dict; "
            f"atlas never downloads). On a machine with network: `python -c \"import timm, torch; "
            f"torch.save(timm.create_model('{arch}', pretrained=True).state_dict(), '{arch}.pth')\"`"
        )
    return Path(model.weights).expanduser()


def _heads(meta: torch.nn.Module) -> list[str]:
    try:
        head = meta.get_classifier()  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - an architecture without timm's classifier API: no known head
        return []
    heads = list(head) if isinstance(head, (tuple, list)) else [head]
    return head_names(meta, [h for h in heads if isinstance(h, torch.nn.Module)])


def _img_size(meta: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``img_size`` for a ViT-like model whose file's position embedding is for another size than the default."""
    pos, default = state.get("pos_embed"), getattr(meta, "pos_embed", None)
    patch = getattr(getattr(meta, "patch_embed", None), "patch_size", None)
    if pos is None or default is None or patch is None or pos.shape == default.shape or pos.ndim != 3:
        return {}
    prefix = 0 if getattr(meta, "no_embed_class", False) else int(getattr(meta, "num_prefix_tokens", 0))
    grid = round((int(pos.shape[1]) - prefix) ** 0.5)
    if grid * grid != int(pos.shape[1]) - prefix:
        return {}
    p = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    return {"img_size": grid * int(p)}


def load_timm(model: ModelConfig) -> Network:
    """Build ``timm:<architecture>`` without weights, then load ``model.weights`` strictly."""
    import timm
    from timm.data.config import resolve_data_config

    arch = _architecture(model.name)
    path = _weights(model, arch)
    state = read_state_dict(path, model.name)
    meta = built_on_meta(lambda: timm.create_model(arch, pretrained=False))
    heads = _heads(meta)
    num_classes = classes_in_state(state, heads, path, model.name)
    kwargs = _img_size(meta, state)
    try:
        module = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelError(f"weights file {path} does not fit timm's `{arch}`: {e}. Pass that architecture's weights "
                         "in model.weights (or fix model.name)") from None
    data = resolve_data_config({}, model=module)
    size = int(kwargs.get("img_size", data["input_size"][-1]))  # a ViT built for its weights' size
    mean3 = (float(data["mean"][0]), float(data["mean"][1]), float(data["mean"][2]))
    std3 = (float(data["std"][0]), float(data["std"][1]), float(data["std"][2]))
    input_size, mean, std = resolve_preprocessing(model, size, mean3, std3)
    return Network(
        module=module.eval(),
        name=model.name,
        input_size=input_size,
        mean=mean,
        std=std,
        class_names=imagenet_class_names() if num_classes == 1000 else class_names_for(num_classes),
        weights_path=str(path),
        weights_sha256=file_sha256(path),
    )
