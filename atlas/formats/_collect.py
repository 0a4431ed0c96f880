"""``RUN/collect``: one sampled activation per image, written by :mod:`atlas.stages.collect` (or, in a
class atlas, copied from the parent run's by :mod:`atlas.stages._select`).

Arrays (row i is image i of the run's manifest; chunks of ``chunk_rows`` rows):

``activations``    [N, C] float16 (``collect.dtype``), fill 0: the sampled activation vector
``positions``      [N, 2] int16, fill -1: its (y, x) on the layer's H x W grid
``index``          [N] int64, fill -1: the manifest row
``status``         [N] uint8, fill 0: 1 ok, 0 pending, 2+ a bad input (``status_codes``)
``labels``         [N] int32, fill -1: the source label id (into ``label_names``)
``attr_classes``   [N, K] int16, fill -1: the top-K attributed classes (with ``attribution`` only)
``attr_values``    [N, K] float32, fill 0: their attributions, descending (with ``attribution`` only)
``second_moment``  [C, C] float64: sum over ok rows of x x^T (written when the stage finishes)
``parent_rows``    [N] int64: a class atlas's rows of its parent run (class atlases only)

Attributes: those of :class:`CollectHeader` (at creation), ``ok_count`` / ``bad_count`` (when
finished) and, in a class atlas, ``class_atlas`` (:class:`ClassAtlasInfo`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from ..store import RunDir, StoreError, read_rows
from ._base import (
    attr_bool,
    attr_dict,
    attr_int,
    attr_list,
    attr_opt,
    attr_str,
    create_whole,
    group_array,
    open_output,
    output_exists,
)

__all__ = ["COLLECT", "ROW_ARRAYS", "ClassAtlasInfo", "CollectHeader", "CollectOutput", "CollectRows",
           "create_collect", "create_selection"]

COLLECT = "collect"
ROW_ARRAYS = ("activations", "positions", "index", "status", "labels", "attr_classes", "attr_values")
"""The per-row arrays (what a class atlas copies from its parent)."""
_ATTR_ARRAYS = ("attr_classes", "attr_values")


@dataclass(frozen=True)
class CollectHeader:
    """What collect records when it creates its group: the network, the layer and the rows.

    ``layer_shape``: (C, H, W) of the layer; ``status_codes``: status value (as a string) -> name;
    ``top_k``: attribution classes kept per row (0 without ``attribution``)."""

    model: str
    layer: str
    layer_shape: tuple[int, int, int]
    input_size: int
    seed: int
    border: int
    n_images: int
    chunk_rows: int
    attribution: bool
    top_k: int
    class_names: list[str]
    label_names: list[str]
    status_codes: dict[str, str]
    weights_sha256: str | None

    def to_attrs(self) -> dict[str, Any]:
        """The group attributes, in the order collect writes them."""
        return {**asdict(self), "layer_shape": list(self.layer_shape)}


_HEADER_KEYS = tuple(f.name for f in fields(CollectHeader))
_SELECTION_OWN = ("n_images", "chunk_rows")  # a class atlas's own values, written after the parent's


@dataclass(frozen=True)
class ClassAtlasInfo:
    """A class atlas's selection (attribute ``class_atlas``): the parent run, the class indices and
    names, the rule (``threshold``, ``top_k``, ``max_rows``), the rows selected per class and the
    parent's row count."""

    parent: str
    classes: list[int]
    names: list[str]
    threshold: float | None = None
    top_k: int | None = None
    max_rows: int | None = None
    rows_per_class: list[int] = field(default_factory=list)
    parent_rows: int = 0

    @classmethod
    def from_attrs(cls, d: dict[str, Any]) -> ClassAtlasInfo:
        try:
            return cls(parent=str(d["parent"]), classes=[int(k) for k in d["classes"]], names=[str(n) for n in d["names"]],
                       threshold=d.get("threshold"), top_k=d.get("top_k"), max_rows=d.get("max_rows"),
                       rows_per_class=[int(n) for n in d.get("rows_per_class") or []],
                       parent_rows=int(d.get("parent_rows") or 0))
        except (KeyError, TypeError, ValueError):
            raise StoreError("collect's `class_atlas` attribute is not a class atlas's selection: it was written by "
                             "another version of atlas; redo the class atlas's collect") from None

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CollectRows:
    """Rows of the per-row arrays (m rows): ``activations`` [m, C] (collect's dtype), ``positions``
    int16 [m, 2], ``index`` int64 [m], ``status`` uint8 [m], ``labels`` int32 [m], ``attr_classes``
    int16 [m, K] and ``attr_values`` float32 [m, K] (None without attribution)."""

    activations: np.ndarray
    positions: np.ndarray
    index: np.ndarray
    status: np.ndarray
    labels: np.ndarray
    attr_classes: np.ndarray | None = None
    attr_values: np.ndarray | None = None


