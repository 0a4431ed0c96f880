"""The tile stage's viewer: the Deep Zoom descriptors (one per grid) and the static files (OpenSeadragon,
``viewer.js``, ``viewer.css``, ``index.html`` last: its presence means the folder is complete),
and their refresh in a finished folder."""

from __future__ import annotations

from pathlib import Path

from ...ops.dzi import descriptor_xml
from ...store import DurableWriter
from ...viewer_assets import openseadragon_dir, viewer_source_dir
from .._protocol import Job
from ._context import OUTPUT, Context, dzi_name

_VIEWER_FILES = ("index.html", "viewer.js", "viewer.css", "atlases.js", "located.js")


def static_files() -> dict[str, Path]:
    """The viewer's static files: destination (relative to RUN/tiles) -> source. index.html last."""
    osd, src = openseadragon_dir(), viewer_source_dir()
    files = {f"openseadragon/images/{f.name}": f for f in sorted((osd / "images").iterdir()) if f.is_file()}
    files["openseadragon/openseadragon.min.js"] = osd / "openseadragon.min.js"
    lic = osd.parents[1] / "LICENSE.txt"
    if lic.is_file():
        files["openseadragon/LICENSE.txt"] = lic
    for name in _VIEWER_FILES[1:] + _VIEWER_FILES[:1]:  # index.html last: its presence means "complete"
        files[name] = src / name
    return files


def write_viewer(ctx: Context, writer: DurableWriter) -> None:
    """``grid-<s>.dzi`` for every grid, then the viewer's static files (index.html last)."""
    out, t, p = ctx.out, ctx.cfg.tile, ctx.plan
    for s in p["sizes"]:
        w = p["pyramids"][str(s)]["width"]
        writer.put(out / f"{dzi_name(s)}.dzi", descriptor_xml(w, w, t.tile_size, t.overlap, t.format).encode())
    for rel, src in static_files().items():
        writer.put(out / rel, src.read_bytes())


def refresh_viewer(job: Job) -> None:
    """A finished folder gets the installed viewer's files when they changed (a newer atlas or
    OpenSeadragon); nothing is written when they are the same."""
    writer, out = DurableWriter(), job.run.stage_path(OUTPUT)
    for rel, src in static_files().items():
        data, dst = src.read_bytes(), out / rel
        if not dst.is_file() or dst.read_bytes() != data:
            writer.put(dst, data)
    if writer.paths:
        job.log.info("updated %d viewer files in %s", len(writer.paths), out)
        writer.sync()
