"""The notebooks in notebooks/: stored without outputs, and each one runs from top to bottom.

The notebooks are executed with nbclient in a kernel started from this interpreter
(``sys.executable -m ipykernel_launcher``, through a kernel spec written to a temporary
folder), so no kernel has to be installed globally. Their run folders go to pytest's tmp
through ``ATLAS_NB_RUN_DIR`` (01 writes the quickstart run there, 03 reads it) and
``ATLAS_NB_WORK_DIR`` (02's weights, images and run).
"""

from __future__ import annotations

import ast
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_your_model.ipynb", "03_inspect.ipynb", "04_classes.ipynb", "05_layers.ipynb",
         "06_compare.ipynb"]
CELL_TIMEOUT = 600  # seconds per cell; the pipeline cell of 01 is the longest (about a minute on 2 cores)


def _notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


# --------------------------------------------------------------------------- fast


def test_notebooks_are_the_documented_ones() -> None:
    assert [p.name for p in _notebooks()] == NAMES
    readme = (NOTEBOOKS / "README.md").read_text()
    assert all(name in readme for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count: clear outputs"
        assert "execution" not in cell.metadata, f"{name} cell {i} keeps execution timings"
    assert "widgets" not in nb.metadata, f"{name} keeps widget state"


# --------------------------------------------------------------------------- execution


def _kernel_manager(tmp: Path) -> Any:
    """A kernel manager that starts this interpreter's ipykernel (no global kernel spec needed)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = tmp / "kernels" / "atlas-notebooks"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "atlas notebooks (tests)", "language": "python",
    }))
    # IPC transport: local sockets in tmp instead of TCP on localhost (nothing listens on the network)
    (tmp / "ipc").mkdir(exist_ok=True)
    return KernelManager(kernel_name="atlas-notebooks", transport="ipc", ip=str(tmp / "ipc" / "kernel"),
                         kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp / "kernels")]))


def _execute(name: str, tmp: Path) -> nbformat.NotebookNode:
    """Run notebook ``name`` in notebooks/ (as a user would), in memory; raises on the first failing cell."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, km=_kernel_manager(tmp), timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    t0 = time.perf_counter()
    client.execute()
    print(f"{name}: executed in {time.perf_counter() - t0:.0f} s")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.output_type == "error"]
            assert not errors, f"{name} cell {i}: {errors[0].ename}: {errors[0].evalue}"
    return nb


