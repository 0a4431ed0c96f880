"""`atlas serve`: serves RUN/tiles only, refuses path traversal, lists no folders."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from atlas.serve import make_server, resolve_request_path, tiles_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    run = base / "run"
    tiles = run / "tiles"
    (tiles / "sub" / "deeper").mkdir(parents=True)
    (tiles / "index.html").write_text("<!doctype html><title>atlas</title>")
    (tiles / "viewer.js").write_text("window.x = 1;\n")
    (tiles / "atlas.dzi").write_text("<Image/>")
    (tiles / "sub" / "tile.jpg").write_bytes(b"\xff\xd8\xff fake jpeg")
    (tiles / ".hidden.tmp").write_text("temporary")
    (base / "secret.txt").write_text("SECRET")
    (run / "config.yaml").write_text("run_dir: SECRET\n")
    os.symlink(base / "secret.txt", tiles / "link.txt")
    os.symlink("/etc", tiles / "etc")
    os.symlink(tiles / "viewer.js", tiles / "inside-link.js")
    server = make_server(run, port=0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, run
    server.shutdown()
    server.server_close()


def _get(server, path: str, method: str = "GET") -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    try:
        conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def test_binds_localhost_and_serves_files(site):
    server, _ = site
    assert server.server_address[0] == "127.0.0.1"
    status, body, headers = _get(server, "/")
    assert status == 200 and b"<title>atlas</title>" in body and headers["Content-Type"].startswith("text/html")
    status, body, headers = _get(server, "/viewer.js?v=1")
    assert status == 200 and body == b"window.x = 1;\n" and headers["Content-Type"].startswith("text/javascript")
    assert _get(server, "/atlas.dzi")[2]["Content-Type"] == "application/xml"
    assert _get(server, "/sub/tile.jpg")[0] == 200
    assert _get(server, "/inside-link.js")[0] == 200  # a symlink that stays inside is fine
    status, body, _ = _get(server, "/viewer.js", method="HEAD")
    assert status == 200 and body == b""


@pytest.mark.parametrize("path", ["/sub/", "/sub", "/sub/deeper/", "/missing.js", "/.hidden.tmp",
                                  "/etc/passwd-not-here", "/%2e%2e%2e/x"])
def test_no_listing_and_not_found(site, path):
    server, _ = site
    status, body, _ = _get(server, path)
    assert status == 404
    assert b"tile.jpg" not in body and b"deeper" not in body


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/../run/config.yaml", "/sub/../../secret.txt", "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt", "/sub/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt",
    "/.%2e/secret.txt", "/sub%2f..%2f..%2fsecret.txt", "//etc/passwd", "/%2fetc/passwd",
    "http://127.0.0.1/../secret.txt", "/..\\secret.txt", "/%5c..%5csecret.txt", "/link.txt", "/etc/passwd",
    "/etc/hostname", "/%00index.html",
])
def test_refuses_traversal_absolute_paths_and_escaping_symlinks(site, path):
    server, _ = site
    status, body, _ = _get(server, path)
    assert status in (403, 404), (path, status)
    assert b"SECRET" not in body and b"root:" not in body


def test_traversal_variants_are_403(site):
    server, run = site
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "//etc/passwd", "/link.txt", "/etc/passwd"):
        assert _get(server, path)[0] == 403, path
    root = run / "tiles"
    assert resolve_request_path(root, "/viewer.js") == (root / "viewer.js").resolve()


def test_only_get_and_head(site):
    server, _ = site
    assert _get(server, "/viewer.js", method="POST")[0] == 501
    assert _get(server, "/viewer.js", method="PUT")[0] == 501


def test_missing_tiles_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_server(tmp_path / "nowhere", port=0)
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match=r"run `atlas tile CONFIG` first"):
        make_server(tmp_path / "run", port=0)
    (tmp_path / "run" / "tiles").mkdir()
    with pytest.raises(FileNotFoundError, match="not finished"):
        tiles_dir(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match="is a file, not a run directory"):
        tiles_dir(tmp_path / "file")


def test_serve_prints_the_url(site):
    _, run = site
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", f"from atlas.serve import serve; serve({str(run)!r}, port=0)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("Serving ") and "http://127.0.0.1:" in line, line
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/viewer.js")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
