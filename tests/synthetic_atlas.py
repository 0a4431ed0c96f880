"""A synthetic run directory holding exactly what the ``tile`` stage reads (collect, grid,
render, manifest), with known icons, so tile / viewer tests need no network, model or UMAP.

    from tests.synthetic_atlas import make_atlas
    info = make_atlas(tmp_path / "run", sizes=(2, 4), icon=16)

What is written (the documented formats):

``RUN/manifest.tsv|json``  one PNG per row under ``RUN/source/`` (``write_images=False``: none)
``RUN/collect``   attrs (class_names, label_names, layer_shape, input_size, model, layer, n_images,
                  ok_count), ``positions`` [N, 2] int16, ``status`` [N] uint8 (all ok), ``labels`` [N]
                  int32 (with ``n_labels``)
``RUN/grid``      attrs sizes/min_count/class_names/label_names/complete; per size ``level-<s>``:
                  ``count``, ``top_classes``/``top_values`` and ``class_attribution`` (none with
                  ``attribution=False``; no ``class_attribution`` with ``class_attribution=False``),
                  ``label_counts`` (with ``n_labels``), ``examples``, ``example_positions``; marker ``state/grid/done/done``
``RUN/render``    per size ``level-<s>``: ``icons`` [cells, icon_s, icon_s, 3] (cells = non-empty cells
                  in row-major order; ``icon_s = icon_sizes[s]``, else ``icon``), ``cells`` [cells, 2]
                  int32, ``objective``, ``cossim``, ``rank``

Layout: every row lands in one finest cell; the number of rows per finest cell is a blob
field (so large atlases have empty regions) with cell (0, 0) forced empty and the last
cell holding a single row (empty below ``min_count``). Coarser levels hold the union of
their 2 x 2 children. ``class_attribution`` is a smooth field per class (two Gaussian blobs
each, so a class heatmap is graded), raised to at least the ``top_values`` of each cell's
``top_classes``; with ``n_labels``, row i's label depends on its cell's column. Icons are solid :func:`icon_colour` squares (``pattern="solid"``) or
that colour with a smooth texture and a disc (``pattern="texture"``, for benchmarks and
screenshots).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from PIL import Image

from atlas.formats import CollectHeader
from atlas.sources import STATUS_NAMES

__all__ = ["make_atlas", "icon_colour", "icon_image", "class_name", "label_name", "class_field", "LAYER_HW",
           "INPUT_SIZE"]

LAYER_HW = (7, 7)
INPUT_SIZE = 56


def class_name(k: int) -> str:
    return f"class-{k:03d}"


def label_name(k: int) -> str:
    return f"photo-{k}"


def class_field(s: int, n_classes: int, seed: int, block: int = 64) -> np.ndarray:
    """float32 [s, s, n_classes]: each class's smooth attribution field at the cell centres of
    grid s (two seeded Gaussian blobs, minus a floor so each class covers part of the map);
    computed ``block`` classes at a time."""
    rng = np.random.default_rng([seed, 31])
    centres = rng.uniform(0.1, 0.9, (n_classes, 2, 2))
    widths = rng.uniform(0.12, 0.28, (n_classes, 2))
    yy, xx = (np.mgrid[0:s, 0:s] + 0.5) / s
    out = np.empty((s, s, n_classes), np.float32)
    for k0 in range(0, n_classes, block):
        c, w = centres[k0:k0 + block], widths[k0:k0 + block]
        d2 = (yy[..., None, None] - c[None, None, :, :, 0]) ** 2 + (xx[..., None, None] - c[None, None, :, :, 1]) ** 2
        field = np.exp(-d2 / (2 * w[None, None] ** 2)).sum(axis=3)
        out[:, :, k0:k0 + block] = np.clip(2.5 * (field - 0.2), 0, None)
    return out


def icon_colour(s: int, r: int, c: int) -> tuple[int, int, int]:
    """The solid colour of cell (r, c)'s icon at grid size s (never white, neighbours differ)."""
    return (40 + (r * 37 + s * 11) % 170, 40 + (c * 53 + s * 29) % 170, 40 + ((r + c) * 23 + s * 7) % 170)


def icon_image(s: int, r: int, c: int, icon: int, pattern: str = "solid") -> np.ndarray:
    """uint8 [icon, icon, 3] icon of cell (r, c) at size s."""
    base = np.array(icon_colour(s, r, c), np.float32)
    if pattern == "solid":
        return np.broadcast_to(base.astype(np.uint8), (icon, icon, 3)).copy()
    yy, xx = np.mgrid[0:icon, 0:icon].astype(np.float32) / icon
    phase = (r * 0.7 + c * 1.3 + s * 0.1)
    wave = np.sin(2 * np.pi * (xx * (2 + r % 3) + yy * (1 + c % 4)) + phase)[..., None]
    img = base + 45.0 * wave * np.array([1.0, -0.6, 0.4], np.float32)
    disc = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.08
    img[disc] = 255.0 - base
    return np.clip(img, 0, 255).astype(np.uint8)


