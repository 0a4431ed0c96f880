"""Hugging Face datasets: a ``save_to_disk`` folder, a folder of parquet or arrow files, or a hub name.

Scanning (``datasets`` needed, the ``hf`` extra) picks the split's data files in order, the image
column and the label column, and reads only the label column of each file: the rows' images are
never loaded. A ``ClassLabel`` column's names become the run's label names. Each row's location
names its file, column and row within the file, so loading one image reads that file's rows
directly, whatever else is in the folder::

    hf://<absolute data file>#<image column, %-quoted>/<row in the file>

Loading (pyarrow only) keeps one open file per process (:func:`atlas._cache.cached`): an arrow
file memory-mapped (zero copy), a parquet file's row group holding the row (read whole; datasets
writes row groups of at most about 100 MB). The cell holds the encoded image (an
``Image`` feature's ``{bytes, path}``, raw bytes, or a path); it is decoded like a file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from .._cache import cached
from ._errors import STATUS_MISSING, STATUS_UNREADABLE, BadInput, SourceError
from ._list import label_ids
from ._manifest import Manifest

__all__ = ["DATA_SUFFIXES", "is_dataset_folder", "has_data_files", "looks_like_hub_name", "scan_hf",
           "hf_location", "parse_hf_location", "read_hf_image"]

DATA_SUFFIXES = (".parquet", ".arrow")
_LOCATION_RE = re.compile(r"^hf://(.+)#([^#/]*)/(\d+)$", re.DOTALL)
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
_IMAGE_NAMES = ("image", "img")
_LABEL_NAMES = ("label", "labels")
_EXTRA = "pip install 'atlas[hf]' (or pip install datasets)"


# --------------------------------------------------------------------------- detection (no imports)


def is_dataset_folder(path: str) -> bool:
    """A folder written by ``save_to_disk`` (a DatasetDict, or one Dataset)."""
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(path, "state.json")) and os.path.isfile(os.path.join(path, "dataset_info.json")))


def has_data_files(path: str) -> bool:
    """A folder holding parquet or arrow files (hidden folders skipped)."""
    for _, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(f.endswith(DATA_SUFFIXES) and not f.startswith(".") for f in files):
            return True
    return False


def looks_like_hub_name(raw: str) -> bool:
    """``name`` or ``owner/name``, as the hub spells datasets."""
    return _HUB_NAME.fullmatch(raw) is not None


# --------------------------------------------------------------------------- imports


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise SourceError(f"images.kind=hf needs the `datasets` package, which is not installed: {_EXTRA}") from None
    return datasets


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise SourceError(f"reading a Hugging Face dataset's images needs pyarrow, which is not installed: "
                          f"{_EXTRA}") from None
    return pyarrow, pyarrow.parquet


# --------------------------------------------------------------------------- splits and files


def _state_files(folder: str) -> list[str]:
    """The arrow files of one ``save_to_disk`` Dataset, in its order (``state.json``)."""
    try:
        state = json.loads(Path(folder, "state.json").read_text())
        return [os.path.join(folder, f["filename"]) for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{folder}/state.json is not a save_to_disk state ({e}); save the dataset again "
                          "with save_to_disk") from None


def _saved_splits(path: str) -> dict[str, list[str]]:
    dict_file = os.path.join(path, "dataset_dict.json")
    if os.path.isfile(dict_file):
        try:
            names = [str(s) for s in json.loads(Path(dict_file).read_text())["splits"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SourceError(f"{dict_file} does not list the splits ({e}); save the dataset again with "
                              "save_to_disk") from None
        return {s: _state_files(os.path.join(path, s)) for s in names}
    split = json.loads(Path(path, "state.json").read_text()).get("_split") or "train"
    return {str(split): _state_files(path)}


def _file_splits(path: str) -> dict[str, list[str]]:
    """The parquet and arrow files of a folder by split, named as the hub names them
    (``data/train-00000-of-00004.parquet``, ``validation/0000.parquet``, ...; else all are ``train``)."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(path)
        files = DataFilesDict.from_patterns(patterns, base_path=path, allowed_extensions=list(DATA_SUFFIXES))
    except Exception as e:  # EmptyDatasetError, FileNotFoundError for a split without such files, ...
        raise SourceError(f"images.path {path} holds no parquet or arrow files datasets can read ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}); point it at a save_to_disk folder or the folder of "
                          "a dataset's parquet files") from None
    return {str(k): [str(f) for f in v if str(f).endswith(DATA_SUFFIXES)] for k, v in files.items() if v}


