"""``atlas serve RUN_DIR``: a small static file server for a run's atlases (the viewer).

Serves the run directory, but only these paths (URL paths equal the paths on disk, so the
viewer's relative links work the same served and from ``file://``):

- ``/tiles/**``: the main atlas; ``/`` redirects to ``/tiles/``;
- ``/classes/<slug>/tiles/**``: the class atlases (``atlas class-atlas``);
- ``/atlases.json``, ``/atlases.js``: the run's atlas index (the viewer's atlas switcher);
- ``/locate/**`` files ending in .js, .json, .png or .jpg (located-image overlays);
- ``/units/**`` (and ``/classes/<slug>/units/**``) files ending in .js, .json, .png or .jpg but its
  Zarr arrays (``data/``): ``atlas units``'s icons, examples, heatmaps and dictionaries;
- ``/compare/<name>/layout-a|b/tiles/**`` and their ``changes/**`` .js, .json, .png or .jpg files: the
  views of a comparison (``atlas compare``) and their change figures;
- ``/follow/*.js`` and ``.json``: where each layer's images land in the others (``model.layers``);
- ``/layers/<slug>/...``: a further layer's run, served by the same rules (its tiles, class atlases,
  index and located images).

Anything else (the config, the Zarr groups, state, logs) is 404. On 127.0.0.1 by default,
GET and HEAD only, with no directory listings (a folder answers with its ``index.html``, after
a redirect to its path with a trailing ``/``, or 404). Paths are checked before anything is
opened: ``..`` segments (also percent-encoded), backslashes, NUL bytes and absolute-form
targets are refused with 403, and the resolved file (symlinks followed) must lie inside the
served folder it was asked under (else 403); dot-files (temporary files) are 404.

``atlas serve RUN/classes/<slug>`` serves RUN, with ``/`` redirecting to that class atlas;
``atlas serve RUN/layers/<slug>`` serves RUN, with ``/`` redirecting to that layer's atlas.
For a quick look without a server, ``RUN_DIR/tiles/index.html`` also opens from disk.
"""

from __future__ import annotations

import errno
import http.server
import ipaddress
import mimetypes
import os
import re
import socket
import sys
import urllib.parse
from pathlib import Path

__all__ = ["serve", "make_server", "tiles_dir", "resolve_request_path", "served_root", "check_host", "check_port", "Refused",
           "Redirect"]

_TYPES = {
    ".dzi": "application/xml", ".xml": "application/xml", ".js": "text/javascript; charset=utf-8",
    ".json": "application/json", ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".svg": "image/svg+xml", ".txt": "text/plain; charset=utf-8", ".map": "application/json",
}
_LAYER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")  # a further layer's folder (atlas.formats.layer_slug)
_INDEX_FILES = ("atlases.json", "atlases.js")
_LOCATE_SUFFIXES = (".js", ".json", ".png", ".jpg")
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_COMPARISON = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # RUN/compare/<name> (atlas compare --name)
_VIEWS = ("layout-a", "layout-b")
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


class Refused(Exception):
    """A request path that must not be served: ``status`` is 403 or 404."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Redirect(Exception):
    """A request answered with a redirect to ``location`` (``/`` -> ``/tiles/``, a folder -> its ``/``)."""

    def __init__(self, location: str, status: int = 302) -> None:
        super().__init__(location)
        self.location, self.status = location, status


def _class_atlas_parent(root: Path) -> Path | None:
    """The run holding ``root`` when ``root`` is one of its class atlases (``RUN/classes/<slug>``)."""
    if root.parent.name == "classes" and (root.parent.parent / "config.yaml").is_file():
        return root.parent.parent
    return None


def served_root(run_dir: str | os.PathLike[str]) -> tuple[Path, str]:
    """(the folder served, the path ``/`` redirects to): the run and ``/tiles/``, or for a class
    atlas ``RUN/classes/<slug>`` its run and ``/classes/<slug>/tiles/``."""
    root = Path(run_dir)
    real = root.resolve()
    if real.parent.name == "layers" and (real.parent.parent / "config.yaml").is_file():
        return real.parent.parent, f"/layers/{real.name}/tiles/"
    if real.name in _VIEWS and real.parent.parent.name == "compare" and (real.parent.parent.parent / "config.yaml").is_file():
        return real.parent.parent.parent, f"/compare/{real.parent.name}/{real.name}/tiles/"
    parent = _class_atlas_parent(real)
    if parent is not None:
        return parent, f"/classes/{root.resolve().name}/tiles/"
    if not (root / "tiles" / "index.html").is_file() and (root / "classes").is_dir():
        done = sorted(d.name for d in (root / "classes").iterdir() if (d / "tiles" / "index.html").is_file())
        if done:
            return root, f"/classes/{done[0]}/tiles/"
    return root, "/tiles/"


def tiles_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The viewer folder ``atlas serve RUN_DIR`` opens on (``RUN_DIR/tiles``, or a class atlas's),
    checked to be a finished viewer folder."""
    root = Path(run_dir)
    if root.is_file():
        raise FileNotFoundError(f"{root} is a file, not a run directory: pass the folder a config's run_dir names")
    if not root.is_dir():
        raise FileNotFoundError(f"run directory {root} does not exist")
    base, home = served_root(root)
    tiles = base.joinpath(*[p for p in home.split("/") if p])
    if not tiles.is_dir():
        raise FileNotFoundError(f"{tiles} does not exist: run `atlas tile CONFIG` first")
    if not (tiles / "index.html").is_file():
        raise FileNotFoundError(f"{tiles} is not finished (no index.html): run `atlas tile CONFIG` to complete it")
    return tiles


