from pathlib import Path

import pytest
import yaml

from atlas.config import (
    Config,
    ConfigError,
    GridConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    provenance,
    run_config_text,
    schema_rows,
    slurm_stage_resources,
    with_updates,
)

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
    from atlas.stages._runner import save_run_config
    from atlas.store import RunDir

    cfg = load_config(ROOT / "pipelines" / "demo.yaml", [f"run_dir={tmp_path}", "render.steps=7", "cluster.workers=3"])
    save_run_config(cfg, RunDir(tmp_path))
    assert "provenance" in (tmp_path / "config.yaml").read_text()
    assert api.load_run(tmp_path) == cfg
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        api.load_run(tmp_path / "nope")


# --------------------------------------------------------------------------- one-line errors naming the key


@pytest.mark.parametrize("item,message", [
    ("seed=-1", "config key `seed` must be >= 0, got -1"),
    ("images.demo_count=0", "config key `images.demo_count` must be >= 1, got 0"),
    ("model.input_size=0", "config key `model.input_size` must be >= 1, got 0"),
    ("model.std=[0.5,0,0.5]", "config key `model.std[1]` must be > 0, got 0"),
    ("collect.workers=-1", "config key `collect.workers` must be >= 0, got -1"),
    ("reduce.clip_percentile=50", "config key `reduce.clip_percentile` must be < 50, got 50"),
    ("reduce.fit_max=2", "config key `reduce.fit_max` must be >= 3, got 2"),
    ("reduce.n_neighbors=1", "config key `reduce.n_neighbors` must be >= 2, got 1"),
    ("reduce.margin=0.5", "config key `reduce.margin` must be < 0.5, got 0.5"),
    ("grid.whiten_eps=0", "config key `grid.whiten_eps` must be > 0, got 0"),
    ("grid.min_count=0", "config key `grid.min_count` must be >= 1, got 0"),
    ("render.polish=1.5", "config key `render.polish` must be <= 1, got 1.5"),
    ("render.icon_size=4", "config key `render.icon_size` must be >= 8, got 4"),
    ("render.lr=0", "config key `render.lr` must be > 0, got 0"),
    ("tile.quality=101", "config key `tile.quality` must be <= 100, got 101"),
    ("tile.lod_fraction=0", "config key `tile.lod_fraction` must be > 0, got 0"),
    ("tile.overlap=256", "config key `tile.overlap` must be less than tile.tile_size (256), got 256"),
    ("tile.background=red", "config key `tile.background` must be a colour '#rrggbb' (quoted: # starts a YAML comment), got 'red'"),
    ("cluster.retries=-1", "config key `cluster.retries` must be >= 0, got -1"),
    ("cluster.jobqueue.cores=0", "config key `cluster.jobqueue.cores` must be >= 1, got 0"),
    ("cluster.slurm.max_parallel=0", "config key `cluster.slurm.max_parallel` must be >= 1, got 0"),
    ("cluster.slurm.stages.render.tasks=0", "config key `cluster.slurm.stages.render.tasks` must be >= 1, got 0"),
    ("cluster.slurm.stages.collect.time=soon", "config key `cluster.slurm.stages.collect.time` must be a SLURM time"),
    ("cluster.slurm.extra=['--qos long']", "config key `cluster.slurm.extra` holds sbatch options such as --qos=long"),
    ("grid.sizes=[8,12]", "config key `grid.sizes` must be increasing powers of two, each double the previous"),
    ("render.levels=[64]", "config key `render.levels` must be some of grid.sizes [8, 16, 32]"),
])
def test_out_of_range_values_fail_at_load_naming_the_dotted_key(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_out_of_range_value_in_a_file_fails_at_load(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("render:\n  polish: 1.5\n")
    with pytest.raises(ConfigError, match=r"^config key `render\.polish` must be <= 1, got 1\.5$"):
        load_config(p)


@pytest.mark.parametrize(("key", "value", "fix"), [
    ("grid.dask_workers", 8, "cluster.engine: dask and cluster.workers: N"),
    ("grid.scheduler", "tcp://host:8786", "cluster.engine: dask and cluster.scheduler: ADDRESS"),
    ("tile.workers", 2, "cluster.processes: N"),
])
def test_removed_keys_say_in_one_line_what_replaced_them(tmp_path, key: str, value: object, fix: str) -> None:
    """Parallelism has one owner, the engine (``cluster.*``): the stages' own keys are gone."""
    section, name = key.split(".")
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump({section: {name: value}}))
    for load in (lambda: load_config(p), lambda: load_config(None, [f"{key}={value}"])):
        with pytest.raises(ConfigError) as e:
            load()
        assert str(e.value).startswith(f"config key `{key}` was removed: ") and fix in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
    assert load_config(None, ["cluster.processes=3"]).cluster.processes == 3


def test_a_run_config_of_an_earlier_version_still_loads_without_its_removed_keys(tmp_path) -> None:
    """RUN/config.yaml of an earlier version lists every key of its day, removed ones included:
    it still resumes (they were never part of a fingerprint); a user's own config is refused."""
    old = config_to_dict(load_config(None, ["run_dir=runs/old"]))
    old["grid"] |= {"scheduler": None, "dask_workers": 2}
    old["tile"]["workers"] = 0
    run_cfg = tmp_path / "config.yaml"
    run_cfg.write_text(yaml.safe_dump(old) + yaml.safe_dump({"provenance": {"atlas": "0.0"}}))
    cfg = load_config(run_cfg)  # its run_dir is its folder, whatever it recorded
    assert cfg.run_dir == str(tmp_path) and config_to_dict(cfg)["grid"] == config_to_dict(load_config(None))["grid"]
    user_cfg = tmp_path / "mine.yaml"
    user_cfg.write_text(yaml.safe_dump(old))
    with pytest.raises(ConfigError, match=r"^config key `(grid|tile)\.\w+` was removed: "):
        load_config(user_cfg)


def test_unknown_key_message_lists_the_keys_of_its_section():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["render.stepz=3"])
    assert str(e.value) == ("unknown config key `render.stepz`; allowed keys in render: levels, icon_size, icon_growth, "
                            "icon_sizes, steps, "
                            "batch_size, restarts, lr, optimizer, schedule, warmup, cossim_power, whiten, whiten_mix, "
                            "reduce, cossim_floor, param, coarse, coarse_scale, pyramid_levels, decay_power, init_sd, "
                            "init, transforms, polish, select, threads")
    with pytest.raises(ConfigError, match=r"^unknown config key `cluster\.slurm\.stages\.tile\.cpu`; "
                                          r"allowed keys in cluster\.slurm\.stages\.tile: tasks, time, cpus, mem, gpus$"):
        load_config(None, ["cluster.slurm.stages.tile.cpu=4"])
    with pytest.raises(ConfigError, match=r"^unknown config key `colect`; allowed keys in the top level: run_dir, seed, "):
        load_config(None, ["colect.batch_size=3"])


