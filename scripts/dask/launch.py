"""Build an atlas on a dask cluster, for machines without SLURM.

Start a scheduler on one machine and workers on the others (all must see the run directory
on a shared file system that supports flock, e.g. NFSv4, or Lustre mounted with `flock`):

    dask scheduler --port 8786
    DASK_DISTRIBUTED__WORKER__DAEMON=False dask worker tcp://HOST:8786 --nworkers 1 --nthreads 1

(non-daemonic workers may start their own image-decoding processes), then:

    python scripts/dask/launch.py CONFIG --scheduler tcp://HOST:8786 [--stages collect,reduce] [--set k=v ...]
    python scripts/dask/launch.py CONFIG --workers 4     # a LocalCluster on this machine

collect, render and tile run as `cluster.tasks` tasks (default: 2 per worker), reduce as one
task, grid fans its chunks out to the same workers. A failed task is retried
`cluster.retries` times; a killed worker's task is rescheduled. Rerun to resume.
This is `atlas run CONFIG --scheduler ADDRESS` with a progress summary at the end.
"""

from __future__ import annotations

import argparse
import sys

from atlas import api
from atlas.cli import main as atlas_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--workers", type=int, metavar="N", help="start a LocalCluster of N worker processes")
    parser.add_argument("--stages", default=None, help="comma-separated subset of collect,reduce,grid,render,tile")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    cmd = ["run", args.config, *(f"--set={o}" for o in args.overrides)]
    cmd += ["--scheduler", args.scheduler] if args.scheduler else ["--workers", str(args.workers)]
    if args.stages:
        cmd += ["--stages", args.stages]
    rc = atlas_main(cmd)
    if rc == 0:
        cfg = api.load(args.config, args.overrides)
        print(api.format_status(api.status(cfg.run_dir)))
    return rc


if __name__ == "__main__":  # dask worker processes re-import the main module: keep the guard
    sys.exit(main())
