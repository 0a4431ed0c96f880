"""One progress display: on a terminal a bar with the log lines written above it, each line once and
nothing left or redrawn under the last message (Ctrl-C included); through a pipe, log lines only.
The bar, the log and ``atlas status`` count the same units.

The terminal is a real pseudo-terminal (:mod:`pty`, 100 columns) running the real command."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pytest

from atlas import api
from atlas.progress import progress, stage_logger
from atlas.stages import _runner, run_stage, stage_status
from atlas.store import RunDir
from tests.conftest import DEMO, ROOT
from tests.stages.test_protocol import _Toy, _toy_cfg

BAR = re.compile(r"\d+%\|")  # tqdm's "  25%|███   |"
INTERRUPTED = "atlas: interrupted; rerun the same command to resume"


def _collect_args(run_dir: Path, images: int) -> list[str]:
    sets = [f"run_dir={run_dir}", f"images.demo_count={images}", "images.demo_size=64", "model.input_size=96",
            "collect.chunk_rows=8", "collect.batch_size=8", "collect.workers=0"]
    return [sys.executable, "-m", "atlas", "collect", str(DEMO), *(f"--set={s}" for s in sets)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ATLAS_PROGRESS"}
    return {**env, "OMP_NUM_THREADS": "1"}


def _on_a_terminal(argv: list[str], until: Callable[[bytes], bool] | None = None) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal (stdin, stdout, stderr); SIGINT once ``until(output)``."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a 24 x 100 terminal, then the command
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        os.chdir(ROOT)
        os.execve(argv[0], argv, _env())
    out, sent = b"", False
    while True:
        ready, _, _ = select.select([fd], [], [], 300)
        try:
            data = os.read(fd, 65536) if ready else b""
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            break
        out += data
        if until is not None and not sent and until(out):
            os.kill(pid, signal.SIGINT)
            sent = True
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode()


def _screen(raw: str) -> list[str]:
    """What the terminal shows, line by line: each carriage return writes over the line from its start."""
    lines = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        cells: list[str] = []
        for part in line.split("\r"):
            cells[:len(part)] = part
        lines.append("".join(cells).rstrip())
    return lines


def _logged(run_dir: Path) -> list[str]:
    """The messages of the run's collect log file, in order."""
    text = (run_dir / "logs" / "collect-0of1.log").read_text()
    return [re.split(r" (?:INFO|WARNING) ", ln, maxsplit=1)[1] for ln in text.splitlines()]


