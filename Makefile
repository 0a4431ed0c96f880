# Two entry points (see README): `make demo` and `make test`. Both set everything up first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
OSD    := viewer/node_modules/openseadragon/package.json

.PHONY: setup demo test test-fast lint browser clean-demo dist

setup: $(VENV)/.installed $(OSD)

# Python 3.11 venv (the tests run on 3.11; atlas needs >= 3.11); the exact torch and torchvision of
# constraints.txt (torch==2.14.1 / torchvision==0.29.1, from this machine's wheel store): the package
# itself declares ranges (pyproject.toml), the checkout's two commands install what the tests ran on.
$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

# The viewer's third-party code (OpenSeadragon) and its lint (ESLint, development only), pinned in viewer/package-lock.json.
$(OSD): viewer/package.json viewer/package-lock.json
	npm ci --prefix viewer --no-audit --no-fund --loglevel=error
	touch $@

# Debian's Chromium for the headless viewer test (root on CI; sudo elsewhere).
browser:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium; }

demo: setup
	$(BIN)/atlas run pipelines/demo.yaml

lint: setup
	$(BIN)/ruff check atlas tests benchmarks scripts
	$(BIN)/mypy
	npm run --prefix viewer --silent lint

test: setup browser lint
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not browser"

clean-demo:
	rm -rf runs/demo

# The sdist and the wheel (OpenSeadragon and the configs/SLURM scripts inside) in dist/; built
# with this venv's setuptools, nothing downloaded. `pip install dist/atlas-*.whl` anywhere.
dist: setup
	$(BIN)/python -m build --no-isolation --outdir dist .
