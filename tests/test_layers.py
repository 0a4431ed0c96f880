"""Several layers in one run (``model.layers``): one collect pass, per-layer runs, ``--layer``,
``atlas status``, the follow step; every run goes through the real CLI on the tiny settings."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from atlas.config import load_config
from atlas.ops.persistence import layout_neighbours, shared_neighbours
from atlas.ops.sampling import sample_positions
from tests.cluster.util import atlas, sets, status
from tests.conftest import DEMO, assert_groups_equal, group_arrays
from tests.stages.contract import one_line_error, run_killed, stage_cli

LAYERS = "model.layers=[blocks.5, blocks.3]"
FAST = ("render.steps=1",)
NO_ATTR = ("collect.attribution=false",)


@pytest.fixture(scope="session")
def collect_only(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a factory
    """Collect-only runs by their overrides, made once per session."""
    made: dict[tuple[str, ...], Path] = {}

    def make(*overrides: str) -> Path:
        if overrides not in made:
            run_dir = tmp_path_factory.mktemp("collect") / "run"
            stage_cli("collect", run_dir, overrides)
            made[overrides] = run_dir
        return made[overrides]

    return make


def test_each_layer_holds_the_bytes_of_its_one_layer_run(layers_run: Path, whole_run: Path, collect_only) -> None:
    assert_groups_equal(layers_run / "collect", whole_run / "collect")  # the first layer: the one-layer run's
    alone = collect_only("model.layer=blocks.3")
    assert_groups_equal(layers_run / "layers" / "blocks.3" / "collect", alone / "collect")


def test_one_pass_without_attribution_gives_each_layer_its_own_bytes(collect_only) -> None:
    """Without attribution the layers share one forward pass, cut after the deepest: still the bytes of each alone."""
    both = collect_only("model.layer=blocks.3", "model.layers=[blocks.3, blocks.5]", *NO_ATTR)
    assert_groups_equal(both / "collect", collect_only("model.layer=blocks.3", *NO_ATTR) / "collect")
    assert_groups_equal(both / "layers" / "blocks.5" / "collect", collect_only("model.layer=blocks.5", *NO_ATTR) / "collect")


def test_layers_with_one_grid_sample_one_position_per_image(collect_only) -> None:
    """Positions are seeded by the image and the layer's grid, not its name: blocks.3 and blocks.4 share
    their 8 x 8 grid here, so they read every image at the same place (what follow and compare rely on)."""
    run = collect_only("model.layer=blocks.3", "model.layers=[blocks.3, blocks.4]", *NO_ATTR)
    a = group_arrays(run / "collect")
    b = group_arrays(run / "layers" / "blocks.4" / "collect")
    np.testing.assert_array_equal(a["positions"], b["positions"])
    assert a["activations"].shape[1] == 80 and b["activations"].shape[1] == 112
    want = sample_positions(0, np.arange(len(a["positions"])), 8, 8, 1)
    np.testing.assert_array_equal(a["positions"], want)


def test_adding_a_layer_collects_only_that_layer(collect_only, tmp_path: Path) -> None:
    one = collect_only("model.layer=blocks.5", *NO_ATTR)
    run = tmp_path / "run"
    shutil.copytree(one, run)
    before = {p: p.stat().st_mtime_ns for p in (run / "collect").rglob("*")}
    p = stage_cli("collect", run, ("model.layers=[blocks.5, blocks.3]", *NO_ATTR))
    assert re.search(r"4 of its 8 units to do", p.stderr), p.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in (run / "collect").rglob("*")} == before
    assert_groups_equal(run / "layers" / "blocks.3" / "collect",
                        collect_only("model.layer=blocks.3", *NO_ATTR) / "collect")
    assert load_config(run / "config.yaml").model.all_layers == ["blocks.5", "blocks.3"]  # the run's config says so


def test_a_killed_collect_of_two_layers_resumes_to_the_same_bytes(layers_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    killed = run_killed("collect", run, (LAYERS,), after=3)
    assert killed.returncode == -9, killed.stderr[-2000:]
    stage_cli("collect", run, (LAYERS,))
    assert_groups_equal(run / "collect", layers_run / "collect")
    assert_groups_equal(run / "layers" / "blocks.3" / "collect", layers_run / "layers" / "blocks.3" / "collect")


def test_shards_split_a_layers_units(layers_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(layers_run, run)
    layer_run = run / "layers" / "blocks.3"
    shutil.rmtree(layer_run / "render")
    shutil.rmtree(layer_run / "state" / "render")
    for i in range(2):
        stage_cli("render", run, (LAYERS, *FAST), "--layer", "blocks.3", "--shard", f"{i}/2")
    assert_groups_equal(layer_run / "render", layers_run / "layers" / "blocks.3" / "render")


def test_status_shows_every_layer_and_the_follow_figure(layers_run: Path) -> None:
    text = atlas("status", str(layers_run)).stdout
    assert "further layers" in text and re.search(r"blocks\.3\s+collect done, reduce done, grid done, render done, "
                                                   r"tile done", text), text
    assert re.search(r"follow\s+done .*neighbours_kept blocks\.5~blocks\.3:0\.\d+", text), text
    layer = status(layers_run / "layers" / "blocks.3")
    assert layer["collect"]["layer"] == "blocks.3" and layer["tile"]["state"] == "done"
    by_flag = atlas("status", str(layers_run), "--layer", "blocks.3").stdout
    assert by_flag.startswith(f"run {layers_run / 'layers' / 'blocks.3'}")


def test_layer_picks_a_layers_run_and_names_the_layers_when_unknown(layers_run: Path) -> None:
    p = stage_cli("grid", layers_run, (LAYERS, *FAST), "--layer", "blocks.3")
    assert "already complete in " + str(layers_run / "layers" / "blocks.3") in p.stderr
    bad = stage_cli("grid", layers_run, (LAYERS, *FAST), "--layer", "blocks.33", check=False)
    one_line_error(bad, "--layer blocks.33", "blocks.5, blocks.3", "did you mean blocks.3?")
    listed = atlas("layers", str(layers_run / "config.yaml")).stdout.splitlines()
    assert [line.split()[0] for line in listed] == ["blocks.5", "blocks.3"] and all(line.endswith("done") for line in listed)


def test_a_layer_not_collected_yet_is_refused_in_one_line(layers_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(layers_run, run, ignore=shutil.ignore_patterns("layers"))
    p = stage_cli("reduce", run, ("model.layers=[blocks.5, blocks.3, blocks.4]",), "--layer", "blocks.4", check=False)
    one_line_error(p, "needs a finished `collect`", f"atlas run {run / 'config.yaml'} --layer blocks.4")


def _decode(path: Path, name: str) -> dict:
    text = path.read_text()
    assert text.startswith(f"window.{name} = ")
    return json.loads(text[len(f"window.{name} = "):].rstrip().rstrip(";"))


def test_follow_files_match_the_layouts(layers_run: Path) -> None:
    from atlas.formats import ReduceOutput
    from atlas.store import RunDir

    follow = layers_run / "follow"
    index = json.loads((follow / "follow.json").read_text())
    assert [e["layer"] for e in index["layers"]] == ["blocks.5", "blocks.3"]
    assert [e["tiles"] for e in index["layers"]] == ["tiles/", "layers/blocks.3/tiles/"]
    assert index["layers"][1]["channels"] == 80 and index["layers"][1]["grid"] == [8, 8]
    coords = []
    for i, run in enumerate([layers_run, layers_run / "layers" / "blocks.3"]):
        doc = _decode(follow / f"coords-{i}.js", f"ATLAS_FOLLOW_COORDS_{i}")
        got = np.frombuffer(base64.b64decode(doc["values"]), "<f4").reshape(-1, 2)
        want = ReduceOutput.open(RunDir(run)).coords[...]
        np.testing.assert_array_equal(got, want)
        coords.append(want)
    k = load_config(layers_run / "config.yaml").follow.k
    shared = shared_neighbours(layout_neighbours(coords[0], k), layout_neighbours(coords[1], k))
    doc = _decode(follow / "shared-0-1.js", "ATLAS_FOLLOW_SHARED_0_1")
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(doc["values"]), np.uint8), shared)
    pair = index["pairs"][0]
    assert pair["mean_share"] == round(float(shared.mean() / k), 4) and pair["mean_share"] > pair["chance"]


def test_follow_on_one_layer_is_refused_in_one_line(whole_run: Path) -> None:
    p = atlas("follow", str(DEMO), *sets(whole_run), check=False)
    one_line_error(p, "`follow` compares the layers of a run of several layers", "model.layers")


def test_layers_config_keys_are_checked() -> None:
    from atlas.config import ConfigError

    with pytest.raises(ConfigError, match=r"model\.layers.*names 'blocks\.3' twice"):
        load_config(DEMO, ["model.layers=[blocks.3, blocks.3]"])
    with pytest.raises(ConfigError, match=r"model\.layer.*'blocks\.5', which model\.layers \['blocks\.3'\] leaves out"):
        load_config(DEMO, ["model.layer=blocks.5", "model.layers=[blocks.3]"])
    assert load_config(DEMO, ["model.layers=[blocks.3, blocks.5]"]).model.layer == "blocks.3"  # demo.yaml's blocks.5 is second


def test_slurm_plan_lists_each_layers_stages_then_follow(tmp_path: Path) -> None:
    p = atlas("slurm-plan", str(DEMO), f"--set=run_dir={tmp_path}", f"--set={LAYERS}")
    names = [line.split("\t")[0] for line in p.stdout.splitlines()]
    assert names == ["collect", "reduce", "grid", "render", "tile", "collect@blocks.3", "reduce@blocks.3",
                     "grid@blocks.3", "render@blocks.3", "tile@blocks.3", "follow"]


def test_locate_places_an_image_on_every_layer_and_serve_serves_them(layers_run: Path, tmp_path: Path) -> None:
    from atlas.serve import resolve_request_path, served_root

    run = tmp_path / "run"
    shutil.copytree(layers_run, run)
    atlas("locate", str(DEMO), "demo://96/70", *sets(run, LAYERS, *FAST))
    for folder in (run, run / "layers" / "blocks.3"):
        index = json.loads((folder / "locate" / "index.json").read_text())
        assert [i["name"] for i in index["images"]] == ["demo 96/70"]
        assert json.loads((folder / "atlases.json").read_text())["located"] == 1
    one = atlas("locate", str(DEMO), "demo://96/71", "--layer", "blocks.3", *sets(run, LAYERS, *FAST))
    assert "layers/blocks.3/locate" in one.stdout
    assert len(json.loads((run / "locate" / "index.json").read_text())["images"]) == 1
    assert served_root(run / "layers" / "blocks.3") == (run.resolve(), "/layers/blocks.3/tiles/")
    for target in ("/layers/blocks.3/tiles/index.html", "/follow/follow.js", "/layers/blocks.3/locate/index.js"):
        assert resolve_request_path(run, target).is_file(), target


def test_adding_a_layer_leaves_the_first_layers_later_stages_finished(layers_run: Path) -> None:
    """The further layers are no setting of any stage of the run: its render (which refuses other
    settings) and tile stay finished when a layer is added, and a run made before `layers` existed
    keeps its fingerprints."""
    from atlas.stages import finished, get_stage

    one = load_config(layers_run / "config.yaml", ["model.layers=null", "model.layer=blocks.5"])
    three = load_config(layers_run / "config.yaml", ["model.layers=[blocks.5, blocks.3, blocks.4]"])
    for name in ("reduce", "grid", "render", "tile"):
        assert finished(get_stage(name, one), one) and finished(get_stage(name, three), three), name
    assert "layers" not in one.model.network_settings() and "layer_of" not in one.model.network_settings()


def test_a_class_atlas_of_a_further_layer(layers_run: Path, tmp_path: Path) -> None:
    """`atlas class-atlas --layer NAME`: the class atlas of that layer's rows, under its run."""
    run = tmp_path / "run"
    shutil.copytree(layers_run, run)
    layer = run / "layers" / "blocks.3"
    col = group_arrays(layer / "collect")
    names = json.loads((layer / "tiles" / "atlas.json").read_text())["class_names"]
    supported = col["attr_classes"][col["attr_values"] > 0]  # classes.top_k 10 (all collected), threshold 0
    top = np.bincount(supported[supported >= 0]).argmax()
    p = atlas("class-atlas", str(DEMO), "--layer", "blocks.3", "--class", f"#{top}",
              *sets(run, LAYERS, *FAST, "classes.top_k=10"))
    subs = [d for d in (layer / "classes").iterdir() if (d / "tiles" / "index.html").is_file()]
    assert len(subs) == 1 and str(subs[0]) in p.stdout, p.stdout
    sub = group_arrays(subs[0] / "collect")
    rows = sub["parent_rows"]
    np.testing.assert_array_equal(sub["activations"], col["activations"][rows])  # blocks.3's rows, not blocks.5's
    assert names and not (run / "classes").exists()