def test_slurm_stages_are_keyed_by_stage_name():
    with pytest.raises(ConfigError, match=r"^config key `cluster\.slurm\.stages\.colect` is not a stage; "
                                          r"stages are collect, reduce, grid, render, tile$"):
        load_config(None, ["cluster.slurm.stages.colect.tasks=4"])


def test_bad_choice_names_the_choices():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["collect.dtype=int8"])
    assert str(e.value) == "config key `collect.dtype` must be one of float16, float32; got 'int8'"


@pytest.mark.parametrize("item,message", [
    ("seed='7'", "config key `seed` must be an integer, got '7'"),
    ("reduce.min_dist='0.1'", "config key `reduce.min_dist` must be a number, got '0.1'"),
    ("collect.attribution='true'", "config key `collect.attribution` must be true or false, got 'true'"),
    ("collect.attribution=1", "config key `collect.attribution` must be true or false, got 1"),
    ("collect.batch_size=true", "config key `collect.batch_size` must be an integer, got True"),
    ("collect.batch_size=2.5", "config key `collect.batch_size` must be an integer, got 2.5"),
    ("model.layer=5", "config key `model.layer` must be a string, got 5"),
    ("grid.sizes=8", "config key `grid.sizes` must be a list, got 8"),
    ("images=5", "config section `images` must be a mapping"),
])
def test_no_silent_coercion_between_strings_numbers_and_booleans(item: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert str(e.value).startswith(message)


def test_yaml_ints_are_accepted_for_floats():
    cfg = load_config(None, ["reduce.min_dist=1", "render.polish=0", "tile.lod_fraction=1"])
    assert cfg.reduce.min_dist == 1.0 and isinstance(cfg.reduce.min_dist, float)
    assert cfg.render.polish == 0.0 and cfg.tile.lod_fraction == 1.0


def test_dotted_override_of_a_nested_key_keeps_its_siblings(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"cluster": {"slurm": {"stages": {"render": {"tasks": 32, "mem": "48G"}}}},
                                 "render": {"steps": 7}}))
    cfg = load_config(p, ["cluster.slurm.stages.render.tasks=3", "render.icon_size=32", "cluster.jobqueue.cores=2"])
    render = cfg.cluster.slurm.stages["render"]
    assert (render.tasks, render.mem, render.time) == (3, "48G", None)
    assert (cfg.render.steps, cfg.render.icon_size, cfg.render.lr) == (7, 32, 0.05)
    assert cfg.cluster.jobqueue.cores == 2 and cfg.cluster.jobqueue.memory == "32GB"
    assert cfg.cluster.slurm.partition is None and set(cfg.cluster.slurm.stages) == {"render"}


