"""What every output reader shares: opening a stage's group, and typed attribute access."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any, Literal

import zarr

from ..store import RunDir, StoreError

__all__ = ["open_output", "output_exists", "attr_int", "attr_str", "attr_list", "attr_bool", "attr_dict", "attr_opt", "group_array",
           "create_whole"]

Mode = Literal["r", "r+", "a", "w", "w-"]


def open_output(run: RunDir, stage: str, mode: Mode = "r") -> zarr.Group:
    """The Zarr group of ``stage``'s output in ``run`` (the one place a group is opened by name);
    a one-line StoreError naming the command when it does not exist and ``mode`` is ``r``."""
    return run.open_group(stage, mode=mode)


def output_exists(run: RunDir, stage: str) -> bool:
    """Whether ``stage``'s output group exists (it may still be unfinished)."""
    return run.has_group(stage)


def _attr(group: zarr.Group, key: str) -> Any:
    try:
        return group.attrs[key]
    except KeyError:
        raise StoreError(f"{group.store_path} has no attribute {key!r}: it was written by another version of "
                         "atlas; redo that stage") from None


def attr_int(group: zarr.Group, key: str) -> int:
    return int(_attr(group, key))


def attr_str(group: zarr.Group, key: str) -> str:
    return str(_attr(group, key))


def attr_list(group: zarr.Group, key: str) -> list[Any]:
    return list(_attr(group, key))


def attr_opt(group: zarr.Group, key: str) -> Any:
    """The attribute ``key`` as stored (untyped JSON), None when the group has none."""
    return group.attrs.get(key)


def attr_bool(group: zarr.Group, key: str) -> bool:
    return bool(_attr(group, key))


def attr_dict(group: zarr.Group, key: str) -> dict[str, Any]:
    return dict(_attr(group, key))


def group_array(group: zarr.Group, name: str) -> zarr.Array[Any]:
    """The array ``name`` of ``group``; a one-line StoreError naming the stage to redo when it is missing."""
    try:
        arr = group[name]
    except KeyError:
        arr = None
    if not isinstance(arr, zarr.Array):
        raise StoreError(f"{group.store_path} has no array {name!r}: it is unfinished or was written by another "
                         "version of atlas; redo that stage")
    return arr


def create_whole(run: RunDir, stage: str, build: Callable[[zarr.Group], None]) -> None:
    """Create ``stage``'s group so that it appears whole or not at all: ``build`` fills a new group
    in ``RUN/.<stage>.creating``, which is then renamed to ``RUN/<stage>`` (replacing none)."""
    tmp = run.root / f".{stage}.creating"
    shutil.rmtree(tmp, ignore_errors=True)
    run.root.mkdir(parents=True, exist_ok=True)
    build(zarr.open_group(str(tmp), mode="w", zarr_format=3))
    os.replace(tmp, run.stage_path(stage))
