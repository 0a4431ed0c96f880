"""The run directory: Zarr groups, atomic files, done markers, unit locks.

Layout (see docs/formats.md)::

    RUN/config.yaml             resolved config + provenance (written by every stage start)
    RUN/<stage>/                Zarr v3 group of the stage's arrays
    RUN/state/<stage>/units/    per-unit side data (npz/json), written before the marker
    RUN/state/<stage>/done/<unit>   done markers, written last, atomically
    RUN/state/<stage>/locks/<unit>  leases held while a worker runs a unit

Bookkeeping lives outside the Zarr groups so that Zarr sees only its own arrays.
    RUN/logs/                   one log per stage and shard; bad-input report

Completion is never inferred from array contents (Zarr does not store chunks
equal to the fill value); only markers count.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import zarr

from ._cache import cached
from ._locking import Locking, close_inherited_leases, locks_for, probe_flock

__all__ = [
    "WRITE_ERRNOS",
    "DurableWriter",
    "RunDir",
    "StoreError",
    "atomic_save_npz",
    "atomic_write_bytes",
    "atomic_write_text",
    "close_inherited_leases",
    "explain_oserror",
    "fingerprint",
    "read_rows",
]


class _Cluster(Protocol):
    @property
    def locking(self) -> Locking: ...


class _RunConfig(Protocol):
    """What :meth:`RunDir.of` reads of a config (:class:`atlas.config.Config`)."""

    @property
    def run_dir(self) -> str: ...

    @property
    def cluster(self) -> _Cluster: ...


class StoreError(RuntimeError):
    """A run-directory problem (disk full, permission, mismatched settings) with a fix."""


WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)  # the user's to fix


def explain_oserror(path: str | Path, e: OSError) -> StoreError:
    """A write error as one line naming ``path`` and the fix (disk full, quota, read-only, permission)."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"disk full (or quota exceeded) while writing {path}: free space or set run_dir on a larger "
                          "disk, then rerun the same command: finished units are kept")
    if e.errno == errno.EROFS:
        return StoreError(f"no permission to write {path}: it is on a read-only file system; set run_dir to a "
                          "writable location")
    if e.errno in (errno.EACCES, errno.EPERM):
        return StoreError(f"no permission to write {path}: choose a writable run_dir or fix the folder's permissions")
    return StoreError(f"cannot write {path}: {e}")


