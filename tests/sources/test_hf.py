"""The Hugging Face source: kind detection, splits, columns and ClassLabel names, rows loaded
one at a time from parquet row groups and memory-mapped arrow files, bad rows, and the one-line
errors (no datasets package, an offline hub name). Datasets are made here (tests/hf_data.py);
nothing is downloaded."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from atlas._cache import clear_cache
from atlas.config import ImagesConfig
from atlas.formats import example_crop
from atlas.sources import (
    STATUS_MISSING,
    STATUS_UNREADABLE,
    BadInput,
    Manifest,
    SourceError,
    detect_kind,
    load_image,
    scan_source,
)
from tests.hf_data import BAD, NAMES, ROWS, encoded, make_datasets

pytest.importorskip("datasets")

LIMITS = {"max_pixels": 10_000_000, "min_side": 4}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_datasets(tmp_path_factory.mktemp("hf"))


def _scan(path: Path | str, **kw: object) -> Manifest:
    return scan_source(ImagesConfig(path=str(path), **kw))


def test_kind_auto_finds_every_layout(data: dict[str, Path], tmp_path: Path) -> None:
    pq, saved = data["parquet"], data["saved"]
    for path in (pq, pq / "data", pq / "data" / "train-00000-of-00002.parquet", saved, saved / "train",
                 next((saved / "train").glob("*.arrow"))):
        assert detect_kind(str(path)) == "hf", path
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.jpg").write_bytes(encoded(0))
    (tmp_path / "mixed" / "b.parquet").write_bytes((pq / "data" / "train-00000-of-00002.parquet").read_bytes())
    assert detect_kind(str(tmp_path / "mixed")) == "folder"  # images win: a folder of images with a stray file


@pytest.mark.parametrize("layout", ["parquet", "saved"])
def test_scan_reads_the_split_and_its_classlabel_names(data: dict[str, Path], layout: str) -> None:
    m = _scan(data[layout])
    assert (m.kind, len(m), m.label_names) == ("hf", ROWS, NAMES)
    np.testing.assert_array_equal(m.labels, np.arange(ROWS) % len(NAMES))
    files = sorted({loc.split("#")[0] for loc in m.locations})
    assert len(files) == 2 and all(f.startswith(f"hf://{data[layout]}") and "train" in f for f in files)
    assert m.locations[0].endswith("#image/0") and m.locations[ROWS // 2].endswith("#image/0")  # rows within a file
    val = _scan(data[layout], split="validation")
    assert len(val) == 6 and "validation" in val.locations[0]
    assert len(_scan(data[layout], labels="none").label_names) == 0
    assert len(_scan(data[layout], limit=7)) == 7


def test_both_layouts_decode_the_same_pixels_as_the_encoded_file(data: dict[str, Path], tmp_path: Path) -> None:
    pq, saved = _scan(data["parquet"]), _scan(data["saved"])
    for i in (0, 3, 19, 20, 39):  # both files, several row groups
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(encoded(i))
        want = load_image(str(path), size=32, **LIMITS)
        np.testing.assert_array_equal(load_image(pq.locations[i], size=32, **LIMITS), want)
        np.testing.assert_array_equal(load_image(saved.locations[i], size=32, **LIMITS), want)


@pytest.mark.parametrize("layout", ["parquet", "saved"])
def test_bad_rows_are_bad_inputs_with_a_reason(data: dict[str, Path], layout: str) -> None:
    m = _scan(data[layout])
    statuses = {}
    for row in BAD:
        with pytest.raises(BadInput) as info:
            load_image(m.locations[row], size=32, **LIMITS)
        statuses[row] = info.value.status
        assert "\n" not in info.value.reason
    assert statuses == {5: STATUS_UNREADABLE, 9: STATUS_MISSING}
    past = m.locations[0].rsplit("/", 1)[0] + "/999"
    with pytest.raises(BadInput, match="past the end") as info:
        load_image(past, size=32, **LIMITS)
    assert info.value.status == STATUS_MISSING


def test_a_removed_data_file_is_a_missing_input(data: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "one.parquet"
    copy.write_bytes((data["parquet"] / "data" / "train-00000-of-00002.parquet").read_bytes())
    m = _scan(copy)
    assert load_image(m.locations[1], size=16, **LIMITS).shape == (16, 16, 3)
    copy.unlink()
    clear_cache()
    with pytest.raises(BadInput, match="not found") as info:
        load_image(m.locations[1], size=16, **LIMITS)
    assert info.value.status == STATUS_MISSING


def test_example_crops_read_dataset_rows(data: dict[str, Path]) -> None:
    m = _scan(data["saved"])
    images = ImagesConfig(path=str(data["saved"]), **LIMITS)
    crop = example_crop(m, 2, (3, 3), (7, 7), 64, 3.0, images)
    assert crop.ok and crop.pixels is not None and crop.pixels.dtype == np.uint8
    bad = example_crop(m, 5, (3, 3), (7, 7), 64, 3.0, images)
    assert not bad.ok and bad.reason


def test_columns_are_chosen_and_checked(data: dict[str, Path]) -> None:
    m = _scan(data["parquet"], label_column="caption")  # a string column: its names, sorted
    assert m.label_names[:2] == ["row 0", "row 1"] and len(m.label_names) == ROWS
    with pytest.raises(SourceError, match=r"images.image_column 'picture' is not a column .*image, label, caption"):
        _scan(data["parquet"], image_column="picture")
    with pytest.raises(SourceError, match=r"images.label_column 'cls'"):
        _scan(data["parquet"], label_column="cls")
    with pytest.raises(SourceError, match=r"no split 'test'; its splits: train, validation \(set images.split\)"):
        _scan(data["saved"], split="test")
    with pytest.raises(SourceError, match="labels=folders does not apply"):
        _scan(data["saved"], labels="folders")


def test_without_datasets_one_line_names_the_extra(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(SourceError) as info:
        _scan(data["parquet"])
    assert "pip install 'atlas[hf]'" in str(info.value) and "\n" not in str(info.value)


def test_a_hub_name_needs_kind_hf_and_a_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and so nothing can be fetched, whatever happens
    with pytest.raises(SourceError, match="does not exist"):
        _scan("someone/some-dataset")  # kind auto: a local path that is not there
    with pytest.raises(SourceError, match=r"not a local folder, and the Hugging Face hub is off .*huggingface-cli "
                                          r"download --repo-type dataset someone/some-dataset"):
        _scan("someone/some-dataset", kind="hf")
    with pytest.raises(SourceError, match="neither a local Hugging Face dataset nor a hub name"):
        from atlas.sources import check_source

        check_source(ImagesConfig(kind="hf", path="/no/such/folder"))


def test_rows_are_read_by_row_group_not_whole_files(data: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    read: list[int] = []
    real = pq.ParquetFile.read_row_group

    def spy(self: pq.ParquetFile, i: int, *a: object, **k: object) -> object:
        read.append(i)
        return real(self, i, *a, **k)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("a whole file was read"))
    clear_cache()
    for r in range(12):
        load_image(f"hf://{data['parquet']}/data/train-00001-of-00002.parquet#image/{r}", size=16, **LIMITS)
    assert read == [0, 1]  # rows 0-7 then 8-11: one read per row group, in this process
