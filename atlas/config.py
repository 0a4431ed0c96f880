"""Run configuration: schema, defaults, YAML loading, ``--set`` overrides, provenance.

The schema is a tree of frozen-free dataclasses. Every field carries a ``help``
string in its metadata; ``docs/configuration.md`` is generated from it
(``python -m atlas.config``). Unknown keys are rejected by name, listing the
allowed ones, and values are checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "ImagesConfig",
    "ModelConfig",
    "CollectConfig",
    "ReduceConfig",
    "GridConfig",
    "RenderConfig",
    "TileConfig",
    "ClusterConfig",
    "JobqueueConfig",
    "SlurmConfig",
    "SlurmStageConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "expand_env",
    "config_to_dict",
    "provenance",
    "schema_rows",
    "file_sha256",
    "check_grid_sizes",
    "dump_config",
]


class ConfigError(ValueError):
    """A configuration problem, with a message naming the key and the fix."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ImagesConfig:
    kind: str = _f("auto", "Image source: `auto` (detected from `path`), `demo`, `folder`, `list` (.txt/.csv of paths) or `tar` (webdataset-style shards).",
                   choices=("auto", "demo", "folder", "list", "tar"))
    path: str = _f("demo", "Folder, list file, tar file, folder of tars or glob of tars; `demo` for the embedded demo set.")
    labels: str = _f("auto", "Where labels come from: `auto` (sub-folders / CSV column / `.cls` members / demo photo), `folders`, `none`.",
                     choices=("auto", "folders", "none"))
    limit: int | None = _f(None, "Use only `limit` images of the source (None = all); which ones: `subset`.")
    subset: str = _f("first", "With `limit`: the `first` images of the source order, or a `random` subset (seeded, kept in source order; a folder of class folders needs `random` for a class-balanced sample).",
                     choices=("first", "random"))
    demo_count: int = _f(2000, "Number of images in the embedded demo set (seeded crops, scales and flips of the photos scikit-image ships).")
    demo_size: int = _f(320, "Side in pixels of the generated demo images.")
    max_pixels: int = _f(89_478_485, "Images with more pixels are rejected as decompression bombs (PIL's default limit).")
    min_side: int = _f(16, "Images whose shorter side is below this are recorded as too small.")


@dataclass
class ModelConfig:
    name: str = _f("efficientnet_lite0", "Network: `efficientnet_lite0` (bundled weights), `efficientnet_lite2`, any torchvision classifier name (`googlenet`, `resnet50`, ...) or `torchscript`.")
    weights: str | None = _f(None, "Weights file (.pth state dict, or the TorchScript file). None = the bundled weights or the torch cache.")
    layer: str = _f("blocks.5", "Layer whose output is sampled; `atlas layers --model NAME` lists them with their shapes.")
    input_size: int | None = _f(None, "Square input side in pixels; None = the model's own (224 for Lite0, 260 for Lite2).")
    mean: list[float] | None = _f(None, "Per-channel mean on [0, 1] inputs; None = the model's own (needed for `torchscript`).")
    std: list[float] | None = _f(None, "Per-channel std on [0, 1] inputs; None = the model's own (needed for `torchscript`).")
    device: str = _f("auto", "`auto` (CUDA when present), `cpu` or `cuda`.", choices=("auto", "cpu", "cuda"))


@dataclass
class CollectConfig:
    chunk_rows: int = _f(4096, "Rows per Zarr chunk and per unit of work (resume and sharding granularity).")
    batch_size: int = _f(64, "Images per forward pass.")
    workers: int = _f(2, "DataLoader decode worker processes (0 = decode in the main process).")
    border: int = _f(1, "Positions within this many cells of the layer grid's edge are never sampled (Distill excluded the border).")
    attribution: bool = _f(True, "Store class attribution of the sampled vector (one forward-mode product). Off: the network is cut after the layer.")
    top_k: int = _f(10, "Classes kept per image for attribution.")
    dtype: str = _f("float16", "Storage dtype of activations.", choices=("float16", "float32"))
    channels_last: bool = _f(True, "Run the network in channels_last memory format (about 1.6x on CPU).")
    fold_bn: bool = _f(True, "Fold eval BatchNorm into the preceding convs (about 1.5x on CPU; verified against the unfolded network, else off).")
    threads: int | None = _f(None, "torch intra-op threads (None = every CPU this process may use); pinned so results do not depend on what ran before.")


