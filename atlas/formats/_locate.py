"""``RUN/locate``: the locate analysis's index, its reader and its writer.

``index.json`` (and its ``index.js`` twin, ``window.ATLAS_LOCATED``, for the viewer from file://):
``model``, ``layer``, ``sizes``, ``level``, ``images`` (per located image: ``unit``, ``name``,
``source``, ``layer_grid``, ``level``, ``cells_hit``, ``top_class`` and its files ``points``,
``overlay``, ``activation_grid``, ``located``) and ``skipped`` (``unit``, ``name``, ``source``,
``status``, ``reason``); ``bad_inputs.tsv`` lists the skipped images. Per unit,
``<unit>/located.json`` holds one image's placement.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..store import DurableWriter

__all__ = ["LOCATE", "LocateOutput", "write_locate_index"]

LOCATE = "locate"
INDEX = "index.json"


class LocateOutput:
    """``RUN/locate`` read back (a folder of JSON files, not a Zarr group)."""

    def __init__(self, run_root: str | Path) -> None:
        self.path = Path(run_root) / LOCATE

    def index(self) -> dict[str, Any] | None:
        """``index.json``; None before the analysis first finished (or when it cannot be read)."""
        try:
            doc = json.loads((self.path / INDEX).read_text())
        except (OSError, ValueError):
            return None
        return dict(doc) if isinstance(doc, dict) else None

    def n_located(self) -> int:
        """How many images are located (0 before the analysis first finished)."""
        doc = self.index()
        return len(doc.get("images") or []) if doc else 0

    def located(self, unit: str) -> dict[str, Any]:
        """``<unit>/located.json``: one located image."""
        doc: dict[str, Any] = json.loads((self.path / unit / "located.json").read_text())
        return doc


def write_locate_index(run_root: str | Path, doc: dict[str, Any], writer: DurableWriter) -> None:
    """``index.json``, ``index.js`` and ``bad_inputs.tsv`` (from ``doc["skipped"]``) through ``writer``."""
    out = Path(run_root) / LOCATE
    lines = ["unit\tlocation\tstatus\treason"] + [
        f"{s['unit']}\t{s['source']}\t{s['status']}\t{s['reason']}".replace("\n", " ") for s in doc["skipped"]]
    writer.put(out / "bad_inputs.tsv", ("\n".join(lines) + "\n").encode())
    writer.put(out / INDEX, json.dumps(doc, indent=1, sort_keys=True).encode())
    writer.put(out / "index.js", f"window.ATLAS_LOCATED = {json.dumps(doc, separators=(',', ':'), sort_keys=True)};\n"
               .encode())
