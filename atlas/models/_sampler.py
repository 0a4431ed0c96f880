"""Sampling one spatial position of a layer per image, with its class attribution (Distill's activation atlas).

Attribution of the sampled vector a = h[b, :, y_b, x_b] to logit k is the
directional derivative of the logits along the tangent t that equals a at
(y_b, x_b) and 0 elsewhere: ``attr[b, k] = sum_c a_c * d logit_k / d h[b, c, y_b, x_b]``
(Carter et al. 2019: activation times gradient at that position). It is computed
for all classes in one forward-mode pass: the layer's forward hook turns its output
into a dual tensor ``(h, t)`` and the logits' tangent is the attribution. After the
layer, attention runs on kernels that support forward mode (the math backend of
``scaled_dot_product_attention``, no fused MultiheadAttention); before it, on the
usual ones, so the sampled vector is the one a plain forward pass computes.

Without attribution, the forward pass stops right after the layer (a hook raises),
so nothing after it runs. A network without a classifier samples without attribution
(and says so once).

Positions are (y, x) on the layer's spatial grid whatever its layout (``nchw``,
``nhwc``, or ``tokens``, where prefix tokens are never sampled): h above is the
[B, C, H, W] view of the layer's output (:meth:`LayerSpec.grid_view`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD

from ._fold import fold_verified
from ._layers import LayerSpec, layer_spec, logits_of, raw_layer_output, raw_layer_outputs, run_tapped
from ._network import ModelError, Network

__all__ = ["LayerSampler", "LayerSamplers", "resolve_device", "pin_threads"]

log = logging.getLogger("atlas")


def pin_threads(n: int | None) -> int:
    """Set torch's intra-op threads to ``n`` or, when None, to the CPUs this process may use.

    CPU kernels may pick other algorithms (and so other float results) for another thread
    count, and faiss's OpenMP calls in the same process change torch's count as a side
    effect. Stages that run torch pin it first, so a stage gives the same bits whether it
    runs alone, after other stages in one process, or resumes after a kill.
    """
    import os

    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` as given,
    when this machine has that device (else ModelError naming what torch sees here)."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"device {str(device)!r} is not a device: set model.device to auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ModelError(f"device `{device}` was requested but torch sees no CUDA device; set model.device=cpu (or auto)")
        if device.index is not None and device.index >= n:
            raise ModelError(f"device `{device}` was requested but torch sees {n} CUDA device(s), cuda:0 to cuda:{n - 1}; "
                             "set model.device=cuda (or auto)")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ModelError("device `mps` was requested but torch sees no Apple GPU (MPS); set model.device=cpu (or auto)")
    elif device.type != "cpu":
        raise ModelError(f"device `{device}` is not supported: set model.device to auto, cpu, cuda, cuda:N or mps")
    return device


def _prepare_module(module: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """A private copy of ``module`` on ``device`` (channels_last when asked), so the Network stays untouched."""
    with warnings.catch_warnings():  # TorchScript parameters warn about .grad access inside Module._apply
        warnings.filterwarnings("ignore", message=r".*\.grad attribute of a Tensor that is not a leaf")
        module = copy.deepcopy(module).to(device)
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
    return module.eval()


def _check_positions(positions: torch.Tensor, out: Any, spec: LayerSpec) -> None:
    """positions (CPU) must lie on the layer's grid of this batch's output (any layout)."""
    if not isinstance(out, torch.Tensor) or out.ndim != len(spec.output) + 1:
        raise ModelError(f"layer `{spec.name}` does not output the tensor it did when probed; choose one `atlas layers` lists")
    h, w = spec.grid_size(out)
    y, x = positions[:, 0], positions[:, 1]
    if bool(((y < 0) | (y >= h) | (x < 0) | (x >= w)).any()):
        raise ModelError(f"positions must be (y, x) on layer `{spec.name}`'s {h} x {w} grid, got values outside it: {positions.tolist()}")


@contextlib.contextmanager
def _forward_ad_kernels() -> Any:
    """Attention kernels that support forward-mode AD: the math backend of scaled_dot_product_attention
    and no fused MultiheadAttention fast path (the flash and fused kernels have no forward AD)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