def test_a_terminal_shows_the_log_lines_above_one_bar_that_counts_units(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, raw = _on_a_terminal(_collect_args(run_dir, 32))
    assert code == 0, raw
    screen = _screen(raw)
    assert "\x1b" not in raw, "one bar at a time: no cursor movement between bars"
    assert BAR.search(raw) and re.search(r"\| \d/4 \[", raw), f"no bar counting the 4 units:\n{raw!r}"
    assert not [ln for ln in screen if BAR.search(ln)], "a bar left on the screen or glued to a log line"
    assert screen[-1] == "", "something drawn after the last log line"
    assert screen[:-1] == [f"[collect] {m}" for m in _logged(run_dir)], "each log line once, on its own line"
    assert "[collect] shard 0/1: 4 of its 4 units to do (4 units in all)" in screen
    assert "[collect] collect complete (4 units)" in screen
    st = next(s for s in api.status(run_dir)["stages"] if s["stage"] == "collect")
    assert (st["state"], st["done"], st["total"]) == ("done", 4, 4)  # the units the bar and the log count


@pytest.mark.slow
def test_ctrl_c_leaves_no_bar_and_a_pipe_gets_log_lines_only(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    code, raw = _on_a_terminal(_collect_args(run_dir, 160), until=lambda out: b"chunk-000001 done" in out)
    assert code == 130, raw
    screen = _screen(raw)
    assert not [ln for ln in screen if BAR.search(ln)], f"a bar left on the screen:\n{raw!r}"
    assert screen[-2:] == [INTERRUPTED, ""], f"something drawn after the last message:\n{raw!r}"
    assert raw.endswith(INTERRUPTED + "\r\n")
    done = len(RunDir(run_dir).done_units("collect"))
    assert 1 <= done < 20  # chunk-000000 was marked done before chunk-000001 ran; 20 leave room for a late signal

    proc = subprocess.run(_collect_args(run_dir, 160), cwd=ROOT, env=_env(), capture_output=True, text=True,
                          check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and not BAR.search(proc.stderr), "a bar drawn into a pipe"
    lines = proc.stderr.splitlines()
    assert all(ln.startswith("[collect] ") for ln in lines), proc.stderr
    assert f"[collect] shard 0/1: {20 - done} of its 20 units to do (20 units in all)" in lines
    assert lines[-1] == "[collect] collect complete (20 units)"
    st = next(s for s in api.status(run_dir)["stages"] if s["stage"] == "collect")
    assert (st["state"], st["done"], st["total"]) == ("done", 20, 20)


def test_the_runner_logs_its_units_done_with_the_count_the_bar_shows(tmp_path: Path, monkeypatch) -> None:
    """The shard's count of units done is logged every LOG_EVERY_S (here: after every unit but the
    last, which the stage's "complete" line follows): what a log without a bar shows of its progress."""
    monkeypatch.setattr(_runner, "LOG_EVERY_S", 0.0)
    cfg, toy = _toy_cfg(tmp_path), _Toy(["a", "b", "c"])
    assert run_stage(toy, cfg)
    log = (tmp_path / "run" / "logs" / "toy-0of1.log").read_text()
    assert "shard 0/1: 3 of its 3 units to do (3 units in all)" in log
    assert "toy: 1/3 units done (" in log and "toy: 2/3 units done (" in log and "3/3 units done" not in log
    assert "toy complete (3 units)" in log
    st = stage_status(toy, RunDir(cfg.run_dir))
    assert (st.done, st.total, st.state) == (3, 3, "done")


def test_one_unit_is_singular(tmp_path: Path) -> None:
    cfg, toy = _toy_cfg(tmp_path), _Toy(["a"])
    assert run_stage(toy, cfg)
    log = (tmp_path / "run" / "logs" / "toy-0of1.log").read_text()
    assert "shard 0/1: 1 of its 1 unit to do (1 unit in all)" in log and "toy complete (1 unit)" in log


def test_a_bar_opened_under_another_is_its_detail(tmp_path: Path, monkeypatch, capsys) -> None:
    """One bar per process: a second one shows as the first's detail and draws nothing; a log line
    goes above the bar; closing clears the bar (nothing is left under the next message)."""
    monkeypatch.setenv("ATLAS_PROGRESS", "1")
    log = stage_logger(tmp_path, "demo-progress")
    with progress(total=2, desc="outer", unit="unit") as outer:
        inner = progress(range(3), desc="inner", unit="img")
        assert [i for i in inner] == [0, 1, 2] and inner.n == 3
        log.info("a line")
        outer.update(2)
    err = capsys.readouterr().err
    assert "inner" not in err and "img 0/3" in err and "0/2" in err and outer.n == 2
    assert "[demo-progress] a line\n" in err
    screen = _screen(err)
    assert [ln for ln in screen if ln] == ["[demo-progress] a line"], err


def test_the_plain_atlas_loggers_warnings_go_above_the_bar_too(monkeypatch, capsys) -> None:
    """A warning of the package's own logger (no handler of its own) is written above the bar
    drawn, on its own line, not through it; nothing is left on screen after the bar closes."""
    import logging

    monkeypatch.setenv("ATLAS_PROGRESS", "1")
    with progress(total=2, desc="outer", unit="unit") as outer:
        logging.getLogger("atlas").warning("mind this")
        outer.update(2)
    err = capsys.readouterr().err
    assert "mind this\n" in err
    assert [ln for ln in _screen(err) if ln] == ["mind this"], err
