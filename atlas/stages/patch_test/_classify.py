"""The run's network as a classifier of uint8 images: logits, top-1, class probabilities and ranks."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Classifier", "Scores", "scores"]


class Classifier:
    """``net`` (an :class:`atlas.models.Network`) on ``device`` in eval mode: uint8 images
    [B, S, S, 3] -> float32 logits [B, K] on the CPU.

    As collect runs it: channels_last, and eval BatchNorms folded into their convs when that
    leaves the logits unchanged (checked on a seeded batch; else the network as it is)."""

    def __init__(self, net: Any, device: torch.device, *, channels_last: bool = True, fold_bn: bool = True) -> None:
        from ...models import fold_batchnorm

        self.net, self.device, self.channels_last = net, device, channels_last
        with warnings.catch_warnings():  # TorchScript parameters warn about .grad access inside Module._apply
            warnings.filterwarnings("ignore", message=r".*\.grad attribute of a Tensor that is not a leaf")
            module = copy.deepcopy(net.module).to(device)
            if channels_last:
                module = module.to(memory_format=torch.channels_last)
        self.module = module.eval()
        self.folded = 0
        if fold_bn and not isinstance(module, torch.jit.ScriptModule):
            x = self._input(torch.randn(2, 3, net.input_size, net.input_size,
                                        generator=torch.Generator().manual_seed(0)))
            folded = copy.deepcopy(self.module)
            try:
                n = fold_batchnorm(folded, x)
            except Exception:  # noqa: BLE001 - a network the folding cannot trace is used as it is
                n = 0
            if n:
                with torch.no_grad():
                    want, got = self.module(x).float(), folded(x).float()
                scale = float(want.abs().max().clamp(min=1.0))
                if torch.allclose(got, want, rtol=1e-3, atol=1e-3 * scale):
                    self.module, self.folded = folded, n

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """float32 [B, K] (CPU) for uint8 images [B, S, S, 3]."""
        with torch.inference_mode():
            out = self.module(self._input(self.net.preprocess(images)))
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ValueError(f"model `{self.net.name}` does not output class logits [B, K]: patch-test needs a classifier")
        return out.float().cpu()


@dataclass
class Scores:
    """Per image: top-1 class and its probability, the probabilities of CLASS_A and CLASS_B and the
    rank of CLASS_B (1 = top-1) among all classes by logit."""

    top1: np.ndarray
    prob_top1: np.ndarray
    prob_a: np.ndarray
    prob_b: np.ndarray
    rank_b: np.ndarray


def scores(logits: torch.Tensor, a: int, b: int) -> Scores:
    """:class:`Scores` of float32 logits [B, K]."""
    prob = torch.softmax(logits.double(), dim=1)
    rank_b = (logits > logits[:, b:b + 1]).sum(dim=1) + 1
    return Scores(logits.argmax(dim=1).numpy().astype(np.int32), prob.max(dim=1).values.numpy().astype(np.float32),
                  prob[:, a].numpy().astype(np.float32),
                  prob[:, b].numpy().astype(np.float32), rank_b.numpy().astype(np.int32))
