"""`atlas serve`: serves a run's atlases only (tiles/, classes/<slug>/tiles/, the atlas index,
locate/ images and scripts), refuses path traversal, lists no folders."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from atlas.serve import Redirect, Refused, make_server, resolve_request_path, served_root, tiles_dir

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
    (run / "collect").mkdir()
    (run / "collect" / "zarr.json").write_text("{\"SECRET\": 1}")
    (run / "atlases.json").write_text('{"atlases": []}')
    (run / "atlases.js").write_text("window.ATLAS_INDEX = {};\n")
    shark = run / "classes" / "great-white-shark"
    (shark / "tiles").mkdir(parents=True)
    (shark / "tiles" / "index.html").write_text("<!doctype html><title>shark</title>")
    (shark / "config.yaml").write_text("run_dir: SECRET\n")
    (run / "locate" / "img-1").mkdir(parents=True)
    for name in ("overlay.png", "photo.jpg", "located.js", "located.json", "notes.txt", "index.html"):
        (run / "locate" / "img-1" / name).write_text("locate " + name)
    os.symlink(base / "secret.txt", tiles / "link.txt")
    os.symlink("/etc", tiles / "etc")
    os.symlink(tiles / "viewer.js", tiles / "inside-link.js")
    os.symlink(run / "config.yaml", tiles / "config-link.js")  # inside the run, outside the served folder
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
    status, body, headers = _get(server, "/tiles/")
    assert status == 200 and b"<title>atlas</title>" in body and headers["Content-Type"].startswith("text/html")
    status, body, headers = _get(server, "/tiles/viewer.js?v=1")
    assert status == 200 and body == b"window.x = 1;\n" and headers["Content-Type"].startswith("text/javascript")
    assert _get(server, "/tiles/atlas.dzi")[2]["Content-Type"] == "application/xml"
    assert _get(server, "/tiles/sub/tile.jpg")[0] == 200
    assert _get(server, "/tiles/inside-link.js")[0] == 200  # a symlink that stays inside is fine
    status, body, _ = _get(server, "/tiles/viewer.js", method="HEAD")
    assert status == 200 and body == b""


def test_serves_the_class_atlases_the_index_and_located_images(site):
    server, _ = site
    status, body, _ = _get(server, "/classes/great-white-shark/tiles/")
    assert status == 200 and b"<title>shark</title>" in body
    assert _get(server, "/classes/great-white-shark/tiles/index.html")[0] == 200
    for path in ("/atlases.json", "/atlases.js"):
        assert _get(server, path)[0] == 200, path
    for name in ("overlay.png", "photo.jpg", "located.js", "located.json"):
        status, body, _ = _get(server, f"/locate/img-1/{name}")
        assert status == 200 and body == f"locate {name}".encode(), name


@pytest.mark.parametrize("path, location", [("/", "/tiles/"), ("/?x=1", "/tiles/"), ("/tiles", "/tiles/"),
                                            ("/classes/great-white-shark/tiles", "/classes/great-white-shark/tiles/")])
def test_redirects(site, path, location):
    server, _ = site
    status, _, headers = _get(server, path)
    assert status in (301, 302) and headers["Location"] == location


@pytest.mark.parametrize("path", [
    "/config.yaml", "/collect/zarr.json", "/collect/", "/classes/great-white-shark/config.yaml", "/classes/",
    "/classes/great-white-shark/", "/locate/img-1/notes.txt", "/locate/img-1/index.html", "/locate/img-1/",
    "/locate/", "/state/tile/units.json", "/manifest.tsv", "/atlases.txt", "/index.html",
])
def test_the_rest_of_the_run_is_not_served(site, path):
    server, _ = site
    status, body, _ = _get(server, path)
    assert status == 404, (path, status)
    assert b"SECRET" not in body and b"locate notes" not in body


@pytest.mark.parametrize("path", ["/tiles/sub/", "/tiles/sub", "/tiles/sub/deeper/", "/tiles/missing.js",
                                  "/tiles/.hidden.tmp", "/tiles/etc/passwd-not-here", "/tiles/%2e%2e%2e/x",
                                  "/classes/.x/tiles/index.html", "/classes/nope/tiles/"])
def test_no_listing_and_not_found(site, path):
    server, _ = site
    status, body, _ = _get(server, path)
    assert status == 404, (path, status)
    assert b"tile.jpg" not in body and b"deeper" not in body


@pytest.mark.parametrize("path", [
    "/../secret.txt", "/../run/config.yaml", "/tiles/sub/../../secret.txt", "/%2e%2e/secret.txt",
    "/%2E%2E/secret.txt", "/tiles/sub/%2e%2e/%2e%2e/secret.txt", "/..%2fsecret.txt", "/%2e%2e%2fsecret.txt",
    "/.%2e/secret.txt", "/tiles/sub%2f..%2f..%2fsecret.txt", "//etc/passwd", "/%2fetc/passwd",
    "http://127.0.0.1/../secret.txt", "/..\\secret.txt", "/%5c..%5csecret.txt", "/tiles/link.txt", "/tiles/etc/passwd",
    "/tiles/etc/hostname", "/%00index.html", "/tiles/config-link.js", "/tiles/..", "/classes/../config.yaml",
    "/classes/great-white-shark/tiles/../config.yaml", "/locate/../config.yaml",
])
def test_refuses_traversal_absolute_paths_and_escaping_symlinks(site, path):
    server, _ = site
    status, body, _ = _get(server, path)
    assert status in (403, 404), (path, status)
    assert b"SECRET" not in body and b"root:" not in body


def test_traversal_variants_are_403(site):
    server, run = site
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/tiles/link.txt", "/tiles/etc/passwd",
                 "/tiles/config-link.js", "/classes/../config.yaml"):
        assert _get(server, path)[0] == 403, path
    with pytest.raises(Refused, match="absolute path"):  # http.server itself turns a leading // into /
        resolve_request_path(run, "//etc/passwd")
    assert resolve_request_path(run, "/tiles/viewer.js") == (run / "tiles" / "viewer.js").resolve()
    with pytest.raises(Redirect, match="/tiles/"):
        resolve_request_path(run, "/")
    with pytest.raises(Refused, match="not served"):
        resolve_request_path(run, "/config.yaml")


def test_only_get_and_head(site):
    server, _ = site
    assert _get(server, "/tiles/viewer.js", method="POST")[0] == 501
    assert _get(server, "/tiles/viewer.js", method="PUT")[0] == 501


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


def test_a_class_atlas_is_served_from_its_run(site):
    _, run = site
    shark = run / "classes" / "great-white-shark"
    assert served_root(shark) == (run.resolve(), "/classes/great-white-shark/tiles/")
    assert tiles_dir(shark) == run.resolve() / "classes" / "great-white-shark" / "tiles"
    assert served_root(run) == (run, "/tiles/")


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
        conn.request("GET", "/tiles/viewer.js")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
