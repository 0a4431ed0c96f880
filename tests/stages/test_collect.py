"""collect on the real bundled network and the real demo set, through the real CLI; the stage
contract (rerun, resume after kill -9, shards, other settings refused)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from atlas.config import load_config
from atlas.ops.sampling import sample_positions
from atlas.stages import collect, get_stage, my_units, run_stage
from tests.cluster.util import WHOLE, atlas
from tests.conftest import DEMO, assert_groups_equal
from tests.stages.contract import StageContract, prepared_run


@pytest.fixture(scope="module")
def reference(whole_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny whole atlas's collect (64 images in 4 chunks), alone in a run directory: read only."""
    return prepared_run(whole_run, tmp_path_factory, "collect")


def test_collect_writes_the_documented_group(reference):
    g = zarr.open_group(str(reference / "collect"), mode="r")
    n = 64
    c, h, w = g.attrs["layer_shape"]
    assert (c, h, w) == (192, 4, 4)  # blocks.5 at 128 px
    assert g["activations"].shape == (n, c) and g["activations"].dtype == np.float16
    assert g["activations"].chunks == (16, c)
    assert g["positions"].shape == (n, 2) and g["index"].shape == (n,)
    assert g["attr_classes"].shape == (n, 10) and g["attr_values"].dtype == np.float32
    assert g["second_moment"].shape == (c, c) and g["second_moment"].dtype == np.float64
    status = g["status"][:]
    assert (status == 1).all() and g.attrs["ok_count"] == n
    np.testing.assert_array_equal(g["index"][:], np.arange(n))
    labels = g["labels"][:]
    assert labels.min() == 0 and len(np.unique(labels)) == len(g.attrs["label_names"])
    np.testing.assert_array_equal(g["positions"][:], sample_positions(0, np.arange(n), h, w, 1))
    act = g["activations"][:].astype(np.float64)
    np.testing.assert_allclose(g["second_moment"][:], act.T @ act, rtol=1e-10)
    assert np.abs(act).sum(1).min() > 0  # every row holds a real vector
    assert len(g.attrs["class_names"]) == 1000
    # attribution values are sorted, classes are valid ImageNet ids
    vals = g["attr_values"][:]
    assert (np.diff(vals, axis=1) <= 0).all()
    assert g["attr_classes"][:].min() >= 0 and g["attr_classes"][:].max() < 1000
    cfg_text = (reference / "config.yaml").read_text()
    assert "provenance" in cfg_text and "weights_sha256" in cfg_text and "torch" in cfg_text


def test_status_reports_done_and_counts(reference):
    rep = json.loads(atlas("status", str(reference), "--json").stdout)
    st = rep["stages"][0]
    assert st["stage"] == "collect" and st["state"] == "done" and st["done"] == st["total"] == 4  # chunks (the final step is the state)
    assert st["bad"] == 0 and st["ok"] == 64 and st["images"] == 64
    assert [s["state"] for s in rep["stages"][1:]] == ["not started"] * 4


def test_bad_images_are_skipped_and_reported(tmp_path):
    from tests.image_corpus import make_bad_corpus

    expected = make_bad_corpus(tmp_path / "imgs")
    run_dir = tmp_path / "run"
    ov = [f"run_dir={run_dir}", f"images.path={tmp_path / 'imgs'}", "images.kind=auto", "images.labels=none",
          "images.max_pixels=50000000", "model.input_size=128", "collect.chunk_rows=8", "collect.batch_size=4",
          "collect.workers=2"]
    atlas("collect", str(DEMO), *[f"--set={o}" for o in ov])
    g = zarr.open_group(str(run_dir / "collect"), mode="r")
    locations = (run_dir / "manifest.tsv").read_text().splitlines()
    names = [Path(line.split("\t")[0]).name for line in locations]
    status = g["status"][:]
    got = {name: int(s) for name, s in zip(names, status)}
    assert got == {k: v for k, v in expected.items() if k in got}
    assert set(got) == set(expected)
    report = (run_dir / "logs" / "bad_inputs.tsv").read_text().splitlines()
    assert len(report) - 1 == int((status >= 2).sum()) > 0
    act = g["activations"][:]
    assert (act[status != 1] == 0).all() and (np.abs(act[status == 1]).sum(1) > 0).all()


def test_wrong_layer_lists_layers(tmp_path):
    p = atlas("collect", str(DEMO), f"--set=run_dir={tmp_path}", "--set=model.layer=blocks.99", check=False)
    assert p.returncode == 2 and "blocks.5" in p.stderr and "Traceback" not in p.stderr


def test_units_are_chunk_aligned_and_round_robin():
    units = collect.plan_units(100, 16)
    assert units[-1] == "chunk-000006" and len(units) == 7
    shards = [my_units(units, (i, 3)) for i in range(3)]
    assert sorted(sum(shards, [])) == units and not set(shards[0]) & set(shards[1])
    rows = collect._batches([0, 6], 100, 16, 5)
    assert rows[0] == [0, 1, 2, 3, 4] and rows[3] == [15] and rows[-1] == [96, 97, 98, 99]


def test_in_process_api_matches_cli(tmp_path, reference):
    cfg = load_config(DEMO, [f"run_dir={tmp_path / 'run'}", *WHOLE])
    assert run_stage(get_stage("collect"), cfg)
    assert_groups_equal(tmp_path / "run" / "collect", reference / "collect")


class TestCollectContract(StageContract):
    stage = "collect"
    refused = (("collect.top_k=5", "collect.top_k: 10 -> 5"), ("seed=5", "seed: 0 -> 5"))
    accepted = ("collect.batch_size=4",)
    slow = ("test_resume_after_kill", "test_shards_match_single")  # 2 and 3 processes load the network
