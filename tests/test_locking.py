"""Locking of a run directory (atlas/_locking.py behind RunDir.lease / stage_lock): the flock probe
and its one-line refusal on a file system where flock fails, the mount found for a path, and the
lock-free mode's owner markers (mutual exclusion across processes; a dead or silent owner removed;
a live one kept by its heartbeat). The lock-free mode end to end through the CLI, with flock failing
in every process, is tests/cluster/test_no_flock.py."""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import atlas._locking as locking
from atlas._cache import clear_cache
from atlas.store import RunDir, StoreError
from tests.conftest import DEMO, TINY

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:40 / /scratch rw,relatime shared:20 - lustre 10.0.0.1@tcp:/fs rw,localflock,lazystatfs
41 22 0:41 / /home rw,relatime shared:21 - nfs4 nas:/home rw,vers=4.2,local_lock=none
42 22 0:42 / /data rw,relatime - nfs nas:/data rw,vers=3,nolock
43 22 0:43 / /mnt/my\\040disk rw - fuse.sshfs me@host:/ rw,user_id=0
"""


def _no_flock(*_: object) -> None:
    raise OSError(errno.ENOSYS, "Function not implemented")


@pytest.fixture(autouse=True)
def _fresh_probe() -> Iterator[None]:
    clear_cache("store.flock_probe")
    yield
    clear_cache("store.flock_probe")


def test_the_mount_of_a_path_and_its_node_local_locks() -> None:
    def mount(path: str) -> locking.Mount:
        found = locking.mount_of(Path(path), MOUNTINFO)
        assert found is not None
        return found

    assert (mount("/scratch/me/run").fstype, mount("/scratch/me/run").point) == ("lustre", "/scratch")
    assert mount("/scratchy/run").fstype == "ext4"  # a prefix of the name is not the mount
    assert mount("/mnt/my disk/run").fstype == "fuse.sshfs"  # \040 in mountinfo is a space
    assert locking.node_local_flock(mount("/scratch/x")) == "localflock"
    assert locking.node_local_flock(mount("/data/x")) == "nolock"
    assert locking.node_local_flock(mount("/home/x")) is None and locking.node_local_flock(mount("/x")) is None


def test_where_flock_fails_the_probe_refuses_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fcntl, "flock", _no_flock)
    with pytest.raises(StoreError) as info:
        RunDir(tmp_path / "run").check_locking()
    msg = str(info.value)
    mount = locking.mount_of(tmp_path)
    assert mount is not None and f"a {mount.fstype} file system mounted at {mount.point}" in msg
    assert msg.startswith(f"flock does not work in {tmp_path / 'run'} (") and "ENOSYS" in msg
    assert "set cluster.locking: none" in msg and "\n" not in msg
    assert not list((tmp_path / "run" / "state").iterdir())  # the probe's file is gone


def test_the_probe_passes_where_flock_works_and_runs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path / "run")
    assert run.check_locking() is None
    monkeypatch.setattr(fcntl, "flock", _no_flock)
    assert run.check_locking() is None  # once per process and run directory: the first answer stands


def test_a_node_local_mount_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nfs = locking.Mount(str(tmp_path), "nfs", "nas:/x", frozenset({"rw", "nolock"}))
    monkeypatch.setattr(locking, "mount_of", lambda *_: nfs)
    note = RunDir(tmp_path / "run").check_locking()
    assert note is not None and "only on this node" in note and "`nolock`" in note and "cluster.locking: none" in note


def test_without_locks_nothing_calls_flock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fcntl, "flock", _no_flock)
    run = RunDir(tmp_path / "run", "none")
    assert run.check_locking() is None
    with run.lease("collect", "chunk-000001") as a, run.lease("collect", "chunk-000001") as b:
        assert a and b  # static shards: each unit has one owner, so a lease is always granted
    with run.stage_lock("collect"):
        owner = json.loads((run.state_path("collect") / "locks" / "_stage.owner").read_text())
        assert owner["host"] == socket.gethostname() and owner["pid"] > 0
    assert sorted(p.name for p in (run.state_path("collect") / "locks").iterdir()) == []


def _add_under_lock(root: str, n: int) -> None:
    run = RunDir(root, "none")
    path = Path(root) / "count"
    for _ in range(n):
        with run.stage_lock("collect"):
            value = int(path.read_text()) if path.exists() else 0
            time.sleep(0.002)
            path.write_text(str(value + 1))


def test_owner_markers_exclude_other_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_under_lock, args=(str(tmp_path), 25)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert (tmp_path / "count").read_text() == "75"


def _marker(run: RunDir, owner: dict[str, object]) -> Path:
    path = run.state_path("collect") / "locks" / "_stage.owner"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": "theirs", "time": 0, **owner}))
    return path


def test_a_dead_owner_on_this_host_is_removed_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run = RunDir(tmp_path, "none")
    _marker(run, {"host": socket.gethostname(), "pid": gone.pid})
    t0 = time.monotonic()
    with run.stage_lock("collect"):
        assert time.monotonic() - t0 < 2
    assert "removed the lock" in caplog.text


def test_a_silent_owner_elsewhere_is_removed_after_the_stale_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locking, "STALE_AFTER_S", 0.5)
    run = RunDir(tmp_path, "none")
    _marker(run, {"host": "another-node", "pid": 1})
    t0 = time.monotonic()
    with run.stage_lock("collect"):
        waited = time.monotonic() - t0
    assert 0.5 <= waited < 5


def test_a_live_owner_keeps_its_lock_by_its_heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(locking, "STALE_AFTER_S", 0.4)
    monkeypatch.setattr(locking, "HEARTBEAT_S", 0.05)
    run = RunDir(tmp_path, "none")
    held, released = threading.Event(), []

    def hold() -> None:
        with run.stage_lock("collect"):
            held.set()
            time.sleep(1.5)  # longer than the stale time: only the heartbeat keeps it
            released.append(time.monotonic())

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    with run.stage_lock("collect"):
        got = time.monotonic()
    t.join()
    assert released and got >= released[0]
    assert "taken over" not in caplog.text and "removed the lock" not in caplog.text


def test_a_pipeline_on_a_file_system_without_flock_stops_with_the_fix(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas import api
    from atlas.config import load_config

    monkeypatch.setattr(fcntl, "flock", _no_flock)
    cfg = load_config(DEMO, [f"run_dir={tmp_path / 'run'}", *TINY])
    with pytest.raises(StoreError, match=r"^flock does not work in .* set cluster.locking: none") as info:
        api.run(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run" / "manifest.json").exists() and not (tmp_path / "run" / "collect").exists()
    assert not list((tmp_path / "run" / "state").rglob("failed"))  # a refusal, not a failure
