"""Feature inversion of a batch of target directions: one icon per target (Lucid's ``optvis.render``).

:func:`render_icons` optimises ``n * restarts`` images together so that the layer's
activation of each points along its target (the atlas objective of
:mod:`atlas.ops.objectives`), then keeps per icon the best restart. Its pieces are
named values that compose: a parameterisation from :mod:`atlas.ops.param` (``(params,
image_fn)``), a transform set from :mod:`atlas.ops.transforms` (a plain callable), an
:class:`~atlas.ops.objectives.Objective`, an optimiser and a learning-rate schedule
(:func:`lr_at`). Tensors in, tensors out, no I/O; the network comes in as ``acts``, any
object with ``device``, ``normalize(images)`` and ``acts(x) -> [B, C, H, W]`` (the
render stage's ``LayerActivations``).

Settings are read from ``settings`` with ``getattr(settings, name, default)``
(:data:`DEFAULTS` lists the names this module adds), so today's ``RenderConfig`` works
as it is. With the defaults of the older settings and of :data:`DEFAULTS` set to
``param="fft", transforms="standard", schedule="constant", warmup=0, coarse=0,
optimizer="adam", select="objective"``, the pixels are those of the render stage's own
renderer (same random draws in the same order).

The schedule of one call (``steps`` in all, each reported to ``on_step(step)``)::

    steps [0, coarse * steps)          optimise at side round(coarse_scale * S) (fft only; cheaper per step)
                                        then upsample the spectrum (param.upsample_spectrum), new optimiser
    steps [.., steps - polish * steps) transforms on (``settings.transforms``)
    steps [.., steps)                  no transforms: the icon as it is stored and scored
    learning rate: lr_at(step - phase start, phase length): linear warm-up over ``warmup`` of the
                   phase, then constant or cosine to 0; it restarts in each phase

Scoring: the final image is quantised to 8 bits and run once more without transforms;
the objective, the cosine to the raw target ("faithfulness") and the reduced activation
(for distinctness, :func:`atlas.ops.objectives.own_rank`) come from that pass.

Repeatability: the same call gives the same bytes on the CPU, and on CUDA on the same GPU
model with the same torch, CUDA and cuDNN: the resamplings differentiate without atomic adds
(:mod:`atlas.ops.resample`) and, on CUDA, the call runs under :func:`repeatable_kernels`
(cuDNN's deterministic algorithms, torch's deterministic implementations). A network whose
layers still need an op without a deterministic CUDA backward makes torch warn once, naming
the op; its icons may then differ in the last bits between runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .objectives import cosine, direction_cossim, reduce_positions, whiten
from .param import PARAMETERISATIONS, ImageFn, fft_image, maco_image, pyramid_image, upsample_spectrum
from .transforms import Transform, named_transforms

__all__ = ["DEFAULTS", "OPTIMIZERS", "SCHEDULES", "SELECTIONS", "Activations", "RenderResult", "Resolved",
           "resolve", "lr_at", "make_optimizer", "make_param", "directions", "select_best", "render_icons",
           "fit_batch_size", "repeatable_kernels"]

OPTIMIZERS = ("adam", "nadam", "radam", "sgd")
SCHEDULES = ("constant", "cosine")
SELECTIONS = ("objective", "cossim")

# The settings the measurements chose (docs/benchmarks.md, "Icons: quality per step"), as RenderConfig has them.
DEFAULTS: dict[str, Any] = {
    "param": "fft",            # image parameterisation: fft (Lucid), maco (phase only), pyramid (Laplacian)
    "optimizer": "adam",       # adam, nadam, radam, sgd (momentum 0.9, Nesterov)
    "schedule": "constant",    # learning rate after the warm-up: constant or cosine (to 0)
    "warmup": 0.0,             # fraction of the steps with a linear learning-rate warm-up
    "coarse": 0.5,             # fraction of the steps optimised at a lower resolution (fft only)
    "coarse_scale": 0.5,       # side of that resolution, as a fraction of icon_size
    "select": "objective",     # best of restarts by the final objective or by faithfulness (cossim)
    "pyramid_levels": 4,       # levels of the Laplacian pyramid parameterisation
    "whiten_mix": 0.25,        # with whitening: push along unit((1 - m) v^ + m (S v)^); 1 = S v (Distill)
}

# The other settings, for settings objects that lack one (e.g. a SimpleNamespace in a benchmark):
# RenderConfig's defaults (atlas.ops imports nothing of the project; a test checks that they agree).
_BASE: dict[str, Any] = {
    "icon_size": 80, "steps": 512, "restarts": 1, "lr": 0.05, "cossim_power": 8.0, "reduce": "mean",
    "cossim_floor": 0.1, "decay_power": 1.0, "init_sd": 0.01, "transforms": "icon", "polish": 0.5,
}


class Activations(Protocol):
    """A differentiable layer: ``acts(acts.normalize(images [B, 3, S, S])) -> [B, C, H, W]``."""

    @property
    def device(self) -> torch.device: ...

    def normalize(self, images: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class RenderResult:
    """Icons of one batch: icons uint8 [n, S, S, 3], objective float32 [n], cossim float32 [n]
    (faithfulness), activation float32 [n, C] (the icon's reduced layer activation)."""

    icons: np.ndarray
    objective: np.ndarray
    cossim: np.ndarray
    activation: np.ndarray


@dataclass(frozen=True)
class Resolved:
    """Every setting :func:`render_icons` reads, resolved from a settings object."""

    icon_size: int
    steps: int
    restarts: int
    lr: float
    cossim_power: float
    reduce: str
    cossim_floor: float
    decay_power: float
    init_sd: float
    transforms: str
    polish: float
    param: str
    optimizer: str
    schedule: str
    warmup: float
    coarse: float
    coarse_scale: float
    select: str
    pyramid_levels: int
    whiten_mix: float

    @property
    def coarse_steps(self) -> int:
        """Steps at the lower resolution (0 unless fft with ``coarse`` > 0 and a smaller side)."""
        if self.param != "fft" or self.coarse <= 0 or self.coarse_size >= self.icon_size:
            return 0
        return min(self.steps, round(self.coarse * self.steps))

    @property
    def coarse_size(self) -> int:
        return max(8, round(self.coarse_scale * self.icon_size))

    @property
    def plain_from(self) -> int:
        """First step without transforms."""
        return self.steps - round(self.polish * self.steps)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"render.{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def resolve(settings: Any) -> Resolved:
    """The settings :func:`render_icons` uses: ``getattr(settings, name, default)`` for every name."""
    get = {k: getattr(settings, k, d) for k, d in {**_BASE, **DEFAULTS}.items()}
    r = Resolved(
        icon_size=int(get["icon_size"]), steps=int(get["steps"]), restarts=int(get["restarts"]), lr=float(get["lr"]),
        cossim_power=float(get["cossim_power"]), reduce=str(get["reduce"]), cossim_floor=float(get["cossim_floor"]),
        decay_power=float(get["decay_power"]), init_sd=float(get["init_sd"]), transforms=str(get["transforms"]),
        polish=float(get["polish"]), param=_choice("param", str(get["param"]), PARAMETERISATIONS),
        optimizer=_choice("optimizer", str(get["optimizer"]), OPTIMIZERS),
        schedule=_choice("schedule", str(get["schedule"]), SCHEDULES), warmup=float(get["warmup"]),
        coarse=float(get["coarse"]), coarse_scale=float(get["coarse_scale"]),
        select=_choice("select", str(get["select"]), SELECTIONS), pyramid_levels=int(get["pyramid_levels"]),
        whiten_mix=float(get["whiten_mix"]),
    )
    if r.steps < 1 or r.restarts < 1 or r.icon_size < 1:
        raise ValueError(f"render needs steps, restarts and icon_size >= 1, got {r.steps}, {r.restarts}, {r.icon_size}")
    if not (0.0 <= r.warmup <= 1.0 and 0.0 <= r.coarse <= 1.0 and 0.0 < r.coarse_scale <= 1.0
            and 0.0 <= r.whiten_mix <= 1.0):
        raise ValueError(f"render.warmup, render.coarse and render.whiten_mix must lie in [0, 1] and coarse_scale "
                         f"in (0, 1], got {r.warmup}, {r.coarse}, {r.whiten_mix}, {r.coarse_scale}")
    return r


def lr_at(step: int, steps: int, lr: float, schedule: str = "constant", warmup: float = 0.0) -> float:
    """Learning rate of step ``step`` (0-based) of ``steps``.

    Warm-up: ``w = round(warmup * steps)`` steps at ``lr * (step + 1) / w``; then ``lr``
    (constant) or ``lr * (1 + cos(pi * t)) / 2`` with ``t = (step - w) / (steps - w)``
    going from 0 at the first step after the warm-up towards 1 (cosine).
    """
    w = round(warmup * steps)
    if step < w:
        return lr * (step + 1) / w
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        t = (step - w) / max(steps - w, 1)
        return lr * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


def make_optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` (one of :data:`OPTIMIZERS`) over ``params`` at learning rate ``lr``."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "nadam":
        return torch.optim.NAdam(params, lr=lr)
    if name == "radam":
        return torch.optim.RAdam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def make_param(r: Resolved, batch: int, size: int, *, generator: torch.Generator, device: torch.device,
               init: torch.Tensor | None = None, magnitude: torch.Tensor | None = None,
               ) -> tuple[list[torch.Tensor], ImageFn]:
    """The parameterisation ``r.param`` for ``batch`` images of side ``size`` (from ``init``
    [batch, 3, size, size] in [0, 1] when given): ``(params, image_fn)``."""
    if r.param == "fft":
        return fft_image(batch, size, size, decay_power=r.decay_power, sd=r.init_sd, generator=generator,
                         device=device, init=init)
    if r.param == "maco":
        mag = None if magnitude is None else _resize_magnitude(magnitude, size)
        return maco_image(batch, size, size, magnitude=mag, decay_power=r.decay_power, generator=generator,
                          device=device, init=init)
    return pyramid_image(batch, size, size, levels=r.pyramid_levels, sd=r.init_sd, generator=generator,
                         device=device, init=init)


def _resize_magnitude(magnitude: torch.Tensor, size: int) -> torch.Tensor:
    """A magnitude [3, h, w // 2 + 1] of another side as [3, size, size // 2 + 1] (nearest bin, fftshifted)."""
    if tuple(magnitude.shape[1:]) == (size, size // 2 + 1):
        return magnitude
    full = torch.fft.fftshift(magnitude, dim=1)[None].float()
    out = torch.nn.functional.interpolate(full, size=(size, size // 2 + 1), mode="bilinear", align_corners=True)[0]
    shifted: torch.Tensor = torch.fft.ifftshift(out, dim=1)
    return shifted


def _unit(v: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = v / v.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return out


def directions(targets: torch.Tensor, whitening: torch.Tensor | None, mix: float = 1.0) -> torch.Tensor:
    """Unit-length directions the objective pushes along: targets [n, C] -> [n, C].

    Without ``whitening``: v / |v|. With it (S [C, C]): ``unit((1 - mix) unit(v) + mix unit(S v))``,
    so ``mix`` = 1 is the whitened direction (Distill) and 0 the raw one.
    """
    if whitening is None or mix == 0.0:
        return _unit(targets)
    w = _unit(whiten(targets, whitening))
    return w if mix == 1.0 else _unit((1.0 - mix) * _unit(targets) + mix * w)


def select_best(scores: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Per icon the image with the highest score among its k restarts: scores [k * n] (image j
    renders icon j % n) -> int64 [n] image indices (the first restart wins ties)."""
    return scores.view(k, n).argmax(dim=0) * n + torch.arange(n, device=scores.device)


def _phase(r: Resolved, step: int) -> tuple[int, int]:
    """(first step, length) of the phase ``step`` is in: coarse, with transforms, polish. The
    learning-rate schedule restarts in each phase (a decayed rate would leave the polish idle)."""
    bounds = sorted({0, r.coarse_steps, max(r.coarse_steps, r.plain_from), r.steps})
    for lo, hi in zip(bounds, bounds[1:]):
        if lo <= step < hi:
            return lo, hi - lo
    return 0, r.steps


def _objective(r: Resolved, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return direction_cossim(h, v, power=r.cossim_power, reduce=r.reduce, floor=r.cossim_floor)


@contextlib.contextmanager
def repeatable_kernels(device: torch.device) -> Iterator[None]:
    """On CUDA: cuDNN's deterministic algorithms without autotuning, and torch's deterministic
    implementations where an op has one (``use_deterministic_algorithms(True, warn_only=True)``:
    an op without one warns instead of failing); the previous flags are restored after. Sets
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless it is set. Does nothing off CUDA (the CPU
    kernels the render loop uses are deterministic)."""
    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    cudnn = torch.backends.cudnn
    saved = (cudnn.deterministic, cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn.deterministic, cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark = saved[0], saved[1]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def render_icons(acts: Activations, targets: torch.Tensor, settings: Any, *, generator: torch.Generator,
                 whitening: torch.Tensor | None = None, on_step: Callable[[int], None] | None = None,
                 init_images: torch.Tensor | None = None, magnitude: torch.Tensor | None = None,
                 icon_size: int | None = None) -> RenderResult:
    """Optimise one icon per target direction, all in one batch (x ``restarts``).

    acts: the differentiable layer (:class:`Activations`); targets float [n, C] (cell mean
    activations); whitening [C, C] or None (the objective pushes along ``directions(v, S,
    whiten_mix)``; faithfulness is still measured against v); generator: a CPU generator for the initial parameters and the
    transform draws; on_step(step) after each of the ``steps`` steps; init_images float
    [n, 3, S, S] in [0, 1] (e.g. each cell's nearest dataset-example patch) to start from
    instead of noise (feature accentuation; every restart starts there); magnitude float
    [3, h, w // 2 + 1] for ``param="maco"`` (default 1/f); icon_size: overrides
    ``settings.icon_size`` (per-level sizes without copying the settings). Image j of the n * restarts
    renders icon j % n; per icon the restart with the best final objective (or cosine,
    ``select="cossim"``) of its quantised image is kept.
    Returns icons uint8 [n, S, S, 3], objective, cossim float32 [n], activation float32 [n, C].
    On CUDA it runs under :func:`repeatable_kernels`.
    """
    with repeatable_kernels(acts.device):
        return _render_icons(acts, targets, settings, generator=generator, whitening=whitening, on_step=on_step,
                             init_images=init_images, magnitude=magnitude, icon_size=icon_size)


def _render_icons(acts: Activations, targets: torch.Tensor, settings: Any, *, generator: torch.Generator,
                  whitening: torch.Tensor | None, on_step: Callable[[int], None] | None,
                  init_images: torch.Tensor | None, magnitude: torch.Tensor | None,
                  icon_size: int | None) -> RenderResult:
    r = resolve(settings)
    if icon_size is not None:
        r = dataclasses.replace(r, icon_size=int(icon_size))
    device = acts.device
    n, k, size = targets.shape[0], r.restarts, r.icon_size
    raw = targets.to(device, torch.float32).repeat(k, 1)  # [n * k, C]
    v = directions(raw, None if whitening is None else whitening.to(device, torch.float32), r.whiten_mix)
    init = None
    if init_images is not None:
        if tuple(init_images.shape) != (n, 3, size, size):
            raise ValueError(f"init_images must be [{n}, 3, {size}, {size}], got {list(init_images.shape)}")
        init = init_images.to(device, torch.float32).repeat(k, 1, 1, 1)
    coarse = r.coarse_steps
    side = r.coarse_size if coarse else size
    if coarse and init is not None:
        init = torch.nn.functional.interpolate(init, size=(side, side), mode="area")
    params, image_fn = make_param(r, n * k, side, generator=generator, device=device, init=init, magnitude=magnitude)
    opt = make_optimizer(r.optimizer, params, r.lr)
    transform: Transform = named_transforms(r.transforms, side)
    plain: Transform = named_transforms("none", side)
    for step in range(r.steps):
        if coarse and step == coarse:
            params, image_fn = upsample_spectrum(params[0], (side, side), size, size, decay_power=r.decay_power)
            opt, side = make_optimizer(r.optimizer, params, r.lr), size
            transform = named_transforms(r.transforms, side)
        start, length = _phase(r, step)
        lr = lr_at(step - start, length, r.lr, r.schedule, r.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        img = image_fn()
        h = acts(acts.normalize((transform if step < r.plain_from else plain)(img, generator))).float()
        (-_objective(r, h, v).sum()).backward()  # type: ignore[no-untyped-call]
        opt.step()
        if on_step is not None:
            on_step(step)
    with torch.no_grad():
        quantised = torch.round(image_fn() * 255.0) / 255.0
        h = acts(acts.normalize(quantised)).float()
        obj, cos = _objective(r, h, v), cosine(h, raw, r.reduce)
        reduced = reduce_positions(h, r.reduce)
    best = select_best(obj if r.select == "objective" else cos, n, k)
    icons = (quantised[best] * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    return RenderResult(icons.cpu().numpy(), obj[best].cpu().numpy().astype(np.float32),
                        cos[best].cpu().numpy().astype(np.float32), reduced[best].cpu().numpy().astype(np.float32))


CPU_BATCH = 100
"""``batch_size: auto`` off CUDA."""
AUTO_UNITS, AUTO_FLOOR = 16, 32
"""``batch_size: auto`` leaves at least AUTO_UNITS units (when the icons allow AUTO_FLOOR each)."""


def auto_batch_size(fit: int | None, icons: int) -> int:
    """``batch_size: auto``: the icons that fit (``fit``, from :func:`fit_batch_size`; ``CPU_BATCH`` off
    CUDA), but no more than ``icons / AUTO_UNITS`` (at least ``AUTO_FLOOR``), so that a run of ``icons``
    icons keeps units to share among GPUs, to resume from and to count progress by, instead of a
    level per unit."""
    cap = max(AUTO_FLOOR, -(-icons // AUTO_UNITS))
    return max(1, min(fit or CPU_BATCH, cap))


def fit_batch_size(acts: Activations, icon_size: int, *, restarts: int = 1, fraction: float = 0.8,
                   cap: int = 4096, probe: int = 8) -> int | None:
    """The most icons (x ``restarts`` images) one optimisation step fits in ``fraction`` of the free
    memory of ``acts``' CUDA device, at most ``cap``; None off CUDA.

    Measured, not guessed: one forward + backward of ``probe`` icons of side ``icon_size``
    under the same network (autocast as ``acts`` has it), peak memory above the memory
    in use before it, per image (parameters, gradients and activations), plus Adam's two
    moments per parameter.
    """
    device = acts.device
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    params, image_fn = fft_image(probe, icon_size, icon_size, generator=torch.Generator(), device=device)
    h = acts(acts.normalize(image_fn())).float()
    h.square().mean().backward()  # type: ignore[no-untyped-call]
    torch.cuda.synchronize(device)
    per_image = (torch.cuda.max_memory_allocated(device) - base) / probe + 2 * params[0][0].numel() * 4
    del params, image_fn, h
    torch.cuda.empty_cache()
    return max(1, min(cap, int(free * fraction / per_image) // max(restarts, 1)))
