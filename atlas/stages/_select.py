"""collect in a class atlas (``RUN/classes/<slug>``): the parent run's rows that support the
atlas's classes, copied chunk by chunk, without the network.

A config whose ``classes.parent`` names a run gets :data:`STAGE` (:class:`SelectStage`) from the
registry for ``collect`` (``get_stage("collect", cfg)``, through
:meth:`atlas.stages.collect.CollectStage.for_config`); it is still the stage ``collect`` (its
name, state and output), so reduce, grid, render and tile run unchanged on the class atlas, and
resume, shards and engines work as for any run.

- **Selection** (:func:`atlas.ops.classes.select_rows`): per class the ``classes.max_rows``
  rows of highest attribution among those that support it (the class among the row's
  ``classes.top_k`` stored attribution classes, attribution above ``classes.threshold``);
  the union in parent row order. Computed once, when the attempt is created, and stored as
  ``collect/parent_rows``; a later process reads it back.
- **Settings** (what a rerun must match, else it is refused): the parent collect's
  fingerprint (its ``final`` marker), the class indices, the rule and ``collect.chunk_rows``.
- **Units** ``chunk-<j>``: rows ``j * chunk_rows ..`` of the selection copied from the
  parent's arrays (same dtypes), then their second moment; the last process sums them in
  chunk order, so any shard split gives the same bytes.
- **Manifest**: the parent's images of the selected rows, in selection order, so row i of the
  class atlas is image i of its manifest (tile's example crops and :mod:`atlas.explore` read it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Config
from ..formats import ClassAtlasInfo, CollectOutput, create_selection
from ..formats._collect import ROW_ARRAYS
from ..ops.classes import ClassNameError, match_class, select_rows
from ..store import RunDir, StoreError, atomic_save_npz, atomic_write_text
from ._protocol import Job, Resources, StageBase
from ._runner import final_info

__all__ = ["STAGE", "SelectStage", "SelectContext", "active", "settings", "open_context", "create", "units", "run_units",
           "finish", "provenance", "ROW_ARRAYS"]

NAME = "collect"


def active(cfg: Config) -> bool:
    """Whether ``cfg`` is a class atlas's (its collect copies rows of ``classes.parent``)."""
    return cfg.classes.parent is not None


@dataclass
class SelectContext:
    """What a process of a class atlas's collect works from."""

    cfg: Config
    run: RunDir
    parent: RunDir
    source: CollectOutput       # the parent's collect
    classes: list[int]
    rows: np.ndarray            # int64 [m]: the parent rows selected, in order
    per_class: list[int]        # rows selected per class (before the union)
    log: logging.Logger
    _out: CollectOutput | None = None

    @property
    def chunk_rows(self) -> int:
        return min(self.cfg.collect.chunk_rows, max(len(self.rows), 1))

    @property
    def out(self) -> CollectOutput:
        """The class atlas's own collect group, opened for writing (once)."""
        if self._out is None:
            self._out = CollectOutput.open(self.run, mode="r+")
        return self._out


# --------------------------------------------------------------------------- settings


def _parent(cfg: Config) -> tuple[RunDir, dict[str, Any]]:
    """The parent run and its collect's ``final`` marker; a one-line error when it is not finished."""
    parent = RunDir(str(cfg.classes.parent))
    final = final_info(parent, NAME)
    if final is None:
        raise StoreError(f"this class atlas's parent run {parent.root} has no finished collect: run "
                         f"`atlas collect {parent.root / 'config.yaml'}` first (classes.parent names it)")
    return parent, final


def _classes(cfg: Config, names: list[str]) -> list[int]:
    if not cfg.classes.names:
        raise StoreError("classes.names is empty: a class atlas names one class, or two to compare "
                         "(`atlas class-atlas CONFIG --class NAME` writes it)")
    try:
        return sorted({match_class(n, names) for n in cfg.classes.names})
    except ClassNameError as e:
        raise StoreError(f"config key `classes.names`: {e}") from None


