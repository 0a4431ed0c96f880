"""``atlas serve RUN_DIR``: a small static file server for ``RUN_DIR/tiles`` (the viewer).

Serves only that folder, on 127.0.0.1 by default, GET and HEAD only, with no directory
listings (a folder answers with its ``index.html`` or 404). Paths are checked before
anything is opened: ``..`` segments (also percent-encoded), backslashes, NUL bytes and
absolute-form targets are refused with 403, and the resolved file (symlinks followed)
must lie inside the tiles folder (else 403); dot-files (temporary files) are 404.

For a quick look without a server, ``RUN_DIR/tiles/index.html`` also opens from disk.
"""

from __future__ import annotations

import http.server
import mimetypes
import os
import sys
import urllib.parse
from pathlib import Path

__all__ = ["serve", "make_server", "tiles_dir", "resolve_request_path"]

_TYPES = {
    ".dzi": "application/xml", ".xml": "application/xml", ".js": "text/javascript; charset=utf-8",
    ".json": "application/json", ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8", ".map": "application/json",
}


class Refused(Exception):
    """A request path that must not be served: ``status`` is 403 or 404."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def tiles_dir(run_dir: str | os.PathLike) -> Path:
    """``RUN_DIR/tiles``, checked to be a finished viewer folder."""
    root = Path(run_dir)
    tiles = root / "tiles"
    if root.is_file():
        raise FileNotFoundError(f"{root} is a file, not a run directory: pass the folder a config's run_dir names")
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist")
    if not tiles.is_dir():
        raise FileNotFoundError(f"{tiles} does not exist: run `atlas tile CONFIG` first")
    if not (tiles / "index.html").is_file():
        raise FileNotFoundError(f"{tiles} is not finished (no index.html): run `atlas tile CONFIG` to complete it")
    return tiles


def resolve_request_path(root: Path, target: str) -> Path:
    """The file under ``root`` that the request target names; raises :class:`Refused`."""
    if "://" in target.split("?", 1)[0] or not target.startswith("/"):
        raise Refused(403, "absolute-form or relative request targets are not served")
    path = target.split("?", 1)[0].split("#", 1)[0]
    raw_parts = path.split("/")
    decoded = urllib.parse.unquote(path, errors="strict")
    if "\x00" in decoded or "\\" in decoded:
        raise Refused(403, "NUL or backslash in path")
    parts = decoded.split("/")
    if any(p in ("..", ".") for p in parts) or any(p in ("..", ".") for p in raw_parts):
        raise Refused(403, "dot segments are not allowed")
    if decoded.startswith("//"):
        raise Refused(403, "absolute path")
    parts = [p for p in parts if p]
    if any(p.startswith(".") for p in parts):
        raise Refused(404, "hidden file")
    base = root.resolve()
    candidate = base.joinpath(*parts) if parts else base
    try:
        real = candidate.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError, RuntimeError, OSError):
        raise Refused(404, "not found") from None
    if real != base and base not in real.parents:
        raise Refused(403, "outside the served folder")
    if real.is_dir():
        index = real / "index.html"
        if not index.is_file():
            raise Refused(404, "no directory listings")
        real = index.resolve()
        if base not in real.parents:
            raise Refused(403, "outside the served folder")
    if not real.is_file():
        raise Refused(404, "not a file")
    return real


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path = Path(".")
    quiet: bool = False
    server_version = "atlas-serve"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        try:
            path = resolve_request_path(self.root, self.path)
        except Refused as e:
            self.send_error(e.status, str(e))
            return
        except UnicodeDecodeError:
            self.send_error(400, "path is not valid UTF-8")
            return
        ctype = _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError:
            self.send_error(404, "not readable")
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        if not self.quiet:
            sys.stderr.write("[serve] " + (format % args) + "\n")


def make_server(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *,
                quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``RUN_DIR/tiles`` (not started; ``port=0`` picks a free port,
    read it back from ``server.server_address``). Call ``serve_forever()`` / ``shutdown()``."""
    root = tiles_dir(run_dir).resolve()
    handler = type("AtlasHandler", (_Handler,), {"root": root, "quiet": quiet})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve(run_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve ``RUN_DIR/tiles`` until Ctrl-C, printing the URL (``atlas serve`` also stops quietly,
    with exit status 0, on SIGTERM)."""
    tiles_dir(run_dir)  # a missing folder is reported as such, not as a socket error
    try:
        server = make_server(run_dir, host, port)
    except OSError as e:  # address in use, no permission for a low port, unknown host
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port") from None
    h, p = server.server_address[:2]
    shown = f"[{h}]" if ":" in str(h) else h
    print(f"Serving {Path(run_dir) / 'tiles'} at http://{shown}:{p}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":  # pragma: no cover - `python -m atlas.serve RUN_DIR [PORT]`
    serve(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000)
