"""collect in a class atlas (``classes.parent`` set: the parent's supporting rows copied, no network)
keeps the stage contract: a rerun does nothing, a kill -9 resumes to the same bytes, 3 shards give
the bytes of one process, another rule is refused naming the key. The parent is the session's tiny
whole atlas (read only); the class atlas compares its two most frequent stored attribution classes,
4 rows a chunk so it has several units."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import zarr

from atlas.models import imagenet_class_names
from tests.stages.contract import Runs, StageContract, prepared_run

_PARENT: dict[str, Any] = {}


def _classes(run_dir: Path) -> list[str]:
    """The two classes most often among the parent rows' stored attribution classes."""
    cls = zarr.open_group(str(run_dir / "collect"), mode="r")["attr_classes"][:]
    ks, counts = np.unique(cls[cls >= 0], return_counts=True)
    names = imagenet_class_names()
    return [names[int(k)] for k in ks[np.lexsort((ks, -counts))][:2]]


def _overrides() -> tuple[str, ...]:
    """The class atlas's settings (the parent's path is known once the session's run exists)."""
    return (f"classes.parent={_PARENT['run']}", f"classes.names={json.dumps(_PARENT['names'])}", "classes.top_k=10",
            "collect.chunk_rows=4")


class TestClassAtlasCollectContract(StageContract):
    stage = "collect"
    refused = (("classes.threshold=0.5", "threshold: 0.0 -> 0.5"),)
    accepted: ClassVar[tuple[str, ...]] = ("classes.min_dist=0.3",)  # a layout key: not the selection's

    @property  # type: ignore[override]
    def overrides(self) -> tuple[str, ...]:
        return _overrides()

    @pytest.fixture(scope="class")
    @classmethod
    def runs(cls, whole_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
        _PARENT.update(run=whole_run, names=_classes(whole_run))
        inputs = prepared_run(whole_run, tmp_path_factory, None, _overrides())
        return Runs(inputs, prepared_run(whole_run, tmp_path_factory, "collect", _overrides()))

    def test_the_class_atlas_holds_the_selected_parent_rows(self, runs: Runs) -> None:
        parent = zarr.open_group(str(_PARENT["run"] / "collect"), mode="r")
        child = zarr.open_group(str(runs.reference / "collect"), mode="r")
        rows = child["parent_rows"][:]
        assert len(rows) >= 8 and (np.diff(rows) > 0).all()
        for name in ("activations", "attr_values", "positions"):
            np.testing.assert_array_equal(child[name][:], parent[name].get_orthogonal_selection(rows))
        assert child.attrs["class_atlas"]["names"] == sorted(_PARENT["names"], key=imagenet_class_names().index)
        assert len(json.loads((runs.reference / "state" / "collect" / "units.json").read_text())) >= 2
