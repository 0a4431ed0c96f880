"""Layer outputs of any network: tapping them (hooks, or a Python walk of TorchScript Sequentials) and listing them.

A *tap* is a callable ``tap(name, output) -> replacement | None`` invoked after each
layer runs. For eager modules it is a forward hook (whose return value replaces the
output); for TorchScript ``nn.Sequential`` models, where Python hooks cannot run
inside scripted code, the children are executed one by one in Python and the tap
is called after each (nested Sequentials: after each child and after the whole).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ._network import ModelError, Network

__all__ = [
    "Tap",
    "LayerInfo",
    "is_script_sequential",
    "run_tapped",
    "logits_of",
    "list_layers",
    "layer_shape",
    "layer_output",
]

Tap = Callable[[str, Any], Any]


@dataclass(frozen=True)
class LayerInfo:
    """Trace of one forward pass: hookable 4-D layers in execution order, and modules run more than once."""

    layers: tuple[tuple[str, tuple[int, ...]], ...]
    repeated: dict[str, int]


class _StopForward(Exception):
    """Raised by a tap to end the forward pass early (nothing after the layer runs)."""


def is_script_sequential(module: torch.nn.Module) -> bool:
    """True for a TorchScript (scripted or traced) module whose original class is ``nn.Sequential``."""
    return isinstance(module, torch.jit.ScriptModule) and getattr(module, "original_name", None) == "Sequential"


def _script_walk(module: torch.nn.Module, x: Any, tap: Tap, prefix: str) -> Any:
    """Run a TorchScript Sequential child by child, tapping every (nested) child's output."""
    for name, child in module.named_children():
        path = prefix + name
        x = _script_walk(child, x, tap, path + ".") if is_script_sequential(child) else child(x)
        replaced = tap(path, x)
        if replaced is not None:
            x = replaced
    return x


def _hook(tap: Tap, name: str) -> Callable[[torch.nn.Module, Any, Any], Any]:
    def hook(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        return tap(name, output)

    return hook


@contextlib.contextmanager
def _hooked(module: torch.nn.Module, names: list[str], tap: Tap) -> Iterator[None]:
    handles = [module.get_submodule(n).register_forward_hook(_hook(tap, n)) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_tapped(module: torch.nn.Module, x: torch.Tensor, tap: Tap, names: list[str] | None = None) -> Any:
    """Forward ``x`` through ``module`` calling ``tap`` on the outputs of layers ``names`` (None = all).

    A tap may raise to stop the pass (the exception propagates). TorchScript
    Sequentials are walked in Python and tap every child regardless of ``names``.
    """
    if is_script_sequential(module):
        return _script_walk(module, x, tap, "")
    if names is None:  # Python hooks cannot be registered on (or run inside) TorchScript submodules
        names = [n for n, m in module.named_modules() if n and not isinstance(m, torch.jit.ScriptModule)]
    with _hooked(module, names, tap):
        return module(x)


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor [B, K] of a forward output (tensor, ``.logits`` namedtuple, or tuple whose first item it is)."""
    if not isinstance(output, torch.Tensor):
        if hasattr(output, "logits"):
            output = output.logits
        elif isinstance(output, (tuple, list)) and output:
            output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ModelError(f"the network must return logits [B, num_classes], got {shape}; use a classifier (or wrap the model so it returns logits)")
    return output


def _trace(net: Network) -> LayerInfo:
    order: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}

    def tap(name: str, out: Any) -> None:
        calls[name] = calls.get(name, 0) + 1
        if isinstance(out, torch.Tensor) and out.ndim == 4 and name not in order:
            order[name] = tuple(out.shape[1:])

    x = torch.zeros(1, 3, net.input_size, net.input_size)
    try:
        with torch.no_grad():
            run_tapped(net.module, x, tap)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure means the input does not fit the network
        raise ModelError(f"`{net.name}` fails on an input [1, 3, {net.input_size}, {net.input_size}] ({e}); check model.input_size") from None
    repeated = {n: c for n, c in calls.items() if c > 1 and n in order}
    return LayerInfo(tuple((n, s) for n, s in order.items() if n not in repeated), repeated)


def _info(net: Network) -> LayerInfo:
    info = net._layer_cache.get(net.input_size)
    if info is None:
        info = net._layer_cache[net.input_size] = _trace(net)
    return info


def list_layers(net: Network) -> list[tuple[str, tuple[int, ...]]]:
    """Every hookable layer with a 4-D output and its shape (C, H, W) for one input of ``input_size``.

    Layers are ``named_modules`` names (containers included, the root excluded), in
    the order their outputs are produced (a container after its children). Modules
    that run more than once per forward (e.g. a shared ReLU) are left out: their
    output is ambiguous. For TorchScript Sequentials the names are the dotted paths
    of the (nested) children.
    """
    return list(_info(net).layers)


def layer_shape(net: Network, layer: str) -> tuple[int, int, int]:
    """(C, H, W) of ``layer``'s output for one input of ``input_size``; ModelError listing the layers if unknown."""
    info = _info(net)
    shapes = dict(info.layers)
    if layer in shapes:
        c, h, w = shapes[layer]
        return (c, h, w)
    if layer in info.repeated:
        raise ModelError(
            f"layer `{layer}` of `{net.name}` runs {info.repeated[layer]} times per forward pass, so its output is ambiguous; "
            f"pick the enclosing block or another layer (`atlas layers --model {net.name}` lists them)"
        )
    names = [n for n, _ in info.layers]
    close = difflib.get_close_matches(layer, names, n=3)
    hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    raise ModelError(
        f"unknown layer `{layer}` for model `{net.name}`.{hint} Set model.layer to one of the layers that "
        f"`atlas layers --model {net.name}` lists with their shapes: {', '.join(names)}"
    )


def layer_output(net: Network, layer: str, x: torch.Tensor, module: torch.nn.Module | None = None) -> torch.Tensor:
    """The output [B, C, H, W] of ``layer`` for preprocessed ``x`` [B, 3, S, S], differentiable, nothing after it run.

    ``module`` defaults to ``net.module`` (pass a copy moved to another device or
    memory format to run it there). Works for TorchScript Sequentials too.
    """
    layer_shape(net, layer)
    captured: list[torch.Tensor] = []

    def tap(name: str, out: Any) -> None:
        if name == layer:
            captured.append(out)
            raise _StopForward

    with contextlib.suppress(_StopForward):
        run_tapped(net.module if module is None else module, x, tap, [layer])
    if not captured:
        raise ModelError(f"layer `{layer}` did not run in the forward pass of `{net.name}`; choose one `atlas layers --model {net.name}` lists")
    return captured[0]
