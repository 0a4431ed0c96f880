"""The documented ways to read a run: every stage's groups open with xarray (named
dimensions) and dask, and agree with zarr."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

pytestmark = pytest.mark.slow  # builds the shared whole atlas


@pytest.mark.parametrize(("group", "var", "dims"), [
    ("collect", "activations", ("row", "channel")),
    ("collect", "second_moment", ("channel", "channel_t")),
    ("reduce", "coords", ("row", "xy")),
    ("reduce", "knn_indices", ("fit_row", "neighbour")),
    ("grid", "whitening", ("channel", "channel_t")),
    ("grid/level-8", "mean_activation", ("cell_row", "cell_col", "channel")),
    ("grid/level-8", "example_positions", ("cell_row", "cell_col", "example", "yx")),
    ("render/level-8", "icons", ("icon", "y", "x", "rgb")),
])
def test_groups_open_with_xarray_and_dask(whole_run: Path, group: str, var: str, dims: tuple[str, ...]) -> None:
    ds = xr.open_zarr(whole_run / group, consolidated=False)
    assert ds[var].dims == dims
    ref = zarr.open_array(str(whole_run / group / var), mode="r")[...]
    np.testing.assert_array_equal(ds[var].values, ref)
    np.testing.assert_array_equal(da.from_zarr(str(whole_run / group / var)).compute(), ref)


def test_every_array_has_dimension_names(whole_run: Path) -> None:
    missing = []
    for stage in ("collect", "reduce", "grid", "render"):
        def walk(g: zarr.Group, prefix: str) -> None:
            for name, arr in g.arrays():
                names = arr.metadata.dimension_names
                if not names or len(names) != arr.ndim or None in names:
                    missing.append(prefix + name)
            for name, sub in g.groups():
                walk(sub, f"{prefix}{name}/")
        walk(zarr.open_group(str(whole_run / stage), mode="r"), f"{stage}/")
    assert missing == []