def _weights(S: int, seed: int) -> np.ndarray:
    """Rows per finest cell: a sum of random Gaussian blobs, rounded; (0, 0) empty, last cell 1."""
    rng = np.random.default_rng([seed, 11])
    yy, xx = (np.mgrid[0:S, 0:S] + 0.5) / S
    field = np.zeros((S, S))
    for _ in range(6):
        cy, cx = rng.uniform(0.15, 0.85, 2)
        sd = rng.uniform(0.12, 0.3)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sd * sd))
    w = np.floor(field / field.max() * 6.0 + rng.uniform(0, 1, (S, S))).astype(np.int64)
    w[0, 0] = 0
    w[S - 1, S - 1] = 1
    if S > 2:
        w[S // 2, S // 2] = max(w[S // 2, S // 2], 3)
    return w


def _per_cell(keys: np.ndarray, values: np.ndarray, n_cells: int, e: int, fill: int) -> np.ndarray:
    """First ``e`` values (in row order) of each cell key -> [n_cells, e], ``fill`` padded."""
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    start = np.searchsorted(k, k, side="left")
    rank = np.arange(k.size) - start
    keep = rank < e
    out = np.full((n_cells, e) + values.shape[1:], fill, dtype=values.dtype)
    out[k[keep], rank[keep]] = v[keep]
    return out


def _put(g: zarr.Group, name: str, data: np.ndarray, fill: Any, chunks: tuple[int, ...] | None = None) -> None:
    chunks = chunks or tuple(min(d, 64) if i < 2 else d for i, d in enumerate(data.shape))
    g.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=fill)
    g[name][...] = data


def _write_images(run_root: Path, n: int, seed: int, size: int) -> list[str]:
    """n small PNGs (a colour gradient + a row-specific tint) under RUN/source/."""
    folder = run_root / "source"
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    locs = []
    for i in range(n):
        tint = np.array([(i * 47) % 256, (i * 91) % 256, (i * 13) % 256], np.float32)
        img = 0.5 * tint + 0.5 * np.stack([xx * 255, yy * 255, (1 - xx) * 255], axis=-1)
        path = folder / f"img-{i:06d}.png"
        Image.fromarray(img.astype(np.uint8)).save(path)
        locs.append(str(path))
    return locs


