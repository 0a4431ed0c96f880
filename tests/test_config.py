from pathlib import Path

import pytest
import yaml

from atlas.config import Config, ConfigError, load_config, schema_rows

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_loads_with_all_keys_known():
    cfg = load_config(ROOT / "pipelines" / "demo.yaml")
    assert cfg.model.name == "efficientnet_lite0"
    assert (cfg.images.kind, cfg.images.path) == ("auto", "demo")


def test_unknown_key_is_named_with_allowed_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"model": {"name": "googlenet", "layr": "x"}}))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "model.layr" in str(e.value)
    assert "layer" in str(e.value) and "weights" in str(e.value)


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="`colect`"):
        load_config(None, ["colect.batch_size=3"])


def test_overrides_parse_yaml_scalars():
    cfg = load_config(None, ["seed=7", "images.path=/data/x y", "model.weights=null", "grid.sizes=[2,4]",
                             "collect.attribution=false", "reduce.min_dist=0.1"])
    assert cfg.seed == 7 and cfg.images.path == "/data/x y" and cfg.model.weights is None
    assert cfg.grid.sizes == [2, 4] and cfg.collect.attribution is False and cfg.reduce.min_dist == 0.1


@pytest.mark.parametrize("item,key", [
    ("seed=abc", "seed"),
    ("collect.batch_size=0", "collect.batch_size"),
    ("collect.dtype=int8", "collect.dtype"),
    ("grid.sizes=[8,12]", "grid.sizes"),
    ("collect.attribution=3", "collect.attribution"),
    ("model", "key=value"),
])
def test_bad_values_name_the_key(item, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [item])


def test_missing_config_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_every_leaf_key_is_documented():
    rows = schema_rows()
    assert len(rows) > 30
    assert all(help for _, _, _, help in rows)
    keys = {r[0] for r in rows}
    assert {"run_dir", "seed", "images.path", "model.name", "model.weights", "model.layer"} <= keys


def test_generated_config_reference_is_current():
    from atlas.config import _markdown

    doc = ROOT / "docs" / "configuration.md"
    assert doc.read_text() == _markdown(), "run: python -m atlas.config > docs/configuration.md"


def test_defaults_roundtrip():
    assert isinstance(load_config(None), Config)


def test_generated_cli_reference_is_current():
    from atlas._clidoc import cli_markdown

    doc = ROOT / "docs" / "cli.md"
    assert doc.read_text() == cli_markdown(), "run: python -m atlas._clidoc > docs/cli.md"
    assert "## `atlas slurm-plan`" in doc.read_text() and "--shard I/N" in doc.read_text()


def test_demo_kind_with_another_path_is_refused_and_the_demo_config_follows_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"images\.kind.*images\.kind=auto"):
        load_config(None, ["images.kind=demo", f"images.path={tmp_path}"])
    cfg = load_config(ROOT / "pipelines" / "demo.yaml", [f"images.path={tmp_path}"])
    assert (cfg.images.kind, cfg.images.path) == ("auto", str(tmp_path))


def test_load_run_reads_back_the_resolved_config(tmp_path):
    from atlas import api
    from atlas.stages._base import save_run_config
    from atlas.store import RunDir

    cfg = load_config(ROOT / "pipelines" / "demo.yaml", [f"run_dir={tmp_path}", "render.steps=7", "cluster.workers=3"])
    save_run_config(cfg, RunDir(tmp_path))
    assert "provenance" in (tmp_path / "config.yaml").read_text()
    assert api.load_run(tmp_path) == cfg
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        api.load_run(tmp_path / "nope")
