"""Status codes of decoded images and the two error types of :mod:`atlas.sources`.

The status codes are stored by ``collect`` in a ``uint8`` array, one per image; their
values are part of the run-directory format (docs/formats.md) and never change.
"""

from __future__ import annotations

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
]

STATUS_PENDING = 0
STATUS_OK = 1
STATUS_UNREADABLE = 2
STATUS_TOO_SMALL = 3
STATUS_TOO_LARGE = 4
STATUS_MISSING = 5

STATUS_NAMES: dict[int, str] = {
    STATUS_PENDING: "pending",
    STATUS_OK: "ok",
    STATUS_UNREADABLE: "unreadable",
    STATUS_TOO_SMALL: "too_small",
    STATUS_TOO_LARGE: "too_large",
    STATUS_MISSING: "missing",
}


class BadInput(Exception):
    """An image that cannot be used: ``status`` (one of the codes above) and a readable ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"{STATUS_NAMES.get(self.status, self.status)}: {self.reason}"


class SourceError(ValueError):
    """A bad image-source configuration; the message names the problem and the fix."""
