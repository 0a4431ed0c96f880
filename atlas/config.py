"""Run configuration: schema, defaults, YAML loading, ``--set`` overrides, provenance.

The schema is a tree of frozen pydantic models. Every field carries its help text, its
default and its bounds; ``docs/configuration.md`` is generated from them
(``python -m atlas.config``). Unknown keys, values of the wrong type and values out of
range are all rejected when the config is loaded, as a one-line :class:`ConfigError`
naming the key by its dotted name.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from ._names import STAGES

__all__ = [
    "Config", "ConfigError", "ImagesConfig", "ModelConfig", "CollectConfig", "ReduceConfig", "GridConfig", "RenderConfig",
    "TileConfig", "ClassesConfig", "LocateConfig", "PatchTestConfig", "UnitsConfig", "ClusterConfig", "JobqueueConfig", "SlurmConfig", "SlurmStageConfig",
    "load_config", "config_from_dict", "with_updates", "apply_overrides", "expand_env", "config_to_dict", "dump_config",
    "provenance", "file_sha256", "schema_rows", "check_grid_sizes", "slurm_stage_resources", "run_config_text",
]


class ConfigError(ValueError):
    """A configuration problem, with a message naming the key and the fix."""


class _Invalid(ValueError):
    """Raised by validators: ``text`` about the key ``key`` (relative to where it was raised)."""

    def __init__(self, text: str, key: str = "") -> None:
        super().__init__(text)
        self.key = key


# --------------------------------------------------------------------------- value checks


def _rule(ok: Callable[[Any], bool], text: str) -> AfterValidator:
    """A check of the value: ``text`` (formatted with ``value``) follows the key when ``ok(value)`` is false."""
    def check(value: Any) -> Any:
        if not ok(value):
            raise _Invalid(text.format(value=value))
        return value

    return AfterValidator(check)


def _matching(pattern: str, what: str) -> AfterValidator:
    regex = re.compile(pattern)
    return _rule(lambda v: regex.fullmatch(v) is not None, f"must be {what}, got {{value!r}}")


def _non_empty(fix: str) -> AfterValidator:
    return _rule(lambda v: bool(v.strip()), f"is empty: set it to {fix}")


def _grid_sizes_problem(sizes: list[int]) -> str | None:
    if not sizes or any(s <= 0 or s & (s - 1) for s in sizes) or any(b != 2 * a for a, b in itertools.pairwise(sizes)):
        return f"must be increasing powers of two, each double the previous (e.g. [8, 16, 32]); got {sizes}"
    return None


def check_grid_sizes(sizes: list[int]) -> None:
    """Grid sizes must be increasing powers of two, each double the previous (aligned levels)."""
    problem = _grid_sizes_problem(list(sizes))
    if problem:
        raise ConfigError(f"config key `grid.sizes` {problem}")


def _sbatch_options(spaces: bool) -> AfterValidator:
    rule = "one per item" if spaces else "one per item, no spaces"
    return _rule(lambda opts: all(o.startswith("-") and (spaces or not re.search(r"\s", o)) for o in opts),
                 f"holds sbatch options such as --qos=long ({rule}); got {{value!r}}")


Device = Annotated[str, _matching(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N (N an integer) or mps")]
Colour = Annotated[str, _matching(r"#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})", "a colour '#rrggbb' (quoted: # starts a YAML comment)")]
SlurmTime = Annotated[str, _matching(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE",
                                     "a SLURM time such as \"04:00:00\" or \"1-12:00:00\" (quoted: YAML reads 04:00:00 as a number)")]
SlurmMem = Annotated[str, _matching(r"\d+[KMGTkmgt]?", "a SLURM memory size such as 32G")]
DaskMem = Annotated[str, _matching(r"\d+(\.\d+)?\s*([kKMGTP]i?)?B?", "a memory size such as 32GB")]
ZeroToOne = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[float, Field(gt=0)]
Level = Annotated[int, Field(ge=1)]


def _f(default: Any, help: str, **bounds: Any) -> Any:
    return Field(default, description=help, **bounds)


def _section(cls: type[BaseModel], help: str) -> Any:
    return Field(default_factory=cls, description=help)


# --------------------------------------------------------------------------- schema


class _Section(BaseModel):
    """A config section: frozen, no unknown keys, no silent str -> number/bool coercion (ints are fine for floats)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """A section written as ``images:`` with nothing under it (YAML null) means its defaults."""
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if not (v is None and k in cls.model_fields and _is_section(cls.model_fields[k].annotation))}


_DATASET_KEYS = ("split", "image_column", "label_column")  # images.* keys of a Hugging Face dataset


class ImagesConfig(_Section):
    kind: Literal["auto", "demo", "folder", "list", "tar", "hf"] = _f("auto", "Image source: `auto` (detected from `path`), `demo`, `folder`, `list` (.txt/.csv of paths), `tar` (webdataset-style shards) or `hf` (a Hugging Face dataset: a `save_to_disk` folder, parquet or arrow files, or a hub name; docs/sources.md).")
    path: Annotated[str, _non_empty("a folder, a list or tar file, or demo")] = _f("demo", "Folder, list file, tar file, folder of tars or glob of tars, a Hugging Face dataset (`save_to_disk` folder, folder of parquet or arrow files, or with `kind: hf` a hub name such as ILSVRC/imagenet-1k); `demo` for the embedded demo set.")
    labels: Literal["auto", "folders", "none"] = _f("auto", "Where labels come from: `auto` (sub-folders / CSV column / `.cls` members / demo photo / a dataset's label column), `folders`, `none`.")
    split: str | None = _f(None, "A Hugging Face dataset's split; None = `train`, or its only split.")
    image_column: str | None = _f(None, "A Hugging Face dataset's image column; None = its first `Image` column, else `image` or `img`.")
    label_column: str | None = _f(None, "A Hugging Face dataset's label column (a `ClassLabel`'s names become the run's label names); None = `label` or `labels`, else its only `ClassLabel` column, else no labels.")
    limit: int | None = _f(None, "Use only `limit` images of the source (None = all); which ones: `subset`.", ge=1)
    subset: Literal["first", "random"] = _f("first", "With `limit`: the `first` images of the source order, or a `random` subset (seeded, kept in source order; a folder of class folders needs `random` for a class-balanced sample).")
    demo_count: int = _f(2000, "Number of images in the embedded demo set (seeded crops, scales and flips of the photos scikit-image ships).", ge=1)
    demo_size: int = _f(320, "Side in pixels of the generated demo images.", ge=1)
    max_pixels: int = _f(89_478_485, "Images with more pixels are rejected as decompression bombs (PIL's default limit).", ge=1)
    min_side: int = _f(16, "Images whose shorter side is below this are recorded as too small.", ge=1)

    @model_validator(mode="after")
    def _dataset_keys_need_a_dataset(self) -> ImagesConfig:
        given = [k for k in _DATASET_KEYS if getattr(self, k) is not None]
        if given and self.kind not in ("auto", "hf"):
            raise _Invalid(f"is set but images.kind is `{self.kind}`: it names a Hugging Face dataset's part; "
                           "set images.kind: hf (or auto), or remove it", given[0])
        return self

    def source_settings(self) -> dict[str, Any]:
        """What decides the images (collect's settings): this section, without the dataset keys left
        unset (so that a run made before they existed keeps its fingerprint)."""
        return self.model_dump(mode="json", exclude={k for k in _DATASET_KEYS if getattr(self, k) is None})


