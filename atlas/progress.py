"""One progress display per process, and per-stage, per-shard logs.

On a terminal a process shows one bar (count, rate, ETA) at a time: the first :func:`progress`
opened draws it (the runner's bar over a shard's units); one opened while it is open draws nothing
and shows its count as the open bar's detail (``img 12/64``). Log lines go above the bar (it is
cleared, the line written, the bar drawn again), and a bar is cleared when it closes, so nothing is
left or redrawn under the last message. When stderr is not a terminal (CI, a pipe, SLURM's log
files) there is no bar, only the log lines, among them the runner's periodic count of units.
``ATLAS_PROGRESS=1`` draws bars anyway, ``ATLAS_PROGRESS=0`` never; processes started by another
(DataLoader workers, spawned or dask worker processes) never draw one.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

__all__ = ["Bar", "bars_drawn", "close_bars", "plural", "progress", "stage_logger"]

T = TypeVar("T")

_OPEN: list[Bar[Any]] = []  # the bar drawn in this process (at most one)
_REFRESH_S = 0.5  # a detail change redraws the bar at most this often


def plural(n: int, word: str) -> str:
    """``1 unit``, ``4 units``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def _terminal_wanted() -> bool:
    """stderr is a terminal (or ``ATLAS_PROGRESS=1``; never with ``ATLAS_PROGRESS=0``)."""
    env = os.environ.get("ATLAS_PROGRESS")
    if env in ("0", "1"):
        return env == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def bars_drawn() -> bool:
    """Whether a bar may be drawn here: a terminal is wanted (:func:`_terminal_wanted`) and this
    process is the one the user started."""
    return multiprocessing.parent_process() is None and _terminal_wanted()


class Bar(Generic[T]):
    """A count toward ``total``: drawn (a tqdm bar on stderr), shown as the detail of the bar drawn
    already, or silent. Iterate it, or call :meth:`update`; :meth:`close` it (or use ``with``)."""

    def __init__(self, iterable: Iterable[T] | None, total: int | None, desc: str, unit: str, *, draw: bool,
                 parent: Bar[Any] | None) -> None:
        if total is None and isinstance(iterable, Sized):
            total = len(iterable)
        self.n, self.total, self.unit = 0, total, unit
        self._iterable, self._parent, self._closed, self._last = iterable, parent, False, 0.0
        self._tqdm: Any = None
        if draw:
            from tqdm import tqdm

            _route_atlas_warnings()

            self._tqdm = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, smoothing=0.1,
                              mininterval=_REFRESH_S, leave=False, file=sys.stderr)
            _OPEN.append(self)
        self._show()

    def __iter__(self) -> Iterator[T]:
        if self._iterable is None:
            raise TypeError("this progress bar was made without an iterable")
        try:
            for item in self._iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tqdm is not None:
            self._tqdm.update(n)
        else:
            self._show()

    def set_detail(self, text: str) -> None:
        """Show ``text`` after the drawn bar's figures (redrawn at most every half second)."""
        if self._tqdm is None:
            return
        self._tqdm.set_postfix_str(text, refresh=False)
        now = time.monotonic()
        if not text or now - self._last >= _REFRESH_S:
            self._last = now
            self._tqdm.refresh()

    def _show(self) -> None:
        if self._parent is not None:
            total = "?" if self.total is None else self.total
            self._parent.set_detail(f"{self.unit} {self.n}/{total}")

    def close(self) -> None:
        """Clear the drawn bar (a detail clears itself from its bar); closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._tqdm is not None:
            _OPEN.remove(self)
            self._tqdm.close()
        elif self._parent is not None and not self._parent._closed:
            self._parent.set_detail("")

    def __enter__(self) -> Bar[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@overload
def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool | None = None) -> Bar[T]: ...
@overload
def progress(iterable: None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool | None = None) -> Bar[None]: ...
def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None) -> Bar[T] | Bar[None]:
    """A count of ``unit`` toward ``total`` (or ``len(iterable)``): drawn on a terminal (see
    :func:`bars_drawn`) unless a bar is drawn already, then shown as that bar's detail; ``disable``:
    never drawn nor shown."""
    drawn = _OPEN[-1] if _OPEN else None
    if disable or drawn is not None:
        return Bar(iterable, total, desc, unit, draw=False, parent=None if disable else drawn)
    return Bar(iterable, total, desc, unit, draw=bars_drawn() if disable is None else True, parent=None)


def close_bars() -> None:
    """Close every bar of this process (before a last message: an interruption, an error)."""
    for bar in reversed(list(_OPEN)):
        bar.close()


class _AboveBars(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record on its own line above the bar drawn, if any (tqdm clears it, the line is
    written, the bar drawn again); else as a plain stream handler."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _OPEN:
            super().emit(record)
            return
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class _CurrentStderrAboveBars(_AboveBars):
    """:class:`_AboveBars` on whatever ``sys.stderr`` is when a record comes (a handler that lives
    as long as the process must not keep a stream replaced since)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _route_atlas_warnings() -> None:
    """The plain ``atlas`` logger has no handler of its own (Python's last resort prints its
    warnings): while a bar is drawn they go above it like the stage logs."""
    log = logging.getLogger("atlas")
    if not any(isinstance(h, _AboveBars) for h in log.handlers):
        handler = _CurrentStderrAboveBars(sys.stderr)
        handler.setLevel(logging.WARNING)
        log.addHandler(handler)


def _parent_draws_bars() -> bool:
    """A worker process (a spawned pool process, a DataLoader worker) whose terminal the process
    that started it draws a bar on: its log lines go to its log file only."""
    return multiprocessing.parent_process() is not None and _terminal_wanted()


def stage_logger(run_root: Path, stage: str, shard: tuple[int, int] = (0, 1)) -> logging.Logger:
    """Logger writing to ``RUN/logs/<stage>-<i>of<n>.log`` and to stderr (INFO), above the bar."""
    name = f"atlas.{stage}.{shard[0]}of{shard[1]}"
    log = logging.getLogger(name)
    log.setLevel(logging.INFO)
    log.propagate = False
    logdir = Path(run_root) / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    path = logdir / f"{stage}-{shard[0]}of{shard[1]}.log"
    for h in list(log.handlers):
        if getattr(h, "baseFilename", None) != str(path.resolve()) and isinstance(h, logging.FileHandler):
            log.removeHandler(h)
            h.close()
    if not any(isinstance(h, logging.FileHandler) for h in log.handlers):
        fh = logging.FileHandler(path)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
    if not any(isinstance(h, _AboveBars) for h in log.handlers) and not _parent_draws_bars():
        sh = _AboveBars(sys.stderr)
        sh.setFormatter(logging.Formatter(f"[{stage}] %(message)s"))
        log.addHandler(sh)
    return log
