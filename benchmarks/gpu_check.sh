#!/usr/bin/env bash
# The GPU check in one command, on a GPU machine as it is (its own Python and torch, no network): installs the
# wheels carried in .whl/ (made here by `make gpu-wheels`) and cocu from this tree, then runs every row of
# benchmarks/gpu_check.py in its own process and time limit, printing each line as it is measured, and ends with
# the table. Without a GPU each row runs a small CPU smoke. About 6 minutes on one H100/H200 (docs/scale.md).
#   bash benchmarks/gpu_check.sh [--images N] [--workers N]
#   bash benchmarks/gpu_check.sh --install-only     # the install step alone (make gpu-install-check runs it)
set -uo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
PY="${PYTHON:-}"
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # the GPU machine: nothing to download, nothing to build
  SITE="${COCU_SITE:-/tmp/cocu-site}"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    && "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
      --target "$SITE" . || { echo "install from .whl/ and the tree failed"; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed $(ls .whl/*.whl | wc -l) carried wheels and cocu into $SITE in $((SECONDS - started)) s"
fi
if [ "${1:-}" = --install-only ]; then exit 0; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: no GPU driver"
"$PY" -c "import sys, torch; print(f'python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}')"
ROW_LIMIT="${ROW_LIMIT:-100}"  # seconds per row: 7 rows stay under one command's 10 minutes with the set-up
table=$(mktemp)
for row in $("$PY" benchmarks/gpu_check.py); do
  echo "--- $row"
  timeout -k 5 "$ROW_LIMIT" "$PY" benchmarks/gpu_check.py --row "$row" "$@" 2>"$table.err" | tee -a "$table"
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    reason=$([ "$status" -eq 124 ] && echo "timed out after ${ROW_LIMIT} s" || tail -n 1 "$table.err" | cut -c1-100)
    echo "| $row | failed (exit $status) | $reason |" | tee -a "$table"
  fi
done
echo
echo "| what | rate | conditions |"
echo "|---|---|---|"
cat "$table"
echo
echo "$((SECONDS - started)) s in all"
rm -f "$table" "$table.err"
