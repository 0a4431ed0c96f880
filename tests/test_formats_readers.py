"""The typed readers and writers of :mod:`atlas.formats` on the session's whole tiny atlas: every
attribute and array read back as the stages wrote it, a missing output is a one-line error, and no
module outside ``atlas/formats`` opens a stage's group or reads its attributes by string."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from atlas.config import load_config
from atlas.formats import (
    ClassAtlasInfo,
    CollectHeader,
    CollectOutput,
    ReduceOutput,
    create_selection,
)
from atlas.store import RunDir, StoreError
from tests.cluster.util import WHOLE
from tests.conftest import DEMO, ROOT

_CREATION_KEYS = [f for f in CollectHeader.__dataclass_fields__]


def _raw(run: Path, stage: str) -> zarr.Group:
    return zarr.open_group(str(run / stage), mode="r")


# --------------------------------------------------------------------------- collect


@pytest.mark.slow
def test_collect_reader_reads_every_attribute(whole_run: Path) -> None:
    cfg = load_config(DEMO, list(WHOLE))
    raw, col = _raw(whole_run, "collect"), CollectOutput.open(RunDir(whole_run))
    a = dict(raw.attrs)
    assert col.model == cfg.model.name and col.layer == cfg.model.layer
    assert col.input_size == cfg.model.input_size == a["input_size"]
    assert col.layer_shape == tuple(a["layer_shape"]) and all(isinstance(v, int) for v in col.layer_shape)
    assert col.layer_grid == col.layer_shape[1:]
    assert col.n_images == cfg.images.demo_count and col.chunk_rows == cfg.collect.chunk_rows
    assert (col.seed, col.border, col.top_k) == (cfg.seed, cfg.collect.border, cfg.collect.top_k)
    assert col.attribution is True and col.has_attribution
    assert col.class_names == a["class_names"] and len(col.class_names) > 0
    assert col.label_names == a["label_names"] and col.status_codes == a["status_codes"]
    assert col.weights_sha256 == a["weights_sha256"]
    assert (col.ok_count, col.bad_count) == (a["ok_count"], a["bad_count"])
    assert col.ok_count == int((raw["status"][:] == 1).sum())
    assert col.class_atlas is None and not col.has_parent_rows
    # the header is every attribute collect writes at creation, in its order: to_attrs() gives them back
    assert list(col.header.to_attrs().items()) == [(k, a[k]) for k in _CREATION_KEYS]
    assert list(a)[:len(_CREATION_KEYS)] == _CREATION_KEYS


@pytest.mark.slow
def test_collect_reader_arrays(whole_run: Path) -> None:
    raw, col = _raw(whole_run, "collect"), CollectOutput.open(RunDir(whole_run))
    n, (c, _, _) = col.n_images, col.layer_shape
    expect = {"activations": ((n, c), np.float16), "positions": ((n, 2), np.int16), "index": ((n,), np.int64),
              "status": ((n,), np.uint8), "labels": ((n,), np.int32), "attr_classes": ((n, col.top_k), np.int16),
              "attr_values": ((n, col.top_k), np.float32), "second_moment": ((c, c), np.float64)}
    for name, (shape, dtype) in expect.items():
        arr = getattr(col, name)
        assert (arr.shape, arr.dtype) == (shape, dtype), name
        np.testing.assert_array_equal(arr[...], raw[name][...], err_msg=name)
    assert (col.n_rows, col.n_channels, col.dtype) == (n, c, np.dtype(np.float16))
    np.testing.assert_array_equal(col.status_all(), raw["status"][:])
    rows = np.array([0, 1, col.chunk_rows, n - 1], np.int64)
    got = col.read_activations(rows)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, raw["activations"][:][rows].astype(np.float32))
    picked = col.take(rows[::-1])
    np.testing.assert_array_equal(picked.positions, raw["positions"][:][rows[::-1]])
    np.testing.assert_array_equal(picked.index, rows[::-1])
    assert picked.attr_values is not None
    np.testing.assert_array_equal(picked.attr_values, raw["attr_values"][:][rows[::-1]])


@pytest.mark.slow
def test_selection_writer_copies_the_parent_layout(whole_run: Path, tmp_path: Path) -> None:
    parent = CollectOutput.open(RunDir(whole_run))
    run = RunDir(tmp_path / "child")
    rows = np.array([2, 5, 17, 40, 41], np.int64)
    info = ClassAtlasInfo(parent=str(whole_run), classes=[3], names=[parent.class_names[3]], threshold=0.0,
                          top_k=parent.top_k, max_rows=100, rows_per_class=[5], parent_rows=parent.n_images)
    create_selection(run, parent, rows, 2, info)
    child = CollectOutput.open(run, mode="r+")
    for lo in range(0, len(rows), 2):
        child.write_rows(lo, parent.take(rows[lo:lo + 2]))
    child.write_totals(np.eye(parent.n_channels), len(rows), 0)
    child = CollectOutput.open(run)
    assert child.class_atlas == info and child.n_images == len(rows) and child.chunk_rows == 2
    np.testing.assert_array_equal(child.parent_rows[:], rows)
    same = ("model", "layer", "layer_shape", "input_size", "seed", "border", "attribution", "top_k", "class_names",
            "label_names", "status_codes", "weights_sha256")
    assert {k: getattr(child.header, k) for k in same} == {k: getattr(parent.header, k) for k in same}
    own = ["n_images", "chunk_rows"]  # the parent's header first, then the class atlas's own keys
    assert list(child.group.attrs) == [k for k in _CREATION_KEYS if k not in own] + [*own, "class_atlas", "ok_count",
                                                                                    "bad_count"]
    for name in ("activations", "positions", "index", "status", "labels", "attr_classes", "attr_values"):
        src, dst = getattr(parent, name), getattr(child, name)
        assert (dst.dtype, dst.fill_value, dst.chunks[0]) == (src.dtype, src.fill_value, 2), name
        np.testing.assert_array_equal(dst[...], src[...][rows], err_msg=name)
    assert (child.ok_count, child.bad_count) == (len(rows), 0)


def test_class_atlas_info_round_trips() -> None:
    info = ClassAtlasInfo(parent="/p", classes=[1, 7], names=["a", "b"], threshold=0.5, top_k=3, max_rows=10,
                          rows_per_class=[4, 6], parent_rows=99)
    assert ClassAtlasInfo.from_attrs(info.to_attrs()) == info
    assert list(info.to_attrs()) == ["parent", "classes", "names", "threshold", "top_k", "max_rows", "rows_per_class",
                                     "parent_rows"]
    with pytest.raises(StoreError, match="class_atlas"):
        ClassAtlasInfo.from_attrs({"parent": "/p"})


# --------------------------------------------------------------------------- reduce


@pytest.mark.slow
def test_reduce_reader(whole_run: Path) -> None:
    raw, red = _raw(whole_run, "reduce"), ReduceOutput.open(RunDir(whole_run))
    a = dict(raw.attrs)
    n = CollectOutput.open(RunDir(whole_run)).n_images
    assert red.params == a["params"] and red.complete is True
    assert red.init == a["init"] == a["params"]["init"] and red.knn_method == a["knn_method"]
    assert red.knn_recall == a["knn_recall"] and red.trustworthiness == a["trustworthiness"]
    bounds = red.bounds
    assert bounds is not None
    np.testing.assert_array_equal(bounds[0], a["bounds"]["lo"])
    np.testing.assert_array_equal(bounds[1], a["bounds"]["hi"])
    m, k = raw["knn_indices"].shape
    expect = {"coords": ((n, 2), np.float32), "raw_coords": ((n, 2), np.float32), "knn_indices": ((m, k), np.int64),
              "knn_dists": ((m, k), np.float32), "fit_rows": ((m,), np.int64)}
    for name, (shape, dtype) in expect.items():
        arr = getattr(red, name)
        assert (arr.shape, arr.dtype) == (shape, dtype), name
        np.testing.assert_array_equal(arr[...], raw[name][...], err_msg=name)
    assert k == red.params["n_neighbors"] and m == red.params["n_fit"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("reader", "stage"), [(CollectOutput, "collect"), (ReduceOutput, "reduce")])
def test_missing_output_is_one_line(tmp_path: Path, reader: type[CollectOutput] | type[ReduceOutput],
                                    stage: str) -> None:
    with pytest.raises(StoreError) as e:
        reader.open(RunDir(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and f"atlas {stage}" in msg and str(tmp_path / stage) in msg
    assert not reader.exists(RunDir(tmp_path))


@pytest.mark.slow
def test_missing_attribute_or_array_is_one_line(whole_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(whole_run / "collect", run_dir / "collect")
    g = zarr.open_group(str(run_dir / "collect"), mode="r+")
    del g.attrs["input_size"]
    del g["second_moment"]
    col = CollectOutput.open(RunDir(run_dir))
    for read in (lambda: col.input_size, lambda: col.second_moment):
        with pytest.raises(StoreError) as e:
            read()
        assert "\n" not in str(e.value) and "redo" in str(e.value)


# --------------------------------------------------------------------------- no reads by string


_ALLOWED = (ROOT / "atlas" / "formats", ROOT / "atlas" / "store.py")
_OPENERS = {"open_group", "has_group"}


def _violations(path: Path) -> list[str]:
    """``open_group(``/``has_group(`` calls and ``.attrs`` uses in one module (line: what)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name in _OPENERS:
                out.append(f"{node.lineno}: {name}(...)")
        elif isinstance(node, ast.Attribute) and node.attr == "attrs":
            out.append(f"{node.lineno}: .attrs")
    return sorted(out)


def test_no_stage_group_is_read_by_string_outside_formats() -> None:
    """Only atlas/formats (and the store's own open_group) open a stage's Zarr group or read its
    attributes: everything else goes through the typed readers and writers."""
    found = {}
    for path in sorted((ROOT / "atlas").rglob("*.py")):
        if any(path == a or a in path.parents for a in _ALLOWED):
            continue
        if bad := _violations(path):
            found[str(path.relative_to(ROOT))] = bad
    assert not found, f"group opened or attributes read outside atlas/formats: {found}"


def test_the_check_finds_a_read_by_string(tmp_path: Path) -> None:
    mod = tmp_path / "m.py"
    mod.write_text("def f(run):\n    g = run.open_group('collect')\n    return g.attrs['layer_shape']\n")
    assert _violations(mod) == ["2: open_group(...)", "3: .attrs"]
