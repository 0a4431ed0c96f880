"""The demo atlas on CUDA against the CPU (run by scripts/gpu-check.sh; needs CUDA).

Prints one line per check and exits 1 when one fails:

* BatchNorm folding stays on under CUDA's TF32 convolutions (as many pairs as on the CPU);
* collect's vectors on CUDA (bf16 autocast) against the CPU's (float32) on 64 demo images;
* collect, reduce, grid and render of the demo on ``model.device=cuda`` with ``render.batch_size:
  auto``: images/s (collect) and icons/s (render);
* the CUDA icons' median faithfulness per level against the CPU's on the same grid (``--cpu-levels``);
* one level rendered again after its done markers are cleared (a resume): the same bytes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from atlas.config import load_config  # noqa: E402
from atlas.formats import RenderOutput  # noqa: E402
from atlas.models import LayerSampler, load_network  # noqa: E402
from atlas.sources import demo_image  # noqa: E402
from atlas.stages import get_stage, run_stage  # noqa: E402
from atlas.store import RunDir  # noqa: E402

DEMO = ROOT / "pipelines" / "demo.yaml"
FAILED: list[str] = []


def say(name: str, value: object, ok: bool = True) -> None:
    print(f"{name}: {value}{'' if ok else '  <- FAILED'}", flush=True)
    if not ok:
        FAILED.append(name)


def _stage(name: str, cfg: object) -> float:
    stage = get_stage(name).for_config(cfg)  # type: ignore[arg-type]
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    if not run_stage(stage, cfg):  # type: ignore[arg-type]
        raise SystemExit(f"gpu-check: `{name}` did not finish")
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def _levels(run_dir: Path, sizes: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = RenderOutput.open(RunDir(run_dir))
    return {s: (np.asarray(out.level(s).icons[...]), np.asarray(out.level(s).cossim[...])) for s in sizes}


def check_models(layer: str) -> None:
    cfg = load_config(DEMO, ["model.device=cuda"])
    net = load_network(cfg.model)
    cpu = LayerSampler(net, layer, attribution=True, device="cpu")
    gpu = LayerSampler(net, layer, attribution=True, device="cuda", autocast=True)
    say("BN pairs folded cpu / cuda (tf32 convolutions)", f"{cpu.folded} / {gpu.folded}", gpu.folded == cpu.folded > 0)
    imgs = torch.from_numpy(np.stack([np.asarray(demo_image(i, net.input_size)) for i in range(64)]))
    pos = torch.from_numpy(np.random.default_rng(0).integers(1, 6, size=(64, 2)))
    x = net.preprocess(imgs)
    v_cpu, _, c_cpu = cpu(x, pos)
    v_gpu, _, c_gpu = gpu(x, pos)
    cos = torch.nn.functional.cosine_similarity(v_cpu, v_gpu, dim=1)
    top1 = float((c_cpu[:, 0] == c_gpu[:, 0]).float().mean()) if c_cpu is not None and c_gpu is not None else 1.0
    say("collect vectors cuda vs cpu: min cosine, top-1 class agreement",
        f"{float(cos.min()):.4f}, {top1:.2f}", bool(torch.isfinite(v_gpu).all()) and float(cos.min()) > 0.98)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="build the runs in this folder and keep them (default: a temporary one)")
    ap.add_argument("--cpu-levels", default="4,8", help="grid levels also rendered on the CPU, for the comparison")
    ap.add_argument("--tolerance", type=float, default=0.05, help="how much lower the CUDA median faithfulness may be")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: skipped: torch sees no CUDA device on this machine")
        return 0
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "  # type: ignore[no-untyped-call]
          f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}", flush=True)
    base = args.keep or Path(tempfile.mkdtemp(prefix="atlas-gpu-check-"))
    gpu_dir, cpu_dir = base / "cuda", base / "cpu"
    shutil.rmtree(gpu_dir, ignore_errors=True)
    shutil.rmtree(cpu_dir, ignore_errors=True)
    cfg = load_config(DEMO, [f"run_dir={gpu_dir}", "model.device=cuda", "render.batch_size=auto",
                             "collect.batch_size=256"])
    check_models(cfg.model.layer)

    seconds = _stage("collect", cfg)
    say("collect on cuda: images/s", f"{cfg.images.demo_count / seconds:.0f} ({cfg.images.demo_count} images, "
                                     f"{seconds:.1f} s, decode workers {cfg.collect.workers})")
    for name in ("reduce", "grid"):
        _stage(name, cfg)
    seconds = _stage("render", cfg)
    render = RenderOutput.open(RunDir(gpu_dir))
    sizes, icons = sorted(render.n_cells), sum(render.n_cells.values())
    say("render on cuda: icons/s", f"{icons / seconds:.2f} ({icons} icons, {cfg.render.steps} steps, "
                                   f"batch_size auto = {render.batch_size}, {seconds:.1f} s)")
    cuda = _levels(gpu_dir, sizes)
    say("cuda icons finite and not blank", all(np.isfinite(c).all() and i.reshape(len(i), -1).std(axis=1).min() > 0
                                               for i, c in cuda.values()))

    # a resume re-renders the coarsest level's units: the same bytes (same GPU, same stack)
    run, level = RunDir(gpu_dir), sizes[0]
    for unit in sorted(run.done_units("render")):
        if unit == "final" or unit.startswith(f"level-{level:04d}-"):
            run.clear_done("render", unit)
    _stage("render", cfg)
    again = _levels(gpu_dir, [level])[level][0]
    say(f"render level {level} again after a resume: same bytes", bool((again == cuda[level][0]).all()),
        bool((again == cuda[level][0]).all()))

    # the CPU on the same grid
    cpu_levels = [s for s in (int(v) for v in args.cpu_levels.split(",") if v) if s in sizes]
    shutil.copytree(gpu_dir, cpu_dir, ignore=shutil.ignore_patterns("render", "render-*"))
    shutil.rmtree(cpu_dir / "state" / "render", ignore_errors=True)
    cpu_cfg = load_config(DEMO, [f"run_dir={cpu_dir}", "model.device=cpu", f"render.levels={cpu_levels}"])
    seconds = _stage("render", cpu_cfg)
    n_cpu = sum(render.n_cells[s] for s in cpu_levels)
    say("render on cpu: icons/s", f"{n_cpu / seconds:.2f} ({n_cpu} icons of levels {cpu_levels}, {seconds:.1f} s)")
    cpu = _levels(cpu_dir, cpu_levels)
    for s in cpu_levels:
        mg, mc = float(np.median(cuda[s][1])), float(np.median(cpu[s][1]))
        say(f"level {s} median faithfulness cuda / cpu", f"{mg:.3f} / {mc:.3f}", mg >= mc - args.tolerance)
    if args.keep is None:
        shutil.rmtree(base, ignore_errors=True)
    print(f"gpu checks: {'all passed' if not FAILED else 'FAILED: ' + ', '.join(FAILED)}", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
