"""The images ``atlas locate`` is asked for: arguments expanded into image locations, and unit names.

An argument is a file (any name: a file that does not decode is skipped and recorded), a folder
(every image in it, recursively, in path order; hidden files skipped), ``demo://<size>/<i>`` or a
``tar://`` location. A unit's name is a slug of the file name and 8 hex digits of the SHA-256 of
the file's bytes (of the location for demo images), so the same picture under two names, or two
pictures under one name, never share a unit; the set of units is the stage's scope, which may
grow between runs without redoing the units already done.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..._cache import cached

__all__ = ["ImageRef", "expand_images", "image_refs", "absolute_arguments"]

_SLUG = re.compile(r"[^a-z0-9]+")
_SLUG_MAX = 40
_REFS_KIND = "locate.images"  # the last image_refs answer in this process, keyed by its files' stats


@dataclass(frozen=True)
class ImageRef:
    """One image to locate: its unit name, where it is read from and a name to show."""

    unit: str
    location: str
    name: str


def _is_location(arg: str) -> bool:
    return arg.startswith(("demo://", "tar://"))


def absolute_arguments(args: list[str]) -> list[str]:
    """Command-line arguments as the config records them: paths made absolute (``~`` expanded),
    ``demo://`` and ``tar://`` locations as given."""
    return [a if _is_location(a) else str(Path(a).expanduser().resolve()) for a in args]


def _folder_images(folder: str) -> list[str]:
    from ...sources._folder import walk_images

    return [os.path.join(folder, *rel) for rel in sorted(walk_images(folder))]


def expand_images(args: list[str]) -> list[str]:
    """Image locations of ``args`` (folders expanded), duplicates dropped, in order.

    FileNotFoundError (one line, naming the argument) for a path that does not exist or a folder
    without images."""
    out: list[str] = []
    for arg in args:
        if _is_location(arg):
            out.append(arg)
            continue
        path = Path(arg).expanduser()
        if path.is_dir():
            found = _folder_images(str(path))
            if not found:
                raise FileNotFoundError(f"the folder {arg} holds no images to locate (jpg, png, webp, ...): pass image "
                                        "files, folders of images, or demo://<size>/<i>")
            out += found
        elif path.exists():
            out.append(str(path))
        else:
            raise FileNotFoundError(f"no such image or folder: {arg}; pass image files, folders of images, "
                                    "or demo://<size>/<i> to `atlas locate`")
    return list(dict.fromkeys(out))


def _content_hash(location: str) -> str:
    """8 hex digits of the SHA-256 of the file's bytes (of the location itself for demo and tar
    locations, and for a file that cannot be read: decoding it then records why)."""
    if _is_location(location):
        return hashlib.sha256(location.encode()).hexdigest()[:8]
    try:
        h = hashlib.sha256()
        with open(location, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:8]
    except OSError:
        return hashlib.sha256(location.encode()).hexdigest()[:8]


def _stat_key(location: str) -> tuple[str, int, int]:
    """What a location's unit name depends on: the location, and a file's size and mtime."""
    if _is_location(location):
        return location, -1, -1
    try:
        st = os.stat(location)
    except OSError:
        return location, -1, -1
    return location, st.st_size, st.st_mtime_ns


def _display_name(location: str) -> str:
    if location.startswith("demo://"):
        return "demo " + location[len("demo://"):]
    return location.rsplit("#", 1)[-1].rsplit(":", 1)[-1] if location.startswith("tar://") else os.path.basename(location)


def _slug(name: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
    return _SLUG.sub("-", stem.lower()).strip("-")[:_SLUG_MAX].strip("-") or "image"


def image_refs(args: list[str]) -> list[ImageRef]:
    """The images of ``args``, one per unit, sorted by unit name (the same for any argument order).
    The files are hashed once per process while none of them changes (the runner asks several times)."""
    locations = expand_images(args)
    return cached(_REFS_KIND, tuple(_stat_key(loc) for loc in locations), lambda: _image_refs(locations))


def _image_refs(locations: list[str]) -> list[ImageRef]:
    refs: dict[str, ImageRef] = {}
    for loc in locations:
        name = _display_name(loc)
        unit = f"{_slug(name)}-{_content_hash(loc)}"
        refs.setdefault(unit, ImageRef(unit, loc, name))
    return [refs[u] for u in sorted(refs)]
