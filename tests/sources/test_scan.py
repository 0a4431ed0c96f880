"""scan_source on real folders, list files and tar shards; kind detection; the manifest files."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas.config import ImagesConfig
from atlas.sources import (
    STATUS_MISSING,
    BadInput,
    Manifest,
    SourceError,
    detect_kind,
    load_image,
    read_manifest,
    scan_source,
    write_manifest,
)
from tests.image_corpus import encode

LIMITS = {"max_pixels": 10_000_000, "min_side": 4}


def _img(path: Path, colour: tuple[int, int, int], fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(Image.new("RGB", (24, 20), colour), fmt))
    return path


def _scan(path: Path | str, **kw: object) -> Manifest:
    return scan_source(ImagesConfig(path=str(path), **kw))


def _colour(location: str) -> tuple[int, ...]:
    return tuple(int(v) for v in load_image(location, size=8, **LIMITS)[4, 4])


# --------------------------------------------------------------------------- folder

_TREE = ["b/2.png", "a/9.JPG", "root.png", "c/sub/x.webp", "a/10.jpg", "a-b/1.png"]
_ORDER = ["a/10.jpg", "a/9.JPG", "a-b/1.png", "b/2.png", "c/sub/x.webp", "root.png"]


def _tree(root: Path, order: list[str]) -> Path:
    for k, rel in enumerate(order):
        fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[rel.rsplit(".", 1)[1].lower()]
        _img(root / rel, (10 * k, 0, 0), fmt)
    (root / "notes.txt").write_text("not an image")
    _img(root / ".hidden" / "h.png", (0, 0, 0))
    _img(root / "a" / "._resource_fork.jpg", (0, 0, 0))
    (root / "empty_sub").mkdir()
    return root


def test_folder_order_is_sorted_relative_paths_whatever_the_creation_order(tmp_path):
    m1 = _scan(_tree(tmp_path / "one", _TREE))
    m2 = _scan(_tree(tmp_path / "two", list(reversed(_TREE))))
    assert m1.kind == "folder" and len(m1) == 6
    rel = [os.path.relpath(p, tmp_path / "one").replace(os.sep, "/") for p in m1.locations]
    assert rel == _ORDER
    assert [os.path.relpath(p, tmp_path / "two") for p in m2.locations] == [os.path.relpath(p, tmp_path / "one")
                                                                             for p in m1.locations]
    assert all(os.path.isabs(p) for p in m1.locations)


def test_folder_labels_from_first_level_sub_folders(tmp_path):
    root = _tree(tmp_path / "t", _TREE)
    m = _scan(root)
    assert m.label_names == ["a", "a-b", "b", "c"]
    assert m.labels.dtype == np.int32
    assert m.labels.tolist() == [0, 0, 1, 2, 3, -1]
    assert _scan(root, labels="none").labels.tolist() == [-1] * 6
    assert _scan(root, labels="none").label_names == []
    assert _scan(root, labels="folders").labels.tolist() == [0, 0, 1, 2, 3, -1]


def test_flat_folder_has_no_labels_unless_asked(tmp_path):
    for k in range(3):
        _img(tmp_path / f"{k}.png", (k, 0, 0))
    m = _scan(tmp_path)
    assert m.labels.tolist() == [-1, -1, -1] and m.label_names == []
    assert _colour(m.locations[2]) == (2, 0, 0)


def test_empty_folder_is_a_source_error_naming_the_fix(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(SourceError, match=r"holds no images.*set images.path"):
        _scan(tmp_path)


def test_missing_path_is_a_source_error_naming_the_fix(tmp_path):
    with pytest.raises(SourceError, match=r"images.path .*nowhere does not exist; set images.path to a folder"):
        _scan(tmp_path / "nowhere")
    with pytest.raises(SourceError, match="does not exist"):
        _scan(tmp_path / "nowhere", kind="folder")


def test_a_single_image_or_unknown_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="not a .txt/.csv list, a .tar shard or a .parquet/.arrow file"):
        _scan(_img(tmp_path / "one.png", (1, 2, 3)))
    with pytest.raises(SourceError, match="images.kind=folder needs images.path to be a folder"):
        _scan(tmp_path / "one.png", kind="folder")


def test_limit_keeps_the_first_entries(tmp_path):
    root = _tree(tmp_path / "t", _TREE)
    full, part = _scan(root), _scan(root, limit=4)
    assert part.locations == full.locations[:4]
    assert part.labels.tolist() == full.labels[:4].tolist() and part.label_names == full.label_names
    assert len(_scan(root, limit=100)) == 6


# --------------------------------------------------------------------------- list


def test_txt_list_with_comments_relative_absolute_and_missing_paths(tmp_path):
    a = _img(tmp_path / "imgs" / "a.png", (1, 0, 0))
    _img(tmp_path / "imgs" / "b.png", (2, 0, 0))
    lst = tmp_path / "lists" / "l.txt"
    lst.parent.mkdir()
    lst.write_text(f"# my images\n\n../imgs/b.png\n{a}\n  ../imgs/missing.png  \n# end\n")
    m = _scan(lst)
    assert m.kind == "list" and m.source == str(lst)
    assert m.locations == [str(tmp_path / "imgs" / "b.png"), str(a), str(tmp_path / "imgs" / "missing.png")]
    assert m.labels.tolist() == [-1, -1, -1] and m.label_names == []
    assert _colour(m.locations[0]) == (2, 0, 0)
    with pytest.raises(BadInput) as info:
        load_image(m.locations[2], size=8, **LIMITS)
    assert info.value.status == STATUS_MISSING
    assert _scan(lst, limit=1).locations == m.locations[:1]


def test_csv_list_with_header_and_string_labels(tmp_path):
    for name in ("x", "y", "z"):
        _img(tmp_path / f"{name}.png", (3, 3, 3))
    (tmp_path / "l.csv").write_text("path,label\nz.png,dog\nx.png,cat\n# skipped\ny.png,dog\nw.png,\n")
    m = _scan(tmp_path / "l.csv")
    assert [Path(p).name for p in m.locations] == ["z.png", "x.png", "y.png", "w.png"]
    assert m.label_names == ["cat", "dog"]
    assert m.labels.tolist() == [1, 0, 1, -1]
    assert _scan(tmp_path / "l.csv", labels="none").labels.tolist() == [-1] * 4


def test_csv_list_without_header_and_integer_labels(tmp_path):
    _img(tmp_path / "sub" / "a.jpg", (0, 0, 0), "JPEG")
    (tmp_path / "l.csv").write_text('sub/a.jpg,3\n"sub/with, comma.jpg",0\nsub/b.jpg,10\n')
    m = _scan(tmp_path / "l.csv")
    assert [Path(p).name for p in m.locations] == ["a.jpg", "with, comma.jpg", "b.jpg"]
    assert m.labels.tolist() == [3, 0, 10]
    assert m.label_names == [str(i) for i in range(11)]
    assert _scan(tmp_path / "l.csv", labels="folders").label_names == ["sub"]


def test_empty_list_is_a_source_error(tmp_path):
    (tmp_path / "l.txt").write_text("# nothing\n\n")
    with pytest.raises(SourceError, match="names no images"):
        _scan(tmp_path / "l.txt")


# --------------------------------------------------------------------------- tar


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _shards(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    png = lambda c: encode(Image.new("RGB", (24, 20), c), "PNG")  # noqa: E731
    with tarfile.open(root / "shard-000.tar", "w") as tf:
        _add(tf, "s/000.cls", b"3\n")
        _add(tf, "s/000.jpg", encode(Image.new("RGB", (24, 20), (200, 0, 0)), "JPEG", quality=95))
        _add(tf, "s/001.png", png((1, 2, 3)))
        _add(tf, "s/001.cls", b"1")
        _add(tf, "s/002.json", b"{}")  # no image: not a sample
        _add(tf, "s/003.PNG", png((4, 5, 6)))  # no .cls: label -1
    with tarfile.open(root / "shard-001.tar", "w") as tf:
        _add(tf, "s/" + "long_name_" * 12 + ".png", png((7, 8, 9)))  # a long (GNU/pax) member name
        _add(tf, "s/" + "long_name_" * 12 + ".cls", b"0")
    return root


def test_tar_shards_in_order_with_cls_labels(tmp_path):
    root = _shards(tmp_path / "shards")
    m = _scan(root)
    assert m.kind == "tar" and len(m) == 4
    assert m.labels.tolist() == [3, 1, -1, 0]
    assert m.label_names == ["0", "1", "2", "3"]
    assert [loc.rsplit(":", 1)[1] for loc in m.locations] == ["s/000.jpg", "s/001.png", "s/003.PNG",
                                                              "s/" + "long_name_" * 12 + ".png"]
    assert all(loc.startswith(f"tar://{root}/shard-00") for loc in m.locations)
    assert [_colour(loc) for loc in m.locations[1:]] == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert np.abs(np.subtract(_colour(m.locations[0]), (200, 0, 0))).max() < 6
    assert _scan(root, labels="none").labels.tolist() == [-1] * 4


def test_tar_single_file_glob_and_limit(tmp_path):
    root = _shards(tmp_path / "shards")
    one = _scan(root / "shard-001.tar")
    assert len(one) == 1 and one.kind == "tar"
    assert _scan(str(root / "shard-*.tar")).locations == _scan(root).locations
    assert _scan(root, limit=2).locations == _scan(root).locations[:2]
    assert _scan(root / "shard-000.tar", kind="tar").locations == _scan(root).locations[:3]
    with pytest.raises(SourceError, match="glob that matches no .tar files"):
        _scan(str(root / "nothing-*.tar"))


def test_tar_location_is_random_access_open_seek_read(tmp_path):
    root = _shards(tmp_path / "shards")
    m = _scan(root)
    path, rest = m.locations[1][len("tar://"):].split("#")
    offset, size, name = rest.split(":", 2)
    with open(path, "rb") as fh:
        fh.seek(int(offset))
        data = fh.read(int(size))
    with tarfile.open(path) as tf:
        assert data == tf.extractfile(name).read()


def test_compressed_or_broken_shard_is_a_source_error(tmp_path):
    _shards(tmp_path / "src")
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "a.tar").write_bytes(gzip.compress((tmp_path / "src" / "shard-000.tar").read_bytes()))
    with pytest.raises(SourceError, match="plain .*uncompressed.* .tar"):
        _scan(tmp_path / "gz")
    (tmp_path / "none").mkdir()
    with tarfile.open(tmp_path / "none" / "a.tar", "w") as tf:
        _add(tf, "x.json", b"{}")
    with pytest.raises(SourceError, match="holds no image members"):
        _scan(tmp_path / "none")


# --------------------------------------------------------------------------- detection


def test_auto_detection_of_every_kind(tmp_path):
    shards = _shards(tmp_path / "shards")
    folder = _tree(tmp_path / "folder", _TREE)
    (tmp_path / "l.txt").write_text("folder/root.png\n")
    (tmp_path / "l.csv").write_text("folder/root.png,x\n")
    mixed = _shards(tmp_path / "mixed")
    _img(mixed / "img.png", (0, 0, 0))
    assert detect_kind("demo") == "demo"
    assert detect_kind(str(shards)) == "tar"
    assert detect_kind(str(shards / "shard-000.tar")) == "tar"
    assert detect_kind(str(shards / "*.tar")) == "tar"
    assert detect_kind(str(folder)) == "folder"
    assert detect_kind(str(mixed)) == "folder"  # images beside the tars: a folder of images
    assert detect_kind(str(tmp_path / "l.txt")) == "list"
    assert detect_kind(str(tmp_path / "l.csv")) == "list"
    assert _scan("demo", demo_count=5).kind == "demo"
    for p in (shards, folder, tmp_path / "l.txt"):
        assert _scan(p).kind == detect_kind(str(p))


def test_unknown_kind_is_a_source_error():
    with pytest.raises(SourceError, match="images.kind 'zip' is unknown"):
        scan_source(ImagesConfig.model_construct(kind="zip"))  # past the schema: the loader checks too


# --------------------------------------------------------------------------- manifest


def test_manifest_round_trip(tmp_path):
    m = Manifest("folder", "~/imgs", ["/a/b c.jpg", "/tab\there.png", "/new\nline\\x.png", "tar:///s.tar#1:2:n"],
                 np.array([2, -1, 0, 1]), ["x", "y", "z"])
    write_manifest(m, tmp_path / "run")
    lines = (tmp_path / "run" / "manifest.tsv").read_text().split("\n")
    assert lines[0] == "/a/b c.jpg\t2" and len(lines) == 5 and lines[-1] == ""
    meta = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert meta == {"kind": "folder", "source": "~/imgs", "label_names": ["x", "y", "z"], "n": 4}
    r = read_manifest(tmp_path / "run")
    assert (r.kind, r.source, r.locations, r.label_names) == (m.kind, m.source, m.locations, m.label_names)
    assert r.labels.dtype == np.int32 and r.labels.tolist() == [2, -1, 0, 1]
    assert not list((tmp_path / "run").glob(".*.tmp"))


def test_scanned_manifest_round_trip(tmp_path):
    m = _scan(_shards(tmp_path / "shards"))
    write_manifest(m, tmp_path / "run")
    r = read_manifest(tmp_path / "run")
    assert r.locations == m.locations and r.labels.tolist() == m.labels.tolist() and len(r) == len(m)


def test_incomplete_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="no complete manifest"):
        read_manifest(tmp_path)
    write_manifest(Manifest("demo", "demo", ["demo://8/0", "demo://8/1"], np.array([0, 1]), ["a", "b"]), tmp_path)
    (tmp_path / "manifest.tsv").write_text("demo://8/0\t0\n")
    with pytest.raises(SourceError, match="has 1 rows but manifest.json says 2"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_limit_random_is_a_seeded_class_balanced_subset_in_source_order(tmp_path: Path, kind: str) -> None:
    for c in range(4):
        for i in range(5):
            _img(tmp_path / "src" / f"class{c}" / f"{i}.png", (c * 60, i * 40, 0))
    path = tmp_path / "src"
    if kind == "tar":
        path = tmp_path / "shard.tar"
        with tarfile.open(path, "w") as tf:
            for p in sorted((tmp_path / "src").rglob("*.png")):
                tf.add(p, arcname=f"{p.parent.name}_{p.stem}.png")
    first = _scan(path, limit=8)
    assert first.locations == _scan(path).locations[:8]
    a, b = _scan(path, limit=8, subset="random"), _scan(path, limit=8, subset="random")
    everything = _scan(path).locations
    assert a.locations == b.locations and len(a) == 8
    assert [everything.index(x) for x in a.locations] == sorted(everything.index(x) for x in a.locations)
    assert a.locations != first.locations
    if kind == "folder":
        assert len(set(a.labels.tolist())) > 2  # not just the first two classes
