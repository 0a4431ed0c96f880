"""Shared fixtures: the real demo config shrunk to tiny sizes, array comparison helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pipelines" / "demo.yaml"

torch.set_num_threads(2)
os.environ.setdefault("OMP_NUM_THREADS", "2")

# The demo pipeline, shrunk: few small images, small input, tiny chunks, many units.
TINY = [
    "images.demo_count=120",
    "images.demo_size=96",
    "model.input_size=128",
    "collect.chunk_rows=16",
    "collect.batch_size=8",
    "collect.workers=0",
]


@pytest.fixture
def tiny_overrides(tmp_path: Path) -> list[str]:
    return [f"run_dir={tmp_path / 'run'}", *TINY]


def group_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of a Zarr group (recursively), by path."""
    out: dict[str, np.ndarray] = {}

    def walk(g: zarr.Group, prefix: str) -> None:
        for name, arr in g.arrays():
            out[prefix + name] = arr[...]
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")

    walk(zarr.open_group(str(path), mode="r"), "")
    return out


def assert_groups_equal(a: str | Path, b: str | Path) -> None:
    """Bitwise equality of two Zarr groups' arrays (NaN == NaN)."""
    xa, xb = group_arrays(a), group_arrays(b)
    assert sorted(xa) == sorted(xb)
    for name in xa:
        assert xa[name].dtype == xb[name].dtype, name
        assert xa[name].shape == xb[name].shape, name
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)


@pytest.fixture(scope="session")
def whole_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole tiny atlas (every stage) built in-process through the CLI: the run every engine
    must reproduce bit for bit (tests/cluster) and the one the format tests read."""
    from tests.cluster.util import atlas, sets

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    atlas("run", str(DEMO), *sets(run_dir))
    return run_dir


@pytest.fixture(scope="session")
def finetuned_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fine-tuned demo network (:func:`atlas.finetune.finetune_demo`, docs/benchmarks.md: Lite0's
    ``blocks.5.3`` taught to name demo photos 0-3 by their labels, about 10 s on the CPU), a state dict
    that ``model.weights`` loads: the B of ``atlas compare``'s tests."""
    from atlas.finetune import finetune_demo

    return finetune_demo(tmp_path_factory.mktemp("finetuned") / "finetuned.pth")


TWO_LAYERS = ("model.layers=[blocks.5, blocks.3]", "render.steps=1")
"""A run of two layers (tests/test_layers.py, tests/test_viewer_layers.py): the demo's blocks.5, then blocks.3."""


@pytest.fixture(scope="session")
def layers_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole tiny atlas of two layers (blocks.5 first, blocks.3 further), then ``follow``, through the CLI."""
    from tests.cluster.util import atlas, sets

    run_dir = tmp_path_factory.mktemp("layers") / "run"
    atlas("run", str(DEMO), *sets(run_dir, *TWO_LAYERS))
    return run_dir
