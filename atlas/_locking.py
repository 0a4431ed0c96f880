"""How processes sharing a run directory keep out of each other's way: two implementations of the
same two locks, chosen by ``cluster.locking`` (:class:`atlas.store.RunDir` holds one).

* a **lease** on a unit, taken without waiting: a process handed a unit that another live process
  holds skips it;
* an **exclusive** lock, waited for: a stage's one-off set-up and its finish (and the few other
  read-modify-write steps of a run: the atlas index, a patch test's folder, the device record).

``flock`` (:class:`FlockLocks`, the default): ``flock(2)`` on a file under ``RUN/state/<stage>/locks/``.
The kernel drops a lock when its holder dies, so a ``kill -9`` never leaves a stale one. Where the run
directory's file system lacks working ``flock``, :func:`probe_flock` says so once, before a stage starts.

``none`` (:class:`MarkerLocks`): no ``flock`` at all, for file systems without it. Leases are not
taken: each unit must have one owner (static shards: ``--shard i/n``, SLURM array tasks, the local
engine). The exclusive lock is an **owner marker** made with an exclusive create (``O_CREAT | O_EXCL``,
atomic on local disks, NFSv3 and later, Lustre and GPFS) holding its owner's host, pid and a random
token. While held, a heartbeat thread touches it every :data:`HEARTBEAT_S`. A waiter removes a marker
whose owner is gone: at once when the owner ran on this host and its pid is dead, else once the marker
has not changed for :data:`STALE_AFTER_S` by the waiter's own clock (no clock is compared across
nodes; the margin covers NFS's attribute cache, 60 s by default).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

__all__ = ["Locking", "Locks", "FlockLocks", "MarkerLocks", "Mount", "locks_for", "mount_of", "probe_flock",
           "node_local_flock", "close_inherited_leases", "STALE_AFTER_S", "HEARTBEAT_S"]

Locking = Literal["flock", "none"]

STALE_AFTER_S = 120.0  # an owner marker unchanged this long (waiter's clock) has a dead owner
HEARTBEAT_S = 10.0     # how often a held owner marker is touched
POLL_S = 0.1           # how often a waiter looks at the marker again

_log = logging.getLogger(__name__)
_HELD_LEASES: set[int] = set()  # fds of the flock leases this process holds


def close_inherited_leases() -> None:
    """Close the lease fds a forked child inherited (call first thing in the child).

    flock locks belong to the open file description, so a child forked while its parent
    held a lease would keep that unit locked after the parent is killed, until the child
    exits too. Closing the child's copies leaves the parent's locks as they are.
    """
    for fd in list(_HELD_LEASES):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LEASES.clear()


class Locks(Protocol):
    """The two locks of a run directory; ``path`` is the lock's name under ``RUN/state/<stage>/locks/``."""

    def lease(self, path: Path) -> contextlib.AbstractContextManager[bool]: ...

    def exclusive(self, path: Path) -> contextlib.AbstractContextManager[None]: ...


# --------------------------------------------------------------------------- flock