def _hub_splits(name: str, split: str | None) -> dict[str, list[str]]:
    """A hub dataset, prepared into the local Hugging Face cache (downloaded when not there yet)."""
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    fix = (f"download it (`huggingface-cli download --repo-type dataset {name} --local-dir DIR`) and set "
           "images.path=DIR")
    if offline:
        raise SourceError(f"images.path {name} is not a local folder, and the Hugging Face hub is off (HF_HUB_OFFLINE "
                          f"or HF_DATASETS_OFFLINE is set): {fix}")
    want = split or "train"
    try:
        ds = _datasets().load_dataset(name, split=want)
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"cannot load the hub dataset {name} split {want} ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]}): check the name, the split and your access (gated "
                          f"datasets need `huggingface-cli login`), or {fix}") from None
    return {want: [str(f["filename"]) for f in ds.cache_files]}


def _splits(raw: str) -> dict[str, list[str]]:
    path = os.path.abspath(os.path.expanduser(raw))
    if os.path.isfile(path):
        if not path.endswith(DATA_SUFFIXES):
            raise SourceError(f"images.path {raw} is a file but not a .parquet or .arrow file; point it at a Hugging "
                              "Face dataset's folder or data file")
        return {"train": [path]}
    if os.path.isdir(path):
        return _saved_splits(path) if is_dataset_folder(path) else _file_splits(path)
    if looks_like_hub_name(raw):
        return {}  # a hub name: resolved with the split (:func:`_split_files`)
    raise SourceError(f"images.path {raw} is neither a folder, a data file nor a hub dataset name (owner/name)")


def _split_files(raw: str, split: str | None) -> tuple[str, list[str]]:
    """(split, its data files in order)."""
    splits = _splits(raw)
    if not splits:
        hub = _hub_splits(raw, split)
        return next(iter(hub.items()))
    if split is None:
        split = "train" if "train" in splits or len(splits) > 1 else next(iter(splits))
    if split not in splits:
        raise SourceError(f"the dataset at {raw} has no split {split!r}; its splits: {', '.join(sorted(splits))} "
                          "(set images.split)")
    if not splits[split]:
        raise SourceError(f"the split {split!r} of {raw} has no data files")
    return split, splits[split]


# --------------------------------------------------------------------------- columns


def _schema(path: str) -> Any:
    pa, pq = _pyarrow()
    try:
        if path.endswith(".parquet"):
            return pq.read_schema(path)
        return _arrow_table(path).schema
    except (OSError, pa.ArrowException) as e:
        raise SourceError(f"cannot read {path} ({' '.join(str(e).split())[:200]}): is it a parquet or arrow file "
                          "written by datasets?") from None


def _is_image_type(feature: Any, arrow_type: Any) -> bool:
    import pyarrow as pa
    from datasets import Image

    if isinstance(feature, Image):
        return True
    return bool(pa.types.is_struct(arrow_type) and {arrow_type.field(i).name for i in range(arrow_type.num_fields)}
                >= {"bytes", "path"})


def _image_column(features: Any, schema: Any, wanted: str | None, source: str) -> str:
    names = [str(n) for n in schema.names]
    if wanted is not None:
        if wanted not in names:
            raise SourceError(f"images.image_column {wanted!r} is not a column of {source}; its columns: {', '.join(names)}")
        return wanted
    found = [n for n in names if _is_image_type(features.get(n), schema.field(n).type)]
    found += [n for n in _IMAGE_NAMES if n in names and n not in found]
    if not found:
        raise SourceError(f"{source} has no image column (no Image feature, no column named image or img); its "
                          f"columns: {', '.join(names)}: set images.image_column")
    return found[0]


