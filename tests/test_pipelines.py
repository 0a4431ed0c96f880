"""The ready-made run configs in pipelines/: each loads with every key known, its machine
paths are templated from the environment, and its model's layer exists in the real network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from atlas.cluster import sbatch_options
from atlas.config import ConfigError, ModelConfig, load_config, schema_rows
from atlas.models import list_layers, load_network
from atlas.stages import STAGES
from tests.conftest import ROOT

PIPELINES = ROOT / "pipelines"
CONFIGS = sorted(p.name for p in PIPELINES.glob("*.yaml"))
ENV = {"IMAGENET_DIR": "/data/imagenet", "GOOGLENET_WEIGHTS": "/models/googlenet.pth", "IMAGES": "/data/mine",
       "WEIGHTS": "/models/resnet50.pth", "IMAGENET_HF_DIR": "/data/imagenet-1k"}


def _leaf_keys(data: dict, prefix: str = "") -> list[str]:
    """Dotted leaf keys; the per-stage SLURM keys as the schema documents them (``<stage>``)."""
    out = []
    for k, v in data.items():
        sub = f"{prefix}{k}"
        out += _leaf_keys(v, sub + ".") if isinstance(v, dict) else [sub]
    return [re.sub(r"^cluster\.slurm\.stages\.[^.]+\.", "cluster.slurm.stages.<stage>.", k) for k in out]


def test_the_documented_configs_are_there() -> None:
    assert set(CONFIGS) >= {"demo.yaml", "imagenet-googlenet-mixed4c.yaml", "imagenet-lite0.yaml", "folder.yaml"}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_every_key_is_known(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ATLAS_RUNS", raising=False)
    raw = yaml.safe_load((PIPELINES / name).read_text())
    known = {row[0] for row in schema_rows()}
    assert [k for k in _leaf_keys(raw) if k not in known] == []
    cfg = load_config(PIPELINES / name)
    assert cfg.run_dir == f"runs/{Path(name).stem}"
    assert set(cfg.cluster.slurm.stages) <= set(STAGES)
    for stage in STAGES:
        assert sbatch_options(cfg, stage)[0] == f"--job-name=atlas-{stage}"


@pytest.mark.parametrize("name", [n for n in CONFIGS if not n.startswith("demo")])
def test_machine_paths_are_templated(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load((PIPELINES / name).read_text())
    assert "${" in raw["run_dir"] and "${" in raw["images"]["path"]
    for k in ENV:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ConfigError, match=r"`images\.path` uses \$\{"):
        load_config(PIPELINES / name)
    monkeypatch.setenv("ATLAS_RUNS", "/scratch/me")
    cfg = load_config(PIPELINES / name, ["images.path=/elsewhere"])
    assert cfg.run_dir.startswith("/scratch/me/") and cfg.images.path == "/elsewhere"


def test_per_stage_slurm_resources_are_keyed_by_stage_name(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(PIPELINES / "imagenet-googlenet-mixed4c.yaml")
    collect = cfg.cluster.slurm.stages["collect"]
    assert (collect.tasks, collect.cpus, collect.mem, collect.gpus) == (32, 10, "48G", 1)
    assert "--array=0-31" in sbatch_options(cfg, "collect") and "--mem=128G" in sbatch_options(cfg, "reduce")


def test_the_distill_setting() -> None:
    cfg = load_config(PIPELINES / "imagenet-googlenet-mixed4c.yaml", ["images.path=/x", "model.weights=null"])
    assert (cfg.model.name, cfg.model.layer) == ("googlenet", "inception4c")
    assert (cfg.reduce.n_neighbors, cfg.reduce.min_dist, cfg.reduce.metric) == (50, 0.05, "cosine")
    assert cfg.images.limit == 1_000_000 and cfg.images.subset == "random" and max(cfg.grid.sizes) >= 160


def _local_weights(tmp_path: Path, name: str) -> Path:
    """Weights with torchvision's layout, made here (nothing is downloaded)."""
    torch.manual_seed(0)
    kw = {"aux_logits": True, "init_weights": False} if name == "googlenet" else {}
    path = tmp_path / f"{name}.pth"
    torch.save(torchvision.models.get_model(name, weights=None, **kw).state_dict(), path)
    return path


@pytest.mark.parametrize(("name", "extra"), [("imagenet-googlenet-mixed4c.yaml", "googlenet"),
                                             ("imagenet-lite0.yaml", None), ("folder.yaml", "resnet50")])
def test_the_configured_layer_exists_in_the_real_network(name: str, extra: str | None, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(PIPELINES / name)
    weights = str(_local_weights(tmp_path, extra)) if extra else None
    net = load_network(ModelConfig(name=cfg.model.name, weights=weights, layer=cfg.model.layer))
    layers = dict(list_layers(net))
    assert cfg.model.layer in layers, sorted(layers)[:20]
