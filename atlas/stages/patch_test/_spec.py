"""One patch test as the config asks for it: its classes, its patch, its folder name and its key.

``resolve(cfg, run)`` reads only what the test needs from the run directory (collect's class
names and input size; the render's icons or the grid's examples for a ``cell:`` or
``example:`` patch) and checks every part, so a bad class name or patch spec is a one-line
error before any work. The *key* hashes everything that decides the test's unit data (the
two classes, the patch's pixels, the held-out images, sizes, positions, seed, model): unit
names carry it, so a test whose settings changed is redone and never mixed with the old one.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...config import Config
from ...formats import CollectOutput, GridOutput, RenderOutput, example_crop, run_manifest
from ...ops.classes import ClassNameError, class_slug, match_class
from ...store import RunDir, StoreError, fingerprint

__all__ = ["FORMAT", "NAME", "PatchTestSpec", "resolve", "parse_patch", "PatchSpecError"]

NAME = "patch-test"
FORMAT = 1  # of the unit data and results; part of every key
_CELL = re.compile(r"(cell|example):(\d+):(\d+),(\d+)(?::(\d+))?")
_FORMS = ("cell:<grid>:<row>,<col> (that cell's icon), example:<grid>:<row>,<col>[:k] (its k-th dataset example) "
          "or the path of an image file")


class PatchSpecError(ValueError):
    """A patch spec that names no usable patch: the message says why and what would work."""


@dataclass(frozen=True)
class PatchTestSpec:
    """A resolved patch test. ``patch``: uint8 [h, w, 3] as pasted (before resizing);
    ``settings``: what decides its unit data (hashed into ``key``); ``about``: the same, readable."""

    slug: str
    key: str
    a: int
    b: int
    class_names: list[str]
    patch: np.ndarray
    patch_what: str
    input_size: int
    settings: dict[str, Any]
    about: dict[str, Any] = field(default_factory=dict)

    @property
    def unit_prefix(self) -> str:
        """Every unit of this test is named ``<slug>.<key[:8]>.<part>``."""
        return f"{self.slug}.{self.key[:8]}."

    @property
    def name_a(self) -> str:
        return self.class_names[self.a]

    @property
    def name_b(self) -> str:
        return self.class_names[self.b]

    def scope(self, cfg: Config) -> dict[str, Any]:
        """The stage's scope for this test (JSON types: it is compared with the ``final`` marker's)."""
        return {"test": self.slug, "key": self.key, "examples": cfg.patch_test.examples}


def parse_patch(spec: str) -> tuple[str, int, int, int, int] | None:
    """``(kind, grid, row, col, k)`` of a ``cell:`` / ``example:`` spec (k = 0 for cells), or None for a path."""
    if not re.match(r"(cell|example):", spec):
        return None
    m = _CELL.fullmatch(spec)
    if not m or (m.group(1) == "cell" and m.group(5) is not None):
        raise PatchSpecError(f"patch {spec!r} is not a patch spec: give {_FORMS}")
    return m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5) or 0)


# --------------------------------------------------------------------------- the run's stages


def _need(run: RunDir, stage: str, why: str) -> dict[str, Any]:
    """The ``final`` marker of ``stage``, which the patch needs finished and not stale."""
    from .. import get_stage
    from .._runner import final_info, is_stale

    info = final_info(run, stage)
    cmd = f"`atlas {stage} {run.root / 'config.yaml'}`"
    if info is None:
        raise StoreError(f"{why} needs a finished `{stage}` in {run.root}: run {cmd} first (or use an image file as the patch)")
    if is_stale(run, get_stage(stage)):
        raise StoreError(f"{why} needs `{stage}`, which is stale in {run.root} (a stage before it was redone): run {cmd} first")
    return info


def _near(cells: np.ndarray, r: int, c: int, limit: int = 4) -> list[tuple[int, int]]:
    """Up to ``limit`` of ``cells`` [n, 2] nearest (r, c), nearest first (ties: row-major)."""
    if len(cells) == 0:
        return []
    d = (cells[:, 0].astype(np.int64) - r) ** 2 + (cells[:, 1].astype(np.int64) - c) ** 2
    order = np.lexsort((cells[:, 1], cells[:, 0], d))[:limit]
    return [(int(cells[i, 0]), int(cells[i, 1])) for i in order]


def _check_cell(kind: str, g: int, r: int, c: int, sizes: list[int], what: str) -> None:
    if g not in sizes:
        raise PatchSpecError(f"patch {kind}:{g}:{r},{c}: {g} is not a {what}grid of this atlas; its {what}grids are "
                             f"{', '.join(map(str, sizes)) or 'none'}")
    if not (0 <= r < g and 0 <= c < g):
        raise PatchSpecError(f"patch {kind}:{g}:{r},{c}: cell ({r}, {c}) is outside the {g} x {g} grid "
                             f"(rows and columns 0 to {g - 1})")


def _cell_icon(run: RunDir, spec: str, g: int, r: int, c: int) -> np.ndarray:
    final = _need(run, "render", f"patch {spec}")
    render = RenderOutput.open(run)
    sizes = render.sizes
    scope = final.get("scope")
    if isinstance(scope, list):
        sizes = [s for s in sizes if s in scope]
    _check_cell("cell", g, r, c, sizes, "rendered ")
    level = render.level(g)
    cells = np.asarray(level.cells[...])
    hit = np.flatnonzero((cells[:, 0] == r) & (cells[:, 1] == c)) if len(cells) else np.zeros(0, np.int64)
    if hit.size == 0:
        near = ", ".join(f"cell:{g}:{rr},{cc}" for rr, cc in _near(cells, r, c))
        raise PatchSpecError(f"patch {spec}: cell ({r}, {c}) of the {g} x {g} grid has no icon (too few points to be "
                             f"rendered); cells near it with icons: {near or 'none'}")
    return np.asarray(level.icons[int(hit[0])])


def _example_crop(cfg: Config, run: RunDir, spec: str, g: int, r: int, c: int, k: int) -> np.ndarray:
    _need(run, "grid", f"patch {spec}")
    grid, col = GridOutput.open(run), CollectOutput.open(run)
    _check_cell("example", g, r, c, grid.sizes, "")
    level = grid.level(g)
    stored, stored_pos = level.examples, level.example_positions
    if stored is None or stored_pos is None:
        raise PatchSpecError(f"patch {spec}: the grid stored no dataset examples (grid.examples = 0): "
                             "rerun `atlas grid` with examples or use cell:<grid>:<row>,<col>")
    examples = np.asarray(stored[...])
    rows = [int(x) for x in examples[r, c] if x >= 0]
    if not rows:
        have = np.argwhere((examples >= 0).any(axis=2))
        near = ", ".join(f"example:{g}:{rr},{cc}" for rr, cc in _near(have, r, c))
        raise PatchSpecError(f"patch {spec}: cell ({r}, {c}) of the {g} x {g} grid has no dataset examples (it is empty); "
                             f"cells near it with examples: {near or 'none'}")
    if k >= len(rows):
        raise PatchSpecError(f"patch {spec}: cell ({r}, {c}) of the {g} x {g} grid has {len(rows)} dataset examples: "
                             f"k is 0 to {len(rows) - 1}")
    y, x = (int(v) for v in np.asarray(stored_pos[r, c, k]))
    manifest = run_manifest(run.root)
    crop = example_crop(manifest, rows[k], (y, x), col.layer_grid, col.input_size, cfg.tile.example_window, cfg.images)
    if crop.pixels is None:
        location = manifest.locations[rows[k]] if rows[k] < len(manifest) else f"row {rows[k]}"
        raise PatchSpecError(f"patch {spec}: its image {location} cannot be read again ({crop.reason})")
    return crop.pixels


def _file_patch(cfg: Config, spec: str, size: int) -> np.ndarray:
    from ...sources import BadInput, load_image

    path = Path(spec).expanduser()
    if not path.is_file():
        why = "is a folder" if path.is_dir() else "does not exist"
        raise PatchSpecError(f"patch {spec!r} {why}: give {_FORMS}")
    try:  # the centred square at the network's input side: a patch is never pasted larger
        return load_image(str(path), size=size, max_pixels=cfg.images.max_pixels, min_side=1)
    except BadInput as e:
        raise PatchSpecError(f"patch file {spec} cannot be used: {e.reason}") from None


def _patch(cfg: Config, run: RunDir, spec: str, size: int) -> tuple[np.ndarray, str, str]:
    """(pixels, what it is, its part of the folder name)."""
    parsed = parse_patch(spec)
    if parsed is None:
        stem = re.sub(r"[^a-z0-9]+", "-", Path(spec).stem.lower()).strip("-") or "file"
        return _file_patch(cfg, spec, size), f"the image file {spec}", stem
    kind, g, r, c, k = parsed
    if kind == "cell":
        return _cell_icon(run, spec, g, r, c), f"the icon of cell ({r}, {c}) of the {g} x {g} grid", f"cell-{g}-{r}-{c}"
    return (_example_crop(cfg, run, spec, g, r, c, k), f"dataset example {k} of cell ({r}, {c}) of the {g} x {g} grid",
            f"example-{g}-{r}-{c}-{k}")


# --------------------------------------------------------------------------- the test


def _class(names: list[str], query: str | None, flag: str, key: str) -> int:
    if query is None:
        raise ValueError(f"patch-test needs {flag} CLASS (config key patch_test.{key})")
    try:
        return match_class(query, names)
    except ClassNameError as e:
        raise ClassNameError(f"{flag} {query}: {e}") from None


def images_source(cfg: Config) -> dict[str, Any]:
    """The held-out images as the key records them: demo images after the run's, or a path."""
    src = cfg.patch_test.images
    if src is None or src == "demo":
        return {"demo_from": cfg.images.demo_count, "demo_size": cfg.images.demo_size}
    return {"path": os.path.abspath(os.path.expanduser(src))}