class CollectOutput:
    """``RUN/collect`` read (and, opened ``r+``, written) through typed properties."""

    def __init__(self, run: RunDir, group: zarr.Group) -> None:
        self.run, self.group = run, group

    @classmethod
    def open(cls, run: RunDir, mode: Literal["r", "r+"] = "r") -> CollectOutput:
        """The run's collect output; a one-line StoreError naming ``atlas collect`` when there is none."""
        return cls(run, open_output(run, COLLECT, mode))

    @staticmethod
    def exists(run: RunDir) -> bool:
        """Whether the run has a collect group (it may be unfinished)."""
        return output_exists(run, COLLECT)

    @property
    def path(self) -> Path:
        return self.run.stage_path(COLLECT)

    # ------------------------------------------------------------- attributes
    @property
    def model(self) -> str:
        return attr_str(self.group, "model")

    @property
    def layer(self) -> str:
        return attr_str(self.group, "layer")

    @property
    def layer_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the sampled layer."""
        c, h, w = (int(v) for v in attr_list(self.group, "layer_shape"))
        return c, h, w

    @property
    def layer_grid(self) -> tuple[int, int]:
        """(H, W): the layer's spatial grid (what ``positions`` index)."""
        return self.layer_shape[1], self.layer_shape[2]

    @property
    def input_size(self) -> int:
        """The side of the square image the network saw, in pixels."""
        return attr_int(self.group, "input_size")

    @property
    def seed(self) -> int:
        return attr_int(self.group, "seed")

    @property
    def border(self) -> int:
        return attr_int(self.group, "border")

    @property
    def n_images(self) -> int:
        return attr_int(self.group, "n_images")

    @property
    def chunk_rows(self) -> int:
        return attr_int(self.group, "chunk_rows")

    @property
    def attribution(self) -> bool:
        """Whether collect recorded class attribution (the attribute; see :attr:`has_attribution`)."""
        return bool(attr_opt(self.group, "attribution"))

    @property
    def has_attribution(self) -> bool:
        """Whether the attribution arrays are there to read."""
        return self.attribution and "attr_classes" in self.group

    @property
    def top_k(self) -> int:
        return attr_int(self.group, "top_k")

    @property
    def class_names(self) -> list[str]:
        """The network's class names ([] for a network without a classifier)."""
        return [str(n) for n in attr_opt(self.group, "class_names") or []]

    @property
    def label_names(self) -> list[str]:
        """The image source's label names ([] without labels)."""
        return [str(n) for n in attr_opt(self.group, "label_names") or []]

    @property
    def status_codes(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in attr_dict(self.group, "status_codes").items()}

    @property
    def weights_sha256(self) -> str | None:
        v = attr_opt(self.group, "weights_sha256")
        return None if v is None else str(v)

    @property
    def ok_count(self) -> int:
        """Rows read without error (written when the stage finishes)."""
        return attr_int(self.group, "ok_count")

    @property
    def bad_count(self) -> int:
        return attr_int(self.group, "bad_count")

    @property
    def class_atlas(self) -> ClassAtlasInfo | None:
        """A class atlas's selection; None in a main run."""
        info = attr_opt(self.group, "class_atlas")
        return ClassAtlasInfo.from_attrs(dict(info)) if isinstance(info, dict) and info else None

    @property
    def header(self) -> CollectHeader:
        """Every attribute written at creation."""
        return CollectHeader(self.model, self.layer, self.layer_shape, self.input_size, self.seed, self.border,
                             self.n_images, self.chunk_rows, attr_bool(self.group, "attribution"), self.top_k,
                             self.class_names, self.label_names, self.status_codes, self.weights_sha256)

    # ----------------------------------------------------------------- arrays
    @property
    def activations(self) -> zarr.Array[Any]:
        """[N, C] float16 (``collect.dtype``): one sampled activation per row."""
        return group_array(self.group, "activations")

    @property
    def positions(self) -> zarr.Array[Any]:
        """[N, 2] int16: the sampled (y, x) on the layer grid; -1 for rows not ok."""
        return group_array(self.group, "positions")

    @property
    def index(self) -> zarr.Array[Any]:
        """[N] int64: the manifest row of each row."""
        return group_array(self.group, "index")

    @property
    def status(self) -> zarr.Array[Any]:
        """[N] uint8: 1 ok, 0 pending, 2+ bad input."""
        return group_array(self.group, "status")

    @property
    def labels(self) -> zarr.Array[Any]:
        """[N] int32: source label id, -1 unlabelled."""
        return group_array(self.group, "labels")

    @property
    def has_labels(self) -> bool:
        return "labels" in self.group

    @property
    def attr_classes(self) -> zarr.Array[Any]:
        """[N, K] int16: the top-K attributed classes of each row, -1 none."""
        return group_array(self.group, "attr_classes")

    @property
    def attr_values(self) -> zarr.Array[Any]:
        """[N, K] float32: their attributions, descending."""
        return group_array(self.group, "attr_values")

    @property
    def second_moment(self) -> zarr.Array[Any]:
        """[C, C] float64: sum of x x^T over the ok rows."""
        return group_array(self.group, "second_moment")

    @property
    def has_parent_rows(self) -> bool:
        return "parent_rows" in self.group

    @property
    def parent_rows(self) -> zarr.Array[Any]:
        """[N] int64: a class atlas's rows of its parent run, in order."""
        return group_array(self.group, "parent_rows")

    @property
    def n_rows(self) -> int:
        return int(self.activations.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.activations.shape[1])

    @property
    def dtype(self) -> np.dtype[Any]:
        """The stored activation dtype (``collect.dtype``)."""
        return np.dtype(self.activations.dtype)

    # -------------------------------------------------------------- reading
    def status_all(self) -> np.ndarray:
        """uint8 [N]: every row's status."""
        return np.asarray(self.status[:])

    def read_activations(self, rows: np.ndarray) -> np.ndarray:
        """Activations of sorted int ``rows`` [m], read a chunk at a time: float32 [m, C]."""
        return read_rows(self.activations, rows, self.chunk_rows)

    def take(self, rows: np.ndarray) -> CollectRows:
        """Every per-row array at int ``rows`` [m] (any order)."""
        def get(arr: zarr.Array[Any]) -> np.ndarray:
            return np.asarray(arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1)))

        attr = all(a in self.group for a in _ATTR_ARRAYS)
        return CollectRows(get(self.activations), get(self.positions), get(self.index), get(self.status),
                           get(self.labels), get(self.attr_classes) if attr else None,
                           get(self.attr_values) if attr else None)

    # -------------------------------------------------------------- writing
    def write_rows(self, lo: int, rows: CollectRows) -> None:
        """Write ``rows`` at rows ``lo .. lo + m`` (the attribution arrays when the group has them)."""
        sl = slice(lo, lo + len(rows.status))
        self.activations[sl] = rows.activations
        self.positions[sl] = rows.positions
        self.index[sl] = rows.index
        self.status[sl] = rows.status
        self.labels[sl] = rows.labels
        if rows.attr_classes is not None and rows.attr_values is not None and "attr_classes" in self.group:
            self.attr_classes[sl] = rows.attr_classes
            self.attr_values[sl] = rows.attr_values

    @property
    def has_totals(self) -> bool:
        """Whether the finished stage's totals (``second_moment``, ``ok_count``) are written."""
        return "ok_count" in self.group.attrs and isinstance(self.group.get("second_moment"), zarr.Array)

    def write_totals(self, second_moment: np.ndarray, ok_count: int, bad_count: int) -> None:
        """The finished stage's ``second_moment`` (float64 [C, C]) and its ok and bad counts."""
        c = int(second_moment.shape[0])
        self.group.create_array("second_moment", shape=(c, c), chunks=(c, c), dtype="float64", overwrite=True,
                                dimension_names=("channel", "channel_t"))[:] = second_moment
        self.group.attrs.update({"ok_count": int(ok_count), "bad_count": int(bad_count)})