def fingerprint(obj: Any) -> str:
    """The one fingerprint of settings: 16 hex digits of the SHA-256 of their canonical JSON."""
    import hashlib

    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_then_rename(path: Path, data: bytes, *, tmp: Path | None, fsync: bool, mkdir: bool = True) -> None:
    """The one way a file is written: ``data`` to a temporary file in ``path``'s folder, then
    renamed over ``path``, so a reader or a kill sees the old file or the new one, never half of
    one. ``tmp`` is a fixed temporary name (a redo after a kill reuses it) or None for a fresh
    unique one; ``fsync`` flushes the file before the rename. The temporary file is removed when
    the write fails, and an OSError becomes the one-line :class:`StoreError` naming ``path``."""
    try:
        if mkdir:
            path.parent.mkdir(parents=True, exist_ok=True)
        if tmp is None:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            tmp = Path(name)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise explain_oserror(path, e) from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder (fsynced), then rename."""
    _write_then_rename(Path(path), data, tmp=None, fsync=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
    atomic_write_bytes(path, buf.getvalue())


def _syncfs(path: Path) -> bool:
    """Linux ``syncfs`` of the filesystem holding ``path`` (one call flushes a whole batch of
    files; per-file fsync costs milliseconds each). False where unavailable."""
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return bool(fn(fd) == 0)
    finally:
        os.close(fd)


class DurableWriter:
    """A batch of files, each written under a temporary name then renamed (a kill never leaves
    half a file); :meth:`sync` makes the batch durable (one ``syncfs``, else an fsync of each
    file and folder), e.g. before a unit's done marker is written.

    Cheaper than :func:`atomic_write_bytes` per file (no fsync each); the temporary name is
    fixed per file (``.<name>.tmp``), so a unit redone after a kill reuses it. Not for files
    that two processes may write at once.
    """

    def __init__(self) -> None:
        self.paths: list[Path] = []   # written since the last sync
        self.dirs: set[Path] = set()  # their folders (created)

    def put(self, path: str | Path, data: bytes) -> None:
        """Write ``data`` to ``path`` (its folder created); durable after :meth:`sync`."""
        path = Path(path)
        _write_then_rename(path, data, tmp=path.with_name(f".{path.name}.tmp"), fsync=False,
                           mkdir=path.parent not in self.dirs)
        self.dirs.add(path.parent)
        self.paths.append(path)

    def sync(self) -> None:
        """Make every file written since the last sync durable, with their folder entries."""
        if self.paths and not _syncfs(self.paths[0].parent):
            for p in self.paths + sorted(self.dirs):
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        self.paths, self.dirs = [], set()


def read_rows(arr: Any, rows: np.ndarray, chunk_rows: int) -> np.ndarray:
    """Rows of a 2-D row-chunked array (e.g. ``collect/activations``), read one chunk at a time:
    sorted int rows [m] -> float32 [m, C]."""
    out = np.empty((rows.size, arr.shape[1]), dtype=np.float32)
    if rows.size == 0:
        return out
    chunk_of = rows // chunk_rows
    cuts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1], True])
    for a, b in zip(cuts[:-1], cuts[1:]):
        lo = int(chunk_of[a]) * chunk_rows
        block = np.asarray(arr[lo:min(lo + chunk_rows, arr.shape[0])])
        out[a:b] = block[rows[a:b] - lo]
    return out


class RunDir:
    """Access to one run directory. Cheap to construct; creates nothing until asked. ``locking``
    (``cluster.locking``) picks how its leases and stage locks are made (:mod:`atlas._locking`)."""

    def __init__(self, root: str | Path, locking: Locking = "flock") -> None:
        self.root = Path(root)
        self.locking: Locking = locking
        self._locks = locks_for(locking)

    @classmethod
    def of(cls, cfg: _RunConfig) -> RunDir:
        """The run directory of a config, with its ``cluster.locking``."""
        return cls(cfg.run_dir, cfg.cluster.locking)

    def at(self, root: str | Path) -> RunDir:
        """Another run directory (a class atlas's parent, ...) locked the way this one is."""
        return RunDir(root, self.locking)

    def check_locking(self) -> str | None:
        """With ``flock``: try it once per process in ``RUN/state``; a one-line StoreError naming the
        file system and the choices where it fails; returns a warning where it works on this node
        only (NFS ``nolock``, Lustre ``localflock``). Nothing to check without locks."""
        if self.locking == "none":
            return None
        folder = self.root / "state"
        try:
            problem, note = cached("store.flock_probe", str(folder.resolve()), lambda: probe_flock(folder))
        except OSError as e:
            raise explain_oserror(folder, e) from None
        if problem is not None:
            raise StoreError(problem)
        return note

    # ------------------------------------------------------------------ paths
    def stage_path(self, stage: str) -> Path:
        return self.root / stage

    def logs_path(self) -> Path:
        return self.root / "logs"

    def state_path(self, stage: str) -> Path:
        return self.root / "state" / stage

    def unit_data_path(self, stage: str, unit: str, suffix: str = ".npz") -> Path:
        return self.state_path(stage) / "units" / f"{unit}{suffix}"

    def _marker(self, stage: str, unit: str) -> Path:
        return self.state_path(stage) / "done" / unit

    # ---------------------------------------------------------------- markers
    def is_done(self, stage: str, unit: str) -> bool:
        return self._marker(stage, unit).exists()

    def mark_done(self, stage: str, unit: str, info: dict[str, Any] | None = None) -> None:
        """Write the unit's done marker; call only after all its data are on disk."""
        atomic_write_text(self._marker(stage, unit), json.dumps(info or {}))

    def done_units(self, stage: str) -> set[str]:
        d = self.state_path(stage) / "done"
        if not d.is_dir():
            return set()
        return {p.name for p in d.iterdir() if not p.name.startswith(".")}

    def clear_done(self, stage: str, unit: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._marker(stage, unit).unlink()

    def lease(self, stage: str, unit: str) -> contextlib.AbstractContextManager[bool]:
        """Exclusive lease on a unit: yields False if another live process holds it. With ``flock``
        the lease dies with its process, so a killed worker never leaves a stale lock; without
        locks (``cluster.locking: none``) it is always granted: each unit has one owner."""
        return self._locks.lease(self.state_path(stage) / "locks" / unit)

    def stage_lock(self, stage: str, name: str = "_stage") -> contextlib.AbstractContextManager[None]:
        """Blocking exclusive lock ``name`` of a stage: the default one guards one-off stage set-up
        (creating arrays) and finishing; a stage may hold others of its own (e.g. one per patch test).
        Without flock, an owner marker that a stale owner cannot hold for ever (:mod:`atlas._locking`)."""
        return self._locks.exclusive(self.state_path(stage) / "locks" / name)

    # --------------------------------------------------------------- failures
    def record_failure(self, stage: str, key: str, info: dict[str, Any]) -> None:
        """Record why a shard or task of ``stage`` failed (``atlas status`` shows it)."""
        atomic_write_text(self.state_path(stage) / "failed" / f"{key}.json", json.dumps(info, indent=1, default=str))

    def clear_failure(self, stage: str, key: str | None = None) -> None:
        """Forget one failure record, or every record of ``stage`` (key None)."""
        d = self.state_path(stage) / "failed"
        paths = [d / f"{key}.json"] if key is not None else (list(d.glob("*.json")) if d.is_dir() else [])
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def failures(self, stage: str) -> list[dict[str, Any]]:
        """The failure records of ``stage``, oldest first."""
        d = self.state_path(stage) / "failed"
        out = []
        for p in sorted(d.glob("*.json")) if d.is_dir() else []:
            with contextlib.suppress(FileNotFoundError, ValueError):
                out.append({"key": p.stem, **json.loads(p.read_text())})
        return sorted(out, key=lambda f: str(f.get("time", "")))

    # ------------------------------------------------------------------- zarr
    def open_group(self, stage: str, mode: Literal["r", "r+", "a", "w", "w-"] = "r") -> zarr.Group:
        path = self.stage_path(stage)
        if mode == "r" and not (path / "zarr.json").exists():
            raise StoreError(f"{path} has no Zarr group: run `atlas {stage}` first")
        return zarr.open_group(str(path), mode=mode, zarr_format=3)

    def has_group(self, stage: str) -> bool:
        return (self.stage_path(stage) / "zarr.json").exists()

    def read_json(self, relpath: str) -> Any:
        return json.loads((self.root / relpath).read_text())

    def write_json(self, relpath: str, obj: Any) -> None:
        atomic_write_text(self.root / relpath, json.dumps(obj, indent=2, sort_keys=True, default=str))