def resolve(cfg: Config, run: RunDir) -> PatchTestSpec:
    """The patch test ``cfg.patch_test`` asks for, on the run ``run``; one-line errors for missing
    or bad parts (unknown or ambiguous class names, a bad patch spec, a cell without an icon)."""
    pt = cfg.patch_test
    if pt.patch is None:
        raise ValueError(f"patch-test needs --patch PATCH (config key patch_test.patch): {_FORMS}")
    col = CollectOutput.open(run)
    names = col.class_names
    if not names:
        raise ValueError(f"model `{cfg.model.name}` has no classifier (no class names): patch-test needs class logits")
    a = _class(names, pt.from_class, "--from", "from_class")
    b = _class(names, pt.to_class, "--to", "to_class")
    if a == b:
        raise ValueError(f"--from and --to name the same class {names[a]!r}: pass two different classes")
    size = col.input_size
    patch, what, patch_slug = _patch(cfg, run, pt.patch, size)
    digest = hashlib.sha256(patch.tobytes() + str(patch.shape).encode()).hexdigest()
    model = cfg.model.network_settings()
    settings = {"format": FORMAT, "from": a, "to": b, "patch_sha256": digest, "images": images_source(cfg),
                "max_images": pt.max_images, "scan_max": pt.scan_max, "sizes": list(pt.sizes),
                "positions": list(pt.positions), "batch_size": pt.batch_size, "seed": cfg.seed, "model": model,
                "decode": {"max_pixels": cfg.images.max_pixels, "min_side": cfg.images.min_side}}
    slug = pt.name or f"{class_slug(a, names)}--{class_slug(b, names)}--{patch_slug}"[:100].rstrip("-.")
    about = {"from": {"index": a, "name": names[a], "asked": pt.from_class},
             "to": {"index": b, "name": names[b], "asked": pt.to_class},
             "patch": {"spec": pt.patch, "what": what, "sha256": digest, "shape": list(patch.shape)},
             "images": pt.images or "demo", "sizes": list(pt.sizes), "positions": list(pt.positions),
             "max_images": pt.max_images, "scan_max": pt.scan_max, "seed": cfg.seed}
    return PatchTestSpec(slug, fingerprint(settings), a, b, names, patch, what, size, settings, about)
