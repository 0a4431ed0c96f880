"""The tile stage's viewer: the Deep Zoom descriptors (one per grid) and the static files (OpenSeadragon,
the page's own scripts and stylesheet, ``index.html`` last: its presence means the folder is complete),
and their refresh in a finished folder.

The page's files are the ones ``atlas/viewer/index.html`` loads (its ``<script src>`` and
``<link href>``): that list, in one place, is what the browser runs and what is copied."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from ...ops.dzi import descriptor_xml
from ...store import DurableWriter
from ...viewer_assets import openseadragon_dir, viewer_source_dir
from .._protocol import Job
from ._context import OUTPUT, Context, dzi_name

# What index.html loads that is not a file of atlas/viewer: OpenSeadragon (copied from its own folder)
# and the atlas's metadata (written by the metadata step).
_ELSEWHERE = ("openseadragon/", "atlas.js")


class _Refs(HTMLParser):
    """The local files an HTML page loads: ``<script src>`` and ``<link href>``, in page order."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ref = dict(attrs).get({"script": "src", "link": "href"}.get(tag, ""))
        if ref and not ref.startswith("data:"):
            self.refs.append(ref)


def page_files(src: Path) -> list[str]:
    """The viewer's own files that ``src/index.html`` loads (scripts and stylesheet), in its order.

    Raises FileNotFoundError naming a file index.html loads that ``src`` lacks (a broken install)."""
    parser = _Refs()
    parser.feed((src / "index.html").read_text(encoding="utf-8"))
    own = [r for r in parser.refs if not r.startswith(_ELSEWHERE)]
    missing = [r for r in own if not (src / r).is_file()]
    if missing:
        raise FileNotFoundError(f"the viewer's index.html loads {', '.join(missing)}, missing from {src}: "
                                "reinstall atlas (or restore atlas/viewer in a checkout)")
    return own


def static_files() -> dict[str, Path]:
    """The viewer's static files: destination (relative to RUN/tiles) -> source. index.html last."""
    osd, src = openseadragon_dir(), viewer_source_dir()
    files = {f"openseadragon/images/{f.name}": f for f in sorted((osd / "images").iterdir()) if f.is_file()}
    files["openseadragon/openseadragon.min.js"] = osd / "openseadragon.min.js"
    lic = osd.parents[1] / "LICENSE.txt"
    if lic.is_file():
        files["openseadragon/LICENSE.txt"] = lic
    for name in [*page_files(src), "index.html"]:  # index.html last: its presence means "complete"
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
