"""The index of a run's atlases: ``RUN/atlases.json`` and its ``.js`` twin (``window.ATLAS_INDEX``).

It lists the main atlas (``RUN/tiles``), every class atlas (``RUN/classes/<slug>/tiles``) and
every view of a comparison (``RUN/compare/<name>/layout-a|b/tiles``, ``atlas compare``; with its
change figures) that is finished on disk (its ``index.html`` and ``atlas.json`` are there), read from what is
on disk, so one function keeps it right whatever ran, was killed or was deleted:
:func:`write_index`. The tile stage calls it when it creates and finishes its outputs (in a
class atlas, on the parent run) and when a finished tile stage is run again; ``atlas
class-atlas`` calls it at the end, and ``atlas locate`` when it finishes (the index also counts
the located images, so a viewer asks for ``RUN/locate/index.js`` only when there is one; ``atlas
units`` when it finishes: each atlas's entry counts its units, so its viewer asks for ``../units/index.js``
only when there are some). Each viewer loads it through the relative path its
``atlas.json`` names (``../atlases.js``; ``../../../atlases.js`` in a class atlas) to show
the atlas switcher.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..formats import CHANGES, COMPARE, VIEWS, LocateOutput, read_pair, units_finished
from ..store import RunDir, atomic_write_text

__all__ = ["INDEX", "CLASSES", "atlas_entry", "list_atlases", "compare_entries", "write_index", "index_root"]

INDEX = "atlases"
CLASSES = "classes"  # RUN/classes/<slug>: one class atlas each


def index_root(run_root: str | Path, parent: str | None) -> Path:
    """The run whose index lists this run's atlas: the parent of a class atlas, the run holding a
    comparison's view (``RUN/compare/<name>/<view>``, its folder holding ``pair.json``), else the run itself."""
    if parent is not None:
        return Path(parent)
    root = Path(run_root)
    holder = root.resolve().parent
    if holder.parent.name == COMPARE and read_pair(holder) is not None:
        return holder.parent.parent
    return root


def atlas_entry(tiles: Path, root: Path) -> dict[str, Any] | None:
    """The index entry of the viewer folder ``tiles`` (None unless finished): slug (None for the main
    atlas), title, classes, path relative to ``root``, rows, cells per grid."""
    try:
        if not (tiles / "index.html").is_file():
            return None
        doc = json.loads((tiles / "atlas.json").read_text())
    except (OSError, ValueError):
        return None
    ca = doc.get("class_atlas") or {}
    names = list(ca.get("names") or [])
    return {"slug": ca.get("slug"), "title": " vs ".join(names) if names else "whole atlas", "classes": names,
            "path": tiles.relative_to(root).as_posix() + "/", "rows": doc.get("n_images"),
            "cells": doc.get("cell_counts"), "sizes": doc.get("sizes"),
            "units": units_finished(tiles.parent)}  # `atlas units` done: its viewer loads ../units/index.js


def list_atlases(root: str | Path) -> list[dict[str, Any]]:
    """The finished atlases of the run ``root``: the main one first, then the class atlases by slug."""
    root = Path(root)
    found = [atlas_entry(root / "tiles", root)]
    classes = root / CLASSES
    if classes.is_dir():
        found += [atlas_entry(d / "tiles", root) for d in sorted(classes.iterdir()) if d.is_dir()]
    return [e for e in found if e is not None] + compare_entries(root)


def compare_entries(root: Path) -> list[dict[str, Any]]:
    """The finished views of the run's comparisons (``RUN/compare/<name>/<view>``: tiles and change
    figures done), by name then view: ``kind: compare``, the view's path and its ``changes`` folder."""
    out: list[dict[str, Any]] = []
    folder = root / COMPARE
    for d in sorted(folder.iterdir()) if folder.is_dir() else []:
        pair = read_pair(d)
        if pair is None:
            continue
        names = [str((pair.get(k) or {}).get("name") or k) for k in ("a", "b")]
        for view, (lay, other) in zip(VIEWS, (names, names[::-1])):
            entry = atlas_entry(d / view / "tiles", root)
            if entry is None or not (d / view / CHANGES / "summary.js").is_file():
                continue
            entry.update({"slug": f"{COMPARE}/{d.name}/{view}", "kind": "compare", "classes": [],
                          "title": f"{names[0]} vs {names[1]}, on {lay}'s layout ({other}'s icons)",
                          "changes": f"{COMPARE}/{d.name}/{view}/{CHANGES}/", "compare": {"a": names[0], "b": names[1],
                                                                                           "layout": view[-1]}})
            out.append(entry)
    return out


def _located(root: Path) -> int:
    """How many images ``atlas locate`` placed on the main atlas (its ``RUN/locate/index.json``)."""
    return LocateOutput(root).n_located()


def write_index(root: str | Path | RunDir) -> dict[str, Any]:
    """Rewrite ``ROOT/atlases.json`` and ``ROOT/atlases.js`` from what is finished on disk (under a
    lock, taken as ``root``'s RunDir locks: a path means flock; nothing is written when they are
    already right); returns the index."""
    run = root if isinstance(root, RunDir) else RunDir(root)
    if not run.root.is_dir():
        return {"format": 1, "atlases": []}
    with run.stage_lock(INDEX):
        doc = {"format": 1, "atlases": list_atlases(run.root), "located": _located(run.root)}
        files = {run.root / f"{INDEX}.json": json.dumps(doc, indent=1, sort_keys=True),
                 run.root / f"{INDEX}.js": f"window.ATLAS_INDEX = {json.dumps(doc, sort_keys=True)};\n"}
        for path, text in files.items():
            if not path.is_file() or path.read_text() != text:
                atomic_write_text(path, text)
    return doc