def _cell(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"no single cell tagged {tag!r}"
    return cells[0]


def _text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell printed or displayed as text (stdout, stderr, text/plain)."""
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("display_data", "execute_result"):
            parts.append(o.data.get("text/plain", ""))
    return "\n".join(parts)


def _figures(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs if o.output_type == "display_data")


@pytest.fixture(scope="module")
def nb_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Environment of the notebook kernels: run folders in tmp, inline figures, OpenMP threads that yield.

    OMP_WAIT_POLICY=PASSIVE: on a shared CI machine whose cores are busy with other work, OpenMP
    threads spinning at torch's many small barriers made rendering 5-10x slower (measured on 2 cores).
    """
    base = tmp_path_factory.mktemp("notebooks")
    mp = pytest.MonkeyPatch()
    mp.setenv("ATLAS_NB_RUN_DIR", str(base / "quickstart"))
    mp.setenv("ATLAS_NB_WORK_DIR", str(base / "your-model"))
    mp.setenv("OMP_WAIT_POLICY", "PASSIVE")
    mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    mp.delenv("ATLAS_PROGRESS", raising=False)
    yield base
    mp.undo()


@pytest.mark.slow
def test_01_quickstart(nb_env: Path) -> None:
    nb = _execute("01_quickstart.ipynb", nb_env)
    run = nb_env / "quickstart"
    status = _text(_cell(nb, "run"))
    for stage in ("collect", "reduce", "grid", "render", "tile"):
        assert f"{stage:8s} done" in status, status
    for tag in ("layout", "level-image", "examples"):
        assert _figures(_cell(nb, tag)) >= 1, f"no figure in the cell tagged {tag}"
    trust = float(_text(_cell(nb, "layout")).split("trustworthiness of the layout (k=10):")[1].split()[0])
    assert 0.8 < trust <= 1.0
    viewer = _text(_cell(nb, "viewer"))
    assert f"atlas serve {run}" in viewer and (run / "tiles" / "index.html").is_file()


@pytest.mark.slow
def test_02_your_model(nb_env: Path) -> None:
    nb = _execute("02_your_model.ipynb", nb_env)
    cli, listed = _text(_cell(nb, "layers-cli")), _text(_cell(nb, "layers-api"))
    assert "inception4c" in cli and "512x14x14" in cli, cli
    assert "inception4c" in listed and "512 x 14 x 14" in listed, listed
    status = _text(_cell(nb, "run"))
    for stage in ("collect", "reduce", "grid"):
        assert f"{stage:8s} done" in status, status
    assert "layer=inception4c" in status and "model=googlenet" in status
    zarr_text = _text(_cell(nb, "zarr"))
    assert "activations" in zarr_text and "(160, 512)" in zarr_text and "level-8/" in zarr_text
    for tag in ("layout", "dask"):
        assert _figures(_cell(nb, tag)) >= 1, f"no figure in the cell tagged {tag}"
    xr_text = _text(_cell(nb, "xarray"))
    assert "mean_activation" in xr_text and "cell_row" in xr_text, xr_text  # xarray is a test dependency
    assert (nb_env / "your-model" / "run" / "grid" / "zarr.json").is_file()


@pytest.mark.slow
def test_03_inspect(nb_env: Path) -> None:
    nb = _execute("03_inspect.ipynb", nb_env)  # reuses 01's run when it ran first, else builds it
    for tag in ("trust", "purity", "faithfulness", "cell", "levels", "units"):
        assert _figures(_cell(nb, tag)) >= 1, f"no figure in the cell tagged {tag}"
    assert "192 channels of blocks.5: self-rank median" in _text(_cell(nb, "units"))
    summary = ast.literal_eval(_text(_cell(nb, "summary")))
    assert summary["images"] == 600
    assert 0.8 < summary["trustworthiness"] <= 1.0
    assert summary["trustworthiness_shuffled"] < summary["trustworthiness"] - 0.2
    for s, p in summary["purity"].items():
        assert summary["purity_shuffled"][s] < p <= 1.0
    for s, m in summary["faithfulness_median"].items():
        assert 0.2 < m <= 1.0, (s, m)
    for s, r in summary["retrieval@1"].items():
        assert 0.3 < r <= 1.0, (s, r)
    assert summary["pooled_mean_error"] < 1e-4
    assert "counts add up at every level: True" in _text(_cell(nb, "levels"))


@pytest.mark.slow
def test_04_classes(nb_env: Path) -> None:
    nb = _execute("04_classes.ipynb", nb_env)  # reuses 01's run when it ran first, else builds it
    for tag in ("class-atlas", "locate", "patch-test"):
        assert _figures(_cell(nb, tag)) >= 1, f"no figure in the cell tagged {tag}"
    run = nb_env / "quickstart"
    sub = [d for d in (run / "classes").iterdir() if (d / "config.yaml").is_file()]
    assert len(sub) == 1 and (sub[0] / "render").is_dir()
    assert "rows, grids" in _text(_cell(nb, "class-atlas"))
    located = [d for d in (run / "locate").iterdir() if d.is_dir()]
    assert len(located) == 1 and (located[0] / "activation-grid.png").is_file()
    table = _text(_cell(nb, "patch-test"))
    assert "noise" in table and "| 0.3" in table.replace("|  0.3", "| 0.3"), table


@pytest.mark.slow
def test_05_layers(nb_env: Path) -> None:
    nb = _execute("05_layers.ipynb", nb_env)  # adds a layer to 01's run (builds it first when 01 did not run)
    status = _text(_cell(nb, "add-layer"))
    assert "further layers" in status and "blocks.3" in status and "follow" in status, status
    for tag in ("layouts", "persistence", "follow"):
        assert _figures(_cell(nb, tag)) >= 1, f"no figure in the cell tagged {tag}"
    kept = _text(_cell(nb, "persistence"))
    share, chance = (float(x) for x in re.findall(r"([0-9.]+) \(chance ([0-9.]+)", kept)[0])
    assert chance < share <= 1.0, kept
    top = re.search(r"the top 3 hold (\d+)% of them", _text(_cell(nb, "follow")))
    assert top and 0 < int(top.group(1)) <= 100
    run = nb_env / "quickstart"
    assert (run / "layers" / "blocks.3" / "tiles" / "index.html").is_file() and (run / "follow" / "follow.js").is_file()


@pytest.mark.slow
def test_06_compare(nb_env: Path) -> None:
    nb = _execute("06_compare.ipynb", nb_env)  # reuses 01's run when it ran first, else builds it
    run = nb_env / "quickstart"
    views = sorted(d.name for d in (run / "compare" / "quickstart--quickstart-finetuned").iterdir() if d.is_dir())
    assert views == ["layout-a", "layout-b"]
    assert all((run / "compare" / "quickstart--quickstart-finetuned" / v / "changes" / "summary.json").is_file() for v in views)
    text = _text(_cell(nb, "compare"))
    assert "layout-a: quickstart's layout, quickstart-finetuned's activations (exact pairing)" in text, text
    for tag in ("figures", "cell"):
        assert _figures(_cell(nb, tag)) >= 1, f"no figure in the cell tagged {tag}"
    found = re.search(r"fine-tuned photos' cells ([0-9.]+) .* the others ([0-9.]+)", _text(_cell(nb, "figures")))
    assert found and float(found[1]) > float(found[2]), _text(_cell(nb, "figures"))
    assert "layout-a" in _text(_cell(nb, "viewer"))

