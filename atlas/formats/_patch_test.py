"""``RUN/patch-test``: the patch test analysis's results, their reader and writer.

One folder per test, ``RUN/patch-test/<slug>/``: ``results.json`` (written last: the rows per patch
size and position, the headline, the test's description, its ``scope`` and ``key``), ``table.md``,
``table.tsv`` and ``examples.png``; ``test.json`` and ``selection.json`` are the test's own state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..store import RunDir, atomic_write_text

__all__ = ["PATCH_TEST", "PatchTestOutput"]

PATCH_TEST = "patch-test"
RESULTS = "results.json"


class PatchTestOutput:
    """``RUN/patch-test`` read back and written (a folder of tests, not a Zarr group)."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.stage_path(PATCH_TEST)

    def folder(self, slug: str) -> Path:
        """``RUN/patch-test/<slug>``: one test's folder."""
        return self.path / slug

    def results(self, folder: Path) -> dict[str, Any] | None:
        """The test's ``results.json``; None when it is not finished (or cannot be read)."""
        try:
            doc = json.loads((folder / RESULTS).read_text())
        except (OSError, ValueError):
            return None
        return dict(doc) if isinstance(doc, dict) else None

    def finished(self) -> list[Path]:
        """The folders of the tests with results, oldest results first."""
        if not self.path.is_dir():
            return []
        return [p.parent for p in sorted(self.path.glob(f"*/{RESULTS}"), key=lambda p: p.stat().st_mtime)]

    def write_results(self, folder: Path, results: dict[str, Any]) -> None:
        """``results.json`` (atomically; the test's last file)."""
        atomic_write_text(folder / RESULTS, json.dumps(results, indent=2))
