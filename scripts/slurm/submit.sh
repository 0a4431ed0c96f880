#!/usr/bin/env bash
# Submit a whole atlas to SLURM: one job per stage (arrays for collect, render and tile),
# each waiting for the previous one with --dependency=afterok.
#
#   scripts/slurm/submit.sh CONFIG [--set key=value ...]
#
# Resources come from the config's cluster.slurm section (partition, account, per-stage
# array size, time, cpus, mem, gpus); `atlas slurm-plan CONFIG` prints what will be asked.
# Resume after a failure, a walltime or a preemption: run the same command again. Finished
# stages are skipped here, finished units inside a stage by the stage itself. If a stage
# fails, the stages after it are cancelled (--kill-on-invalid-dep) rather than left pending.
# Environment: ATLAS (the atlas executable, default: the one on PATH), SBATCH (default sbatch).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ]; then
  echo "usage: $0 CONFIG [--set key=value ...]" >&2
  exit 2
fi
config=$1
shift
ATLAS=${ATLAS:-$(command -v atlas || true)}
if [ -z "$ATLAS" ]; then
  echo "submit.sh: no atlas on PATH: activate the project's venv or set ATLAS=/path/to/venv/bin/atlas" >&2
  exit 2
fi
export ATLAS  # the jobs inherit the environment (sbatch's default --export=ALL)
SBATCH=${SBATCH:-sbatch}

plan=$("$ATLAS" slurm-plan "$config" "$@")  # a bad config stops here with a clear message
dep=""
while IFS=$'\t' read -r -a fields; do
  stage=${fields[0]} state=${fields[1]}
  opts=("${fields[@]:2}")
  layer=()  # a further layer of model.layers: `reduce@blocks.3` runs reduce.sbatch with --layer blocks.3
  case $stage in *@*) layer=(--layer "${stage#*@}") stage=${stage%%@*} ;; esac
  if [ "$state" = done ]; then
    echo "${fields[0]}: already done, not submitted"
    continue
  fi
  for opt in "${opts[@]}"; do
    case $opt in --output=*) mkdir -p "$(dirname "${opt#--output=}")" ;; esac
  done
  after=()
  [ -n "$dep" ] && after=("--dependency=afterok:$dep" "--kill-on-invalid-dep=yes")
  jid=$("$SBATCH" --parsable "${after[@]}" "${opts[@]}" "$here/$stage.sbatch" "$config" "${layer[@]}" "$@")
  jid=${jid%%;*}  # --parsable prints "jobid[;cluster]"
  echo "${fields[0]}: submitted job $jid${dep:+ (runs after $dep succeeds)}"
  dep=$jid
done <<< "$plan"
