"""Image sources streamed in a fixed global order, and the robust image decoder.

A source (``images`` config section) is scanned once into a :class:`Manifest`: every
image location in a global order that never depends on the filesystem, with labels.
:func:`load_image` turns one location into a ``uint8 [size, size, 3]`` RGB array or
raises :class:`BadInput` with a status code. Kinds:

* ``demo``: seeded crops/flips of photos shipped inside scikit-image (``demo://S/i``),
* ``folder``: a recursive walk sorted by relative path, sub-folders as labels,
* ``list``: a ``.txt`` (one path per line) or ``.csv`` (path, label) file,
* ``tar``: webdataset-style shards (``tar://shard#offset:size:member``, random access),
* ``hf``: Hugging Face datasets (``hf://data-file#column/row``: a ``save_to_disk`` folder, parquet
  or arrow files, a hub name; the ``hf`` extra).
"""

from ._decode import load_image
from ._demo import DEMO_PHOTOS, demo_image, materialize_demo
from ._errors import (
    STATUS_MISSING,
    STATUS_NAMES,
    STATUS_OK,
    STATUS_PENDING,
    STATUS_TOO_LARGE,
    STATUS_TOO_SMALL,
    STATUS_UNREADABLE,
    BadInput,
    SourceError,
)
from ._folder import IMAGE_EXTENSIONS
from ._manifest import Manifest, read_manifest, write_manifest
from ._scan import check_source, detect_kind, scan_source

__all__ = [
    "STATUS_PENDING",
    "STATUS_OK",
    "STATUS_UNREADABLE",
    "STATUS_TOO_SMALL",
    "STATUS_TOO_LARGE",
    "STATUS_MISSING",
    "STATUS_NAMES",
    "BadInput",
    "SourceError",
    "Manifest",
    "scan_source",
    "detect_kind",
    "check_source",
    "write_manifest",
    "read_manifest",
    "load_image",
    "materialize_demo",
    "demo_image",
    "DEMO_PHOTOS",
    "IMAGE_EXTENSIONS",
]
