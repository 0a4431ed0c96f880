"""What the package asks of an environment: torch and torchvision as ranges (the oldest versions the
code supports up to the next major), so that `pip install` keeps a cluster's own torch; the exact
versions the tests run on in constraints.txt, which `make setup` installs; `datasets` as the `hf`
extra. The wheel's metadata and an install beside an older torch: tests/test_install.py (slow)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RANGES = {"torch": (">=2.3", "<3"), "torchvision": (">=0.18", "<1")}


def _requirements(items: list[str]) -> dict[str, Requirement]:
    return {(r := Requirement(s)).name: r for s in items}


def test_torch_and_torchvision_are_ranges_up_to_the_next_major() -> None:
    deps = _requirements(PYPROJECT["dependencies"])
    for name, (low, high) in RANGES.items():
        spec = {str(s) for s in deps[name].specifier}
        assert spec == {low, high}, (name, spec)
        installed = Version(importlib.metadata.version(name).split("+")[0])
        assert installed in deps[name].specifier, (name, installed)


def test_the_exact_versions_the_tests_run_on_are_constraints_that_make_installs() -> None:
    pins = dict(re.findall(r"^([a-z][\w-]*)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    assert set(pins) == set(RANGES)
    for name, version in pins.items():
        assert importlib.metadata.version(name).split("+")[0] == version, name  # this environment is the pinned one
    assert '-c constraints.txt -e ".[test]"' in (ROOT / "Makefile").read_text()


def test_datasets_is_the_hf_extra_and_the_tests_install_it() -> None:
    extras = PYPROJECT["optional-dependencies"]
    assert "datasets" in _requirements(extras["hf"]) and "datasets" in _requirements(extras["test"])
