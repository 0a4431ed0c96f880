"""Build hook: put the files that live outside ``atlas/`` in a checkout into the package.

Everything else is in pyproject.toml. A wheel or sdist carries, as package data:

* ``atlas/viewer/vendor/openseadragon/``: the viewer's zoom library, OpenSeadragon, from
  ``viewer/node_modules/openseadragon`` (``npm ci --prefix viewer``, pinned in
  ``viewer/package-lock.json``): ``package.json``, ``LICENSE.txt`` and ``build/openseadragon/``,
  plus ``atlas-vendored.json`` (version and npm integrity hash). The build fails with the fix
  when npm has not run, or when ``node_modules`` does not hold the locked version.
* ``atlas/templates/pipelines/*.yaml`` and ``atlas/templates/scripts/slurm/*``: copies of
  ``pipelines/`` and ``scripts/slurm/`` (the source of truth) for ``atlas init`` and the
  built-in config names (``atlas run demo``).

The copies are made into the build folder (wheel) or the sdist's tree, never into the
checkout, so a development checkout (``pip install -e .``) keeps using ``viewer/node_modules``
and ``pipelines/`` directly. A wheel built from the sdist finds the copies already in place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
LOCK = Path("viewer") / "package-lock.json"
NODE_OSD = Path("viewer") / "node_modules" / "openseadragon"
OSD_FILES = ("package.json", "LICENSE.txt")
OSD_BUILD = Path("build") / "openseadragon"
VENDOR = Path("atlas") / "viewer" / "vendor" / "openseadragon"
STAMP = "atlas-vendored.json"
TEMPLATE_SOURCES = {Path("pipelines"): "*.yaml", Path("scripts") / "slurm": "*"}
TEMPLATES = Path("atlas") / "templates"


class BuildError(SystemExit):
    """Stops the build with one message naming the fix (setuptools prints it without a traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"error: {message}")


def _locked_openseadragon(root: Path) -> dict[str, str]:
    """version and integrity of openseadragon in viewer/package-lock.json."""
    try:
        entry = json.loads((root / LOCK).read_text())["packages"]["node_modules/openseadragon"]
    except (OSError, ValueError, KeyError) as e:
        raise BuildError(f"cannot read OpenSeadragon's pin from {root / LOCK} ({e})") from None
    return {"version": entry["version"], "integrity": entry.get("integrity", "")}


def _checked_node_modules(root: Path) -> dict[str, str]:
    """The pin, after checking that viewer/node_modules holds exactly the locked package."""
    fix = "run `npm ci --prefix viewer` (or `make setup`) in the checkout, then build again"
    pin = _locked_openseadragon(root)
    src = root / NODE_OSD
    if not (src / OSD_BUILD / "openseadragon.min.js").is_file():
        raise BuildError(f"OpenSeadragon, the viewer's zoom library, is not in {src}: {fix}")
    installed = json.loads((src / "package.json").read_text()).get("version")
    if installed != pin["version"]:
        raise BuildError(f"{src} holds OpenSeadragon {installed}, but {LOCK} pins {pin['version']}: {fix}")
    hidden = root / "viewer" / "node_modules" / ".package-lock.json"  # what `npm ci` installed, with its hash
    if hidden.is_file():
        got = json.loads(hidden.read_text()).get("packages", {}).get("node_modules/openseadragon", {})
        if pin["integrity"] and got.get("integrity") != pin["integrity"]:
            raise BuildError(f"{src} was not installed from the tarball pinned in {LOCK} "
                             f"(integrity {got.get('integrity')} != {pin['integrity']}): {fix}")
    return pin


def _copy_openseadragon(root: Path, dest: Path) -> None:
    """viewer/node_modules/openseadragon (checked against the lock) -> dest (npm's layout, trimmed)."""
    pin = _checked_node_modules(root)
    src = root / NODE_OSD
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src / OSD_BUILD, dest / OSD_BUILD)
    for name in OSD_FILES:
        if not (src / name).is_file():
            raise BuildError(f"{src / name} is missing: run `npm ci --prefix viewer` again")
        shutil.copy2(src / name, dest / name)
    (dest / STAMP).write_text(json.dumps({"package": "openseadragon", **pin, "from": LOCK.as_posix()}, indent=1) + "\n")


def _copy_templates(root: Path, dest: Path) -> None:
    """pipelines/*.yaml and scripts/slurm/* -> dest/pipelines, dest/scripts/slurm (old copies replaced)."""
    for rel, pattern in TEMPLATE_SOURCES.items():
        files = sorted(p for p in (root / rel).glob(pattern) if p.is_file())
        if not files:
            raise BuildError(f"no {pattern} files in {root / rel}: build from a complete checkout")
        target = dest / rel
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, target / f.name)


class BuildPy(build_py):
    """build_py, then the vendored OpenSeadragon and the templates into the build folder."""

    def run(self) -> None:
        editable = getattr(self, "editable_mode", False)  # `pip install -e .`: the checkout's own files are used
        if not editable:  # a module removed from the checkout must not linger in build/lib (and the wheel)
            shutil.rmtree(Path(self.build_lib) / "atlas", ignore_errors=True)
        super().run()
        if editable:
            return
        root, lib = HERE, Path(self.build_lib)
        if (root / NODE_OSD).exists() or not (root / VENDOR / OSD_BUILD).is_dir():
            _copy_openseadragon(root, lib / VENDOR)  # a checkout (fails with the fix when npm has not run)
        # else: building from an sdist, whose atlas/viewer/vendor was copied as package data
        if all((root / rel).is_dir() for rel in TEMPLATE_SOURCES) or not (root / TEMPLATES / "pipelines").is_dir():
            _copy_templates(root, lib / TEMPLATES)


class Sdist(sdist):
    """sdist whose tree also holds the vendored OpenSeadragon and the templates as package data."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        root, base = HERE, Path(base_dir)
        _copy_openseadragon(root, base / VENDOR)
        _copy_templates(root, base / TEMPLATES)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
