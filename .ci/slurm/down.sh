#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by up.sh (via the daemons' pid files).
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then exec sudo -E bash "$0" "$@"; fi
for pidfile in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
  [ -s "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  name="$(basename "$pidfile" .pid)"
  # Only signal the pid if it still is that daemon (pid files can be stale).
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] && kill "$pid"; then
    # Wait up to 10 s for it to exit, then force.
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    echo "slurm/down.sh: stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
done