def create_collect(run: RunDir, header: CollectHeader, dtype: str) -> None:
    """Create ``RUN/collect`` whole (arrays of ``header.n_images`` rows in chunks of
    ``header.chunk_rows``, activations of ``dtype``; the attribution arrays when
    ``header.attribution``) with ``header``'s attributes."""
    n, r, c, k = header.n_images, header.chunk_rows, header.layer_shape[0], header.top_k

    def build(g: zarr.Group) -> None:
        g.create_array("activations", shape=(n, c), chunks=(r, c), dtype=dtype, fill_value=0,
                       dimension_names=("row", "channel"))
        g.create_array("positions", shape=(n, 2), chunks=(r, 2), dtype="int16", fill_value=-1,
                       dimension_names=("row", "yx"))
        g.create_array("index", shape=(n,), chunks=(r,), dtype="int64", fill_value=-1, dimension_names=("row",))
        g.create_array("status", shape=(n,), chunks=(r,), dtype="uint8", fill_value=0, dimension_names=("row",))
        g.create_array("labels", shape=(n,), chunks=(r,), dtype="int32", fill_value=-1, dimension_names=("row",))
        if header.attribution:
            g.create_array("attr_classes", shape=(n, k), chunks=(r, k), dtype="int16", fill_value=-1,
                           dimension_names=("row", "top"))
            g.create_array("attr_values", shape=(n, k), chunks=(r, k), dtype="float32", fill_value=0,
                           dimension_names=("row", "top"))
        g.attrs.update(header.to_attrs())

    create_whole(run, COLLECT, build)