@dataclass
class ReduceConfig:
    n_neighbors: int | None = _f(None, "UMAP neighbours; None = 50 (Distill) or 20 for runs under 10,000 points.")
    min_dist: float = _f(0.05, "UMAP min_dist (Distill: 0.05).")
    metric: str = _f("cosine", "Distance: `cosine` (Distill) or `euclidean`.", choices=("cosine", "euclidean"))
    pca: int | None = _f(None, "Reduce to this many dimensions with PCA first (None = off).")
    exact_knn_max: int = _f(20_000, "Up to this many fitted points the kNN graph (and placement search) is exact; beyond, approximate (HNSW, single-threaded build so it is deterministic) with a measured recall.")
    fit_max: int = _f(30_000, "Fit UMAP on at most this many points (seeded sample); the rest are placed chunk by chunk from their nearest fitted points (30,000: >= 3x faster than umap-learn on 200k points, trustworthiness within 0.005; see docs/benchmarks.md).")
    init: str = _f("auto", "UMAP init: `auto` (spectral when small, PCA when large), `spectral`, `pca`, `random`.",
                   choices=("auto", "spectral", "pca", "random"))
    n_epochs: int | None = _f(None, "UMAP epochs (None = umap-learn's default for the size).")
    clip_percentile: float = _f(1.0, "Layout is clipped to [p, 100-p] percentiles before normalising to [0, 1].")
    margin: float = _f(0.02, "Margin kept around the normalised layout.")
    spectral_max: int = _f(100_000, "`init: auto` uses spectral init up to this many fitted points, PCA beyond (spectral init stalls on huge graphs).")
    placement: str = _f("interpolate", "How rows outside the fitted sample are placed: `interpolate` (weighted mean of the layout positions of their `place_k` nearest fitted points) or `transform` (umap-learn's transform: that init plus SGD against the fixed layout).",
                        choices=("interpolate", "transform"))
    place_k: int = _f(10, "Nearest fitted points used by `placement: interpolate`.")
    hnsw_m: int = _f(32, "HNSW graph degree (approximate kNN beyond `exact_knn_max`).")
    hnsw_ef_construction: int = _f(64, "HNSW efConstruction (build effort).")
    hnsw_ef_search: int = _f(64, "HNSW efSearch (query effort; raised to k when smaller).")
    recall_queries: int = _f(1000, "Seeded queries whose approximate neighbours are checked against exact search (recall@k).")
    trust_sample: int = _f(5000, "Seeded points on which trustworthiness (k=10, cosine) is measured.")
    threads: int | None = _f(None, "faiss and numba threads (None = every CPU this process may use).")


@dataclass
class GridConfig:
    sizes: list[int] = _f([8, 16, 32], "Grid sizes (cells per side), powers of two, each double the previous: aligned levels.")
    min_count: int = _f(4, "Cells with fewer points are empty (Distill used 4-10).")
    top_classes: int = _f(5, "Classes kept per cell.")
    examples: int = _f(8, "Dataset examples per cell: the rows of the cell whose sampled activation is nearest (cosine) the cell mean.")
    whiten_eps: float = _f(1e-2, "Whitening: S = inv(A^T A / N + eps I); eps relative to the mean eigenvalue.")
    scheduler: str | None = _f(None, "dask scheduler address; None = a LocalCluster of worker processes.")
    dask_workers: int = _f(2, "Worker processes of the LocalCluster; 0 = no dask, chunks are processed in this process.")