def settings(cfg: Config) -> dict[str, Any]:
    """The parent collect's fingerprint, the classes (indices), the rule and the chunk size."""
    parent, final = _parent(cfg)
    source = CollectOutput.open(parent)
    c = cfg.classes
    return {"parent_collect": final["fingerprint"], "classes": _classes(cfg, source.class_names),
            "threshold": c.threshold, "top_k": c.top_k, "max_rows": c.max_rows, "chunk_rows": cfg.collect.chunk_rows}


# --------------------------------------------------------------------------- set-up


def selection(cfg: Config, source: CollectOutput, classes: list[int]) -> tuple[np.ndarray, list[int]]:
    """(parent rows int64 [m], rows per class) that the class atlas keeps (:func:`atlas.ops.classes.select_rows`)."""
    if not source.has_attribution:
        raise StoreError("the parent run collected no class attribution (collect.attribution: false, or a network "
                         "without a classifier): class atlases need it; collect a run with attribution")
    c = cfg.classes
    attr_classes = source.attr_classes
    rows, per_class = select_rows(np.asarray(attr_classes[:]), np.asarray(source.attr_values[:]), source.status_all(),
                                  classes, c.threshold, min(c.top_k, int(attr_classes.shape[1])), c.max_rows)
    return rows, per_class


def open_context(job: Job) -> SelectContext:
    """The parent's collect and the selection (read back when this attempt stored it)."""
    parent, _ = _parent(job.cfg)
    source = CollectOutput.open(parent)
    classes = _classes(job.cfg, source.class_names)
    own = CollectOutput.open(job.run) if CollectOutput.exists(job.run) else None
    info = own.class_atlas if own is not None and own.has_parent_rows else None
    if own is not None and info is not None:
        rows, per_class = np.asarray(own.parent_rows[:], np.int64), info.rows_per_class
    else:
        rows, per_class = selection(job.cfg, source, classes)
    if rows.size < 3:
        names = source.class_names
        raise StoreError(f"only {rows.size} rows of {parent.root} support {', '.join(repr(names[k]) for k in classes)} "
                         "(a class atlas needs 3 or more): lower classes.threshold or raise classes.top_k")
    job.log.info("class atlas of %s: %d rows of %s (%s per class)", ", ".join(job.cfg.classes.names), rows.size,
                 parent.root, ", ".join(map(str, per_class)))
    return SelectContext(job.cfg, job.run, parent, source, classes, rows, per_class, job.log)


def _write_manifest(ctx: SelectContext) -> None:
    """The parent's images of the selected rows, in order (row i of the class atlas is image i)."""
    from ..sources import Manifest, read_manifest, write_manifest

    m = read_manifest(ctx.parent.root)
    images = np.asarray(ctx.source.index.get_orthogonal_selection(ctx.rows), np.int64)
    sub = Manifest(m.kind, m.source, [m.locations[i] for i in images.tolist()], m.labels[images], m.label_names)
    write_manifest(sub, ctx.run.root)


def _info(ctx: SelectContext) -> ClassAtlasInfo:
    """The selection as the class atlas's collect records it (attribute ``class_atlas``)."""
    names, c = ctx.source.class_names, ctx.cfg.classes
    return ClassAtlasInfo(parent=str(ctx.parent.root), classes=ctx.classes, names=[names[k] for k in ctx.classes],
                          threshold=c.threshold, top_k=c.top_k, max_rows=c.max_rows, rows_per_class=ctx.per_class,
                          parent_rows=ctx.source.n_images)


def create(ctx: SelectContext) -> None:
    """The class atlas's collect group (the parent's arrays, for the selected rows; the selection
    as ``parent_rows``: :func:`atlas.formats.create_selection`), created whole; then its manifest."""
    create_selection(ctx.run, ctx.source, ctx.rows, ctx.chunk_rows, _info(ctx))
    _write_manifest(ctx)


# --------------------------------------------------------------------------- units


def _unit(j: int) -> str:
    return f"chunk-{j:06d}"