def _label_column(features: Any, names: list[str], wanted: str | None, source: str) -> str | None:
    from datasets import ClassLabel

    if wanted is not None:
        if wanted not in names:
            raise SourceError(f"images.label_column {wanted!r} is not a column of {source}; its columns: {', '.join(names)}")
        return wanted
    for n in _LABEL_NAMES:
        if n in names:
            return n
    class_labels = [n for n in names if isinstance(features.get(n), ClassLabel)]
    return class_labels[0] if len(class_labels) == 1 else None


# --------------------------------------------------------------------------- rows and labels


def _column(path: str, column: str) -> Any:
    """One column of a data file (a ChunkedArray; arrow files are memory-mapped, so nothing else is read)."""
    _, pq = _pyarrow()
    if path.endswith(".parquet"):
        return pq.ParquetFile(path).read(columns=[column]).column(0)
    return _arrow_table(path).column(column)


def _n_rows(path: str) -> int:
    _, pq = _pyarrow()
    return int(pq.ParquetFile(path).metadata.num_rows if path.endswith(".parquet") else _arrow_table(path).num_rows)


def _label_values(column: Any) -> tuple[np.ndarray | None, list[str | None] | None]:
    """Integer ids (-1 where missing) or label strings of one file's label column."""
    import pyarrow as pa

    if pa.types.is_integer(column.type):
        return np.asarray(column.fill_null(-1).to_numpy(), dtype=np.int64), None
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return None, [v or None for v in column.to_pylist()]
    raise SourceError(f"the label column holds {column.type}, not integers or names: set images.label_column to "
                      "another column, or images.labels=none")


def _labels(ids: list[np.ndarray], strings: list[str | None], feature: Any) -> tuple[np.ndarray, list[str]]:
    from datasets import ClassLabel

    if strings:
        return label_ids(strings)
    lab = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    if isinstance(feature, ClassLabel):
        names = [str(n) for n in feature.names]
    else:
        names = [str(i) for i in range(int(lab.max()) + 1 if lab.size else 0)]
    lab = np.where((lab >= 0) & (lab < len(names)), lab, -1)
    return lab.astype(np.int32), names


def hf_location(path: str, column: str, row: int) -> str:
    return f"hf://{path}#{quote(column, safe='')}/{int(row)}"


def parse_hf_location(location: str) -> tuple[str, str, int]:
    """``hf://file#column/row`` -> (file, column, row); ValueError otherwise."""
    m = _LOCATION_RE.match(location)
    if not m:
        raise ValueError(f"not a Hugging Face location: {location!r} (expected hf://<data file>#<column>/<row>)")
    return m[1], unquote(m[2]), int(m[3])


@dataclass
class _Columns:
    image: str
    label: str | None
    label_feature: Any


def _columns(files: list[str], raw: str, image_column: str | None, label_column: str | None,
             labels: str) -> _Columns:
    schema = _schema(files[0])
    features = _datasets().Features.from_arrow_schema(schema)
    image = _image_column(features, schema, image_column, raw)
    label = None if labels == "none" else _label_column(features, list(schema.names), label_column, raw)
    return _Columns(image, label, features.get(label) if label else None)