_told_no_classifier: set[str] = set()


def _no_classifier_note(net: Network) -> None:
    """Say once per process and network that attribution is off because the network has no classifier."""
    if net.name in _told_no_classifier:
        return
    _told_no_classifier.add(net.name)
    log.warning("model `%s` has no classifier (its output is not class logits): attribution is off, "
                "the atlas is built from activations alone", net.name)


class LayerSampler:
    """Runs a batch through the network and returns, per image, the layer's vector at one given spatial position,
    and optionally the attribution of that vector to every logit (top-K kept).

    The sampler runs its own copy of ``net.module`` (``self.module``) on ``device``,
    in channels_last memory format when ``channels_last``; ``autocast`` enables
    bfloat16 (float16 where bf16 is unsupported) autocast on CUDA only.
    """

    def __init__(
        self,
        net: Network,
        layer: str,
        *,
        attribution: bool,
        top_k: int = 10,
        device: str | torch.device = "cpu",
        channels_last: bool = True,
        autocast: bool = False,
        fold_bn: bool = True,
    ) -> None:
        if top_k <= 0:
            raise ModelError(f"top_k must be positive, got {top_k}; set collect.top_k")
        self.net = net
        self.layer = layer
        self.spec = layer_spec(net, layer)
        self.layer_shape: tuple[int, int, int] = self.spec.shape  # type: ignore[assignment]
        if attribution and not net.has_classifier:
            _no_classifier_note(net)
            attribution = False
        self.attribution = attribution
        self.top_k = top_k
        self.device = resolve_device(device)
        self.channels_last = channels_last
        self.autocast = autocast and self.device.type == "cuda"
        self.module = _prepare_module(net.module, self.device, channels_last)
        self.folded = 0
        if fold_bn:
            self.module, self.folded = fold_verified(net, layer, self.module, self.device, channels_last)

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """x float [B, 3, S, S] preprocessed; positions long [B, 2] (y, x) on the layer grid.

        Returns vectors float32 [B, C], top_values float32 [B, K] and top_classes
        int64 [B, K] (K = min(top_k, classes); None without attribution), all on the CPU.
        """
        x = self._input(x)
        cpu_positions = self._positions(positions, x.shape[0])
        pos = cpu_positions.to(self.device)
        with torch.no_grad(), self._autocast():
            if not self.attribution:
                return self._truncated(x, pos, cpu_positions).float().cpu(), None, None
            vectors, attribution = self._attributed(x, pos, cpu_positions)
        values, classes = attribution.float().topk(min(self.top_k, attribution.shape[1]), dim=1)
        return vectors.float().cpu(), values.cpu(), classes.cpu()

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ModelError(f"LayerSampler expects preprocessed float images [B, 3, S, S], got {x.dtype} {tuple(x.shape)}; use Network.preprocess")
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _positions(self, positions: torch.Tensor, batch: int) -> torch.Tensor:
        if positions.shape != (batch, 2) or positions.is_floating_point():
            raise ModelError(f"positions must be integer (y, x) pairs [B, 2] = [{batch}, 2], got {positions.dtype} {tuple(positions.shape)}")
        return positions.detach().to("cpu", torch.long)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.autocast:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)

    def _truncated(self, x: torch.Tensor, pos: torch.Tensor, cpu_positions: torch.Tensor) -> torch.Tensor:
        """Forward up to the layer only; vectors [B, C]."""
        out = raw_layer_output(self.net, self.layer, x, module=self.module)
        _check_positions(cpu_positions, out, self.spec)
        return self.spec.gather(out, pos)

    def _attributed(self, x: torch.Tensor, pos: torch.Tensor, cpu_positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward-mode pass; vectors [B, C] and attribution [B, num_classes]."""
        captured: list[torch.Tensor] = []
        after_layer = contextlib.ExitStack()

        def tap(name: str, out: Any) -> Any:
            if name != self.layer or captured:
                return None
            _check_positions(cpu_positions, out, self.spec)
            a = self.spec.gather(out.detach(), pos)
            captured.append(a)
            after_layer.enter_context(_forward_ad_kernels())  # the rest of the pass carries tangents
            with warnings.catch_warnings():  # the first make_dual scripts torch's jvp decompositions
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
                return fwAD.make_dual(out, self.spec.spike(out, pos, a))

        with fwAD.dual_level(), after_layer:
            logits = logits_of(run_tapped(self.module, x, tap, [self.layer]))
            tangent = fwAD.unpack_dual(logits).tangent
            attribution = torch.zeros_like(logits) if tangent is None else tangent.clone()
        if not captured:
            raise ModelError(f"layer `{self.layer}` did not run in the forward pass of `{self.net.name}`; choose one `atlas layers --model {self.net.name}` lists")
        return captured[0], attribution


Sample = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]
"""What a sampler returns for one layer: vectors [B, C], top values [B, K], top classes [B, K] (CPU)."""


class LayerSamplers:
    """Several layers sampled from one batch: collect's pass over ``model.layers``.

    Each layer's result is exactly what a :class:`LayerSampler` of that layer alone returns (the
    same module, folding and operations), so a layer's collected arrays are the same bytes whether
    it was collected alone or with others. Without attribution, the layers whose modules fold alike
    (all but a convolution sampled before its BatchNorm) share one module copy and **one forward
    pass**, cut after the deepest of them. With attribution, each layer takes its own forward-mode
    pass: the logits' tangent must start at that layer alone (a pass carries one tangent), so the
    batch is decoded and preprocessed once, and the network runs once per layer.
    """

    def __init__(self, net: Network, layers: list[str], **options: Any) -> None:
        self.layers = list(layers)
        self.by_layer: dict[str, LayerSampler] = {}
        shared: dict[tuple[str, int], torch.nn.Module] = {}
        convs = {n for n, m in net.module.named_modules() if isinstance(m, torch.nn.Conv2d)}
        for layer in self.layers:
            sampler = LayerSampler(net, layer, **options)
            key = ("conv:" + layer if layer in convs else "", sampler.folded)  # a kept conv folds its own way
            sampler.module = shared.setdefault(key, sampler.module)
            self.by_layer[layer] = sampler
        first = self.by_layer[self.layers[0]]
        self.attribution, self.autocast, self.folded = first.attribution, first.autocast, first.folded
        self.device = first.device

    def shape(self, layer: str) -> tuple[int, int, int]:
        """(C, H, W) of ``layer``'s grid."""
        return self.by_layer[layer].layer_shape

    def __call__(self, x: torch.Tensor, positions: dict[str, torch.Tensor]) -> dict[str, Sample]:
        """x float [B, 3, S, S] preprocessed; positions per layer long [B, 2] (y, x) on its grid.
        Returns per layer of ``positions`` what :meth:`LayerSampler.__call__` returns."""
        if self.attribution:
            return {layer: self.by_layer[layer](x, pos) for layer, pos in positions.items()}
        groups: dict[int, list[str]] = {}
        for layer in positions:
            groups.setdefault(id(self.by_layer[layer].module), []).append(layer)
        out: dict[str, Sample] = {}
        for layers in groups.values():
            out.update(self._one_pass(x, {layer: positions[layer] for layer in layers}))
        return out

    def _one_pass(self, x: torch.Tensor, positions: dict[str, torch.Tensor]) -> dict[str, Sample]:
        """The layers of one module, from one truncated forward pass."""
        first = self.by_layer[next(iter(positions))]
        x = first._input(x)
        with torch.no_grad(), first._autocast():
            outs = raw_layer_outputs(first.net, list(positions), x, module=first.module)
            result: dict[str, Sample] = {}
            for layer, positions_ in positions.items():
                s = self.by_layer[layer]
                cpu_positions = s._positions(positions_, x.shape[0])
                _check_positions(cpu_positions, outs[layer], s.spec)
                result[layer] = (s.spec.gather(outs[layer], cpu_positions.to(s.device)).float().cpu(), None, None)
        return result