def test_slurm_stage_resources_merge_over_the_stage_defaults():
    defaults = {"tasks": 16, "time": "04:00:00", "cpus": 8, "mem": "32G", "gpus": 1}
    cfg = load_config(None, ["cluster.slurm.stages.render.tasks=3", "cluster.slurm.stages.render.mem=64G",
                             "cluster.slurm.stages.reduce.tasks=2"])
    assert slurm_stage_resources(cfg, "render", defaults) == {**defaults, "tasks": 3, "mem": "64G"}
    assert slurm_stage_resources(cfg, "collect", defaults) == defaults
    with pytest.raises(ConfigError, match=r"`cluster\.slurm\.stages\.reduce\.tasks` must be 1: reduce runs as one job"):
        slurm_stage_resources(cfg, "reduce", defaults, single=True)


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("ATLAS_TEST_DIR", "/data/x")
    monkeypatch.delenv("ATLAS_TEST_UNSET", raising=False)
    cfg = load_config(None, ["images.path=${ATLAS_TEST_DIR}/train", "run_dir=${ATLAS_TEST_UNSET:-runs}/a",
                             "model.weights=${ATLAS_TEST_UNSET:-}"])
    assert (cfg.images.path, cfg.run_dir, cfg.model.weights) == ("/data/x/train", "runs/a", None)
    with pytest.raises(ConfigError, match=r"^config key `images\.path` uses \$\{ATLAS_TEST_UNSET\}, which is not set"):
        load_config(None, ["images.path=${ATLAS_TEST_UNSET}/train"])


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:1", "mps"])
def test_devices_accepted(device: str) -> None:
    assert load_config(None, [f"model.device={device}"]).model.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "cuda:1 "])
def test_devices_rejected(device: str) -> None:
    with pytest.raises(ConfigError, match=r"^config key `model\.device` must be auto, cpu, cuda, cuda:N \(N an integer\) or mps"):
        config_from_dict({"model": {"device": device}})


@pytest.mark.parametrize("value", ["", "''", "'  '"])
def test_empty_run_dir_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"run_dir={value}"])
    assert str(e.value) == "config key `run_dir` is empty: set it to a folder such as runs/demo"


def test_empty_weights_mean_none():
    assert load_config(None, ["model.weights="]).model.weights is None
    assert config_from_dict({"model": {"weights": ""}}).model.weights is None


def test_empty_section_means_its_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("collect:\n  # nothing set\nrender:\n")
    assert load_config(p) == Config()


def test_configs_are_frozen_and_with_updates_makes_a_validated_copy():
    cfg = load_config(None)
    with pytest.raises(ValueError):
        cfg.cluster.scheduler = "tcp://x:1"  # type: ignore[misc]
    new = with_updates(cfg, {"cluster.scheduler": "tcp://10.0.0.1:8786", "render.steps": 3})
    assert (new.cluster.scheduler, new.render.steps) == ("tcp://10.0.0.1:8786", 3)
    assert (cfg.cluster.scheduler, cfg.render.steps) == (None, 512) and new.grid.sizes == cfg.grid.sizes
    with pytest.raises(ConfigError, match=r"^config key `render\.polish` must be <= 1"):
        with_updates(cfg, {"render.polish": 2})
    with pytest.raises(ConfigError, match="unknown config key `render.stepz`"):
        with_updates(cfg, {"render.stepz": 2})


def test_sections_built_directly_are_validated():
    assert GridConfig(sizes=[4, 8]).sizes == [4, 8]
    with pytest.raises(ValueError, match="powers of two"):
        GridConfig(sizes=[4, 12])


def test_config_yaml_round_trip(tmp_path):
    cfg = load_config(ROOT / "pipelines" / "imagenet-lite0.yaml", ["images.path=/data/x", "run_dir=/scratch/r",
                                                                   "tile.background='#102030'", "model.device=cuda:1"])
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg
    assert config_to_dict(cfg)["cluster"]["slurm"]["stages"]["collect"]["tasks"] == 16
    run_yaml = tmp_path / "config.yaml"  # what a run directory holds: the config, then its provenance
    run_yaml.write_text(dump_config(cfg) + "\n" + yaml.safe_dump({"provenance": provenance({"x": 1})}, sort_keys=False))
    here = with_updates(cfg, {"run_dir": str(tmp_path)})  # a run's config.yaml: run_dir is its folder
    assert load_config(run_yaml) == here
    assert load_config(run_yaml, ["render.steps=9"]) == with_updates(here, {"render.steps": 9})
    assert load_config(run_yaml, ["run_dir=/scratch/r"]) == cfg  # an explicit run_dir wins
    run_yaml.write_text(run_config_text(cfg, provenance()))  # as a run writes it: run_dir ".", read as its folder
    assert "run_dir: .\n" in run_yaml.read_text() and load_config(run_yaml) == here


def test_resolve_device_accepts_the_configured_forms_and_says_what_is_missing():
    import torch

    from atlas.models import ModelError, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n:
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ModelError, match=rf"`cuda:{n}` was requested but torch sees"):
        resolve_device(f"cuda:{n}")
    if not torch.backends.mps.is_available():
        with pytest.raises(ModelError, match="`mps` was requested but torch sees no Apple GPU"):
            resolve_device("mps")
    with pytest.raises(ModelError, match="set model.device to auto, cpu, cuda, cuda:N or mps"):
        resolve_device("gpu")
