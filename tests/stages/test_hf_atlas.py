"""Whole atlases from Hugging Face datasets made here (tests/hf_data.py: 40 rows, a ClassLabel column,
two bad rows), through the real CLI up to tile: a `save_to_disk` folder run whole, and the same
rows as parquet files collected by two `--shard i/n` processes at once. The ClassLabel names are the
viewer's labels, the bad rows are recorded like bad files, and both atlases are the same bytes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cluster.util import ATLAS, DEMO, ROOT, assert_runs_equal, atlas, env, sets
from tests.hf_data import BAD, NAMES, ROWS, make_datasets

pytest.importorskip("datasets")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small atlas per layout (module-scoped: one run each)."""
    root = tmp_path_factory.mktemp("hf-atlas")
    data = make_datasets(root)
    out = {"saved": root / "run-saved", "parquet": root / "run-parquet"}
    atlas("run", str(DEMO), *sets(out["saved"], f"images.path={data['saved']}"))
    cmd = [ATLAS, "collect", str(DEMO), *sets(out["parquet"], f"images.path={data['parquet']}")]
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/2"], cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-3000:] for e in errs]
    atlas("run", str(DEMO), *sets(out["parquet"], f"images.path={data['parquet']}"))
    return out


@pytest.mark.parametrize("layout", ["saved", "parquet"])
def test_the_classlabel_names_are_the_viewers_labels(runs: dict[str, Path], layout: str) -> None:
    run = runs[layout]
    doc = json.loads((run / "tiles" / "atlas.json").read_text())
    assert doc["label_names"] == NAMES
    manifest = json.loads((run / "manifest.json").read_text())
    assert (manifest["kind"], manifest["n"], manifest["label_names"]) == ("hf", ROWS, NAMES)


@pytest.mark.parametrize("layout", ["saved", "parquet"])
def test_undecodable_rows_are_recorded_and_the_run_goes_on(runs: dict[str, Path], layout: str) -> None:
    lines = (runs[layout] / "logs" / "bad_inputs.tsv").read_text().splitlines()
    rows = sorted(int(line.split("\t")[0]) for line in lines[1:])
    assert rows == sorted(BAD), lines
    report = json.loads(atlas("status", str(runs[layout]), "--json").stdout)
    collect = next(s for s in report["stages"] if s["stage"] == "collect")
    assert (collect["state"], collect["bad"], collect["ok"]) == ("done", len(BAD), ROWS - len(BAD))


def test_both_layouts_and_any_shard_split_make_the_same_atlas(runs: dict[str, Path]) -> None:
    assert_runs_equal(runs["saved"], runs["parquet"])
