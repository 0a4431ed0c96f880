import errno
import multiprocessing as mp
import os

import numpy as np
import pytest

import atlas.store
from atlas.store import (
    DurableWriter,
    RunDir,
    StoreError,
    atomic_save_npz,
    atomic_write_bytes,
    atomic_write_text,
    explain_oserror,
)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = tmp_path / "a" / "b.txt"
    atomic_write_text(p, "hello")
    atomic_write_text(p, "again")
    assert p.read_text() == "again"
    assert [x.name for x in p.parent.iterdir()] == ["b.txt"]


def test_npz_roundtrip(tmp_path):
    atomic_save_npz(tmp_path / "x.npz", a=np.arange(3), b=np.eye(2))
    with np.load(tmp_path / "x.npz") as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))


def test_markers(tmp_path):
    run = RunDir(tmp_path)
    assert run.done_units("collect") == set()
    run.mark_done("collect", "chunk-000001", {"rows": [0, 3]})
    assert run.is_done("collect", "chunk-000001") and run.done_units("collect") == {"chunk-000001"}
    run.clear_done("collect", "chunk-000001")
    assert not run.is_done("collect", "chunk-000001")


def _hold(root, ready, release):
    run = RunDir(root)
    with run.lease("s", "u") as got:
        assert got
        ready.set()
        release.wait(10)


def test_lease_is_exclusive_across_processes_and_dies_with_its_holder(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(tmp_path, ready, release))
    p.start()
    assert ready.wait(10)
    run = RunDir(tmp_path)
    with run.lease("s", "u") as got:
        assert got is False
    p.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
    p.join()
    with run.lease("s", "u") as got:
        assert got is True


@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "disk full"), (errno.EACCES, "no permission"),
                                        (errno.EROFS, "no permission")])
def test_os_errors_are_explained(tmp_path, code, words):
    e = explain_oserror(tmp_path / "x", OSError(code, os.strerror(code)))
    assert isinstance(e, StoreError) and words in str(e)


def test_write_under_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(StoreError, match="cannot write"):
        atomic_write_text(tmp_path / "f" / "x.txt", "y")


def test_open_missing_group_says_which_stage_to_run(tmp_path):
    with pytest.raises(StoreError, match="atlas grid"):
        RunDir(tmp_path).open_group("grid")


# --------------------------------------------------------------------------- DurableWriter


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "fsync-each"])
def test_durable_writer_put_and_sync_write_the_bytes(tmp_path, monkeypatch, syncfs):
    if not syncfs:  # where syncfs is unavailable every file and folder is fsynced
        monkeypatch.setattr(atlas.store, "_syncfs", lambda path: False)
    w = DurableWriter()
    w.put(tmp_path / "a" / "x.bin", b"\x00\x01abc")
    w.put(tmp_path / "a" / "b" / "y.txt", b"hello")
    w.sync()
    assert (tmp_path / "a" / "x.bin").read_bytes() == b"\x00\x01abc"
    assert (tmp_path / "a" / "b" / "y.txt").read_bytes() == b"hello"
    assert w.paths == [] and w.dirs == set()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "x.bin", "y.txt"]  # no temporary files


def test_durable_writer_replaces_an_existing_file_whole(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"a much longer old content")
    with open(path, "rb") as old:  # a reader of the old file keeps reading the old file
        w = DurableWriter()
        w.put(path, b"new")
        w.sync()
        assert old.read() == b"a much longer old content"
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_durable_writer_under_a_file_is_a_one_line_error_naming_the_path(tmp_path):
    (tmp_path / "f").write_text("")
    target = tmp_path / "f" / "x.jpg"  # a file where a folder is expected (a read-only folder does not stop root)
    with pytest.raises(StoreError, match="cannot write") as e:
        DurableWriter().put(target, b"y")
    assert str(target) in str(e.value) and "\n" not in str(e.value)
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize("write", [lambda p, d: DurableWriter().put(p, d), atomic_write_bytes],
                         ids=["DurableWriter", "atomic_write_bytes"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch, write):
    path = tmp_path / "out" / "x.txt"
    path.parent.mkdir()
    path.write_bytes(b"old")

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atlas.store.os, "replace", disk_full)
    with pytest.raises(StoreError, match="disk full") as e:
        write(path, b"new")
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["x.txt"]


def test_durable_writer_reuses_a_temporary_file_left_by_a_kill(tmp_path):
    (tmp_path / ".x.txt.tmp").write_bytes(b"half a fi")  # what a kill -9 mid-write leaves
    w = DurableWriter()
    w.put(tmp_path / "x.txt", b"whole")
    w.sync()
    assert (tmp_path / "x.txt").read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]