def scan_hf(raw: str, split: str | None, image_column: str | None, label_column: str | None, labels: str,
            limit: int | None = None) -> Manifest:
    """Manifest of the rows of the dataset at ``raw`` (``limit``: stop reading files once that many rows are in)."""
    if labels == "folders":
        raise SourceError("images.labels=folders does not apply to a Hugging Face dataset: use auto (its label "
                          "column, images.label_column) or none")
    _datasets()
    split, files = _split_files(raw, split)
    cols = _columns(files, raw, image_column, label_column, labels)
    locations: list[str] = []
    ids: list[np.ndarray] = []
    strings: list[str | None] = []
    for path in files:
        n = _n_rows(path)
        locations += [hf_location(path, cols.image, r) for r in range(n)]
        if cols.label is not None:
            got, text = _label_values(_column(path, cols.label))
            ids += [got] if got is not None else []
            strings += text or []
        if limit is not None and len(locations) >= limit:
            break
    if not locations:
        raise SourceError(f"the split {split!r} of {raw} has no rows")
    if cols.label is None:
        return Manifest("hf", raw, locations, np.full(len(locations), -1, np.int32), [])
    lab, names = _labels(ids, strings, cols.label_feature)
    return Manifest("hf", raw, locations, lab, names)


# --------------------------------------------------------------------------- loading


def _arrow_table(path: str) -> Any:
    """An arrow file (datasets writes the IPC stream format) memory-mapped: nothing is read but metadata."""
    pa, _ = _pyarrow()
    source = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(source).read_all()


@dataclass
class _ParquetIndex:
    """A parquet file opened, with the first row of each row group."""

    file: Any
    starts: np.ndarray

    @classmethod
    def open(cls, path: str) -> _ParquetIndex:
        _, pq = _pyarrow()
        f = pq.ParquetFile(path)
        counts = [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]
        return cls(f, np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]))


def _cell(path: str, column: str, row: int) -> Any:
    """The value of one cell, through this process's open file (a new one after a fork or a change)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(STATUS_MISSING, f"dataset file not found: {path}") from None
    key = (path, st.st_size, st.st_mtime_ns, os.getpid())
    if not path.endswith(".parquet"):
        table = cached("sources.hf_arrow", key, lambda: _arrow_table(path))
        if row >= table.num_rows:
            raise BadInput(STATUS_MISSING, f"row {row} is past the end of {path} ({table.num_rows} rows)")
        return table.column(column)[row].as_py()
    index = cached("sources.hf_parquet", key, lambda: _ParquetIndex.open(path))
    if row >= index.starts[-1]:
        raise BadInput(STATUS_MISSING, f"row {row} is past the end of {path} ({int(index.starts[-1])} rows)")
    group = int(np.searchsorted(index.starts, row, side="right")) - 1
    part = cached("sources.hf_row_group", (*key, column, group),
                  lambda: index.file.read_row_group(group, columns=[column]).column(0))
    return part[row - int(index.starts[group])].as_py()


def _read_path(path: str, base: str) -> bytes:
    full = path if os.path.isabs(path) else os.path.join(os.path.dirname(base), path)
    try:
        with open(full, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise BadInput(STATUS_MISSING, f"the dataset row names an image file that is not there: {full}") from None
    except OSError as e:
        raise BadInput(STATUS_UNREADABLE, f"cannot read {full}: {e.strerror or e}") from None


def _encoded(value: Any, base: str) -> bytes:
    """The encoded image a cell holds: an Image feature's bytes (else its path), raw bytes, or a path."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        if value.get("path"):
            return _read_path(str(value["path"]), base)
        value = None
    if value is None:
        raise BadInput(STATUS_MISSING, "the dataset row has no image (null)")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return _read_path(value, base)
    raise BadInput(STATUS_UNREADABLE, f"the image column holds {type(value).__name__} values, not encoded images: "
                                      "set images.image_column")


def read_hf_image(location: str) -> bytes:
    """The encoded image bytes of an ``hf://`` location; BadInput when they cannot be read."""
    path, column, row = parse_hf_location(location)
    pa, _ = _pyarrow()
    try:
        value = _cell(path, column, row)
    except (OSError, pa.ArrowException, KeyError) as e:
        raise BadInput(STATUS_UNREADABLE, f"cannot read row {row} of {path}: {type(e).__name__}: "
                                          f"{' '.join(str(e).split())[:200]}") from None
    return _encoded(value, path)
