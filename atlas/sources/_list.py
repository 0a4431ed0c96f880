"""List files: ``.txt`` (one path per line) or ``.csv`` (path, optional label column).

In both, blank lines and lines starting with ``#`` are skipped. Relative paths are
relative to the list file's folder. A CSV header row is optional: the first row is a
header when its first cell is a usual column name (``path``, ``file``, ``image``, ...),
its second cell is ``label``/``class``/..., or its first cell names neither an image
file nor an existing path. Labels that are all non-negative integers are kept as
they are (label names are their decimal strings); other labels are numbered in the
sorted order of their unique names. Files that do not exist are not errors here:
they are reported as missing when loaded.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from ._errors import SourceError
from ._folder import is_image_name
from ._manifest import Manifest

__all__ = ["scan_list", "label_ids"]

_PATH_HEADERS = frozenset({"path", "file", "filename", "file_name", "filepath", "file_path", "image", "images",
                           "image_path", "img", "location", "name", "url", "src"})
_LABEL_HEADERS = frozenset({"label", "labels", "class", "class_name", "category", "target", "cls", "y"})
_SCHEMES = ("tar://", "demo://")


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"cannot read list file {path} ({e}); images.path must be a readable UTF-8 "
                          ".txt or .csv list of image paths") from None


def _resolve(entry: str, base: str) -> str:
    if entry.startswith(_SCHEMES):
        return entry
    return os.path.normpath(os.path.join(base, os.path.expanduser(entry)))


def _txt_rows(text: str) -> list[tuple[str, str | None]]:
    rows = (line.strip() for line in text.splitlines())
    return [(line, None) for line in rows if line and not line.startswith("#")]


def _is_header(row: list[str], base: str) -> bool:
    first = row[0].strip()
    if first.lower() in _PATH_HEADERS or (len(row) > 1 and row[1].strip().lower() in _LABEL_HEADERS):
        return True
    return not (first.startswith(_SCHEMES) or is_image_name(first) or os.path.exists(_resolve(first, base)))


def _csv_rows(text: str, base: str) -> list[tuple[str, str | None]]:
    rows = [r for r in csv.reader(io.StringIO(text)) if r and r[0].strip() and not r[0].lstrip().startswith("#")]
    if rows and _is_header(rows[0], base):
        rows = rows[1:]
    return [(r[0].strip(), r[1].strip() if len(r) > 1 else None) for r in rows]


def label_ids(values: list[str | None]) -> tuple[np.ndarray, list[str]]:
    """Label strings -> (int32 ids, label names); None or "" -> -1."""
    given = [v for v in values if v]
    if given and all(v.isdigit() and v.isascii() for v in given):
        ids = np.array([int(v) if v else -1 for v in values], dtype=np.int32)
        return ids, [str(i) for i in range(int(ids.max()) + 1)]
    names = sorted(set(given))
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[v] if v else -1 for v in values], dtype=np.int32), names


def _folder_names(locations: list[str]) -> list[str | None]:
    return [os.path.basename(os.path.dirname(loc)) or None for loc in locations]


def scan_list(path: str, source: str, labels: str) -> Manifest:
    """Manifest of the entries of list file ``path`` (absolute), in file order."""
    base = os.path.dirname(path)
    text = _read_text(path)
    rows = _csv_rows(text, base) if path.lower().endswith(".csv") else _txt_rows(text)
    if not rows:
        raise SourceError(f"list file {source} names no images; write one image path per line "
                          "(CSV: path[,label]), relative to the list's folder or absolute")
    locations = [_resolve(entry, base) for entry, _ in rows]
    names: list[str]
    if labels == "none":
        lab, names = np.full(len(rows), -1, np.int32), []
    elif labels == "folders":
        lab, names = label_ids(_folder_names(locations))
    else:
        lab, names = label_ids([value for _, value in rows])
    return Manifest("list", source, locations, lab, names)
