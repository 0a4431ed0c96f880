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

from ._layouts import LayerSpec, ambiguous_message, detect_layout, second_probe_size
from ._network import ModelError, Network

__all__ = [
    "Tap",
    "LayerInfo",
    "LayerSpec",
    "layer_specs",
    "layer_spec",
    "raw_layer_output",
    "takes_one_input_size",
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
    """Probe of the network: every hookable 3-D / 4-D output in execution order with its shape (no batch axis)
    at input side ``size`` and at ``size2`` (None: the network takes no other size), the modules run more than
    once, and the grid sides of 4-D outputs (hints for token grids)."""

    outputs: tuple[tuple[str, tuple[int, ...], tuple[int, ...] | None], ...]
    repeated: dict[str, int]
    size: int
    size2: int | None
    known_grids: frozenset[int]
    conv2d: frozenset[str]


_NCHW_MODULES = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.BatchNorm2d, torch.nn.MaxPool2d,
                 torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)
_NCHW_NAMES = {c.__name__ for c in _NCHW_MODULES}


def _conv2d_names(module: torch.nn.Module) -> frozenset[str]:
    """Names of the submodules that are torch 2-D convolutions, batch norms or poolings (scripted ones too)."""
    return frozenset(n for n, m in module.named_modules() if n and (
        isinstance(m, _NCHW_MODULES) or getattr(m, "original_name", None) in _NCHW_NAMES))


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


