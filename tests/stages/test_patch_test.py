"""``atlas patch-test`` on the tiny demo atlas (the session's ``whole_run``) with the real bundled
Lite0: the paste geometry exactly, then whole tests end to end through the CLI and the API (an
icon patch, an image-file patch), two tests side by side, errors; the stage contract (rerun,
resume after ``kill -9``, no ``--shard``, inputs) through the CLI (:class:`TestPatchTestContract`).

CLASS_A is the most frequent top-1 class of the held-out demo images the tests scan, CLASS_B the
second most frequent; both are found here by classifying those images, not written down.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atlas import api
from atlas.cli import main
from atlas.config import Config, ConfigError, load_config
from atlas.explore import AtlasRun
from atlas.models import load_network
from atlas.ops.classes import ClassNameError
from atlas.ops.patches import noise_patch, paste, patch_side, place_count, places, resize_patch
from atlas.sources import demo_image, load_image
from atlas.stages.patch_test import PatchSpecError, PatchTestSpec, resolve
from atlas.stages.patch_test._report import examples_figure, pick_examples
from atlas.stages.patch_test._trials import trial_images
from atlas.store import RunDir
from tests.cluster.util import WHOLE, atlas, sets
from tests.conftest import DEMO
from tests.stages.contract import Runs, StageContract, copy_run, one_line_error, prepared_run

SCAN = 48  # held-out demo images scanned (indices 64..111 of the tiny atlas's 96 px demo set)
SMALL = ("patch_test.max_images=3", f"patch_test.scan_max={SCAN}", "patch_test.batch_size=1", "patch_test.sizes=[0.4]",
         "patch_test.positions=[center, random:1]", "patch_test.examples=2", "model.device=cpu",
         "patch_test.threads=1")  # one torch thread: the 2-core test machine is shared (OpenMP spins)


# --------------------------------------------------------------------------- geometry (exact)


def test_patch_side_and_named_places() -> None:
    assert [patch_side(f, 10) for f in (0.01, 0.24, 0.25, 0.5, 1.0)] == [1, 2, 2, 5, 10]
    # a 2 px patch in a 6 px image: 4 px free on each axis
    assert places("center", 6, 2, seed=0, image_id=0, size_index=0).tolist() == [[2, 2]]
    assert places("corners", 6, 2, seed=0, image_id=0, size_index=0).tolist() == [[0, 0], [0, 4], [4, 0], [4, 4]]
    assert places("bottom-left", 6, 2, seed=0, image_id=0, size_index=0).tolist() == [[4, 0]]
    assert places("center", 7, 2, seed=0, image_id=0, size_index=0).tolist() == [[2, 2]]  # 5 free: rounded up-left
    assert [place_count(p) for p in ("center", "corners", "top-right", "random:7")] == [1, 4, 1, 7]


def test_random_places_are_seeded_inside_and_independent_of_the_batch() -> None:
    a = places("random:50", 20, 5, seed=3, image_id=11, size_index=1)
    assert a.shape == (50, 2) and a.min() >= 0 and a.max() <= 15 and len({tuple(x) for x in a.tolist()}) > 30
    assert np.array_equal(a, places("random:50", 20, 5, seed=3, image_id=11, size_index=1))
    for other in ({"seed": 4, "image_id": 11, "size_index": 1}, {"seed": 3, "image_id": 12, "size_index": 1},
                  {"seed": 3, "image_id": 11, "size_index": 0}):
        assert not np.array_equal(a, places("random:50", 20, 5, **other))


def test_paste_exact_values() -> None:
    images = torch.arange(2 * 5 * 5 * 3, dtype=torch.int64).remainder(200).to(torch.uint8).reshape(2, 5, 5, 3)
    patch = torch.full((2, 2, 3), 255, dtype=torch.uint8)
    patch[0, 1] = torch.tensor([1, 2, 3], dtype=torch.uint8)
    out = paste(images, patch, np.array([0, 3]), np.array([3, 1]))
    want = images.clone()
    want[0, 0:2, 3:5] = patch
    want[1, 3:5, 1:3] = patch
    assert torch.equal(out, want)
    assert out[0, 0, 4].tolist() == [1, 2, 3] and out[1, 3, 2].tolist() == [1, 2, 3]
    assert torch.equal(images, torch.arange(150).remainder(200).to(torch.uint8).reshape(2, 5, 5, 3))  # a copy
    per_image = torch.stack([patch, 255 - patch])
    out = paste(images, per_image, np.array([1, 1]), np.array([1, 1]))
    assert torch.equal(out[1, 1:3, 1:3], 255 - patch) and torch.equal(out[0, 1:3, 1:3], patch)
    with pytest.raises(ValueError, match="does not lie inside"):
        paste(images, patch, np.array([4, 0]), np.array([0, 0]))


def test_resize_patch_squares_then_resizes() -> None:
    wide = np.zeros((4, 8, 3), np.uint8)
    wide[:, 2:6] = 200  # the centred 4 x 4 square
    assert np.array_equal(resize_patch(wide, 4), np.full((4, 4, 3), 200, np.uint8))
    assert resize_patch(wide, 2).shape == (2, 2, 3) and resize_patch(wide, 2).flags.writeable


def test_noise_baseline_has_the_patch_size_and_place() -> None:
    """The patch and its noise baseline change the same pixels; the noise depends on the image, not the batch."""
    cfg = load_config(DEMO, ["seed=5"])
    images = torch.zeros(3, 12, 12, 3, dtype=torch.uint8)
    patch = np.full((4, 4, 3), 255, np.uint8)
    where = np.array([[0, 0], [8, 3], [5, 8]])
    patched, noised = trial_images(cfg, images, [7, 8, 9], patch, 1, 2, where)
    for b, (t, left) in enumerate(where.tolist()):
        box = np.zeros((12, 12), bool)
        box[t:t + 4, left:left + 4] = True
        assert np.array_equal(patched[b].numpy().any(axis=2), box)
        assert np.array_equal(noised[b].numpy()[~box], np.zeros(((~box).sum(), 3), np.uint8))
        assert np.array_equal(noised[b, t:t + 4, left:left + 4].numpy(),
                              noise_patch(4, seed=5, image_id=[7, 8, 9][b], size_index=1, place_index=2))
    _, alone = trial_images(cfg, images[1:2], [8], patch, 1, 2, where[1:2])
    assert torch.equal(alone[0], noised[1])
    n = noise_patch(64, seed=5, image_id=7, size_index=1, place_index=2)
    assert n.dtype == np.uint8 and n.min() <= 5 and n.max() >= 250 and 110 < n.mean() < 145


def test_examples_figure_shows_the_picked_images_in_order() -> None:
    """Images the patch turned into CLASS_B come first; each line shows its own image and its own labels."""
    cfg = load_config(DEMO, ["patch_test.sizes=[0.5]", "patch_test.positions=[center]"])
    names = ["cat", "dog", "fox", "owl"]
    spec = PatchTestSpec("t", "k" * 16, 0, 1, names, np.full((8, 8, 3), 255, np.uint8), "a white square", 16, {})
    data = {"ids": np.array([10, 11, 12]), "places": np.full((3, 1, 1, 2), 4, np.int32),
            "orig_top1": np.zeros(3, np.int32), "orig_prob_top1": np.full(3, 0.9, np.float32),
            "orig_prob_b": np.full(3, 0.01, np.float32), "orig_rank_b": np.full(3, 7, np.int32),
            "top1": np.array([0, 2, 1], np.int32)[:, None, None, None].repeat(2, axis=3),
            "prob_top1": np.full((3, 1, 1, 2), 0.5, np.float32), "prob_b": np.full((3, 1, 1, 2), 0.2, np.float32),
            "rank_b": np.ones((3, 1, 1, 2), np.int32)}
    shown = pick_examples(spec, data, 0, 0, 2)
    assert shown == [2, 1]  # turned into "dog" first, then moved off "cat", then the rest
    colours = {2: (200, 0, 0), 1: (0, 0, 200)}
    images = np.stack([np.full((16, 16, 3), colours[i], np.uint8) for i in shown])
    row = {"size": 0.5, "px": 8, "position": "center"}
    fig = np.asarray(examples_figure(cfg, spec, data, images, shown, row, "title"))
    panel, pad, head, cap = 192, 8, 70, 36
    for line, i in enumerate(shown):
        y0 = head + line * (panel + cap + pad)
        assert tuple(fig[y0 + 5, pad + 5]) == colours[i]  # the original, upscaled
        assert tuple(fig[y0 + panel // 2, pad + panel + pad + panel // 2]) == (255, 255, 255)  # the patch, centred


# --------------------------------------------------------------------------- on the tiny demo atlas


@pytest.fixture(scope="module")
def classes(whole_run: Path) -> tuple[str, str]:
    """(CLASS_A, CLASS_B): the two most frequent top-1 classes of the held-out demo images scanned."""
    cfg = load_config(DEMO, [f"run_dir={whole_run}", *WHOLE])
    net = load_network(cfg.model)
    first, side = cfg.images.demo_count, cfg.images.demo_size
    imgs = np.stack([load_image(f"demo://{side}/{i}", size=net.input_size, max_pixels=10**9, min_side=1)
                     for i in range(first, first + SCAN)])
    with torch.inference_mode():
        top1 = net.module(net.preprocess(torch.from_numpy(imgs))).argmax(1).tolist()
    (a, _), (b, _) = Counter(top1).most_common(2)
    return net.class_names[a], net.class_names[b]


def _overrides(a: str, b: str, patch: str, *more: str) -> tuple[str, ...]:
    return (f"patch_test.from_class={json.dumps(a)}", f"patch_test.to_class={json.dumps(b)}",
            f"patch_test.patch={json.dumps(patch)}", *SMALL, *more)


def _cfg(run_dir: Path, *overrides: str) -> Config:
    return load_config(DEMO, [f"run_dir={run_dir}", *WHOLE, *overrides])


def _icon_cell(run_dir: Path) -> str:
    """A ``cell:`` spec of the tiny atlas: the first rendered cell of its 4 x 4 grid."""
    r, c = AtlasRun(run_dir).group("render")["level-4/cells"][0]
    return f"cell:4:{r},{c}"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def icon_test(whole_run: Path, classes: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[str, ...]]:
    """A cell-icon patch test run through the CLI (its run directory, read only, and overrides):
    the contract's reference run (:class:`TestPatchTestContract`)."""
    ov = _overrides(*classes, _icon_cell(whole_run))
    return prepared_run(whole_run, tmp_path_factory, "patch-test", ov), ov


