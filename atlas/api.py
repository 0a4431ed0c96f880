"""Plain functions behind the CLI (and for notebooks): load a config, run stages, report status."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config
from .stages import STAGES, available_stages, get_stage, parse_shard, stage_status
from .store import RunDir, StoreError

__all__ = ["load", "load_run", "run", "run_stage", "status", "format_status", "layers", "user_errors", "slurm_plan"]

log = logging.getLogger("atlas")


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's to fix: printed as one line, no traceback."""
    errors: list[type[BaseException]] = [ConfigError, StoreError, NotImplementedError, FileNotFoundError, ValueError]
    try:
        from .models import ModelError
        from .sources import SourceError

        errors += [ModelError, SourceError]
    except ImportError:  # pragma: no cover - partial installs
        pass
    return tuple(errors)



def load(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load and validate a run config (``None``: the defaults)."""
    return load_config(path, overrides)


def load_run(run_dir: str | Path) -> Config:
    """The resolved config a run was last started with (``RUN/config.yaml``, provenance left out)."""
    import yaml

    from .config import config_from_dict

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run directory (run a stage first)")
    data = yaml.safe_load(path.read_text()) or {}
    data.pop("provenance", None)
    return config_from_dict(data)


def run_stage(name: str, cfg: Config, *, shard: str | tuple[int, int] | None = None, client: Any = None) -> None:
    """Run one stage: one shard of it when ``shard`` is given (``"i/n"``, ``(i, n)`` or ``"slurm"``),
    else all of it on ``cfg.cluster.engine`` (``client``: an open dask Client to reuse)."""
    from .cluster import dask_client, run_shard, run_stage_on_dask

    get_stage(name)
    if shard is not None or (cfg.cluster.engine == "local" and client is None):
        run_shard(name, cfg, shard if isinstance(shard, tuple) else parse_shard(shard))
    elif client is not None:
        run_stage_on_dask(client, name, cfg)
    else:
        with dask_client(cfg.cluster, cfg.run_dir) as c:
            run_stage_on_dask(c, name, cfg)


def run(cfg: Config, stages: list[str] | None = None) -> list[str]:
    """Run stages in pipeline order, skipping finished work; returns the stages run."""
    wanted = stages or list(STAGES)
    bad = [s for s in wanted if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage {bad[0]!r} in --stages; stages are {', '.join(STAGES)}")
    have = available_stages()
    todo = [s for s in STAGES if s in wanted and s in have]
    with contextlib.ExitStack() as stack:
        client = None
        if cfg.cluster.engine == "dask":
            from .cluster import dask_client

            client = stack.enter_context(dask_client(cfg.cluster, cfg.run_dir))
        for name in todo:
            log.info("== %s", name)
            run_stage(name, cfg, client=client)
    missing = [s for s in STAGES if s in wanted and s not in have]
    if missing:
        print(f"atlas: ran {', '.join(todo)}; not in this version yet: {', '.join(missing)}")
    tiles = Path(cfg.run_dir) / "tiles" / "index.html"
    if "tile" in todo and tiles.exists():
        print(f"atlas: the atlas is ready. Open it with\n  atlas serve {cfg.run_dir}\n"
              f"and browse http://127.0.0.1:8000/ (or open {tiles.resolve()} directly).")
    return todo


def status(run_dir: str | Path) -> dict[str, Any]:
    """Per stage: state (done / partial / not started), units done/total and details."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"run directory {run.root} does not exist")
    report: dict[str, Any] = {"run_dir": str(run.root), "stages": []}
    for name in STAGES:
        try:
            stage = get_stage(name)
        except NotImplementedError:
            report["stages"].append({"stage": name, "state": "not available", "done": 0, "total": None})
            continue
        st = stage_status(stage, run).as_dict()
        st["failures"] = [{k: f.get(k) for k in ("key", "shard", "reason", "host", "time", "slurm_job") if f.get(k)}
                          for f in run.failures(name)]
        report["stages"].append(st)
    return report


def format_status(report: dict[str, Any]) -> str:
    lines = [f"run {report['run_dir']}"]
    for st in report["stages"]:
        total = "?" if st["total"] is None else st["total"]
        extra = {k: v for k, v in st.items() if k not in ("stage", "state", "done", "total", "failures")}
        info = "  ".join(f"{k}={v}" for k, v in extra.items())
        lines.append(f"  {st['stage']:8s} {st['state']:12s} {st['done']}/{total} units  {info}".rstrip())
        for f in st.get("failures", []):
            where = " ".join(str(f[k]) for k in ("host", "slurm_job", "time") if f.get(k))
            lines.append(f"           FAILED shard {f.get('shard', '?')} ({where}): {f.get('reason')}")
    return "\n".join(lines)


def slurm_plan(cfg: Config) -> list[tuple[str, bool, list[str]]]:
    """Per stage in order: (name, finished, sbatch options) for scripts/slurm/submit.sh."""
    from .cluster import sbatch_options, stage_finished

    return [(name, stage_finished(name, cfg), sbatch_options(cfg, name)) for name in STAGES]


def layers(model: str, *, weights: str | None = None, input_size: int | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """Every hookable layer of ``model`` with its output shape (C, H, W)."""
    from .config import ModelConfig
    from .models import list_layers, load_network

    net = load_network(ModelConfig(name=model, weights=weights, input_size=input_size))
    return list_layers(net)