def _dimension_names(arr: zarr.Array[Any]) -> tuple[str | None, ...] | None:
    return getattr(arr.metadata, "dimension_names", None)


def _selection_attrs(parent: CollectOutput, n: int, chunk_rows: int, info: ClassAtlasInfo) -> dict[str, Any]:
    src = dict(parent.group.attrs)
    kept = {k: src[k] for k in _HEADER_KEYS if k in src and k not in _SELECTION_OWN}
    return {**kept, "n_images": n, "chunk_rows": chunk_rows, "class_atlas": info.to_attrs()}


def create_selection(run: RunDir, parent: CollectOutput, rows: np.ndarray, chunk_rows: int,
                     info: ClassAtlasInfo) -> None:
    """Create a class atlas's ``RUN/collect`` whole: the parent's per-row arrays (same dtypes, fill
    values and dimensions) for the m selected ``rows`` (int64 [m], parent row order) in chunks of
    ``chunk_rows``, the selection itself as ``parent_rows`` [m] int64, the parent's header with this
    atlas's ``n_images`` and ``chunk_rows``, and ``class_atlas`` = ``info``."""
    m = len(rows)

    def build(g: zarr.Group) -> None:
        for name in ROW_ARRAYS:
            if name not in parent.group:
                continue
            src = group_array(parent.group, name)
            g.create_array(name, shape=(m, *src.shape[1:]), chunks=(chunk_rows, *src.shape[1:]), dtype=src.dtype,
                           fill_value=src.fill_value, dimension_names=_dimension_names(src))
        g.create_array("parent_rows", shape=(m,), chunks=(max(m, 1),), dtype="int64", fill_value=-1,
                       dimension_names=("row",))[:] = rows
        g.attrs.update(_selection_attrs(parent, m, chunk_rows, info))

    create_whole(run, COLLECT, build)