class FlockLocks:
    """``flock(2)`` on lock files: a lease dies with its process, so nothing is ever stale."""

    @contextlib.contextmanager
    def lease(self, path: Path) -> Iterator[bool]:
        """Yields False when another live process holds ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            _HELD_LEASES.add(fd)
            try:
                yield True
            finally:
                _HELD_LEASES.discard(fd)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def exclusive(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- owner markers


@dataclass(frozen=True)
class _Seen:
    """What a waiter saw of an owner marker: any change means its owner is alive."""

    ino: int
    mtime_ns: int
    text: str


def _look(marker: Path) -> _Seen | None:
    """The marker as it is now (opened, so NFS revalidates it); None when it is gone."""
    try:
        with open(marker, encoding="utf-8", errors="replace") as fh:
            st = os.fstat(fh.fileno())
            return _Seen(st.st_ino, st.st_mtime_ns, fh.read())
    except FileNotFoundError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _dead_here(text: str) -> bool:
    """The marker names a process of this host that no longer runs."""
    try:
        owner = json.loads(text)
        return bool(owner["host"] == socket.gethostname() and not _pid_alive(int(owner["pid"])))
    except (ValueError, KeyError, TypeError):
        return False  # being written, or not ours to judge: wait for it to go stale


class _Heartbeat:
    """Touches a held marker every :data:`HEARTBEAT_S` so that waiters see its owner is alive."""

    def __init__(self, marker: Path) -> None:
        self.marker, self.stop = marker, threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat {marker.name}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.marker)

    def end(self) -> None:
        self.stop.set()
        self.thread.join()


class MarkerLocks:
    """No ``flock``: leases are not taken (each unit has one owner: static shards), and the
    exclusive lock is an owner marker made by exclusive create (see the module's docstring)."""

    @contextlib.contextmanager
    def lease(self, path: Path) -> Iterator[bool]:
        yield True

    @contextlib.contextmanager
    def exclusive(self, path: Path) -> Iterator[None]:
        marker = path.with_name(f"{path.name}.owner")
        token = _acquire(marker)
        beat = _Heartbeat(marker)
        try:
            yield
        finally:
            beat.end()
            _release(marker, token)


def _create(marker: Path, token: str) -> bool:
    """Make the marker if there is none (atomic); True when this process made it."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token, "time": time.time()}))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def _acquire(marker: Path) -> str:
    """Wait until this process owns ``marker``; a stale one is removed on the way. Returns the token."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    seen: _Seen | None = None
    since = time.monotonic()
    while not _create(marker, token):
        now = _look(marker)
        if now is None:
            continue
        if now != seen:
            seen, since = now, time.monotonic()
        if _dead_here(now.text) or time.monotonic() - since >= STALE_AFTER_S:
            _remove_stale(marker, now)
            seen = None
            continue
        time.sleep(POLL_S)
    return token


def _remove_stale(marker: Path, seen: _Seen) -> None:
    """Move the stale marker out of the way (one waiter wins the rename); a marker that turns out to
    be another one than the stale one seen (a new owner came meanwhile) is put back."""
    grave = marker.with_name(f"{marker.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(marker, grave)
    except FileNotFoundError:
        return
    taken = _look(grave)
    if taken is not None and taken.text != seen.text:
        with contextlib.suppress(OSError):
            os.link(grave, marker)
    else:
        _log.warning("removed the lock %s of a process that is gone (%s)", marker, seen.text.strip() or "no owner")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(grave)


def _token(text: str) -> str | None:
    try:
        return str(json.loads(text)["token"])
    except (ValueError, KeyError, TypeError):
        return None


def _release(marker: Path, token: str) -> None:
    now = _look(marker)
    if now is None or _token(now.text) != token:
        _log.warning("the lock %s was taken over while this process held it (it was thought gone: no heartbeat "
                     "for %.0f s)", marker, STALE_AFTER_S)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(marker)


def locks_for(locking: Locking) -> Locks:
    """The implementation of ``cluster.locking``."""
    if locking == "none":
        return MarkerLocks()
    return FlockLocks()


# --------------------------------------------------------------------------- the probe


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``: where a file system is mounted, its type, its options."""

    point: str
    fstype: str
    source: str
    options: frozenset[str]

    def describe(self) -> str:
        return f"a {self.fstype} file system mounted at {self.point}"


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 6 or len(tail) < 2:
            continue
        options = set(fields[5].split(",")) | set(tail[2].split(",") if len(tail) > 2 else [])
        mounts.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1]), frozenset(options)))
    return mounts


def mount_of(path: Path, mountinfo: str | None = None) -> Mount | None:
    """The mount holding ``path`` (the longest mount point above it); None where mountinfo is unreadable."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in _parse_mountinfo(mountinfo):
        inside = real == m.point or real.startswith(m.point.rstrip("/") + "/")
        if inside and (best is None or len(m.point) >= len(best.point)):
            best = m
    return best


def node_local_flock(mount: Mount | None) -> str | None:
    """The mount option that keeps ``flock`` on one node (NFS ``nolock``/``local_lock``, Lustre
    ``localflock``), or None."""
    if mount is None:
        return None
    local = {"nolock", "local_lock=all", "local_lock=flock", "localflock"} & mount.options
    return sorted(local)[0] if local else None


def _fix(mount: Mount | None) -> str:
    kind = mount.fstype if mount else ""
    if kind.startswith("nfs"):
        return "mount it with working locks (NFSv4, or NFSv3 with its lock service, and no `nolock`)"
    if kind == "lustre":
        return "ask for Lustre's `flock` mount option"
    if kind.startswith("fuse"):
        return "move run_dir to a shared file system with flock (this FUSE file system has none)"
    return "move run_dir to a file system with flock (local disk, NFSv4, Lustre mounted with `flock`, GPFS)"


_NO_LOCKS = "set cluster.locking: none to run without flock, each unit owned by one process (--shard i/n, SLURM " \
            "arrays; docs/cluster.md)"


def probe_flock(folder: Path) -> tuple[str | None, str | None]:
    """Try ``flock`` on a new file in ``folder``: (problem, note). ``problem`` is one line naming the
    file system and the choices when flock fails; ``note`` a warning when it only works on this node."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".flock-probe-{socket.gethostname()}-{os.getpid()}"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as e:
        mount = mount_of(folder)
        where = mount.describe() if mount else "its file system"
        name = errno.errorcode.get(e.errno or 0, "error")
        return (f"flock does not work in {folder.parent} ({where}: {name} {e.strerror or e}): {_fix(mount)}, "
                f"or {_NO_LOCKS}"), None
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
    mount = mount_of(folder)
    local = node_local_flock(mount)
    if mount is not None and local is not None:
        return None, (f"flock works in {folder.parent} but only on this node ({mount.describe()} with `{local}`): "
                      f"processes of a stage on other nodes would not see each other's locks; {_fix(mount)}, "
                      f"or {_NO_LOCKS}")
    return None, None