def make_atlas(run_root: Path, *, sizes: Sequence[int] = (2, 4), icon: int = 16, seed: int = 0,
               min_count: int = 2, n_classes: int = 20, top: int = 5, examples: int = 4,
               pattern: str = "solid", attribution: bool = True, write_images: bool = True,
               image_size: int = 64, icon_chunk: int = 64, icon_sizes: dict[int, int] | None = None,
               class_attribution: bool = True, n_labels: int = 0) -> dict[str, Any]:
    """Write a complete synthetic run (see the module docstring); returns what tests need:
    ``n`` rows, ``sizes``, ``icon``, ``icon_sizes``, per size ``count`` [s, s], ``cells`` [k, 2],
    ``examples``, ``top_classes``, ``class_attribution`` (float16, as stored), and ``labels`` [n]."""
    run_root = Path(run_root)
    run_root.mkdir(parents=True, exist_ok=True)
    sizes = sorted(int(s) for s in sizes)
    S = sizes[-1]
    w = _weights(S, seed)
    fine = np.repeat(np.arange(S * S), w.ravel())
    rng = np.random.default_rng([seed, 23])
    fine = fine[rng.permutation(fine.size)]  # row order unrelated to the layout
    n = int(fine.size)
    lh, lw = LAYER_HW
    positions = np.stack([rng.integers(1, lh - 1, n), rng.integers(1, lw - 1, n)], axis=1).astype(np.int16)

    # manifest
    from atlas.sources import Manifest, write_manifest

    locs = _write_images(run_root, n, seed, image_size) if write_images else [f"missing://{i}" for i in range(n)]
    write_manifest(Manifest("folder", str(run_root / "source"), locs, np.full(n, -1, np.int32), []), run_root)

    # collect
    class_names = [class_name(k) for k in range(n_classes)]
    label_names = [label_name(k) for k in range(n_labels)]
    labels = ((fine % S) * n_labels // S).astype(np.int32) if n_labels else np.full(n, -1, np.int32)
    col = zarr.open_group(str(run_root / "collect"), mode="w", zarr_format=3)
    _put(col, "positions", positions, -1, (max(1, min(n, 4096)), 2))
    _put(col, "status", np.ones(n, np.uint8), 0, (max(1, min(n, 4096)),))
    if n_labels:
        _put(col, "labels", labels, -1, (max(1, min(n, 4096)),))
    header = CollectHeader(model="synthetic-net", layer="blocks.5", layer_shape=(16, lh, lw), input_size=INPUT_SIZE,
                           seed=seed, border=0, n_images=n, chunk_rows=4096, attribution=attribution,
                           top_k=len(class_names) if attribution else 0, class_names=class_names,
                           label_names=label_names, status_codes={str(s): v for s, v in STATUS_NAMES.items()}, weights_sha256=None)
    col.attrs.update({**header.to_attrs(), "ok_count": n})
    icon_of = {s: int((icon_sizes or {}).get(s, icon)) for s in sizes}

    grid = zarr.open_group(str(run_root / "grid"), mode="w", zarr_format=3)
    render = zarr.open_group(str(run_root / "render"), mode="w", zarr_format=3)
    info: dict[str, Any] = {"n": n, "sizes": sizes, "icon": icon_of[S], "icon_sizes": icon_of, "count": {},
                            "cells": {}, "examples": {}, "top_classes": {}, "class_attribution": {},
                            "labels": labels}
    fr, fc = fine // S, fine % S
    for s in sizes:
        f = S // s
        key = (fr // f) * s + (fc // f)
        count = np.bincount(key, minlength=s * s).reshape(s, s).astype(np.int64)
        empty = count < min_count
        ex = _per_cell(key, np.arange(n, dtype=np.int64), s * s, examples, -1).reshape(s, s, examples)
        ex_pos = _per_cell(key, positions, s * s, examples, -1).reshape(s, s, examples, 2)
        ex[empty], ex_pos[empty] = -1, -1
        g = grid.create_group(f"level-{s}")
        _put(g, "count", count, 0)
        if attribution:
            k = np.arange(s * s)[:, None]
            cls = ((k * 7 + np.arange(top)[None, :] * 3 + s) % n_classes).astype(np.int16).reshape(s, s, top)
            val = ((1.0 + (np.arange(s * s) % 3))[:, None] * (1.0 - 0.15 * np.arange(top))[None, :]).astype(np.float32)
            val = val.reshape(s, s, top)
            cls[empty], val[empty] = -1, np.nan
            _put(g, "top_classes", cls, -1)
            _put(g, "top_values", val, np.nan)
            info["top_classes"][s] = cls
            if class_attribution:
                field = class_field(s, n_classes, seed)
                rr, cc, jj = np.nonzero(cls >= 0)
                kk = cls[rr, cc, jj].astype(np.int64)
                field[rr, cc, kk] = np.maximum(field[rr, cc, kk], val[rr, cc, jj])
                field[empty] = np.nan
                ca = field.astype(np.float16)
                _put(g, "class_attribution", ca, 0.0, (min(s, 64), min(s, 64), min(n_classes, 64)))
                info["class_attribution"][s] = ca
        if n_labels:
            lc = np.zeros((s * s, n_labels), np.int32)
            np.add.at(lc, (key, labels), 1)
            _put(g, "label_counts", lc.reshape(s, s, n_labels), 0)
        _put(g, "examples", ex, -1)
        _put(g, "example_positions", ex_pos.astype(np.int16), -1)
        g.attrs.update({"size": s, "empty_cells": int(empty.sum())})

        cells = np.argwhere(~empty).astype(np.int32)  # row-major
        px = icon_of[s]
        icons = np.stack([icon_image(s, int(r), int(c), px, pattern) for r, c in cells]) if len(cells) \
            else np.zeros((0, px, px, 3), np.uint8)
        rl = render.create_group(f"level-{s}")
        rl.create_array("icons", shape=icons.shape, chunks=(max(1, min(icon_chunk, len(cells))), px, px, 3),
                        dtype="uint8", fill_value=0)
        if len(cells):
            rl["icons"][...] = icons
        _put(rl, "cells", cells.reshape(-1, 2), -1, (max(1, len(cells)), 2))
        rng_o = np.random.default_rng([seed, 5, s])
        _put(rl, "objective", rng_o.uniform(1, 10, len(cells)).astype(np.float32), 0, (max(1, len(cells)),))
        _put(rl, "cossim", rng_o.uniform(0.3, 0.9, len(cells)).astype(np.float32), 0, (max(1, len(cells)),))
        _put(rl, "rank", rng_o.integers(1, max(2, len(cells) + 1), len(cells)).astype(np.int32), 0, (max(1, len(cells)),))
        info["count"][s], info["cells"][s], info["examples"][s] = count, cells, ex
    grid.attrs.update({"sizes": sizes, "min_count": min_count, "top_classes": top, "examples": examples,
                       "class_names": class_names, "label_names": label_names, "complete": True})
    render.attrs.update({"levels": sizes, "icon_size": icon_of[S], "icon_sizes": {str(s): v for s, v in icon_of.items()},
                         "complete": True})
    for stage in ("grid", "render"):
        done = run_root / "state" / stage / "done"
        done.mkdir(parents=True, exist_ok=True)
        (done / "done").write_text(json.dumps({"sizes": sizes}))
    return info
