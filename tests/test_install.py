"""Installed like any Python package: build the sdist and the wheel, install the wheel (not
editable) into a fresh virtual environment outside the checkout, then from an empty folder
`atlas init`, a tiny `atlas run demo` through `tile`, and `atlas serve`.

The new environment gets the dependencies (torch, ...) from the test environment through a
``.pth`` path entry, so nothing is downloaded or reinstalled; atlas itself comes only from
the wheel (checked: the checkout is not on its ``sys.path``). Building uses
``--no-isolation``: setuptools comes from the test environment, nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OSD = ROOT / "viewer" / "node_modules" / "openseadragon"
TINY = ["images.demo_count=24", "images.demo_size=96", "grid.sizes=[2,4]", "render.steps=2", "render.icon_size=16",
        "collect.workers=0", "collect.batch_size=8"]

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """``python -m build --no-isolation``: the sdist, and the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], cwd=out, env=env)
    (wheel,), (sdist,) = out.glob("atlas-*.whl"), out.glob("atlas-*.tar.gz")
    direct = out / "direct"  # `pip install .` builds the wheel from the checkout itself, not from the sdist
    _run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(direct), str(ROOT)], cwd=out,
         env=env)
    (direct_wheel,) = direct.glob("atlas-*.whl")
    return {"wheel": wheel, "sdist": sdist, "direct": direct_wheel}


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory) -> dict[str, object]:
    """A fresh venv outside the checkout with the wheel installed (non-editable)."""
    base = tmp_path_factory.mktemp("venv")
    env_dir = base / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=base, env=dict(os.environ))
    py = env_dir / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "ATLAS",
                                                              "ATLAS_OPENSEADRAGON")}
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps", "--no-index",
          str(dist["wheel"])], cwd=base, env=clean)
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base,
                        env=clean).stdout.strip())
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}  # this environment's packages
    (purelib / "zz_atlas_test_deps.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))
    env = {**clean, "PATH": f"{env_dir / 'bin'}{os.pathsep}{clean.get('PATH', '')}"}
    return {"python": py, "atlas": env_dir / "bin" / "atlas", "env": env, "purelib": purelib}


def test_wheel_and_sdist_carry_openseadragon_and_the_templates(dist):
    lock = json.loads((ROOT / "viewer" / "package-lock.json").read_text())["packages"]["node_modules/openseadragon"]
    want = {f"scripts/slurm/{p.name}": p for p in (ROOT / "scripts" / "slurm").iterdir() if p.is_file()}
    want |= {f"pipelines/{p.name}": p for p in (ROOT / "pipelines").glob("*.yaml")}
    osd = {str(p.relative_to(OSD)): p for p in (OSD / "build" / "openseadragon").rglob("*") if p.is_file()}
    osd |= {"LICENSE.txt": OSD / "LICENSE.txt", "package.json": OSD / "package.json"}

    with zipfile.ZipFile(dist["wheel"]) as z:
        names = set(z.namelist())
        # one source of truth: the packaged configs and scripts are the checkout's, byte for byte
        for rel, src in want.items():
            assert z.read(f"atlas/templates/{rel}") == src.read_bytes(), rel
        assert not {n for n in names if n.startswith("atlas/templates/") and n.count("/") > 2} - \
            {f"atlas/templates/{rel}" for rel in want}
        for rel, src in osd.items():
            assert _sha(z.read(f"atlas/viewer/vendor/openseadragon/{rel}")) == _sha(src.read_bytes()), rel
        stamp = json.loads(z.read("atlas/viewer/vendor/openseadragon/atlas-vendored.json"))
        assert (stamp["version"], stamp["integrity"]) == (lock["version"], lock["integrity"])
        assert json.loads(z.read("atlas/viewer/vendor/openseadragon/package.json"))["version"] == lock["version"]
        assert "atlas/viewer/index.html" in names and "atlas/templates/README.md" in names
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert "Requires-Python: >=3.11\n" in meta and "License-Expression: Apache-2.0" in meta
    with zipfile.ZipFile(dist["direct"]) as z:
        for rel, src in want.items():
            assert z.read(f"atlas/templates/{rel}") == src.read_bytes(), rel
        for rel, src in osd.items():
            assert _sha(z.read(f"atlas/viewer/vendor/openseadragon/{rel}")) == _sha(src.read_bytes()), rel
    with tarfile.open(dist["sdist"]) as t:
        top = t.getnames()[0].split("/")[0]
        for rel in list(want) + ["README.md"]:
            assert f"{top}/atlas/templates/{rel}" in t.getnames(), rel
        for rel in osd:
            assert f"{top}/atlas/viewer/vendor/openseadragon/{rel}" in t.getnames(), rel


def test_installed_wheel_init_run_serve(venv, tmp_path):
    env, atlas = venv["env"], str(venv["atlas"])
    probe = ("import json, sys, atlas; print(json.dumps([atlas.__file__, sys.path, "
             "[m for m in sys.modules if 'editable' in m]]))")
    where, path, editable = json.loads(_run([str(venv["python"]), "-c", probe], cwd=tmp_path, env=env).stdout)
    assert where.startswith(str(venv["purelib"] / "atlas")), where
    assert not editable and not [p for p in path if p and Path(p).resolve() in (ROOT, ROOT / "atlas")], path
    assert _run([atlas, "--version"], cwd=tmp_path, env=env).stdout.strip().startswith("atlas ")

    project = tmp_path / "project"
    project.mkdir()
    _run([atlas, "init"], cwd=project, env=env)
    for name in ("demo", "folder", "imagenet-lite0", "imagenet-googlenet-mixed4c"):
        assert (project / "pipelines" / f"{name}.yaml").read_bytes() == (ROOT / "pipelines" / f"{name}.yaml").read_bytes()
    assert os.access(project / "scripts" / "slurm" / "submit.sh", os.X_OK) and (project / "README.md").is_file()

    sets = [a for kv in TINY for a in ("--set", kv)]
    t0 = time.monotonic()
    run = _run([atlas, "run", "demo", "--set", "run_dir=runs/demo", *sets], cwd=project, env=env, timeout=600)
    took = time.monotonic() - t0
    tiles = project / "runs" / "demo" / "tiles"
    assert (tiles / "index.html").is_file(), run.stderr[-3000:]
    assert (tiles / "openseadragon" / "openseadragon.min.js").read_bytes() == \
        (OSD / "build" / "openseadragon" / "openseadragon.min.js").read_bytes()
    assert (tiles / "openseadragon" / "LICENSE.txt").is_file()
    assert "atlas serve runs/demo" in run.stdout
    status = _run([atlas, "status", "runs/demo"], cwd=project, env=env).stdout
    assert status.count(" done ") == 5 and "None" not in status, status
    print(f"tiny installed demo run: {took:.0f} s")

    proc = subprocess.Popen([atlas, "serve", "runs/demo", "--port", "0"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/tiles/index.html")  # `/` redirects there
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert resp.status == 200 and b"openseadragon" in body.lower()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


OLDER = {"torch": "2.13.0", "torchvision": "0.28.0"}  # inside the declared ranges, older than constraints.txt's


def test_the_wheel_installs_beside_an_older_torch_and_keeps_it(dist, tmp_path):
    """An environment with its own torch (a cluster's): installing the wheel keeps it. Here: torch 2.13.0
    (the CPU build in this machine's wheel store) and torchvision 0.28.0, its pair (installed for its
    metadata: PyPI's build does not import beside the CPU torch); the wheel's other dependencies come
    from the test environment (a .pth entry), so pip has only torch's range to decide on."""
    with zipfile.ZipFile(dist["wheel"]) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: torch<3,>=2.3\n" in meta and "Requires-Dist: torchvision<1,>=0.18\n" in meta
    assert 'Requires-Dist: datasets>=3.0; extra == "hf"\n' in meta
    env_dir = tmp_path / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], cwd=tmp_path, env=dict(os.environ))
    py = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps"]
    got = subprocess.run([*pip, *(f"{k}=={v}" for k, v in OLDER.items())], capture_output=True, text=True, timeout=600)
    if got.returncode != 0:
        pytest.skip(f"no older torch can be installed here (the metadata check above stands): {got.stderr[-300:]}")
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path,
                        env=dict(os.environ)).stdout.strip())
    (purelib / "zz_atlas_test_deps.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n")
    out = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index", str(dist["wheel"])],
               cwd=tmp_path, env=dict(os.environ)).stdout
    assert "Successfully installed atlas-" in out and "torch" not in out.split("Successfully installed")[-1]
    probe = "import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in ('torch', 'torchvision')}))"
    versions = json.loads(_run([str(py), "-c", probe], cwd=tmp_path, env=dict(os.environ)).stdout)
    assert versions["torch"].split("+")[0] == OLDER["torch"] and versions["torchvision"] == OLDER["torchvision"]
