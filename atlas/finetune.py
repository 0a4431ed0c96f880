"""A fine-tuned demo network: EfficientNet-Lite0 with the last block of ``blocks.5`` trained briefly
to name four of the demo's photos by their labels, for ``atlas compare``'s demo, tests and benchmark.

:func:`finetune_demo` writes a timm state dict that ``model.weights`` loads (``efficientnet_lite0``,
strictly), so the demo config with ``--set model.weights=FILE`` is the fine-tuned run. Recipe
(docs/benchmarks.md, "Comparing two networks"):

- images: demo images of the held-out range (indices from 100,000: never in a run's first
  100,000), ``per_photo`` of each demo photo, at ``size`` pixels;
- trained: ``blocks.5.3`` only (the last block of ``blocks.5``, the demo's layer; the layers before
  it are frozen, BatchNorm statistics kept), Adam, ``steps`` steps of ``batch`` images, seeded;
- loss: cross-entropy teaching the network to name each image of ``photos`` by its demo label
  (photo k as ImageNet class k: demo labels are photo indices), plus ``keep`` x the mean squared
  change of ``blocks.5``'s output on the other photos' images (relative to its mean square), so
  the fine-tuning changes what the layer sees in those photos and as little as it can elsewhere.

On the CPU it takes 10 s at 128 px, 30 s at 224 px; a fixed ``seed`` gives the same file (one torch
thread). From a shell: ``python -m atlas.finetune finetuned.pth --size 224``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["finetune_demo", "DEFAULT_PHOTOS", "HELD_OUT"]

DEFAULT_PHOTOS = (0, 1, 2, 3)
"""The photos fine-tuned on: astronaut, brick, camera, chelsea (demo labels 0-3)."""
HELD_OUT = 100_000
"""Demo images from this index on are the fine-tuning's; runs collect from 0."""
_TRAINED = "blocks.5.3"


def _images(net: Any, indices: list[int], size: int) -> torch.Tensor:
    from .sources import demo_image

    x: torch.Tensor = net.preprocess(torch.from_numpy(np.stack([np.asarray(demo_image(i, size)) for i in indices])))
    return x


def _split(module: torch.nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.nn.Module,
                                              Callable[[torch.Tensor], torch.Tensor]]:
    """(frozen trunk up to the trained block, the trained block, the rest to the logits) of timm's Lite0."""
    blocks: Any = module.get_submodule("blocks")
    trained = blocks[5][3]

    def trunk(x: torch.Tensor) -> torch.Tensor:
        h: torch.Tensor = module.bn1(module.conv_stem(x))  # type: ignore[operator]
        for b in [*list(blocks)[:5], *list(blocks[5])[:3]]:
            h = b(h)
        return h

    def rest(h: torch.Tensor) -> torch.Tensor:
        h = module.bn2(module.conv_head(blocks[6](h)))  # type: ignore[operator]
        return module.classifier(module.global_pool(h))  # type: ignore[operator, no-any-return]

    return trunk, trained, rest


def finetune_demo(out: str | Path, *, photos: Sequence[int] = DEFAULT_PHOTOS, size: int = 128, per_photo: int = 16,
                  keep_images: int = 6, steps: int = 30, batch: int = 32, lr: float = 1e-3, keep: float = 1.0,
                  seed: int = 0, log: Callable[[str], None] | None = None) -> Path:
    """Fine-tune the bundled Lite0 on ``photos`` (module docstring) and save its state dict to ``out``;
    returns ``out``. ``keep_images``: images per other photo whose layer output is kept."""
    from .config import ModelConfig
    from .models import load_network
    from .sources import DEMO_PHOTOS

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same bits on any machine with this torch
    try:
        torch.manual_seed(seed)
        net = load_network(ModelConfig(name="efficientnet_lite0"))
        module = net.module.eval()
        trunk, trained, rest = _split(module)
        n = len(DEMO_PHOTOS)
        tuned = [HELD_OUT + n * j + k for j in range(per_photo) for k in photos]
        others = [HELD_OUT + n * j + k for j in range(keep_images) for k in range(n) if k not in photos]
        with torch.no_grad():
            h_tuned, h_other = trunk(_images(net, tuned, size)), trunk(_images(net, others, size))
            kept = trained(h_other)
        scale = float(kept.pow(2).mean())
        labels = torch.tensor([i % n for i in tuned])
        for p in module.parameters():
            p.requires_grad_(False)
        params = list(trained.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        for step in range(steps):
            i = torch.randint(len(h_tuned), (batch,), generator=gen)
            j = torch.randint(len(h_other), (batch,), generator=gen)
            loss = torch.nn.functional.cross_entropy(rest(trained(h_tuned[i])), labels[i])
            if keep:
                loss = loss + keep * torch.nn.functional.mse_loss(trained(h_other[j]), kept[j]) / scale
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            if log is not None and (step % 10 == 0 or step == steps - 1):
                log(f"fine-tuning {_TRAINED}: step {step + 1}/{steps}, loss {loss.item():.3f}")
        for p in module.parameters():
            p.requires_grad_(False)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        torch.save(module.state_dict(), tmp)
        tmp.replace(out)
    finally:
        torch.set_num_threads(threads)
    if log is not None:
        log(f"fine-tuned {_TRAINED} on photos {', '.join(DEMO_PHOTOS[k] for k in photos)} in "
            f"{time.perf_counter() - t0:.0f} s: {out}")
    return out


if __name__ == "__main__":  # pragma: no cover - `python -m atlas.finetune OUT.pth [--size 224]`
    import argparse

    ap = argparse.ArgumentParser(prog="python -m atlas.finetune", description="Write the fine-tuned demo network "
                                 "(docs/benchmarks.md, 'Comparing two networks') as a state dict for model.weights.")
    ap.add_argument("out", help="the .pth file to write")
    ap.add_argument("--size", type=int, default=224, help="image side in pixels: the runs' model.input_size (default: 224)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the initial draws and batches (default: 0)")
    ns = ap.parse_args()
    finetune_demo(ns.out, size=ns.size, seed=ns.seed, log=print)