class ModelConfig(_Section):
    name: Annotated[str, _non_empty("a network such as efficientnet_lite0")] = _f("efficientnet_lite0", "Network: `efficientnet_lite0` (bundled weights), `efficientnet_lite2`, any torchvision classifier name (`googlenet`, `resnet50`, `vit_b_16`, `swin_t`, ...), `timm:<architecture>` (any timm architecture, with `weights`), `torchscript`, `object:<name>` (a module registered in this process with `api.use_model`), or a name of your own with `factory` (docs/models.md).")
    weights: str | None = _f(None, "Weights file (.pth state dict, or the TorchScript file). None (or empty) = the bundled weights or the torch cache.")
    layer: Annotated[str, _non_empty("a layer name (`atlas layers --model NAME` lists them)")] = _f("blocks.5", "Layer whose output is sampled; `atlas layers --model NAME` lists them with their shapes. With `layers`, the first of them.")
    layers: list[Annotated[str, _non_empty("a layer name (`atlas layers --model NAME` lists them)")]] | None = _f(None, "Several layers collected in one pass over the images (the first is `layer`; each further one is an atlas of its own in RUN/layers/<name>, docs/layers.md). Adding a layer to a finished run collects only that layer. None: `layer` alone.", min_length=1)
    layer_of: str | None = _f(None, "Set by atlas in a further layer's own run directory (RUN/layers/<name>/config.yaml): the run whose collect pass collected the layer. Not for hand-written configs.")
    input_size: int | None = _f(None, "Square input side in pixels; None = the model's own (224 for Lite0, 260 for Lite2).", ge=1)
    mean: list[ZeroToOne] | None = _f(None, "Per-channel (RGB) mean on [0, 1] inputs; None = the model's own (needed for `torchscript`).", min_length=3, max_length=3)
    std: list[Positive] | None = _f(None, "Per-channel (RGB) std on [0, 1] inputs; None = the model's own (needed for `torchscript`).", min_length=3, max_length=3)
    device: Device = _f("auto", "`auto` (CUDA when present), `cpu`, `cuda`, `cuda:N` (the N-th CUDA device) or `mps` (Apple GPU).")
    layout: Literal["auto", "nchw", "nhwc", "tokens"] = _f("auto", "How the layer's output holds its spatial grid: `auto` (probed; `atlas layers` shows it), `nchw` [B, C, H, W], `nhwc` [B, H, W, C] or `tokens` [B, prefix + H*W, C] (ViT). Set it when the probe finds the layer ambiguous.")
    prefix_tokens: int | None = _f(None, "For `tokens` layers: tokens before the patch grid (class, distillation, register tokens; never sampled); None = probed.", ge=0)
    factory: Annotated[str, _matching(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", "`package.module:function`, e.g. mynets.resnet:build")] | None = _f(None, "`package.module:function` returning your network (an nn.Module, or (module, {input_size, mean, std, class_names})); imported by name in every process. Set `name` to a name of your own.")
    class_names: str | None = _f(None, "Text file naming the network's classes, one a line in class-index order (as many as its outputs); None = ImageNet's for 1000 classes, else `class 0`, `class 1`, ...")

    @field_validator("weights", "factory", "class_names", mode="before")
    @classmethod
    def _empty_weights(cls, value: Any) -> Any:
        return None if value == "" else value  # `${WEIGHTS:-}` in a config: not set, use the bundled or cached weights

    @model_validator(mode="before")
    @classmethod
    def _layer_is_the_first_of_layers(cls, data: Any) -> Any:
        """``layers: [A, B]`` sets ``layer: A``; a ``layer`` that ``layers`` leaves out is refused."""
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list) or not data["layers"]:
            return data
        layers = data["layers"]
        dup = sorted({x for x in layers if layers.count(x) > 1}, key=str)
        if dup:
            raise _Invalid(f"names {dup[0]!r} twice: list each layer once", "layers")
        if "layer" in data and data["layer"] not in layers:
            raise _Invalid(f"is {data['layer']!r}, which model.layers {layers} leaves out: with `layers`, `layer` is "
                           "their first; drop `layer` or add it to `layers`", "layer")
        return {**data, "layer": layers[0]}

    @property
    def all_layers(self) -> list[str]:
        """The layers this config collects: ``layers``, or ``[layer]``."""
        return list(self.layers) if self.layers else [self.layer]

    def network_settings(self) -> dict[str, Any]:
        """What decides a layer's activations (the network, its weights and input, the layer):
        this section without the device and the run-layout keys (``layers``, ``layer_of``)."""
        return self.model_dump(mode="json", exclude={"device", "layers", "layer_of"})


class CollectConfig(_Section):
    chunk_rows: int = _f(4096, "Rows per Zarr chunk and per unit of work (resume and sharding granularity).", ge=1)
    batch_size: int = _f(64, "Images per forward pass.", ge=1)
    workers: int = _f(2, "DataLoader decode worker processes (0 = decode in the main process).", ge=0)
    border: int = _f(1, "Positions within this many cells of the layer grid's edge are never sampled (Distill excluded the border).", ge=0)
    attribution: bool = _f(True, "Store class attribution of the sampled vector (one forward-mode product). Off: the network is cut after the layer.")
    top_k: int = _f(10, "Classes kept per image for attribution.", ge=1)
    dtype: Literal["float16", "float32"] = _f("float16", "Storage dtype of activations.")
    channels_last: bool = _f(True, "Run the network in channels_last memory format (about 1.6x on CPU).")
    fold_bn: bool = _f(True, "Fold eval BatchNorm into the preceding convs (about 1.5x on CPU; verified against the unfolded network, else off).")
    threads: int | None = _f(None, "torch intra-op threads (None = every CPU this process may use); pinned so results do not depend on what ran before.", ge=1)


class ReduceConfig(_Section):
    n_neighbors: int | None = _f(None, "UMAP neighbours; None = 50 (Distill) or 20 for runs under 10,000 points.", ge=2)
    min_dist: float = _f(0.05, "UMAP min_dist (Distill: 0.05).", ge=0)
    metric: Literal["cosine", "euclidean"] = _f("cosine", "Distance: `cosine` (Distill) or `euclidean`.")
    pca: int | None = _f(None, "Reduce to this many dimensions with PCA first (None = off).", ge=1)
    exact_knn_max: int = _f(20_000, "Up to this many fitted points the kNN graph (and placement search) is exact; beyond, approximate (HNSW, single-threaded build so it is deterministic) with a measured recall.", ge=1)
    fit_max: int = _f(30_000, "Fit UMAP on at most this many points (seeded sample); the rest are placed chunk by chunk from their nearest fitted points (30,000: >= 3x faster than umap-learn on 200k points, trustworthiness within 0.005; see docs/benchmarks.md).", ge=3)
    init: Literal["auto", "spectral", "pca", "random"] = _f("auto", "UMAP init: `auto` (spectral when small, PCA when large), `spectral`, `pca`, `random`.")
    n_epochs: int | None = _f(None, "UMAP epochs (None = umap-learn's default for the size).", ge=1)
    clip_percentile: float = _f(1.0, "Layout is clipped to [p, 100-p] percentiles before normalising to [0, 1].", ge=0, lt=50)
    margin: float = _f(0.02, "Margin kept around the normalised layout.", ge=0, lt=0.5)
    spectral_max: int = _f(100_000, "`init: auto` uses spectral init up to this many fitted points, PCA beyond (spectral init stalls on huge graphs).", ge=1)
    placement: Literal["interpolate", "transform"] = _f("interpolate", "How rows outside the fitted sample are placed: `interpolate` (weighted mean of the layout positions of their `place_k` nearest fitted points) or `transform` (umap-learn's transform: that init plus SGD against the fixed layout).")
    place_k: int = _f(10, "Nearest fitted points used by `placement: interpolate`.", ge=1)
    hnsw_m: int = _f(32, "HNSW graph degree (approximate kNN beyond `exact_knn_max`).", ge=1)
    hnsw_ef_construction: int = _f(64, "HNSW efConstruction (build effort).", ge=1)
    hnsw_ef_search: int = _f(64, "HNSW efSearch (query effort; raised to k when smaller).", ge=1)
    recall_queries: int = _f(1000, "Seeded queries whose approximate neighbours are checked against exact search (recall@k).", ge=1)
    trust_sample: int = _f(5000, "Seeded points on which trustworthiness (k=10, cosine) is measured.", ge=1)
    threads: int | None = _f(None, "faiss and numba threads (None = every CPU this process may use).", ge=1)


class GridConfig(_Section):
    sizes: list[int] = _f([8, 16, 32], "Grid sizes (cells per side), powers of two, each double the previous: aligned levels.")
    min_count: int = _f(4, "Cells with fewer points are empty (Distill used 4-10).", ge=1)
    top_classes: int = _f(5, "Classes kept per cell.", ge=1)
    examples: int = _f(8, "Dataset examples per cell: the rows of the cell whose sampled activation is nearest (cosine) the cell mean.", ge=1)
    whiten_eps: float = _f(1e-2, "Whitening: S = inv(A^T A / N + eps I); eps relative to the mean eigenvalue.", gt=0)

    @field_validator("sizes")
    @classmethod
    def _aligned(cls, sizes: list[int]) -> list[int]:
        problem = _grid_sizes_problem(sizes)
        if problem:
            raise _Invalid(problem)
        return sizes


class RenderConfig(_Section):
    levels: list[Level] | None = _f(None, "Grid sizes to render (some of `grid.sizes`); None = all.")
    icon_size: int = _f(80, "Icon side in pixels of the finest grid's icons (coarser grids: `icon_growth`).", ge=8)
    icon_growth: float = _f(0.5, "Coarser grids get larger icons: grid s is rendered at `icon_size * (S / s) ** icon_growth` pixels, S the finest of `grid.sizes` (0.5: each coarser grid's icons sqrt(2) larger, so the viewer's coarse map keeps detail; 0: one size for every grid).", ge=0, le=1)
    icon_sizes: dict[Level, Annotated[int, Field(ge=8)]] | None = _f(None, "Icon side per grid size, overriding `icon_growth` for the sizes named: `{8: 256, 16: 160}` in YAML, `--set render.icon_sizes.8=256` on the command line.")
    steps: int = _f(512, "Optimisation steps per icon.", ge=1)
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = _f(100, "Icons optimised together (one unit of work). `auto`: as many as fit 80 % of the free GPU memory (measured once, when the render starts, and kept for the run; 100 off CUDA), but at most the grid's icons / 16 (at least 32), so that the render keeps units to share among GPUs and to resume from.")
    restarts: int = _f(1, "Best of k restarts per icon, folded into the batch.", ge=1)
    lr: float = _f(0.05, "Learning rate (constant after the warm-up, or cosine-decayed per phase: `schedule`).", gt=0)
    optimizer: Literal["adam", "nadam", "radam", "sgd"] = _f("adam", "Optimiser of the image parameters (measured: Adam best; `sgd` has momentum 0.9, Nesterov).")
    schedule: Literal["constant", "cosine"] = _f("constant", "Learning rate after the warm-up: `constant`, or `cosine` decay to 0, restarted in each phase (coarse, transformed, polish).")
    warmup: float = _f(0.0, "Fraction of each phase's steps with a linear learning-rate warm-up.", ge=0, le=1)
    cossim_power: float = _f(8.0, "p in dot(h, v) * max(cos(h, v), 0.1)^p (Lucid's atlas notebook: 4; measured on the demo: 8 gives +0.02-0.03 faithfulness at every budget, 16 collapses).", ge=0)
    whiten: bool = _f(False, "Push along a partly whitened direction unit((1 - m) unit(v) + m unit(S v)), m = `whiten_mix`, S from the grid: raises distinctness (retrieval@1 0.96 -> 0.99 on the demo at 72 steps) for about 0.006 faithfulness.")
    whiten_mix: float = _f(0.25, "m above: 1 = Distill's fully whitened S v (faithfulness 0.52 on the demo), 0 = no whitening.", ge=0, le=1)
    reduce: Literal["mean", "center"] = _f("mean", "How the icon's layer activation is reduced over positions: `mean` or `center` (Lucid's and Distill's objective; faithfulness is then the centre's).")
    cossim_floor: float = _f(0.1, "Floor of the cosine in the objective (Lucid: 0.1): below it only the projection dot(h, v) is pushed.", ge=0, le=1)
    param: Literal["fft", "maco", "pyramid"] = _f("fft", "Image parameterisation: `fft` (Lucid's decorrelated spectrum), `maco` (phase only, magnitude fixed: Fel et al. 2023), `pyramid` (Laplacian pyramid). Measured: fft best per second.")
    coarse: float = _f(0.5, "Fraction of the steps optimised at a lower resolution (`coarse_scale` x the icon side) before the spectrum is upsampled to full size (fft only; 0 = full size throughout). Measured: 0.835 faithfulness in 42 s against 0.848 in 68 s at full size.", ge=0, le=1)
    coarse_scale: float = _f(0.5, "Side of the coarse phase's images, as a fraction of the icon side.", gt=0, le=1)
    pyramid_levels: int = _f(4, "Levels of the Laplacian pyramid parameterisation (`param: pyramid`).", ge=1, le=8)
    decay_power: float = _f(1.0, "Spectral parameterisation: frequency f is scaled by 1 / max(f, 1/size)^decay_power (Lucid: 1).", ge=0)
    init_sd: float = _f(0.01, "Standard deviation of the random initial spectrum (Lucid: 0.01).", ge=0)
    init: Literal["noise", "example"] = _f("noise", "Start each icon from random noise, or from its cell's best dataset example (the patch around the sampled position, resized to the icon: feature accentuation; keeps icons closer to natural images; +0.025 faithfulness at 32 steps, nothing at 128). `example` reads the source images at render time.")
    transforms: Literal["icon", "standard", "none"] = _f("icon", "Random transforms at each step before the polish: `icon` (shift up to size/16 px with reflect padding, Lucid's scales 0.9-1.1 and angles -10..10 deg: the icon keeps its size), `standard` (Lucid's: pad 12, jitter 8, scale, rotate, jitter 4), or `none`.")
    polish: float = _f(0.5, "Fraction of the final steps run without transforms: the icon is optimised as it is stored and scored (measured: 0.5 best; 0 = Lucid's plain schedule).", ge=0, le=1)
    select: Literal["objective", "cossim"] = _f("objective", "With restarts: keep the restart with the best final objective or the best faithfulness (cosine).")
    threads: int | None = _f(None, "torch intra-op threads on the CPU (None = every CPU this process may use); pinned so results do not depend on what ran before.", ge=1)

    @field_validator("icon_sizes", mode="before")
    @classmethod
    def _size_keys(cls, value: Any) -> Any:
        """Grid sizes as keys arrive as strings from `--set render.icon_sizes.8=256` and JSON."""
        if isinstance(value, dict):
            return {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v for k, v in value.items()}
        return value

    def level_icon_size(self, size: int, finest: int) -> int:
        """Icon side of grid ``size`` in an atlas whose finest grid is ``finest``: ``icon_sizes[size]``
        when given, else ``round(icon_size * (finest / size) ** icon_growth)``."""
        if self.icon_sizes and size in self.icon_sizes:
            return int(self.icon_sizes[size])
        return int(round(self.icon_size * (finest / size) ** self.icon_growth))


class TileConfig(_Section):
    tile_size: int = _f(256, "Deep Zoom tile side in pixels.", ge=1)
    overlap: int = _f(1, "Deep Zoom tile overlap in pixels (less than `tile_size`).", ge=0)
    format: Literal["jpg", "png", "webp"] = _f("jpg", "Tile image format (also of the icon sheets).")
    quality: int = _f(90, "JPEG/WebP quality (tiles, icon sheets, example crops).", ge=1, le=100)
    background: Colour = _f("#ffffff", "Colour of empty cells and of the canvas margin, '#rrggbb' (quoted: # starts a YAML comment).")
    lod_fraction: float = _f(1.0, "Level of detail: the viewer shows the finest grid whose cells are on screen at least this fraction of that grid's icon size (1.0: a grid appears when its icons reach their native resolution; smaller: finer grids earlier, downscaled). In (0, 1].", gt=0, le=1)
    density_scale: bool = _f(False, "Size each icon within its cell by the cell's point count, as Distill: sqrt(count / mean count of the grid's non-empty cells), clipped to [0.4, 1].")
    home_cell_px: int = _f(100, "The viewer's home view shows the coarsest grid, whole when its cells are then at least this many screen pixels, else zoomed in until they are (narrow screens).", ge=16)
    max_zoom: float = _f(2.0, "Deepest zoom of the viewer, in screen pixels per pixel of the finest grid's icons (1 = native resolution).", ge=1, le=16)
    label_min_share: float = _f(0.0, "The viewer labels a cell only when its top class holds at least this share of the cell's positive class attribution (0 = every cell big enough on screen).", ge=0, le=1)
    example_levels: int | None = _f(None, "Crop dataset examples for the cells of the finest this many rendered levels (None = every level, 0 = none).", ge=0)
    example_window: float = _f(3.0, "Side of an example crop in layer cells around the sampled position (about input_size / H * this pixels).", gt=0)
    unit_tiles: int = _f(256, "About this many tiles per unit of work (whole tile rows of one zoom level): the resume and sharding granularity.", ge=1)
    examples_per_unit: int = _f(256, "Example crops per unit of work.", ge=1)

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> TileConfig:
        if self.overlap >= self.tile_size:
            raise _Invalid(f"must be less than tile.tile_size ({self.tile_size}), got {self.overlap}", "overlap")
        return self


class FollowConfig(_Section):
    """Where a cell's images land in another layer (``model.layers``; the ``follow`` step of ``atlas run``)."""

    k: int = _f(10, "Neighbours per image whose persistence between two layers' layouts is measured (the share of an image's k nearest images on one layer's atlas that are among its k nearest on the other's).", ge=1, le=100)
    top_cells: int = _f(3, "The viewer's follow overlay reports the share of a cell's images that land in this many cells of the other layer (the most crowded).", ge=1, le=50)


class ClassesConfig(_Section):
    """A class activation atlas (``atlas class-atlas``): the rows of a parent run that support one or two classes."""

    parent: str | None = _f(None, "The parent run directory whose collected rows this class atlas selects from; set by `atlas class-atlas` in RUN/classes/<slug>/config.yaml (None: a main run, collect runs the network).")
    names: list[str] = _f([], "Class names of the class atlas (one, or two to compare), as `atlas class-atlas` resolved them (`#<index>` for a name the network uses twice).", max_length=2)
    threshold: float = _f(0.0, "A row supports a class when its attribution to the class is above this (logit units) and the class is among its `top_k` strongest stored classes.")
    top_k: int = _f(5, "A supporting class must be among the row's `top_k` strongest stored attribution classes (at most `collect.top_k` are stored; 1: the row's top class only).", ge=1)
    max_rows: int = _f(20_000, "At most this many rows per class, those with the highest attribution to it.", ge=3)
    n_neighbors: int = _f(20, "`reduce.n_neighbors` of a class atlas (Distill: 20; at most the number of rows - 1).", ge=2)
    min_dist: float = _f(0.02, "`reduce.min_dist` of a class atlas (Distill: 0.02).", ge=0)
    grid_sizes: list[int] | None = _f(None, "`grid.sizes` of a class atlas; None = from its row count: the finest grid has at most rows / `cell_rows` cells (at most the parent's finest), with as many levels as the parent's down to 2 x 2.")
    cell_rows: int = _f(4, "Rows per cell of the finest grid chosen when `grid_sizes` is None (4: the demo's most supported class, 69 rows, gets grids 2 and 4).", ge=1)

    @field_validator("grid_sizes")
    @classmethod
    def _aligned(cls, sizes: list[int] | None) -> list[int] | None:
        problem = None if sizes is None else _grid_sizes_problem(sizes)
        if problem:
            raise _Invalid(problem)
        return sizes


class LocateConfig(_Section):
    """``atlas locate``: where the positions of new images land on a finished atlas."""

    images: list[str] = _f([], "Images to locate: files, folders (every image in them, recursively) or `demo://<size>/<i>`; `atlas locate CONFIG IMAGE...` adds its arguments. More may be added later: only the new ones are located.")
    level: Level | None = _f(None, "Grid size whose cells colour the positions in `overlay.png` and the viewer, and whose icons `activation-grid.png` shows (a cell without an icon there shows its coarser parent's); None = the finest rendered grid.")
    overlay_alpha: float = _f(0.5, "Opacity of the cell colour over each position's square in `overlay.png` (0 = the plain image).", ge=0, le=1)
    picture_px: int = _f(448, "Side in pixels of the image in `overlay.png`.", ge=32, le=4096)
    icon_px: int = _f(48, "Side in pixels of each position's icon in `activation-grid.png`.", ge=4, le=512)
    threads: int | None = _f(None, "torch intra-op threads (None = every CPU this process may use).", ge=1)


class CompareConfig(_Section):
    """``atlas compare RUN_A RUN_B``: two networks over the same images, one layout, both networks' icons and
    the change figures of every cell (docs/compare.md)."""

    name: Annotated[str, _matching(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", "a folder name (letters, digits, . _ -)")] | None = _f(None, "The comparison's folder `RUN_A/compare/<name>`; None = the two runs' folder names (`base--finetuned`); `--name`.")
    layout: str | None = _f(None, "Set by `atlas compare` in a comparison's view (RUN_A/compare/<name>/layout-a|b/config.yaml): the run whose layout and cells the view shows. None: not a comparison's view.")
    network: str | None = _f(None, "Set by `atlas compare` in a comparison's view: the run whose network's activations of the same images are laid out on `layout`'s cells (this config's model is that run's).")
    top_classes: int = _f(5, "Top classes per cell compared between the two networks (by name; the class shift is the Jaccard distance of the two sets).", ge=1, le=50)
    references: int = _f(2048, "A cell's relation profile is its similarity to at most this many reference cells of its grid (all non-empty cells up to this count, else this many evenly spaced).", ge=3)
    changed: int = _f(16, "Cells per grid listed as changed most (the viewer's list and summary.json).", ge=1, le=1000)
    threads: int | None = _f(None, "torch intra-op threads where the pairing runs the other network (None = every CPU this process may use).", ge=1)


_PATCH_SPEC_HELP = "cell:<grid>:<row>,<col> (that cell's icon), example:<grid>:<row>,<col>[:k] (its k-th dataset example crop, k from 0) or the path of an image file"
_POSITION = r"center|corners|top-left|top-right|bottom-left|bottom-right|random:[1-9]\d{0,3}"


def _patch_spec_problem(spec: str | None) -> str | None:
    """Why ``spec`` is not a patch spec (None when it is one, or when it is a path: checked when used)."""
    if spec is None or not re.match(r"(cell|example):", spec):
        return None if spec is None or spec.strip() else f"is empty: give {_PATCH_SPEC_HELP}"
    if re.fullmatch(r"cell:\d+:\d+,\d+|example:\d+:\d+,\d+(:\d+)?", spec):
        return None
    return f"must be {_PATCH_SPEC_HELP}; got {spec!r}"


class PatchTestConfig(_Section):
    """``atlas patch-test``: the Distill article's human-adversarial patches, tested on held-out images."""

    from_class: str | None = _f(None, "CLASS_A: held-out images the network classifies as this class get the patch (matched like the viewer's search: case-insensitive, part of a name, `#<index>`); `--from`.")
    to_class: str | None = _f(None, "CLASS_B: how often the patch turns the top-1 prediction into this class is measured (matched like `from_class`); `--to`.")
    patch: str | None = _f(None, f"The patch: {_PATCH_SPEC_HELP}; `--patch`.")
    images: str | None = _f(None, "Held-out images: a folder, a .txt/.csv list or tar shards (as `images.path`); None (or `demo`) = demo images the run never collected (indices from `images.demo_count` on); `--images`.")
    max_images: int = _f(50, "Test at most this many held-out images classified as `from_class` (the first found in source order).", ge=1)
    scan_max: int = _f(2000, "Classify at most this many held-out images while looking for `max_images` of `from_class`.", ge=1)
    sizes: list[Annotated[float, Field(gt=0, le=1)]] = _f([0.2, 0.3, 0.4], "Patch sides as fractions of the network's input side, e.g. [0.2, 0.3, 0.4]; `--sizes 0.2,0.3`.", min_length=1)
    positions: list[Annotated[str, _matching(_POSITION, "center, corners, top-left, top-right, bottom-left, bottom-right or random:N (N from 1 to 9999)")]] = _f(["center", "corners"], "Where the patch goes, one table row each: `center`, `corners` (the four, pooled), one corner (`top-left`, ...), or `random:N` (N seeded random places per image, pooled); `--positions center,random:4`.", min_length=1)
    batch_size: int = _f(16, "Held-out images per unit of work (each runs 1 + 2 x places x sizes forward passes of this many images).", ge=1)
    examples: int = _f(4, "Images shown in `examples.png` (original / patched / noise-patched, with their top-1 labels).", ge=0, le=64)
    name: Annotated[str, _matching(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", "a folder name (letters, digits, . _ -)")] | None = _f(None, "The test's folder `RUN/patch-test/<name>`; None = from the classes and the patch (`snorkel--scuba-diver--cell-8-3-4`); `--name`.")
    threads: int | None = _f(None, "torch intra-op threads (None = every CPU this process may use).", ge=1)

    @field_validator("patch")
    @classmethod
    def _patch_spec(cls, spec: str | None) -> str | None:
        problem = _patch_spec_problem(spec)
        if problem:
            raise _Invalid(problem)
        return spec

    @field_validator("sizes", "positions")
    @classmethod
    def _no_repeats(cls, values: list[Any]) -> list[Any]:
        if len(set(values)) < len(values):
            raise _Invalid(f"lists a value twice: {values}")
        return values



class UnitsConfig(_Section):
    """``atlas units``: the units behind every cell: a feature visualisation and dataset examples per unit
    of the layer (its channels, or a learned basis), each cell's dictionary and each unit's heatmap."""

    basis: Annotated[str, _matching(r"channels|nmf:[1-9]\d{0,4}|sae:[1-9]\d{0,5}", "channels, nmf:K or sae:K (K a whole number >= 1), e.g. nmf:32")] = _f("channels", "The units: `channels` (the layer's own), `nmf:K` (K neuron groups: non-negative matrix factorisation of the collected rows' sign split [max(x, 0), max(-x, 0)], Building Blocks' groups on a layer after a ReLU) or `sae:K` (a sparse autoencoder of K features trained on the collected rows); `--basis`.")
    limit: int | None = _f(None, "Icons and examples for the first `limit` units only (None = every unit); the dictionary, the heatmaps and the self-ranks' scale cover every unit.", ge=1)
    icon_size: int | None = _f(None, "Icon side in pixels; None = `render.icon_size`.", ge=8)
    steps: int | None = _f(None, "Optimisation steps per icon; None = `render.steps` (the other renderer settings are render's).", ge=1)
    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] | None = _f(None, "Icons optimised together (one unit of work); None = `render.batch_size` (`auto`: as many as fit the free GPU memory, at most the icons / 16, at least 32).")
    cossim_power: float | None = _f(None, "p of the objective dot(h, v) * max(cos(h, v), 0.1)^p with v the unit's direction; None = `render.cossim_power` (0: the plain channel objective, Lucid's `channel`).", ge=0)
    reduce: Literal["mean", "center"] | None = _f(None, "Maximise the unit over every position (`mean`) or at the centre position (`center`); None = `render.reduce`.")
    examples: int = _f(8, "Dataset examples per unit: the collected rows where its coefficient is largest.", ge=1, le=64)
    dictionary: int = _f(8, "Units listed per cell (by share of the cell's positive coefficients, and of its top class's attribution).", ge=1, le=64)
    attribution_examples: int = _f(4, "Each cell's attribution dictionary is the mean over its first this many dataset examples of each unit's linear attribution to the cell's top class (a backward pass per example image); 0 = off. Needs `collect.attribution`.", ge=0)
    attribution_batch: int = _f(32, "Example images per unit of work of the attribution pass.", ge=1)
    fit_rows: int = _f(20_000, "`nmf:K` is fitted on a seeded sample of at most this many collected rows.", ge=1)
    nmf_iter: int = _f(200, "Multiplicative-update rounds of the NMF fit, and of each encoding.", ge=1)
    sae_epochs: int = _f(20, "`sae:K`: passes over the collected rows (streamed chunk by chunk, chunks and rows in a seeded order per epoch).", ge=1)
    sae_batch: int = _f(128, "`sae:K`: rows per training step.", ge=1)
    sae_lr: float = _f(1e-3, "`sae:K`: Adam's learning rate.", gt=0)
    sae_l1: float = _f(0.1, "`sae:K`: weight of the L1 penalty on the features (inputs are scaled to a mean squared norm of 1; decoder columns have unit norm). Measured on the demo with 256 features and 20 epochs: 0.1 gives 29 active features per row and 24 % unexplained variance.", ge=0)
    sae_checkpoint_s: float = _f(60.0, "`sae:K`: save the training state at most every this many seconds (and at each epoch's end): a killed run resumes from it, to the same bits; 0 = after every chunk.", ge=0)
    threads: int | None = _f(None, "torch intra-op threads on the CPU (None = every CPU this process may use); pinned so results do not depend on what ran before.", ge=1)

class JobqueueConfig(_Section):
    jobs: int = _f(0, "dask engine on SLURM without a scheduler: start this many `dask_jobqueue.SLURMCluster` jobs (0 = off; needs `pip install dask-jobqueue`).", ge=0)
    cores: int = _f(8, "Cores per SLURMCluster job.", ge=1)
    memory: DaskMem = _f("32GB", "Memory per SLURMCluster job.")
    processes: int = _f(1, "dask worker processes per SLURMCluster job.", ge=1)
    walltime: SlurmTime = _f("04:00:00", "Walltime per SLURMCluster job.")
    queue: str | None = _f(None, "SLURM partition of the SLURMCluster jobs (None = the cluster's default).")
    account: str | None = _f(None, "SLURM account of the SLURMCluster jobs.")
    gpus: int = _f(0, "GPUs per SLURMCluster job (`--gres=gpu:N`); each worker process then declares one GPU (`--resources GPU=1`) and uses its own, so `processes` must equal it.", ge=0)
    job_extra_directives: Annotated[list[str], _sbatch_options(spaces=True)] = _f([], "Extra `#SBATCH` options for the SLURMCluster jobs, e.g. [\"--constraint=a100\"].")


    @model_validator(mode="after")
    def _one_process_per_gpu(self) -> JobqueueConfig:
        if self.gpus and self.processes != self.gpus:
            raise _Invalid(f"is {self.processes}, but each SLURMCluster job has {self.gpus} GPUs and a worker process "
                           f"drives one: set cluster.jobqueue.processes: {self.gpus} (one worker per GPU)", "processes")
        return self


class SlurmStageConfig(_Section):
    tasks: int | None = _f(None, "Array tasks (1 = a single job; None = the stage's default). Any number works: units are split round robin over the tasks.", ge=1)
    time: SlurmTime | None = _f(None, "Walltime (`--time`; None = the stage's default). A task killed at its walltime loses only its unfinished units: resubmit to resume.")
    cpus: int | None = _f(None, "CPUs per task (`--cpus-per-task`; None = the stage's default).", ge=1)
    mem: SlurmMem | None = _f(None, "Memory per task (`--mem`; None = the stage's default).")
    gpus: int | None = _f(None, "GPUs per task (`--gres=gpu:N`; None = the stage's default).", ge=0)


class SlurmConfig(_Section):
    partition: str | None = _f(None, "`--partition` of every job (None = the cluster's default).")
    account: str | None = _f(None, "`--account` of every job.")
    max_parallel: int | None = _f(None, "At most this many array tasks run at once (`--array=0-N%M`).", ge=1)
    extra: Annotated[list[str], _sbatch_options(spaces=False)] = _f([], "Extra sbatch options for every job, one option per item without spaces, e.g. [\"--qos=long\"].")
    stages: dict[str, SlurmStageConfig] = _f({}, "sbatch resources per stage, keyed by stage name; keys not given keep the stage's defaults.")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: dict[str, SlurmStageConfig]) -> dict[str, SlurmStageConfig]:
        unknown = [name for name in stages if name not in STAGES]
        if unknown:
            raise _Invalid(f"is not a stage; stages are {', '.join(STAGES)}", unknown[0])
        return stages


class ClusterConfig(_Section):
    engine: Literal["local", "dask"] = _f("local", "How `atlas run` and the stage commands execute units: `local` (in this process) or `dask` (shards as tasks on a dask cluster: `scheduler`, else a SLURMCluster when `jobqueue.jobs` > 0, else a LocalCluster of `workers` processes). SLURM arrays use `--shard slurm` instead (scripts/slurm).")
    scheduler: str | None = _f(None, "dask scheduler address, e.g. tcp://10.0.0.1:8786 (engine `dask`).")
    workers: int = _f(2, "LocalCluster worker processes (engine `dask` without `scheduler` or `jobqueue`).", ge=1)
    processes: Annotated[int, Field(ge=0)] | Literal["auto"] = _f(0, "Engine `local`: processes a job of grid or tile fans its tasks out to (chunk sums, bands of tiles), spawned per job and killed with it; 0 or 1 = in this process (fastest on small runs), `auto` = the CPUs the job may use (a SLURM task's `--cpus-per-task`). With engine `dask` the cluster's workers run them.")
    tasks: int | None = _f(None, "Tasks a sharded stage (collect, render, tile) is split into on dask; None = 2 per worker.", ge=1)
    retries: int = _f(2, "dask retries of a failed task, and extra rounds for units left undone (a killed worker's units are rescheduled by dask itself).", ge=0)
    jobqueue: JobqueueConfig = _section(JobqueueConfig, "dask_jobqueue.SLURMCluster.")
    slurm: SlurmConfig = _section(SlurmConfig, "sbatch resources (scripts/slurm/submit.sh).")
    locking: Literal["flock", "none"] = _f("flock", "How processes sharing the run directory keep out of each other's way: `flock` (leases on units, locks on set-up and finishing; checked once at start, refused where the file system lacks it) or `none` (no flock: each unit has one owner, as with `--shard i/n` and SLURM arrays; set-up and finishing take an owner marker that a dead owner holds for at most 2 minutes; docs/cluster.md).")

    @model_validator(mode="after")
    def _no_locks_needs_static_shards(self) -> ClusterConfig:
        if self.locking == "none" and self.engine == "dask":
            raise _Invalid("is `none`, which needs static shards (each unit one owner), but engine `dask` may run a task "
                           "twice: use the local engine with --shard i/n or SLURM arrays, or cluster.locking: flock",
                           "locking")
        return self


class Config(_Section):
    run_dir: Annotated[str, _non_empty("a folder such as runs/demo")] = _f("runs/demo", "Run directory; every stage reads and writes under it. Relative to the current folder; in a run's own RUN/config.yaml, that file's folder (whatever it records).")
    seed: int = _f(0, "Run seed: fixes sampled positions, layout, render noise.", ge=0)
    images: ImagesConfig = _section(ImagesConfig, "Image source.")
    model: ModelConfig = _section(ModelConfig, "Network and layer.")
    collect: CollectConfig = _section(CollectConfig, "Stage 1: activations.")
    reduce: ReduceConfig = _section(ReduceConfig, "Stage 2: UMAP layout.")
    grid: GridConfig = _section(GridConfig, "Stage 3: multi-level grid.")
    render: RenderConfig = _section(RenderConfig, "Stage 4: icons.")
    tile: TileConfig = _section(TileConfig, "Stage 5: Deep Zoom tiles.")
    follow: FollowConfig = _section(FollowConfig, "Several layers: where a cell's images land in the other layers (`atlas follow`, run by `atlas run`).")
    classes: ClassesConfig = _section(ClassesConfig, "Class activation atlases (`atlas class-atlas`).")
    locate: LocateConfig = _section(LocateConfig, "`atlas locate`: where new images land on the atlas.")
    patch_test: PatchTestConfig = _section(PatchTestConfig, "`atlas patch-test`: human-adversarial patches on held-out images.")
    units: UnitsConfig = _section(UnitsConfig, "`atlas units`: the channels (or learned units) behind every cell.")
    compare: CompareConfig = _section(CompareConfig, "`atlas compare`: two networks over the same images, one layout.")
    cluster: ClusterConfig = _section(ClusterConfig, "Execution: in-process, dask, SLURM.")

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @model_validator(mode="after")
    def _demo_kind_needs_the_demo_path(self) -> Config:
        if self.images.kind == "demo" and self.images.path != "demo":
            raise _Invalid(f"is `demo` but images.path is {self.images.path!r}: "
                           "set images.kind=auto (or the kind of that path) to use those images", "images.kind")
        return self

    @model_validator(mode="after")
    def _render_levels_are_grid_levels(self) -> Config:
        bad = [s for s in self.render.levels or [] if s not in self.grid.sizes]
        if bad:
            raise _Invalid(f"must be some of grid.sizes {self.grid.sizes} (or null for all); {bad} are not grid levels", "render.levels")
        return self

    @model_validator(mode="after")
    def _locate_level_is_a_grid_level(self) -> Config:
        if self.locate.level is not None and self.locate.level not in self.grid.sizes:
            raise _Invalid(f"must be one of grid.sizes {self.grid.sizes} (or null for the finest rendered one)", "locate.level")
        return self


# --------------------------------------------------------------------------- errors


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _unwrap(tp: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> X."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp


def _type_at(parts: list[str | int]) -> Any:
    """The schema type at a key path (None when the path leaves the schema)."""
    tp: Any = Config
    for part in parts:
        tp = _unwrap(tp)
        if _is_section(tp) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            return None
    return _unwrap(tp)


def _dotted(parts: list[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _num(x: Any) -> Any:
    return int(x) if isinstance(x, float) and x.is_integer() else x


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}
_KINDS = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false", "string_type": "a string",
          "list_type": "a list", "dict_type": "a mapping"}


def _error_text(err: Mapping[str, Any], parts: list[str | int]) -> tuple[list[str | int], str]:
    """(key path, text after the key) for one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if kind in _BOUNDS:
        op, name = _BOUNDS[kind]
        return parts, f"must be {op} {_num(ctx[name])}, got {value!r}"
    if kind == "string_type" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return parts, f"must be a string, got {value!r}: quote it in YAML ('{value}')"
    if kind in _KINDS:
        return parts, f"must be {_KINDS[kind]}, got {value!r}"
    if kind == "literal_error":
        choices = typing.get_args(_type_at(parts))
        return parts, f"must be one of {', '.join(map(str, choices))}; got {value!r}"
    if kind in ("too_short", "too_long"):
        n = ctx.get("min_length") if kind == "too_short" else ctx.get("max_length")
        return parts, f"must have {'at least' if kind == 'too_short' else 'at most'} {n} items, got {value!r}"
    if kind == "value_error" and isinstance(ctx.get("error"), _Invalid):
        e = ctx["error"]
        return parts + [p for p in e.key.split(".") if p], str(e)
    return parts, f"is invalid: {err['msg']}; got {value!r}"


_REMOVED = {
    "grid.scheduler": "grid runs on the engine; set cluster.engine: dask and cluster.scheduler: ADDRESS (or pass --scheduler ADDRESS)",
    "grid.dask_workers": "grid runs on the engine; set cluster.engine: dask and cluster.workers: N (or cluster.processes: N for N local processes)",
    "tile.workers": "tile runs on the engine; set cluster.processes: N for N local processes per shard (or cluster.engine: dask and cluster.workers: N)",
}
"""Keys of earlier versions: using one is an error that says what replaced it."""


def _message(err: Mapping[str, Any]) -> str:
    parts: list[str | int] = list(err["loc"])
    if err["type"] == "extra_forbidden" and _dotted(parts) in _REMOVED:
        return f"config key `{_dotted(parts)}` was removed: {_REMOVED[_dotted(parts)]}"
    if err["type"] == "extra_forbidden":
        section = _type_at(parts[:-1])
        where = _dotted(parts[:-1]) or "the top level"
        return f"unknown config key `{_dotted(parts)}`; allowed keys in {where}: {', '.join(section.model_fields)}"
    if err["type"] == "model_type":
        where = f"config section `{_dotted(parts)}`" if parts else "the config"
        return f"{where} must be a mapping of keys to values, got {err.get('input')!r}"
    parts, text = _error_text(err, parts)
    return f"config key `{_dotted(parts)}` {text}"


def _config_error(e: ValidationError) -> ConfigError:
    """The first error of ``e`` as one line naming its key."""
    return ConfigError(_message(e.errors()[0]))


# --------------------------------------------------------------------------- loading


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value (e.g. images.path=/data/imgs), got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, dict):  # "a: b" in a value is a string, not a mapping
        value = raw
    return key.strip(), value


def _set_dotted(data: dict[str, Any], key: str, value: Any, what: str) -> None:
    """``data[a][b][c] = value`` for ``key`` "a.b.c", creating the sections on the way."""
    *path, last = key.split(".")
    node = data
    for part in path:
        if node.get(part) is None:  # new, or `images:` with nothing under it
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{what}: `{part}` is not a section")
    node[last] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a raw dict."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(data, key, value, f"--set {item}")
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


def _missing_config(p: Path) -> ConfigError:
    """A config that is no file: the built-in names (the closest first), or a YAML file."""
    from .templates import config_names

    names = config_names()
    close = difflib.get_close_matches(p.name.removesuffix(".yaml"), names, n=1) if p.parent == Path(".") else []
    hint = f"did you mean {close[0]}? Or " if close else ""
    return ConfigError(f"config file {p} does not exist; {hint}give a YAML file such as pipelines/demo.yaml or a "
                       f"built-in name ({', '.join(names)})")


def _yaml_error(p: Path, e: yaml.YAMLError) -> ConfigError:
    """A YAML syntax error as one line naming the file, the line and the column."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e)
    return ConfigError(f"config file {p} is not valid YAML{where}: {' '.join(str(problem).split())}")


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise _missing_config(p)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise _yaml_error(p, e) from None
    if isinstance(data, dict) and data.pop("provenance", None) is not None:
        # RUN/config.yaml: the resolved config plus provenance, loads again. One written by an
        # earlier version lists every key of its day: drop the removed ones (execution only, never
        # part of a fingerprint) so the run resumes; in a config a user writes they stay errors.
        for key in _REMOVED:
            section, _, name = key.partition(".")
            if isinstance(data.get(section), dict):
                data[section].pop(name, None)
        if "run_dir" in data:
            _in_its_folder(data, p)
    return data


def _in_its_folder(data: dict[str, Any], path: Path) -> None:
    """A run's own config.yaml means that run wherever it is: ``run_dir`` is the file's folder
    (whatever it records: a moved or copied run keeps working from any folder), and a class
    atlas's ``classes.parent`` the run holding ``RUN/classes/<slug>/``."""
    folder = path.parent
    data["run_dir"] = str(folder)
    classes = data.get("classes")
    if isinstance(classes, dict) and classes.get("parent") is not None and folder.resolve().parent.name == "classes":
        classes["parent"] = os.path.normpath(os.path.join(folder, os.pardir, os.pardir))
    model = data.get("model")
    if isinstance(model, dict) and model.get("layer_of") is not None and folder.resolve().parent.name == "layers":
        model["layer_of"] = os.path.normpath(os.path.join(folder, os.pardir, os.pardir))
    compare = data.get("compare")  # a comparison's view: its runs relative to this file's folder (run_config_text)
    if isinstance(compare, dict):
        for key in ("layout", "network"):
            if isinstance(compare.get(key), str) and not os.path.isabs(compare[key]):
                compare[key] = str((folder / compare[key]).resolve())


def run_config_text(cfg: Config, prov: Mapping[str, Any]) -> str:
    """``RUN/config.yaml``: ``cfg`` with its paths as the run sees them (``run_dir: .``, a class
    atlas's ``classes.parent: ../..``; loading resolves them against the file's folder), then
    ``prov`` as its ``provenance`` block."""
    data = config_to_dict(cfg)
    data["run_dir"] = "."
    if data["classes"].get("parent") is not None:
        data["classes"]["parent"] = os.path.join(os.pardir, os.pardir)
    if data["model"].get("layer_of") is not None:
        data["model"]["layer_of"] = os.path.join(os.pardir, os.pardir)
    holder = Path(cfg.run_dir).resolve().parents[2] if len(Path(cfg.run_dir).resolve().parents) > 2 else None
    for key in ("layout", "network"):  # a comparison's view (RUN/compare/<name>/<view>): RUN as ../../..
        value = data.get("compare", {}).get(key)
        if value is not None and holder is not None and Path(value).resolve() == holder:
            data["compare"][key] = os.path.join(os.pardir, os.pardir, os.pardir)
    return ("# the config this run was last started with; run_dir is this file's folder wherever it is\n"
            + yaml.safe_dump(data, sort_keys=False) + "\n" + yaml.safe_dump({"provenance": dict(prov)}, sort_keys=False))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate.

    A run's ``RUN/config.yaml`` loads too (its ``provenance`` block is left out), so
    ``atlas run RUN/config.yaml`` resumes that run with the settings it was started with, from
    any folder: its ``run_dir`` is the file's folder. An explicit ``run_dir=...`` override still
    wins (a new run with the same settings).
    """
    data = _read_yaml(path) if path is not None else {}
    return config_from_dict(expand_env(apply_overrides(data, overrides or [])))


def config_from_dict(data: Any) -> Config:
    """Build and validate a Config from a plain mapping (unknown keys and bad values are ConfigErrors)."""
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise _config_error(e) from None


def with_updates(cfg: Config, updates: Mapping[str, Any]) -> Config:
    """A new Config: ``cfg`` with the dotted keys of ``updates`` replaced (validated), e.g.
    ``with_updates(cfg, {"cluster.scheduler": address})``."""
    data = config_to_dict(cfg)
    for key, value in updates.items():
        _set_dotted(data, key, value, f"config key `{key}`")
    return config_from_dict(data)


def slurm_stage_resources(cfg: Config, stage: str, defaults: Mapping[str, Any], *, single: bool = False) -> dict[str, Any]:
    """``defaults`` (tasks, time, cpus, mem, gpus) with the values ``cluster.slurm.stages.<stage>`` sets.

    ``single``: the stage runs as one job, so a configured ``tasks`` other than 1 is an error.
    """
    given = cfg.cluster.slurm.stages.get(stage)
    out = dict(defaults)
    if given is not None:
        out |= {k: v for k, v in given.model_dump().items() if v is not None}
    if single and out.get("tasks", 1) != 1:
        raise ConfigError(f"config key `cluster.slurm.stages.{stage}.tasks` must be 1: {stage} runs as one job, "
                          f"got {out['tasks']}")
    return out


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain YAML/JSON types."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


# --------------------------------------------------------------------------- provenance


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions of the stack and the machine, for the run directory's config.yaml."""
    pkgs: dict[str, str | None] = {}
    for name in ("atlas", "torch", "torchvision", "timm", "numpy", "zarr", "umap-learn", "faiss-cpu", "dask", "pillow",
                 "pydantic"):
        try:
            pkgs[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pkgs[name] = None
    out = {"python": platform.python_version(), "platform": platform.platform(), "packages": pkgs}
    out.update(extra or {})
    return out


# --------------------------------------------------------------------------- docs


_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _bounds_text(metadata: list[Any]) -> str:
    """`` >= 0, < 50`` for the bounds in a field's metadata."""
    bounds = [f"{op} {_num(getattr(m, k))}" for m in metadata for k, op in _OPS.items() if hasattr(m, k)]
    return " " + ", ".join(bounds) if bounds else ""


def _type_name(tp: Any, metadata: list[Any] | None = None) -> str:
    metadata = [x for m in metadata or [] for x in (m.metadata if isinstance(m, FieldInfo) else [m])]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _type_name(args[0], [*metadata, *args[1:]])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a, metadata) if a is not type(None) else "None" for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    return getattr(tp, "__name__", str(tp)) + _bounds_text(metadata)


def _field_type(info: FieldInfo) -> str:
    return _type_name(info.annotation, list(info.metadata))


def schema_rows(cls: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every leaf key, in schema order.

    The per-stage SLURM keys appear once, as ``cluster.slurm.stages.<stage>.<key>``."""
    rows: list[tuple[str, str, str, str]] = []
    for name, info in cls.model_fields.items():
        tp = _unwrap(info.annotation)
        if _is_section(tp):
            rows += schema_rows(tp, f"{prefix}{name}.")
        elif typing.get_origin(tp) is dict and _is_section(typing.get_args(tp)[1]):
            rows += schema_rows(typing.get_args(tp)[1], f"{prefix}{name}.<stage>.")
        else:
            default = info.get_default(call_default_factory=True)
            rows.append((f"{prefix}{name}", _field_type(info), json.dumps(default), info.description or ""))
    return rows


def _markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema in `atlas/config.py` by `python -m atlas.config > docs/configuration.md`.",
        "Every key can be set in the YAML file or on the command line with `--set key=value`.",
        "Values are checked when the config is loaded: an unknown key, a value of the wrong type",
        "(`\"3\"` is not a number, `\"true\"` is not a boolean) or out of its range is an error naming the key.",
        "`${VAR}` and `${VAR:-default}` in a value are replaced from the environment.",
        "`cluster.slurm.stages.<stage>` takes a stage name (`collect`, `reduce`, ...); a key left out",
        "(or null) keeps that stage's own default.",
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key, tname, default, help in schema_rows():
        lines.append(f"| `{key}` | {tname.replace('|', 'or')} | `{default}` | {help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(_markdown(), end="")
