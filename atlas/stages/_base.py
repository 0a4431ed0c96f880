"""What every stage shares: status reports, shard parsing, config snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import Config, dump_config, provenance
from ..store import RunDir, atomic_write_text

__all__ = ["StageStatus", "parse_shard", "my_units", "save_run_config"]


@dataclass
class StageStatus:
    """Progress of one stage in one run directory."""

    stage: str
    done: int
    total: int | None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> str:
        if self.total is None or self.done == 0:
            return "not started"
        return "done" if self.done >= self.total else "partial"

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "state": self.state, "done": self.done, "total": self.total, **self.detail}


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None -> (0, 1); ``"slurm"`` -> this SLURM array task's."""
    if text is None:
        return (0, 1)
    if text == "slurm":
        from ..cluster import slurm_shard

        return slurm_shard()
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise ValueError(f"--shard expects i/n such as 0/4, or slurm; got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


def my_units(units: list[str], shard: tuple[int, int]) -> list[str]:
    """The units a shard owns: every n-th unit starting at i (round robin keeps shards balanced)."""
    i, n = shard
    return units[i::n]


def save_run_config(cfg: Config, run: RunDir, extra: dict[str, Any] | None = None) -> None:
    """Write RUN/config.yaml: the resolved config plus provenance (atomic)."""
    import yaml

    text = dump_config(cfg) + "\n" + yaml.safe_dump({"provenance": provenance(extra)}, sort_keys=False)
    atomic_write_text(run.root / "config.yaml", text)
