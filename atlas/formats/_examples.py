"""The dataset-example crop: one collect row's image as the network saw it, cut around its sampled
layer position. The render stage (icons started from examples), the tile stage (the viewer's
example crops), the patch test (``example:`` patches) and :class:`atlas.explore.AtlasRun` all cut
it here, so they decode with the same limits (the run's ``images.max_pixels`` / ``images.min_side``,
as collect decoded it) and report an unreadable image the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .._cache import cached

if TYPE_CHECKING:
    from ..sources import Manifest

__all__ = ["DecodeLimits", "ExampleCrop", "example_crop", "run_manifest"]

_MANIFEST_FILES = ("manifest.json", "manifest.tsv")


class DecodeLimits(Protocol):
    """How an image is decoded: the run's ``images`` config section (:class:`atlas.config.ImagesConfig`)."""

    @property
    def max_pixels(self) -> int: ...

    @property
    def min_side(self) -> int: ...


@dataclass(frozen=True)
class ExampleCrop:
    """One example crop. ``box``: (top, left, bottom, right) in the ``input_size`` square image;
    ``pixels``: uint8 [bottom - top, right - left, 3], None when the image could not be read again
    (``reason`` says why)."""

    row: int
    box: tuple[int, int, int, int]
    pixels: np.ndarray | None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the image was read (``pixels`` holds the crop)."""
        return self.pixels is not None


def _file_identity(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of the manifest's files: a rescanned manifest is another key."""
    out = []
    for name in _MANIFEST_FILES:
        try:
            st = (root / name).stat()
            out.append((name, st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append((name, -1, -1))
    return tuple(out)


def run_manifest(run_root: str | Path) -> Manifest:
    """The run's image manifest (``RUN/manifest.tsv|json``), read once per process: cached under the
    run directory and the files' identity (:func:`atlas._cache.cached`); a one-line SourceError
    when the run has none."""
    from ..sources import read_manifest

    root = Path(run_root).resolve()
    return cached("manifest", (str(root), _file_identity(root)), lambda: read_manifest(root))


def example_crop(manifest: Manifest, row: int, position: tuple[int, int], layer_grid: tuple[int, int],
                 input_size: int, window: float, images: DecodeLimits) -> ExampleCrop:
    """The crop of collect row ``row``: its image (``manifest.locations[row]``) decoded as collect
    decoded it (``input_size`` square, the limits of ``images``), cut to ``window`` layer cells around
    layer position ``position`` = (y, x) of the layer's ``layer_grid`` = (H, W) (:func:`atlas.ops.canvas.crop_box`).
    An image that cannot be read (gone, changed, a row past the manifest) gives ``pixels=None`` and
    its reason; never raises for a bad image."""
    from ..ops.canvas import crop_box
    from ..sources import BadInput, load_image

    y, x = (int(v) for v in position)
    box = crop_box(y, x, int(layer_grid[0]), int(layer_grid[1]), int(input_size), float(window))
    if not 0 <= row < len(manifest.locations):
        return ExampleCrop(int(row), box, None, f"row {row} is not in the run's manifest ({len(manifest)} images)")
    try:
        img = load_image(manifest.locations[row], size=int(input_size), max_pixels=images.max_pixels,
                         min_side=images.min_side)
    except BadInput as e:
        return ExampleCrop(int(row), box, None, e.reason)
    top, left, bottom, right = box
    return ExampleCrop(int(row), box, np.ascontiguousarray(img[top:bottom, left:right]))
