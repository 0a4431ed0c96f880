#!/usr/bin/env bash
# The GPU checks in one command (docs/design.md, "On GPU"): on a CUDA machine, the GPU-marked tests,
# then collect and render of the demo atlas on model.device=cuda (bf16 autocast, render.batch_size
# auto), the CUDA icons' faithfulness against the CPU's, images/s and icons/s, and a resumed render
# unit compared byte for byte. About 5 minutes on one H100 (8 at most). Without CUDA it skips with one
# line and exits 0.
#
#   scripts/gpu-check.sh [--no-tests] [--keep DIR]      (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu-check: skipped: torch sees no CUDA device on this machine (nothing to check)"
  exit 0
fi
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
RUN_TESTS=1
ARGS=()
for a in "$@"; do
  if [ "$a" = "--no-tests" ]; then RUN_TESTS=0; else ARGS+=("$a"); fi
done
status=0
if [ "$RUN_TESTS" = 1 ]; then
  echo "== gpu-marked tests"
  timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider || status=$?
fi
echo "== demo atlas on CUDA against the CPU"
timeout 300 "$PY" scripts/gpu_check.py "${ARGS[@]+"${ARGS[@]}"}" || status=$?
echo "gpu-check: $([ "$status" = 0 ] && echo ok || echo "FAILED (exit $status)")"
exit "$status"