def units(ctx: SelectContext) -> list[str]:
    """``chunk-<j>`` for every ``collect.chunk_rows`` rows of the selection."""
    return [_unit(j) for j in range(-(-len(ctx.rows) // ctx.chunk_rows))]


def _copy_chunk(ctx: SelectContext, j: int) -> dict[str, Any]:
    """Copy rows ``j * chunk_rows ..`` of the selection, then write their side data."""
    r = ctx.chunk_rows
    lo, hi = j * r, min((j + 1) * r, len(ctx.rows))
    rows = ctx.rows[lo:hi]
    copied = ctx.source.take(rows)
    ctx.out.write_rows(lo, copied)
    ok = copied.activations[copied.status == 1].astype(np.float64)
    atomic_save_npz(ctx.run.unit_data_path(NAME, _unit(j)), second_moment=ok.T @ ok, ok_count=np.array(len(ok), np.int64))
    atomic_write_text(ctx.run.unit_data_path(NAME, _unit(j), ".json"), "[]")
    return {"rows": [lo, hi], "ok": int(len(ok)), "bad": 0, "parent_rows": [int(rows[0]), int(rows[-1])]}


def run_units(ctx: SelectContext, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name in names:
        yield name, _copy_chunk(ctx, int(name.split("-")[1]))


def finish(ctx: SelectContext) -> dict[str, Any]:
    """Sum the chunks' second moments in chunk order; ok and bad counts (an empty bad-input report)."""
    c = ctx.source.n_channels
    total, ok_count = np.zeros((c, c), np.float64), 0
    for name in units(ctx):
        with np.load(ctx.run.unit_data_path(NAME, name)) as z:
            total += z["second_moment"]
            ok_count += int(z["ok_count"])
    ctx.out.write_totals(total, ok_count, 0)
    atomic_write_text(ctx.run.logs_path() / "bad_inputs.tsv", "row\tlocation\tstatus\treason\n")
    ctx.log.info("class atlas collect complete: %d rows of %s", ok_count, ctx.parent.root)
    return {"ok_count": ok_count, "bad_count": 0, "classes": ctx.classes}


def provenance(ctx: SelectContext) -> dict[str, Any]:
    """The parent run and the weights its rows were collected with."""
    return {"class_atlas_parent": str(Path(ctx.parent.root).resolve()),
            "weights_sha256": ctx.source.weights_sha256}


def detail(run: RunDir) -> dict[str, Any]:
    """The classes of a class atlas's collect (for ``atlas status``), else nothing."""
    info = CollectOutput.open(run).class_atlas
    return {"classes": info.names} if info else {}


class SelectStage(StageBase[SelectContext]):
    """collect of a class atlas: the parent run's rows that support its classes -> ``RUN/collect``.

    Same name, output and contract as :class:`atlas.stages.collect.CollectStage`, without the
    network: no GPU, and far less time per task."""

    name = NAME
    inputs = ()
    execution = "shards"
    wants_gpu = False
    on_change = "refuse"
    lease_window = 32  # chunks leased (and copied) at a time
    resources = Resources(tasks=4, time="01:00:00", cpus=4, mem="16G", gpus=0)

    def settings(self, cfg: Config) -> dict[str, Any]:
        return settings(cfg)

    def open(self, job: Job) -> SelectContext:
        return open_context(job)

    def create(self, ctx: SelectContext) -> None:
        create(ctx)

    def units(self, ctx: SelectContext) -> list[str]:
        return units(ctx)

    def run_units(self, ctx: SelectContext, names: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        return run_units(ctx, names)

    def finish(self, ctx: SelectContext) -> dict[str, Any]:
        return finish(ctx)

    def provenance(self, ctx: SelectContext) -> dict[str, Any]:
        return provenance(ctx)

    def detail(self, run: RunDir) -> dict[str, Any]:
        """Rows, ok and bad counts, model and layer, and the class atlas's classes."""
        col = CollectOutput.open(run)
        st = col.status_all()
        return {"images": col.n_images, "ok": int((st == 1).sum()), "bad": int((st >= 2).sum()),
                "model": col.model, "layer": col.layer, **detail(run)}


STAGE = SelectStage()
