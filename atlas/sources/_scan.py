"""``scan_source``: from an ``images`` config section to a manifest in fixed global order.

``images.kind=auto`` is resolved from ``images.path``: ``demo`` -> demo; a ``save_to_disk``
folder, a ``.parquet``/``.arrow`` file, or a folder holding such files and no images -> hf; a
``.tar`` file, a glob matching ``.tar`` files, or a folder holding ``.tar`` files and no images
-> tar; a ``.txt``/``.csv`` file -> list; any other folder -> folder. A hub dataset name needs
``images.kind=hf``.
"""

from __future__ import annotations

import glob
import os

from ..config import ImagesConfig
from ._demo import scan_demo
from ._errors import SourceError
from ._folder import scan_folder, walk_images
from ._hf import DATA_SUFFIXES, has_data_files, is_dataset_folder, looks_like_hub_name, scan_hf
from ._list import scan_list
from ._manifest import Manifest
from ._tar import scan_tars

__all__ = ["scan_source", "detect_kind", "check_source"]

_KINDS = ("demo", "folder", "list", "tar", "hf")
_FIX = ("set images.path to a folder of images, a .txt/.csv list, tar shards (a .tar, a folder or glob of them), a "
        "Hugging Face dataset (a save_to_disk folder, parquet or arrow files; a hub name with images.kind=hf), or `demo`")


def _has_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _glob_tars(raw: str) -> list[str]:
    matches = sorted(os.path.abspath(p) for p in glob.glob(os.path.expanduser(raw)))
    return [p for p in matches if p.endswith(".tar") and os.path.isfile(p)]


def _folder_tars(folder: str) -> list[str]:
    with os.scandir(folder) as it:
        names = [e.name for e in it if e.name.endswith(".tar") and not e.name.startswith(".") and e.is_file()]
    return [os.path.join(folder, n) for n in sorted(names)]


def _kind_of_file(raw: str, path: str) -> str:
    low = path.lower()
    if low.endswith(".tar"):
        return "tar"
    if low.endswith((".txt", ".csv")):
        return "list"
    if low.endswith(DATA_SUFFIXES):
        return "hf"
    raise SourceError(f"images.path {raw} is a file but not a .txt/.csv list, a .tar shard or a .parquet/.arrow file; {_FIX}")


def detect_kind(raw: str) -> str:
    """The source kind ``images.kind=auto`` picks for ``images.path`` = ``raw``."""
    if raw == "demo":
        return "demo"
    path = os.path.abspath(os.path.expanduser(raw))
    if os.path.isfile(path):
        return _kind_of_file(raw, path)
    if os.path.isdir(path):
        if is_dataset_folder(path):
            return "hf"
        has_images = next(walk_images(path), None) is not None
        if not has_images and _folder_tars(path):
            return "tar"
        return "hf" if not has_images and has_data_files(path) else "folder"
    if _has_glob(raw):
        if _glob_tars(raw):
            return "tar"
        raise SourceError(f"images.path {raw} is a glob that matches no .tar files; {_FIX}")
    raise SourceError(f"images.path {raw} does not exist; {_FIX}")


def check_source(images: ImagesConfig) -> None:
    """A one-line SourceError when ``images.path`` cannot be the source ``images.kind`` names
    (cheap: nothing is scanned beyond the first image of a folder)."""
    kind, raw = images.kind, images.path
    if kind == "auto":
        detect_kind(raw)
    elif kind == "tar":
        _shards(raw)
    elif kind in ("folder", "list"):
        _existing(raw, kind, want_dir=kind == "folder")
    elif kind == "hf" and not os.path.exists(os.path.abspath(os.path.expanduser(raw))) and not looks_like_hub_name(raw):
        raise SourceError(f"images.path {raw} is neither a local Hugging Face dataset nor a hub name (owner/name); {_FIX}")


def _shards(raw: str) -> list[str]:
    path = os.path.abspath(os.path.expanduser(raw))
    if os.path.isdir(path):
        shards = _folder_tars(path)
    elif os.path.isfile(path):
        shards = [path]
    else:
        shards = _glob_tars(raw) if _has_glob(raw) else []
    if not shards:
        raise SourceError(f"images.kind=tar but images.path {raw} names no .tar shards; set images.path to a "
                          ".tar file, a folder of .tar files, or a glob such as /data/shards/*.tar")
    return shards


def _existing(raw: str, kind: str, want_dir: bool) -> str:
    path = os.path.abspath(os.path.expanduser(raw))
    if not os.path.exists(path):
        raise SourceError(f"images.path {raw} does not exist; {_FIX}")
    if os.path.isdir(path) != want_dir:
        what = "a folder" if want_dir else "a .txt/.csv file"
        raise SourceError(f"images.kind={kind} needs images.path to be {what}, but {raw} is not; "
                          f"fix images.path, or set images.kind=auto")
    return path


def _scan(kind: str, images: ImagesConfig) -> Manifest:
    raw = images.path
    if kind == "demo":
        count = images.demo_count if images.limit is None else min(images.demo_count, images.limit)
        return scan_demo(count, images.demo_size, raw, labels=images.labels != "none")
    if kind == "folder":
        return scan_folder(_existing(raw, kind, want_dir=True), raw, images.labels)
    if kind == "list":
        return scan_list(_existing(raw, kind, want_dir=False), raw, images.labels)
    if kind == "hf":
        return scan_hf(raw, images.split, images.image_column, images.label_column, images.labels,
                       images.limit if images.subset == "first" else None)
    return scan_tars(_shards(raw), raw, images.labels, images.limit if images.subset == "first" else None)


def scan_source(images: ImagesConfig) -> Manifest:
    """Scan the configured image source; ``images.limit`` of its images (the first, or a seeded random subset)."""
    kind: str = images.kind
    if kind not in (*_KINDS, "auto"):
        raise SourceError(f"images.kind {kind!r} is unknown; use auto, {', '.join(_KINDS)}")
    if kind == "auto":
        kind = detect_kind(images.path)
    manifest = _scan(kind, images)
    if images.subset == "random":
        return manifest.sample(images.limit)
    return manifest.head(images.limit)