@dataclass
class RenderConfig:
    levels: list[int] | None = _f(None, "Grid sizes to render; None = all.")
    icon_size: int = _f(80, "Icon side in pixels.")
    steps: int = _f(512, "Optimisation steps per icon.")
    batch_size: int = _f(100, "Icons optimised together.")
    restarts: int = _f(1, "Best of k restarts per icon, folded into the batch.")
    lr: float = _f(0.05, "Adam learning rate.")
    cossim_power: float = _f(4.0, "p in dot(h, v) * max(cos(h, v), 0.1)^p (Lucid's atlas notebook: 4; measured faithfulness on Lite0 blocks.5: 0.84 with 4, 0.80 with 2).")
    whiten: bool = _f(False, "Whiten the target directions with the grid's S.")
    reduce: str = _f("mean", "How the icon's layer activation is reduced over positions: `mean` or `center`.", choices=("mean", "center"))
    cossim_floor: float = _f(0.1, "Floor of the cosine in the objective (Lucid: 0.1): below it only the projection dot(h, v) is pushed.")
    decay_power: float = _f(1.0, "Spectral parameterisation: frequency f is scaled by 1 / max(f, 1/size)^decay_power (Lucid: 1).")
    init_sd: float = _f(0.01, "Standard deviation of the random initial spectrum (Lucid: 0.01).")
    transforms: str = _f("standard", "Random transforms applied at each step: `standard` (Lucid's: pad 12, jitter 8, scale 0.9-1.1, rotate -10..10 deg, jitter 4) or `none`.",
                         choices=("standard", "none"))
    polish: float = _f(0.1, "Fraction of the final steps run without transforms: the icon is scored as stored, which raises its faithfulness (0 = Lucid's plain schedule).")
    threads: int | None = _f(None, "torch intra-op threads on the CPU (None = every CPU this process may use); pinned so results do not depend on what ran before.")


@dataclass
class TileConfig:
    tile_size: int = _f(256, "Deep Zoom tile side in pixels.")
    overlap: int = _f(1, "Deep Zoom tile overlap in pixels.")
    format: str = _f("jpg", "Tile image format (also of the icon sheets).", choices=("jpg", "png", "webp"))
    quality: int = _f(90, "JPEG/WebP quality (tiles, icon sheets, example crops).")
    background: str = _f("#ffffff", "Colour of empty cells and of the canvas margin, '#rrggbb' (quoted: # starts a YAML comment).")
    lod_fraction: float = _f(1.0, "Level of detail: a zoom level shows the finest grid whose cells are at least this fraction of the icon size there (1.0: each zoom step doubles the grid, icons at native resolution; smaller: finer grids earlier, downscaled). In (0, 1].")
    density_scale: bool = _f(False, "Scale each icon within its cell by the cell's point count (0.4 + 0.6 * sqrt(count / max count of the level)).")
    example_levels: int | None = _f(None, "Crop dataset examples for the cells of the finest this many rendered levels (None = every level, 0 = none).")
    example_window: float = _f(3.0, "Side of an example crop in layer cells around the sampled position (about input_size / H * this pixels).")
    unit_tiles: int = _f(256, "About this many tiles per unit of work (whole tile rows of one zoom level): the resume and sharding granularity.")
    examples_per_unit: int = _f(256, "Example crops per unit of work.")
    workers: int = _f(0, "Worker processes per shard (0 = tile in this process); each takes units round robin.")


@dataclass
class JobqueueConfig:
    jobs: int = _f(0, "dask engine on SLURM without a scheduler: start this many `dask_jobqueue.SLURMCluster` jobs (0 = off; needs `pip install dask-jobqueue`).")
    cores: int = _f(8, "Cores per SLURMCluster job.")
    memory: str = _f("32GB", "Memory per SLURMCluster job.")
    processes: int = _f(1, "dask worker processes per SLURMCluster job.")
    walltime: str = _f("04:00:00", "Walltime per SLURMCluster job.")
    queue: str | None = _f(None, "SLURM partition of the SLURMCluster jobs (None = the cluster's default).")
    account: str | None = _f(None, "SLURM account of the SLURMCluster jobs.")
    gpus: int = _f(0, "GPUs per SLURMCluster job (`--gres=gpu:N`).")
    job_extra_directives: list[str] = _f([], "Extra `#SBATCH` options for the SLURMCluster jobs, e.g. [\"--constraint=a100\"].")


