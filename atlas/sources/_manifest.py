"""The manifest: every image location of a source in its fixed global order, with labels.

On disk (written once per run, before any image is decoded)::

    RUN/manifest.tsv    one line per image: location<TAB>label   (label -1 = none)
    RUN/manifest.json   {"kind", "source", "label_names", "n"}   written last

Backslash, tab, newline and carriage return inside a location are written as the
escapes ``\\\\``, ``\\t``, ``\\n``, ``\\r`` so that every image is exactly one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..store import atomic_write_bytes, atomic_write_text
from ._errors import SourceError

__all__ = ["Manifest", "write_manifest", "read_manifest"]

_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


@dataclass
class Manifest:
    """Image locations of one source in global order; ``labels[i]`` indexes ``label_names``."""

    kind: str
    source: str
    locations: list[str]
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    label_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        if len(self.labels) != len(self.locations):
            raise ValueError(f"manifest has {len(self.locations)} locations but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.locations)

    def head(self, limit: int | None) -> Manifest:
        """The first ``limit`` images (all of them when ``limit`` is None); label names are kept."""
        if limit is None or limit >= len(self):
            return self
        return Manifest(self.kind, self.source, self.locations[:limit], self.labels[:limit], self.label_names)

    def sample(self, limit: int | None, seed: int = 0) -> Manifest:
        """A seeded random ``limit`` of the images, kept in source order (all when ``limit`` is None)."""
        if limit is None or limit >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=limit, replace=False))
        return Manifest(self.kind, self.source, [self.locations[i] for i in idx], self.labels[idx], self.label_names)


def _escape(text: str) -> str:
    if not any(c in text for c in _ESCAPES):
        return text
    return "".join(_ESCAPES.get(c, c) for c in text)


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    return _ESCAPE_RE.sub(lambda m: _UNESCAPES.get(m[1], m[0]), text)


def write_manifest(m: Manifest, run_root: Path) -> None:
    """Write ``RUN/manifest.tsv`` then ``RUN/manifest.json`` (the json marks completeness)."""
    root = Path(run_root)
    lines = [f"{_escape(loc)}\t{int(lab)}\n" for loc, lab in zip(m.locations, m.labels.tolist())]
    # surrogateescape: file names that are not valid UTF-8 survive the round trip
    atomic_write_bytes(root / "manifest.tsv", "".join(lines).encode("utf-8", "surrogateescape"))
    meta = {"kind": m.kind, "source": m.source, "label_names": list(m.label_names), "n": len(m)}
    atomic_write_text(root / "manifest.json", json.dumps(meta, indent=2))


def _parse_line(line: str, number: int, path: Path) -> tuple[str, int]:
    loc, sep, label = line.rpartition("\t")
    try:
        if not sep:
            raise ValueError("no tab")
        return _unescape(loc), int(label)
    except ValueError:
        raise SourceError(f"{path} line {number} is not `location<TAB>label`: {line[:200]!r}; "
                          "delete manifest.tsv and manifest.json in the run directory to rescan the images") from None


def read_manifest(run_root: Path) -> Manifest:
    """Read the manifest written by :func:`write_manifest`."""
    root = Path(run_root)
    meta_path, tsv_path = root / "manifest.json", root / "manifest.tsv"
    if not meta_path.is_file() or not tsv_path.is_file():
        raise SourceError(f"{root} has no complete manifest (manifest.json + manifest.tsv); run `atlas collect` to scan the images")
    meta = json.loads(meta_path.read_text())
    text = tsv_path.read_bytes().decode("utf-8", "surrogateescape")
    rows = [_parse_line(line, k + 1, tsv_path) for k, line in enumerate(text.split("\n")) if line]
    if len(rows) != meta["n"]:
        raise SourceError(f"{tsv_path} has {len(rows)} rows but manifest.json says {meta['n']}; "
                          "delete both files to rescan the images")
    locations = [r[0] for r in rows]
    labels = np.fromiter((r[1] for r in rows), dtype=np.int32, count=len(rows))
    return Manifest(meta["kind"], meta["source"], locations, labels, list(meta["label_names"]))