def _outputs(net: Network, size: int) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Shapes (no batch axis) of every 3-D and 4-D tensor output for one input of side ``size``, and call counts."""
    order: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}

    def tap(name: str, out: Any) -> None:
        calls[name] = calls.get(name, 0) + 1
        # batch of one: an output whose first axis is not 1 (e.g. Swin's windows) does not hold one row per image
        if isinstance(out, torch.Tensor) and out.ndim in (3, 4) and out.shape[0] == 1 and name not in order:
            order[name] = tuple(out.shape[1:])

    with torch.no_grad():
        run_tapped(net.module, torch.zeros(1, 3, size, size), tap)
    return order, calls


def _trace(net: Network) -> LayerInfo:
    size = net.input_size
    try:
        order, calls = _outputs(net, size)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure means the input does not fit the network
        raise ModelError(f"`{net.name}` fails on an input [1, 3, {size}, {size}] ({e}); check model.input_size") from None
    size2: int | None = second_probe_size(size)
    try:
        order2, _ = _outputs(net, second_probe_size(size))
    except Exception:  # noqa: BLE001 - a network that takes one input size only (e.g. a ViT): judged from one probe
        size2, order2 = None, {}
    repeated = {n: c for n, c in calls.items() if c > 1 and n in order}
    known = {s[1] for s in order.values() if len(s) == 3 and s[1] == s[2]}
    known |= {s[0] for s in order.values() if len(s) == 3 and s[0] == s[1]}
    outputs = tuple((n, s, order2.get(n)) for n, s in order.items() if n not in repeated)
    return LayerInfo(outputs, repeated, size, size2, frozenset(known), _conv2d_names(net.module))


def _info(net: Network) -> LayerInfo:
    info = net._layer_cache.get(net.input_size)
    if info is None:
        info = net._layer_cache[net.input_size] = _trace(net)
    return info


def _detect(net: Network, info: LayerInfo, name: str, out1: tuple[int, ...], out2: tuple[int, ...] | None,
            strict: bool) -> LayerSpec | None:
    return detect_layout(name, out1, out2, info.size, info.size2, layout=net.layout, prefix=net.prefix_tokens,
                         known_grids=set(info.known_grids), conv2d=name in info.conv2d, strict=strict)


def takes_one_input_size(net: Network) -> bool:
    """True for a network that fails on inputs of another side than ``input_size`` (e.g. a ViT)."""
    return _info(net).size2 is None


def layer_specs(net: Network) -> list[LayerSpec]:
    """Every hookable layer with a spatial grid, in execution order, with its layout and grid (C, rows, cols)
    for one input of ``input_size``; layers whose layout cannot be told are included with ``layout`` None."""
    info = _info(net)
    specs = (_detect(net, info, n, s1, s2, strict=False) for n, s1, s2 in info.outputs)
    return [s for s in specs if s is not None]


def list_layers(net: Network) -> list[tuple[str, tuple[int, ...]]]:
    """Every hookable layer with a spatial grid and its (C, rows, cols) for one input of ``input_size``.

    Any layout counts (``nchw``, ``nhwc``, ``tokens``: see :mod:`atlas.models._layouts`);
    layers whose layout cannot be told are left out here (:func:`layer_specs` has them).
    Layers are ``named_modules`` names (containers included, the root excluded), in the
    order their outputs are produced (a container after its children). Modules that run
    more than once per forward (e.g. a shared ReLU) are left out: their output is
    ambiguous. For TorchScript Sequentials the names are the dotted paths of the (nested)
    children.
    """
    return [(s.name, s.shape) for s in layer_specs(net) if s.shape is not None]


def layer_spec(net: Network, layer: str) -> LayerSpec:
    """The layout and grid of ``layer``; ModelError when it is unknown (listing the layers), runs more than
    once, has no spatial grid, or its layout cannot be told (naming model.layout and model.prefix_tokens)."""
    info = _info(net)
    for name, s1, s2 in info.outputs:
        if name == layer:
            spec = _detect(net, info, name, s1, s2, strict=True)
            if spec is None:
                dims = ", ".join(["B", *map(str, s1)])
                raise ModelError(
                    f"layer `{layer}` of `{net.name}` outputs [{dims}], which has no spatial grid; pick a layer "
                    f"`atlas layers --model {net.name}` lists, or set model.layout and model.prefix_tokens if it is one"
                )
            if spec.layout is None:
                raise ModelError(ambiguous_message(spec, net.name))
            return spec
    if layer in info.repeated:
        raise ModelError(
            f"layer `{layer}` of `{net.name}` runs {info.repeated[layer]} times per forward pass, so its output is ambiguous; "
            f"pick the enclosing block or another layer (`atlas layers --model {net.name}` lists them)"
        )
    names = [s.name for s in layer_specs(net)]
    close = difflib.get_close_matches(layer, names, n=3)
    hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
    raise ModelError(
        f"unknown layer `{layer}` for model `{net.name}`.{hint} Set model.layer to one of the layers that "
        f"`atlas layers --model {net.name}` lists with their shapes: {', '.join(names)}"
    )


def layer_shape(net: Network, layer: str) -> tuple[int, int, int]:
    """(C, rows, cols) of ``layer``'s spatial grid for one input of ``input_size``, whatever its layout;
    ModelError listing the layers if unknown (see :func:`layer_spec`)."""
    shape = layer_spec(net, layer).shape
    assert shape is not None
    return shape


def raw_layer_output(net: Network, layer: str, x: torch.Tensor, module: torch.nn.Module | None = None) -> torch.Tensor:
    """The output of ``layer`` as the layer returns it, for preprocessed ``x``; nothing after it runs."""
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


def raw_layer_outputs(net: Network, layers: list[str], x: torch.Tensor,
                      module: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The outputs of several ``layers`` in one forward pass, each as its layer returns it; the pass
    stops once the last of them ran. Each output is the one :func:`raw_layer_output` gives for that
    layer alone (the same operations up to it)."""
    captured: dict[str, torch.Tensor] = {}
    wanted = set(layers)

    def tap(name: str, out: Any) -> None:
        if name in wanted and name not in captured:
            captured[name] = out
            if len(captured) == len(wanted):
                raise _StopForward

    with contextlib.suppress(_StopForward):
        run_tapped(net.module if module is None else module, x, tap, list(layers))
    missing = [n for n in layers if n not in captured]
    if missing:
        raise ModelError(f"layer `{missing[0]}` did not run in the forward pass of `{net.name}`; choose one "
                         f"`atlas layers --model {net.name}` lists")
    return captured


def layer_output(net: Network, layer: str, x: torch.Tensor, module: torch.nn.Module | None = None) -> torch.Tensor:
    """The output of ``layer`` as [B, C, H, W] (a view, whatever the layer's layout) for preprocessed
    ``x`` [B, 3, S, S], differentiable, nothing after it run.

    ``module`` defaults to ``net.module`` (pass a copy moved to another device or
    memory format to run it there). Works for TorchScript Sequentials too.
    """
    spec = layer_spec(net, layer)
    return spec.grid_view(raw_layer_output(net, layer, x, module))
