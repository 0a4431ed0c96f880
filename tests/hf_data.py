"""Small Hugging Face datasets made here (no hub): the same rows as parquet files and as a
``save_to_disk`` folder, with a ClassLabel column, two train files and a validation split."""

from __future__ import annotations

import io
from pathlib import Path

from atlas.sources import DEMO_PHOTOS, demo_image

NAMES = list(DEMO_PHOTOS[:4])  # the ClassLabel's names: the photos the rows are cut from
ROWS = 40
BAD = {5: b"this is not an image", 9: None}  # row -> what its image cell holds instead


def encoded(i: int) -> bytes:
    """Row i's image: a crop of photo i % 4 (JPEG), 64 x 48."""
    buf = io.BytesIO()
    demo_image(16 * (i // 4) + i % 4, (64, 48)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _rows(n: int, offset: int = 0) -> dict[str, list]:
    images = []
    for i in range(offset, offset + n):
        data = BAD[i] if i in BAD else encoded(i)
        images.append(None if data is None else {"bytes": data, "path": None})
    return {"image": images, "label": [i % len(NAMES) for i in range(offset, offset + n)],
            "caption": [f"row {i}" for i in range(offset, offset + n)]}


def make_datasets(root: Path) -> dict[str, Path]:
    """``parquet``: data/train-0000{0,1}-of-00002.parquet (row groups of 8) + validation; ``saved``: a
    DatasetDict saved with save_to_disk (train in two arrow files); the same train rows in both."""
    import datasets

    datasets.disable_progress_bars()

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=NAMES),
                                  "caption": datasets.Value("string")})
    train = datasets.Dataset.from_dict(_rows(ROWS), features=features)
    validation = datasets.Dataset.from_dict(_rows(6, offset=100), features=features)
    parquet = root / "parquet"
    (parquet / "data").mkdir(parents=True)
    half = ROWS // 2
    for k, part in enumerate([train.select(range(half)), train.select(range(half, ROWS))]):
        part.to_parquet(str(parquet / "data" / f"train-{k:05d}-of-00002.parquet"), batch_size=8)
    validation.to_parquet(str(parquet / "data" / "validation-00000-of-00001.parquet"))
    saved = root / "saved"
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(
        str(saved), num_shards={"train": 2, "validation": 1})
    return {"parquet": parquet, "saved": saved}