def test_icon_patch_end_to_end(icon_test: tuple[Path, tuple[str, ...]], classes: tuple[str, str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str], whole_run: Path) -> None:
    run_dir, ov = icon_test
    assert (run_dir / "config.yaml").read_bytes() == (whole_run / "config.yaml").read_bytes()  # never rewritten
    assert load_config(run_dir / "state" / "patch-test" / "config.yaml").patch_test.from_class == classes[0]  # its inputs
    run_dir = copy_run(run_dir, tmp_path / "run")
    assert main(["patch-test", str(DEMO), *sets(run_dir, *ov)]) == 0  # finished: the results printed, nothing redone
    printed = capsys.readouterr().out
    assert "atlas: patch flips" in printed and "| size | px | position |" in printed, printed
    cfg = _cfg(run_dir, *ov)
    res = api.patch_test(cfg)  # finished: read back, nothing redone
    folder = Path(res["folder"])
    assert folder.parent == run_dir / "patch-test" and folder.name.endswith("--cell-4-" + _icon_cell(run_dir)[7:].replace(",", "-"))
    assert {p.name for p in folder.iterdir()} >= {"results.json", "table.md", "table.tsv", "examples.png", "patch.png",
                                                  "config.yaml", "test.json", "selection.json", "units"}
    a, b = classes
    assert res["from"]["name"] == a and res["to"]["name"] == b and res["headline"].startswith("patch flips")
    n = res["images"]["tested"]
    assert 2 <= n <= 3 and res["original"]["top1_is_from"] == 1.0  # 2 units or more: the kill test needs them
    assert [(r["size"], r["position"], r["images"], r["trials"]) for r in res["rows"]] == \
        [(0.4, "center", n, n), (0.4, "random:1", n, n)]
    for r in res["rows"]:
        assert r["px"] == 51
        for k in ("to_b_patch", "to_b_noise", "not_a_patch", "not_a_noise"):
            assert 0.0 <= r[k] <= 1.0 and abs(r[k] * r["trials"] - round(r[k] * r["trials"])) < 1e-4  # a share of trials
        assert r["median_rank_b_patch"] >= 1 and r["median_rank_b_noise"] >= 1
    tsv = (folder / "table.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:5] == ["size", "px", "position", "images", "trials"] and len(tsv) == 3
    fig = Image.open(folder / "examples.png")
    assert fig.width == 3 * 192 + 32 and fig.height > 2 * 192
    sel = json.loads((folder / "selection.json").read_text())
    assert sel["ids"] == sorted(sel["ids"]) and all(64 <= i < 64 + SCAN for i in sel["ids"])
    icon = AtlasRun(run_dir).icon(4, *map(int, _icon_cell(run_dir)[7:].split(",")))
    assert np.array_equal(np.asarray(Image.open(folder / "patch.png")), icon)
    assert load_config(folder / "config.yaml").patch_test == cfg.patch_test  # the test's config reproduces it
    again = api.patch_test(load_config(folder / "config.yaml", [f"run_dir={run_dir}"]))  # run_dir left out: given
    assert again["folder"] == str(folder) and again["key"] == res["key"]


def test_second_test_keeps_the_first(icon_test: tuple[Path, tuple[str, ...]], classes: tuple[str, str],
                                     tmp_path: Path) -> None:
    """An image-file patch (through the API) next to the icon test: the first's outputs stay as they were,
    and running the first again recomputes nothing."""
    run_dir = copy_run(icon_test[0], tmp_path / "run")
    first = next((run_dir / "patch-test").iterdir())
    before = _snapshot(first)
    sticker = np.zeros((30, 40, 3), np.uint8)
    sticker[::4] = (255, 0, 0)
    sticker[:, ::4] = (0, 0, 255)
    Image.fromarray(sticker).save(tmp_path / "My Sticker.png")
    a, b = classes
    res = api.patch_test(_cfg(run_dir, *SMALL), from_class=a, to_class=b, patch=str(tmp_path / "My Sticker.png"))
    second = Path(res["folder"])
    assert second.name.endswith("--my-sticker") and second != first
    assert res["patch"]["what"].startswith("the image file") and res["rows"][0]["px"] == 51
    assert np.asarray(Image.open(second / "patch.png")).shape == (128, 128, 3)  # the centred square at the input side
    assert _snapshot(first) == before
    units = {p.name for p in (run_dir / "state" / "patch-test" / "done").iterdir()}
    n = res["images"]["tested"]  # one unit per image (batch_size 1)
    assert sum(u.startswith(first.name + ".") for u in units) == n and sum(u.startswith(second.name + ".") for u in units) == n
    again = api.patch_test(_cfg(run_dir, *icon_test[1]))  # the first test again: its results are read, not redone
    assert again["folder"] == str(first) and _snapshot(first) == before
    assert Path(res["folder"], "results.json").is_file()


def test_other_settings_under_one_name_redo_that_test(icon_test: tuple[Path, tuple[str, ...]], tmp_path: Path) -> None:
    run_dir = copy_run(icon_test[0], tmp_path / "run")
    cfg = _cfg(run_dir, *icon_test[1], "patch_test.positions=[top-left]")
    res = api.patch_test(cfg)
    assert [r["position"] for r in res["rows"]] == ["top-left"]
    folder = Path(res["folder"])
    n = res["images"]["tested"]
    assert len(list((folder / "units").iterdir())) == n  # the old key's unit files are gone
    done = RunDir(run_dir).done_units("patch-test") - {"final"}
    assert len(done) == n and all(".{}.".format(json.loads((folder / "test.json").read_text())["key"][:8]) in u for u in done)


def test_a_deleted_test_folder_is_redone_through_the_runner(icon_test: tuple[Path, tuple[str, ...]],
                                                            tmp_path: Path) -> None:
    """The test is finished by its markers; its folder deleted, the stage's ``refresh`` asks the runner
    for a redo and its ``forget`` names the test's done units: the same results, the markers rewritten."""
    run_dir = copy_run(icon_test[0], tmp_path / "run")
    folder = next((run_dir / "patch-test").iterdir())
    results = json.loads((folder / "results.json").read_text())
    state = run_dir / "state" / "patch-test"
    units = sorted(p.name for p in (state / "done").iterdir() if p.name != "final")
    setup = (state / "setup.json").read_bytes()
    old = {u: (state / "done" / u).stat().st_mtime_ns for u in units}
    shutil.rmtree(folder)
    res = api.patch_test(_cfg(run_dir, *icon_test[1]))
    assert res["folder"] == str(folder) and (folder / "results.json").is_file()
    assert {k: v for k, v in res.items() if k not in ("folder", "table")} == results  # the same test, redone
    assert sorted(p.name for p in (state / "done").iterdir() if p.name != "final") == units
    assert all((state / "done" / u).stat().st_mtime_ns != old[u] for u in units), "the units were not run again"
    assert (state / "setup.json").read_bytes() == setup  # the attempt kept: only this test was redone
    assert len(list((folder / "units").iterdir())) == len(units)


def test_a_folder_of_images(whole_run: Path, classes: tuple[str, str], tmp_path: Path) -> None:
    """``--images FOLDER``: the held-out demo images written as files give the demo test's images and
    patch results (the noise differs: it is seeded by the image's id, here its place in the folder)."""
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(64, 64 + SCAN):
        demo_image(i, 96).save(folder / f"{i:06d}.png")
    run_dir = copy_run(whole_run, tmp_path / "run")
    ov = _overrides(*classes, _icon_cell(run_dir), "patch_test.positions=[center]")
    demo = api.patch_test(_cfg(run_dir, *ov))
    mine = api.patch_test(_cfg(run_dir, *ov), images=str(folder), name="my-folder")
    assert Path(mine["folder"]).name == "my-folder" and mine["images"]["source"] == f"the first {SCAN} images of {folder}"
    ids = [json.loads((Path(r["folder"]) / "selection.json").read_text())["ids"] for r in (demo, mine)]
    assert ids[0] == [64 + i for i in ids[1]]
    for k in ("to_b_patch", "not_a_patch", "dprob_b_patch", "median_rank_b_patch"):
        assert demo["rows"][0][k] == mine["rows"][0][k], k


def test_example_patch_is_the_viewers_crop(whole_run: Path, classes: tuple[str, str]) -> None:
    grid = AtlasRun(whole_run).group("grid")["level-4/examples"][...]
    r, c = (int(x) for x in np.argwhere((grid >= 0).sum(axis=2) >= 2)[0])
    cfg = _cfg(whole_run, *_overrides(*classes, f"example:4:{r},{c}:1"))
    spec = resolve(cfg, RunDir(whole_run))
    assert np.array_equal(spec.patch, AtlasRun(whole_run).example_crop(int(grid[r, c, 1]), cfg.tile.example_window))
    assert spec.slug.endswith(f"--example-4-{r}-{c}-1")


class TestPatchTestContract(StageContract):
    """The icon patch test of :func:`icon_test` (3 held-out images, one a unit)."""

    stage = "patch-test"
    shardable = False
    output_kind = "files"
    redo = ("collect", "collect.top_k=5")  # every later stage and the test become stale; the icon's render is refused
    reads = ("render",)  # the cell: patch is a rendered icon (render is no input: a redo of it is a new test key)
    slow = ("test_refuses_unfinished_or_stale_inputs",)  # redoes collect, reduce, grid, render, tile and the test

    @pytest.fixture(scope="class")
    @classmethod
    def runs(cls, whole_run: Path, icon_test: tuple[Path, tuple[str, ...]],
             tmp_path_factory: pytest.TempPathFactory) -> Runs:
        cls.overrides = icon_test[1]  # the classes found by classifying held-out images, once a session
        return cls.prepare(whole_run, tmp_path_factory)


# --------------------------------------------------------------------------- errors


def test_class_name_errors(whole_run: Path, classes: tuple[str, str]) -> None:
    run = RunDir(whole_run)
    cell = _icon_cell(whole_run)
    with pytest.raises(ClassNameError, match=r"--from snorkle: no class is named 'snorkle'; near names: 'snorkel'"):
        resolve(_cfg(whole_run, *_overrides("snorkle", classes[1], cell)), run)
    with pytest.raises(ClassNameError, match=r"--to cat: class name 'cat' is ambiguous: it matches .*'tiger cat' \(#282\)"):
        resolve(_cfg(whole_run, *_overrides(classes[0], "cat", cell)), run)
    with pytest.raises(ValueError, match="name the same class"):
        resolve(_cfg(whole_run, *_overrides(classes[0], classes[0], cell)), run)
    with pytest.raises(ValueError, match=r"needs --from CLASS \(config key patch_test.from_class\)"):
        resolve(_cfg(whole_run, *SMALL, "patch_test.to_class=tench", f"patch_test.patch={cell}"), run)


def test_patch_spec_errors(whole_run: Path, classes: tuple[str, str], tmp_path: Path) -> None:
    run = RunDir(whole_run)
    with pytest.raises(ConfigError, match=r"`patch_test.patch` must be cell:<grid>:<row>,<col> .*got 'cell:4:1'"):
        _cfg(whole_run, *_overrides(*classes, "cell:4:1"))
    with pytest.raises(PatchSpecError, match=r"does not exist: give cell:<grid>"):
        resolve(_cfg(whole_run, *_overrides(*classes, str(tmp_path / "nope.png"))), run)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(PatchSpecError, match=r"patch file .*bad.png cannot be used"):
        resolve(_cfg(whole_run, *_overrides(*classes, str(tmp_path / "bad.png"))), run)
    with pytest.raises(PatchSpecError, match=r"16 is not a rendered grid of this atlas; its rendered grids are 4, 8"):
        resolve(_cfg(whole_run, *_overrides(*classes, "cell:16:0,0")), run)
    with pytest.raises(PatchSpecError, match=r"outside the 4 x 4 grid"):
        resolve(_cfg(whole_run, *_overrides(*classes, "cell:4:4,0")), run)
    cells = {tuple(x) for x in AtlasRun(whole_run).group("render")["level-4/cells"][...].tolist()}
    r, c = next((r, c) for r in range(4) for c in range(4) if (r, c) not in cells)
    with pytest.raises(PatchSpecError, match=rf"cell \({r}, {c}\) of the 4 x 4 grid has no icon .*cells near it with "
                                             r"icons: cell:4:\d,\d, cell:4:\d,\d"):
        resolve(_cfg(whole_run, *_overrides(*classes, f"cell:4:{r},{c}")), run)


def test_errors_through_the_cli(whole_run: Path, classes: tuple[str, str], tmp_path: Path) -> None:
    """One line, exit 2, nothing created: an unknown class, and a class no held-out image has."""
    run_dir = copy_run(whole_run, tmp_path / "run")
    p = atlas("patch-test", str(DEMO), *sets(run_dir, *SMALL), "--from", "snorkle", "--to", classes[1],
              "--patch", _icon_cell(run_dir), check=False)
    one_line_error(p, "--from snorkle", "near names: 'snorkel'")
    assert not (run_dir / "patch-test").exists()
    p = atlas("patch-test", str(DEMO), *sets(run_dir, *SMALL, "patch_test.scan_max=6"), "--from", "snorkel",
              "--to", classes[1], "--patch", _icon_cell(run_dir), check=False)
    one_line_error(p, "none of the 6 held-out images", "is classified as 'snorkel'", "most frequent top-1 classes:")
    assert not list((run_dir / "patch-test").rglob("results.json"))
