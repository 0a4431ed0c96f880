"""Typed readers and writers of every stage's output: the one place that knows each store's layout.

A stage never opens another stage's Zarr group by name and never reads its attributes by
string key: it opens the output through its reader here (``CollectOutput.open(run)``,
``GridOutput.open(run).level(16).mean_activation``, ...). Each module names every array and
attribute of one output once, with its shape and dtype in the docstring, and holds the
functions that create and write it. :func:`open_output` is the only call that opens a stage's
group by name.
"""

from __future__ import annotations

from ._base import open_output, output_exists
from ._collect import (
    COLLECT,
    ClassAtlasInfo,
    CollectHeader,
    CollectOutput,
    CollectRows,
    create_collect,
    create_selection,
)
from ._compare import (
    CHANGES,
    COMPARE,
    VIEWS,
    CompareOutput,
    PairInfo,
    copy_layout_knn,
    copy_layout_rows,
    create_pair_collect,
    finish_layout,
    pair_info,
    read_pair,
    write_changes,
    write_pair,
)
from ._examples import DecodeLimits, ExampleCrop, example_crop, run_manifest
from ._follow import FOLLOW, FollowOutput
from ._grid import GRID, GridLevel, GridLevelWriter, GridOutput, GridWriter
from ._layers import LAYERS, layer_run, layer_runs, layer_slug
from ._locate import LOCATE, LocateOutput, write_locate_index
from ._patch_test import PATCH_TEST, PatchTestOutput
from ._reduce import REDUCE, ReduceOutput, ReduceSummary, create_reduce
from ._render import (
    RENDER,
    RenderLevel,
    RenderOutput,
    RenderRows,
    create_render,
    write_render_rows,
    write_render_summaries,
)
from ._units import UNITS, UnitsLevel, UnitsOutput, UnitStats, create_units, units_finished

__all__ = ["open_output", "output_exists",
           "COLLECT", "ClassAtlasInfo", "CollectHeader", "CollectOutput", "CollectRows", "create_collect",
           "create_selection",
           "REDUCE", "ReduceOutput", "ReduceSummary", "create_reduce",
           "DecodeLimits", "ExampleCrop", "example_crop", "run_manifest",
           "COMPARE", "CHANGES", "VIEWS", "CompareOutput", "PairInfo", "copy_layout_knn", "copy_layout_rows",
           "create_pair_collect", "finish_layout", "pair_info", "read_pair", "write_changes", "write_pair",
           "GRID", "GridLevel", "GridLevelWriter", "GridOutput", "GridWriter",
           "RENDER", "RenderLevel", "RenderOutput", "RenderRows", "create_render", "write_render_rows",
           "write_render_summaries",
           "FOLLOW", "FollowOutput",
           "LAYERS", "layer_run", "layer_runs", "layer_slug",
           "LOCATE", "LocateOutput", "write_locate_index",
           "PATCH_TEST", "PatchTestOutput",
           "UNITS", "UnitsLevel", "UnitsOutput", "UnitStats", "create_units", "units_finished"]