@dataclass
class SlurmStageConfig:
    tasks: int = _f(1, "Array tasks (1 = a single job). Any number works: units are split round robin over the tasks.")
    time: str = _f("04:00:00", "Walltime (`--time`). A task killed at its walltime loses only its unfinished units: resubmit to resume.")
    cpus: int = _f(8, "CPUs per task (`--cpus-per-task`).")
    mem: str = _f("32G", "Memory per task (`--mem`).")
    gpus: int = _f(0, "GPUs per task (`--gres=gpu:N`).")


def _slurm_stage(tasks: int, time: str, cpus: int, mem: str, gpus: int, help: str) -> Any:
    return field(default_factory=lambda: SlurmStageConfig(tasks, time, cpus, mem, gpus), metadata={"help": help})


@dataclass
class SlurmConfig:
    partition: str | None = _f(None, "`--partition` of every job (None = the cluster's default).")
    account: str | None = _f(None, "`--account` of every job.")
    max_parallel: int | None = _f(None, "At most this many array tasks run at once (`--array=0-N%M`).")
    extra: list[str] = _f([], "Extra sbatch options for every job, one option per item without spaces, e.g. [\"--qos=long\"].")
    collect: SlurmStageConfig = _slurm_stage(16, "04:00:00", 8, "32G", 1, "collect: an array, one GPU per task.")
    reduce: SlurmStageConfig = _slurm_stage(1, "04:00:00", 16, "64G", 0, "reduce: one CPU job (faiss + UMAP).")
    grid: SlurmStageConfig = _slurm_stage(1, "02:00:00", 8, "32G", 0, "grid: one job; its chunks run on a LocalCluster of `grid.dask_workers` processes inside it.")
    render: SlurmStageConfig = _slurm_stage(16, "08:00:00", 8, "32G", 1, "render: an array, one GPU per task.")
    tile: SlurmStageConfig = _slurm_stage(4, "02:00:00", 4, "16G", 0, "tile: an array of CPU tasks.")


@dataclass
class ClusterConfig:
    engine: str = _f("local", "How `atlas run` and the stage commands execute units: `local` (in this process) or `dask` (shards as tasks on a dask cluster: `scheduler`, else a SLURMCluster when `jobqueue.jobs` > 0, else a LocalCluster of `workers` processes). SLURM arrays use `--shard slurm` instead (scripts/slurm).",
                     choices=("local", "dask"))
    scheduler: str | None = _f(None, "dask scheduler address, e.g. tcp://10.0.0.1:8786 (engine `dask`).")
    workers: int = _f(2, "LocalCluster worker processes (engine `dask` without `scheduler` or `jobqueue`).")
    tasks: int | None = _f(None, "Tasks a sharded stage (collect, render, tile) is split into on dask; None = 2 per worker.")
    retries: int = _f(2, "dask retries of a failed task, and extra rounds for units left undone (a killed worker's units are rescheduled by dask itself).")
    jobqueue: JobqueueConfig = field(default_factory=JobqueueConfig, metadata={"help": "dask_jobqueue.SLURMCluster."})
    slurm: SlurmConfig = field(default_factory=SlurmConfig, metadata={"help": "sbatch resources per stage (scripts/slurm/submit.sh)."})


