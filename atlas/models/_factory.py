"""Networks from the user's own code: a factory function named in the config, or a module object.

``model.factory: package.module:function`` names an importable function that takes no
argument and returns the network (an ``nn.Module``), or ``(module, preprocessing)`` where
``preprocessing`` is a dict with any of ``input_size``, ``mean``, ``std`` and
``class_names``. Every process that loads the model (each cluster worker, each SLURM task)
imports the function by name and calls it, so the function must be importable there (on
``PYTHONPATH``, an installed package, or a module in the working directory). When
``model.weights`` is set, that state dict is loaded into the module (``strict=True``).

``object:<name>``: a module registered in this process with :func:`register_model`
(``atlas.api.use_model``), for notebooks: it exists in this process only, so stages must
run in it (``cluster.engine: local``).

The network has a classifier when its output for one image is a 2-D tensor [1, K] (class
names ``class 0`` ... unless given); any other output (a feature map, a dict of features)
means no classifier: attribution is off. A preprocessing dict with ``class_names: []``
says there is no classifier whatever the output.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ._classes import class_names_for
from ._network import ModelError, Network, file_sha256, read_state_dict, resolve_preprocessing

__all__ = ["OBJECT_PREFIX", "load_factory", "load_object", "register_model", "registered_objects",
           "network_from_module", "import_factory"]

OBJECT_PREFIX = "object:"
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_PREP_KEYS = {"input_size", "mean", "std", "class_names"}
_OBJECTS: dict[str, tuple[torch.nn.Module, dict[str, Any]]] = {}


def import_factory(spec: str) -> Any:
    """The function ``package.module:function`` names (the working directory is searched too)."""
    if not _FACTORY.match(spec):
        raise ModelError(f"model.factory={spec!r} must be `package.module:function`, e.g. mynets.resnet:build")
    mod_name, fn_name = spec.split(":")
    try:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            missing_is_it = e.name is not None and (mod_name == e.name or mod_name.startswith(e.name + "."))
            if not missing_is_it or os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())  # `atlas` as a console script does not search the working directory
            mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (mod_name == e.name or mod_name.startswith(e.name + ".")):
            raise ModelError(f"model.factory={spec}: no module `{e.name}` in this Python environment or the working "
                             f"directory {os.getcwd()}; add its folder to PYTHONPATH (on every machine that runs a "
                             "stage) or install it") from None
        raise ModelError(f"model.factory={spec}: importing `{mod_name}` failed ({e})") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise ModelError(f"model.factory={spec}: importing `{mod_name}` failed ({type(e).__name__}: {e})") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ModelError(f"model.factory={spec}: `{mod_name}` has no function `{fn_name}`")
    return fn


def _split(result: Any, where: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(module, preprocessing) from a factory's return value."""
    prep: Any = {}
    if isinstance(result, tuple) and len(result) == 2:
        result, prep = result
    if not isinstance(result, torch.nn.Module):
        raise ModelError(f"{where} returned a {type(result).__name__}, not a torch.nn.Module (or a tuple "
                         "(module, preprocessing dict))")
    if not isinstance(prep, Mapping) or set(prep) - _PREP_KEYS:
        bad = sorted(set(prep) - _PREP_KEYS) if isinstance(prep, Mapping) else type(prep).__name__
        raise ModelError(f"{where}: the preprocessing must be a dict with keys among {', '.join(sorted(_PREP_KEYS))}; got {bad}")
    return result, dict(prep)


def _triple(value: Any, key: str, where: str) -> tuple[float, float, float] | None:
    if value is None:
        return None
    try:
        a, b, c = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ModelError(f"{where}: preprocessing `{key}` must be three numbers (RGB), got {value!r}") from None
    return (a, b, c)


def _classes_of(module: torch.nn.Module, input_size: int, name: str) -> list[str]:
    """``class i`` names for a [1, K] output, [] for any other output (no classifier)."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, input_size, input_size))
    except Exception as e:  # noqa: BLE001 - report the failure with the input that caused it
        raise ModelError(f"`{name}` fails on an input [1, 3, {input_size}, {input_size}] ({type(e).__name__}: {e}); "
                         "check model.input_size") from None
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        out = out.logits
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[0] == 1:
        return class_names_for(int(out.shape[1]))
    return []


def network_from_module(model: ModelConfig, module: torch.nn.Module, prep: dict[str, Any], *, where: str,
                        default_size: int | None = None) -> Network:
    """A Network of the user's module: weights from model.weights (if set), preprocessing from ``prep``
    overridden by model.input_size/mean/std, class names from ``prep`` or the output's width."""
    path = None
    if model.weights is not None:
        path = Path(model.weights).expanduser()
        state = read_state_dict(path, model.name)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ModelError(f"weights file {path} does not fit the module of {where}: {e}") from None
    size = prep.get("input_size", default_size)
    input_size, mean, std = resolve_preprocessing(model, None if size is None else int(size),
                                                  _triple(prep.get("mean"), "mean", where), _triple(prep.get("std"), "std", where))
    module = module.cpu().eval()
    names = prep.get("class_names")
    class_names = [str(n) for n in names] if names is not None else _classes_of(module, input_size, model.name)
    return Network(module=module, name=model.name, input_size=input_size, mean=mean, std=std, class_names=class_names,
                   weights_path=None if path is None else str(path),
                   weights_sha256=None if path is None else file_sha256(path))


def load_factory(model: ModelConfig) -> Network:
    """The network ``model.factory`` builds (imported by name in this process)."""
    spec = str(model.factory)
    fn = import_factory(spec)
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the user's function failed
        raise ModelError(f"model.factory={spec} raised {type(e).__name__}: {e}") from None
    module, prep = _split(result, f"model.factory={spec}")
    return network_from_module(model, module, prep, where=f"model.factory={spec}")


def register_model(name: str, module: torch.nn.Module, *, input_size: int | None = None,
                   mean: tuple[float, float, float] | list[float] | None = None,
                   std: tuple[float, float, float] | list[float] | None = None,
                   class_names: list[str] | None = None) -> str:
    """Register ``module`` in this process as ``object:<name>`` (returned) for ``model.name``.

    A copy is kept (later changes to ``module`` do not reach it; register again to replace it).
    ``class_names``: names of its outputs ([] = no classifier; None = ``class i`` when the
    output is [B, K]).
    """
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"register a torch.nn.Module, not a {type(module).__name__}")
    if not re.match(r"^[\w.-]+$", name):
        raise ModelError(f"model object name {name!r} must be letters, digits, '_', '-' or '.'")
    prep = {k: v for k, v in (("input_size", input_size), ("mean", mean), ("std", std), ("class_names", class_names))
            if v is not None}
    _OBJECTS[name] = (copy.deepcopy(module).cpu().eval(), prep)
    return OBJECT_PREFIX + name


def registered_objects() -> list[str]:
    """``object:<name>`` of every module registered in this process."""
    return [OBJECT_PREFIX + n for n in _OBJECTS]


def load_object(model: ModelConfig) -> Network:
    """The module registered as ``model.name`` (``object:<name>``) in this process."""
    key = model.name[len(OBJECT_PREFIX):]
    if key not in _OBJECTS:
        have = ", ".join(registered_objects()) or "none"
        raise ModelError(
            f"no model object `{model.name}` in this process (registered: {have}). A module object exists only in the "
            "process that registered it (api.use_model): run the stages there with cluster.engine=local, or use "
            "model.factory=package.module:function so that every process can build it"
        )
    module, prep = _OBJECTS[key]
    return network_from_module(model, copy.deepcopy(module), prep, where=model.name)
