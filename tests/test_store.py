import errno
import multiprocessing as mp
import os

import numpy as np
import pytest

from atlas.store import RunDir, StoreError, explain_oserror, atomic_save_npz, atomic_write_text


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