def _checked_parts(target: str) -> tuple[list[str], bool]:
    """The decoded path segments of a request target and whether it ends in ``/``; raises
    :class:`Refused` for traversal, NUL, backslashes, absolute-form targets and dot-files."""
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
    if any(p.startswith(".") for p in parts if p):
        raise Refused(404, "hidden file")
    return [p for p in parts if p], decoded.endswith("/")


def _route(root: Path, parts: list[str], top: bool = True) -> tuple[Path, list[str]]:
    """(the folder a request is served from, the path inside it); 404 for anything not served.
    ``top``: the run itself (a further layer's run, under ``layers/<slug>``, holds no layers)."""
    if top and len(parts) >= 3 and parts[0] == "layers" and _LAYER.fullmatch(parts[1]):
        return _route(root / "layers" / parts[1], parts[2:], top=False)
    if top and len(parts) == 2 and parts[0] == "follow" and parts[1].endswith((".js", ".json")):
        return root / "follow", parts[1:]
    if len(parts) == 1 and parts[0] in _INDEX_FILES:
        return root, parts
    if parts[:1] == ["tiles"]:
        return root / "tiles", parts[1:]
    if len(parts) >= 3 and parts[0] == "classes" and _SLUG.fullmatch(parts[1]) and parts[2] == "tiles":
        return root / "classes" / parts[1] / "tiles", parts[3:]
    if len(parts) >= 2 and parts[0] == "locate" and parts[-1].lower().endswith(_LOCATE_SUFFIXES):
        return root / "locate", parts[1:]
    units = _units_route(root, parts)
    if units is not None:
        return units
    if len(parts) >= 4 and parts[0] == "compare" and _COMPARISON.fullmatch(parts[1]) and parts[2] in _VIEWS:
        view = root / "compare" / parts[1] / parts[2]
        if parts[3] == "tiles":
            return view / "tiles", parts[4:]
        if parts[3] == "changes" and len(parts) >= 5 and parts[-1].lower().endswith(_LOCATE_SUFFIXES):
            return view / "changes", parts[4:]
    raise Refused(404, "not served: only tiles/, classes/<slug>/tiles/, atlases.js(on), locate/, follow/, "
                       "layers/<slug>/ and compare/<name>/<view>/ files")


def _units_route(root: Path, parts: list[str]) -> tuple[Path, list[str]] | None:
    """``units/**`` (and a class atlas's ``classes/<slug>/units/**``) .js, .json, .png and .jpg files but
    its Zarr arrays (``data/``): ``atlas units``'s viewer files."""
    if not parts[-1].lower().endswith(_LOCATE_SUFFIXES):
        return None
    if len(parts) >= 2 and parts[0] == "units" and parts[1] != "data":
        return root / "units", parts[1:]
    if len(parts) >= 4 and parts[0] == "classes" and _SLUG.fullmatch(parts[1]) and parts[2] == "units" and parts[3] != "data":
        return root / "classes" / parts[1] / "units", parts[3:]
    return None