@dataclass
class Config:
    run_dir: str = _f("runs/demo", "Run directory; every stage reads and writes under it.")
    seed: int = _f(0, "Run seed: fixes sampled positions, layout, render noise.")
    images: ImagesConfig = field(default_factory=ImagesConfig, metadata={"help": "Image source."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Network and layer."})
    collect: CollectConfig = field(default_factory=CollectConfig, metadata={"help": "Stage 1: activations."})
    reduce: ReduceConfig = field(default_factory=ReduceConfig, metadata={"help": "Stage 2: UMAP layout."})
    grid: GridConfig = field(default_factory=GridConfig, metadata={"help": "Stage 3: multi-level grid."})
    render: RenderConfig = field(default_factory=RenderConfig, metadata={"help": "Stage 4: icons."})
    tile: TileConfig = field(default_factory=TileConfig, metadata={"help": "Stage 5: Deep Zoom tiles."})
    cluster: ClusterConfig = field(default_factory=ClusterConfig, metadata={"help": "Execution: in-process, dask, SLURM."})

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)


# --------------------------------------------------------------------------- typing


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_value(key: str, tp: Any, value: Any, choices: tuple | None) -> Any:
    """Coerce/validate ``value`` against annotation ``tp``; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(key, inner[0], value, choices)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key `{key}` must be a list, got {value!r}")
        return [_check_value(f"{key}[{i}]", args[0], v, None) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key `{key}` must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key `{key}` must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key `{key}` must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key `{key}` must be a string, got {value!r}")
        value = str(value)
        if choices and value not in choices:
            raise ConfigError(f"config key `{key}` must be one of {', '.join(choices)}; got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # pragma: no cover - schema bug


def _build(cls: type, data: dict[str, Any], prefix: str, base: Any = None) -> Any:
    """An instance of ``cls`` from ``data``; keys not given keep ``base``'s values (default: ``cls()``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section `{prefix.rstrip('.') or 'top level'}` must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    base = cls() if base is None else base
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key `{prefix}{unknown[0]}`; allowed keys in {where}: {', '.join(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        if _is_section(tp):
            kwargs[name] = _build(tp, value or {}, f"{prefix}{name}.", getattr(base, name))
        else:
            kwargs[name] = _check_value(f"{prefix}{name}", tp, value, fields[name].metadata.get("choices"))
    return dataclasses.replace(base, **kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. images.path=/data/imgs), got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict):  # "a: b" in a value is a string, not a mapping
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a raw dict."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: `{part}` is not a section")
        node[path[-1]] = value
    return data


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(data: Any, key: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value with the environment's value.

    Run configs template their paths this way (``images.path: ${IMAGENET_DIR}/train``), so one
    file serves every machine. An unset variable without a default is an error naming the key.
    """
    if isinstance(data, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, f"{key}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise ConfigError(f"config key `{key}` uses ${{{name}}}, which is not set: "
                                  f"export {name}=... or pass --set {key}=...")
            return default
        return value

    return _ENV_REF.sub(sub, data)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist; pass a YAML file such as pipelines/demo.yaml")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
    return config_from_dict(expand_env(apply_overrides(data, overrides or [])))


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from a plain mapping (unknown keys and bad values are errors)."""
    cfg = _build(Config, data, "")
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    if cfg.model.weights == "":  # `${WEIGHTS:-}` in a config: not set, use the bundled or cached weights
        cfg.model.weights = None
    positive = {
        "collect.chunk_rows": cfg.collect.chunk_rows,
        "collect.batch_size": cfg.collect.batch_size,
        "collect.top_k": cfg.collect.top_k,
        "images.demo_count": cfg.images.demo_count,
        "images.demo_size": cfg.images.demo_size,
        "render.icon_size": cfg.render.icon_size,
        "render.steps": cfg.render.steps,
        "render.batch_size": cfg.render.batch_size,
        "render.restarts": cfg.render.restarts,
        "tile.tile_size": cfg.tile.tile_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key `{key}` must be positive, got {value}")
    if cfg.collect.workers < 0 or cfg.collect.border < 0:
        raise ConfigError("config keys `collect.workers` and `collect.border` must be >= 0")
    if cfg.images.limit is not None and cfg.images.limit <= 0:
        raise ConfigError(f"config key `images.limit` must be positive or null, got {cfg.images.limit}")
    if cfg.images.kind == "demo" and cfg.images.path != "demo":
        raise ConfigError(f"config key `images.kind` is `demo` but images.path is {cfg.images.path!r}: "
                          "set images.kind=auto (or the kind of that path) to use those images")
    check_grid_sizes(cfg.grid.sizes)
    _validate_cluster(cfg.cluster)


def _validate_cluster(cc: ClusterConfig) -> None:
    at_least = {"cluster.workers": (cc.workers, 1), "cluster.retries": (cc.retries, 0),
                "cluster.tasks": (cc.tasks if cc.tasks is not None else 1, 1),
                "cluster.slurm.max_parallel": (cc.slurm.max_parallel if cc.slurm.max_parallel is not None else 1, 1),
                "cluster.jobqueue.jobs": (cc.jobqueue.jobs, 0), "cluster.jobqueue.cores": (cc.jobqueue.cores, 1),
                "cluster.jobqueue.processes": (cc.jobqueue.processes, 1), "cluster.jobqueue.gpus": (cc.jobqueue.gpus, 0)}
    for stage in ("collect", "reduce", "grid", "render", "tile"):
        st = getattr(cc.slurm, stage)
        at_least |= {f"cluster.slurm.{stage}.tasks": (st.tasks, 1), f"cluster.slurm.{stage}.cpus": (st.cpus, 1),
                     f"cluster.slurm.{stage}.gpus": (st.gpus, 0)}
    for key, (value, low) in at_least.items():
        if value < low:
            raise ConfigError(f"config key `{key}` must be >= {low}, got {value}")
    for stage in ("reduce", "grid"):
        if getattr(cc.slurm, stage).tasks != 1:
            raise ConfigError(f"config key `cluster.slurm.{stage}.tasks` must be 1: {stage} runs as one job")
    for key, opts in (("cluster.slurm.extra", cc.slurm.extra), ("cluster.jobqueue.job_extra_directives", cc.jobqueue.job_extra_directives)):
        bad = [o for o in opts if not o.startswith("-") or (key == "cluster.slurm.extra" and any(c.isspace() for c in o))]
        if bad:
            raise ConfigError(f"config key `{key}` holds sbatch options such as --qos=long (one per item, no spaces); got {bad[0]!r}")


def check_grid_sizes(sizes: list[int]) -> None:
    """Grid sizes must be increasing powers of two, each double the previous (aligned levels)."""
    if not sizes or any(s <= 0 or s & (s - 1) for s in sizes) or any(b != 2 * a for a, b in zip(sizes, sizes[1:])):
        raise ConfigError(f"config key `grid.sizes` must be increasing powers of two, each double the previous (e.g. [8, 16, 32]); got {sizes}")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions of the stack and the machine, for the run directory's config.yaml."""
    pkgs = {}
    for name in ("atlas", "torch", "torchvision", "timm", "numpy", "zarr", "umap-learn", "faiss-cpu", "dask", "pillow"):
        try:
            pkgs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pkgs[name] = None
    out = {"python": platform.python_version(), "platform": platform.platform(), "packages": pkgs}
    out.update(extra or {})
    return out


def schema_rows(cls: type = Config, prefix: str = "", inst: Any = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every leaf key, in schema order."""
    rows = []
    hints = typing.get_type_hints(cls)
    inst = cls() if inst is None else inst
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_section(tp):
            rows.extend(schema_rows(tp, f"{prefix}{f.name}.", getattr(inst, f.name)))
            continue
        tname = str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")
        rows.append((f"{prefix}{f.name}", tname, json.dumps(getattr(inst, f.name)), f.metadata.get("help", "")))
    return rows


def _markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema in `atlas/config.py` by `python -m atlas.config > docs/configuration.md`.",
        "Every key can be set in the YAML file or on the command line with `--set key=value`.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, tname, default, help in schema_rows():
        lines.append(f"| `{key}` | {tname.replace('|', 'or')} | `{default}` | {help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(_markdown(), end="")
