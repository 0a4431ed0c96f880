"""Webdataset-style tar shards: scanning into samples, and random access to one member.

A sample is the group of members sharing a key (the member name without its final
extension), in tar order. Its image is the first member with an image extension; a
``.cls`` member holds its integer label. The location of a sample records where its
image's bytes lie, so loading is open + seek + read, never a rescan::

    tar://<absolute tar path>#<offset_data>:<size>:<member name>
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass

import numpy as np

from ._errors import STATUS_MISSING, STATUS_UNREADABLE, BadInput, SourceError
from ._folder import IMAGE_EXTENSIONS
from ._manifest import Manifest

__all__ = ["scan_tars", "tar_location", "parse_tar_location", "read_tar_member"]

_LOCATION_RE = re.compile(r"^tar://(.+?)#(\d+):(\d+):(.*)$", re.DOTALL)


@dataclass
class _Sample:
    location: str | None = None
    label: int = -1


def tar_location(tar_path: str, member: tarfile.TarInfo) -> str:
    return f"tar://{tar_path}#{member.offset_data}:{member.size}:{member.name}"


def parse_tar_location(location: str) -> tuple[str, int, int, str]:
    """``tar://path#offset:size:name`` -> (path, offset, size, name); ValueError otherwise."""
    m = _LOCATION_RE.match(location)
    if not m:
        raise ValueError(f"not a tar location: {location!r} (expected tar://<path>#<offset>:<size>:<member>)")
    return m[1], int(m[2]), int(m[3]), m[4]


def read_tar_member(location: str) -> bytes:
    """The bytes of the member a tar location points at; BadInput when they cannot be read."""
    path, offset, size, name = parse_tar_location(location)
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
    except FileNotFoundError:
        raise BadInput(STATUS_MISSING, f"tar shard not found: {path}") from None
    except OSError as e:
        raise BadInput(STATUS_UNREADABLE, f"cannot read tar shard {path}: {e.strerror or e}") from None
    if len(data) != size:
        raise BadInput(STATUS_UNREADABLE, f"tar member {name} is cut short: {len(data)} of {size} bytes in {path}")
    return data


def _split(name: str) -> tuple[str, str]:
    """Member name -> (key, lower-case extension without the dot)."""
    base, ext = os.path.splitext(name)
    return base, ext[1:].lower()


def _read_cls(tf: tarfile.TarFile, member: tarfile.TarInfo) -> int:
    fh = tf.extractfile(member)
    try:
        value = int(fh.read(64).decode("ascii").strip()) if fh is not None else -1
    except (ValueError, UnicodeDecodeError):
        return -1
    return value if value >= 0 else -1


def _folder_label(key: str) -> str | None:
    parent = os.path.dirname(key)
    return os.path.basename(parent) if parent else None


def _scan_shard(path: str, samples: dict[tuple[str, str], _Sample], folders: dict[tuple[str, str], str],
                read_cls: bool) -> None:
    try:
        with tarfile.open(path, mode="r:") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _split(member.name)
                if not ext:
                    continue
                sample = samples.setdefault((path, key), _Sample())
                if ext in IMAGE_EXTENSIONS and sample.location is None:
                    sample.location = tar_location(path, member)
                    if (folder := _folder_label(key)) is not None:
                        folders[(path, key)] = folder
                elif ext == "cls" and read_cls:
                    sample.label = _read_cls(tf, member)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise SourceError(f"cannot read tar shard {path} ({e}); webdataset shards must be plain "
                          "(uncompressed) .tar files: repack it, or remove it from images.path") from None


def _labels_from_cls(samples: list[_Sample]) -> tuple[np.ndarray, list[str]]:
    labels = np.array([s.label for s in samples], dtype=np.int32)
    top = int(labels.max()) if len(labels) else -1
    return labels, [str(i) for i in range(top + 1)]


def _labels_from_folders(keys: list[tuple[str, str]], folders: dict[tuple[str, str], str]) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(folders.values()))
    ids = {n: i for i, n in enumerate(names)}
    return np.array([ids[folders[k]] if k in folders else -1 for k in keys], dtype=np.int32), names


def scan_tars(shards: list[str], source: str, labels: str, limit: int | None = None) -> Manifest:
    """Manifest of the image samples of ``shards`` (absolute paths, in order)."""
    samples: dict[tuple[str, str], _Sample] = {}
    folders: dict[tuple[str, str], str] = {}
    for path in shards:
        _scan_shard(path, samples, folders, read_cls=labels == "auto")
        if limit is not None and sum(s.location is not None for s in samples.values()) >= limit:
            break
    keys = [k for k, s in samples.items() if s.location is not None][:limit]
    kept = [samples[k] for k in keys]
    if not kept:
        raise SourceError(f"images.path {source} holds no image members ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                          "in its tar shards; point images.path at webdataset shards of images")
    if labels == "folders":
        lab, names = _labels_from_folders(keys, folders)
    elif labels == "auto":
        lab, names = _labels_from_cls(kept)
    else:
        lab, names = np.full(len(kept), -1, np.int32), []
    return Manifest("tar", source, [s.location for s in kept if s.location is not None], lab, names)