def _inside(base: Path, parts: list[str]) -> Path:
    """The existing file or folder ``base/parts`` resolved (symlinks followed), which must stay in ``base``."""
    base = base.resolve()
    try:
        real = (base.joinpath(*parts) if parts else base).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError, RuntimeError, OSError):
        raise Refused(404, "not found") from None
    if real != base and base not in real.parents:
        raise Refused(403, "outside the served folder")
    return real


def resolve_request_path(root: Path, target: str, home: str = "/tiles/") -> Path:
    """The file under the run directory ``root`` that the request target names; raises
    :class:`Refused` (403 or 404) or :class:`Redirect` (``/`` -> ``home``, a folder -> its ``/``)."""
    parts, slash = _checked_parts(target)
    if not parts:
        raise Redirect(home)
    base, rest = _route(root, parts)
    real = _inside(base, rest)
    if real.is_dir():
        if base == root / "locate" or base.name == "changes" or not (real / "index.html").is_file():
            raise Refused(404, "no directory listings")
        if not slash:
            raise Redirect(urllib.parse.quote("/" + "/".join(parts) + "/"), 301)
        real = _inside(base, [*rest, "index.html"])
    if not real.is_file():
        raise Refused(404, "not a file")
    return real


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path = Path(".")
    home: str = "/tiles/"
    quiet: bool = False
    server_version = "atlas-serve"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, body: bool) -> None:
        try:
            path = resolve_request_path(self.root, self.path, self.home)
        except Refused as e:
            self.send_error(e.status, str(e))
            return
        except Redirect as e:
            self.send_response(e.status)
            self.send_header("Location", e.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
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


def make_server(run_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, *,
                quiet: bool = False) -> http.server.ThreadingHTTPServer:
    """An HTTP server for a run's atlases (the paths of the module docstring; not started; ``port=0``
    picks a free port, read it back from ``server.server_address``). Call ``serve_forever()`` / ``shutdown()``."""
    tiles_dir(run_dir)
    root, home = served_root(run_dir)
    handler = type("AtlasHandler", (_Handler,), {"root": root.resolve(), "home": home, "quiet": quiet})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def check_port(port: int) -> int:
    """``port`` when it is a TCP port (1 to 65535, or 0: any free port), else a ValueError naming ``--port``."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port {port} is not a TCP port: give 1 to 65535 (0 picks a free one), e.g. --port 8000")
    return port


def check_host(host: str) -> str:
    """``host`` when it is an IP address or a name this machine resolves, else a ValueError naming ``--host``."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        if not _HOST_NAME.fullmatch(host) or host.rstrip(".").rpartition(".")[2].isdigit():
            raise OSError("not a host name")  # e.g. 999.1.1.1: refused here, never asked of DNS
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ValueError(f"--host {host} is neither an IP address nor a host name this machine resolves: give e.g. "
                         "--host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)") from None
    return host


def _bind_error(host: str, port: int, e: OSError) -> ValueError:
    """A failed bind as one line naming the option to change: --port (in use, privileged) or --host."""
    why = e.strerror or str(e)
    if e.errno == errno.EADDRINUSE:
        return ValueError(f"cannot listen on {host}:{port}: port {port} is in use; choose another --port "
                          "(--port 0 picks a free one)")
    if e.errno == errno.EACCES:
        return ValueError(f"cannot listen on {host}:{port}: {why} (ports below 1024 need privileges); "
                          "choose another --port, e.g. --port 8000")
    return ValueError(f"cannot listen on {host}:{port}: {why}; --host must be an address of this machine "
                      "(127.0.0.1, 0.0.0.0 or one of its interfaces)")


def serve(run_dir: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve a run's atlases until Ctrl-C, printing the URL (``atlas serve`` also stops quietly,
    with exit status 0, on SIGTERM). A port or host that cannot be used is a one-line ValueError."""
    check_port(port)
    check_host(host)
    tiles_dir(run_dir)  # a missing folder is reported as such, not as a socket error
    try:
        server = make_server(run_dir, host, port)
    except (OSError, OverflowError) as e:  # address in use, no permission for a low port, not this machine's
        if not isinstance(e, OSError):
            raise ValueError(f"cannot listen on {host}:{port}: {e}; check --host and --port") from None
        raise _bind_error(host, port, e) from None
    h, p = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{h}]" if ":" in h else h
    root, home = served_root(run_dir)
    print(f"Serving the atlases of {root} at http://{shown}:{p}/  (Ctrl-C to stop; / opens {home})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":  # pragma: no cover - `python -m atlas.serve RUN_DIR [PORT]`
    serve(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000)
