"""Folders of images: a recursive walk in a fixed order, labels from first-level sub-folders.

The order is the files' paths relative to the root, compared component by component
(code-point order), so it never depends on the order the filesystem lists entries.
Hidden files and folders (names starting with ``.``) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from ._errors import SourceError
from ._manifest import Manifest

__all__ = ["IMAGE_EXTENSIONS", "is_image_name", "walk_images", "scan_folder"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with an image extension (case-insensitive)."""
    return name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS and "." in name


def walk_images(root: str) -> Iterator[tuple[str, ...]]:
    """Relative paths (as tuples of components) of the image files under ``root``, unordered.

    Symlinked folders are followed, each real folder at most once (no loops)."""
    stack: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    seen: set[tuple[int, int]] = set()
    while stack:
        folder, rel = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable sub-folder: its images cannot be listed
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                stack.append((entry.path, (*rel, entry.name)))
            elif is_image_name(entry.name):
                yield (*rel, entry.name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _labels(rels: list[tuple[str, ...]], mode: str) -> tuple[np.ndarray, list[str]]:
    names = sorted({r[0] for r in rels if len(r) > 1})
    if mode == "none" or (mode == "auto" and not names):
        return np.full(len(rels), -1, np.int32), []
    ids = {n: i for i, n in enumerate(names)}
    return np.array([ids[r[0]] if len(r) > 1 else -1 for r in rels], dtype=np.int32), names


def scan_folder(root: str, source: str, labels: str) -> Manifest:
    """Manifest of every image under ``root`` (absolute), sorted by relative path."""
    rels = sorted(walk_images(root))
    if not rels:
        raise SourceError(f"images.path {source} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                          "put images in it (sub-folders become labels), or set images.path to a "
                          ".txt/.csv list, tar shards, or `demo`")
    lab, names = _labels(rels, labels)
    return Manifest("folder", source, [os.path.join(root, *r) for r in rels], lab, names)
