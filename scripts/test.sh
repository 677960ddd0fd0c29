#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite offline: first the tests that can share
# the machine, spread over its cores (pytest-xdist, at most 4 workers), then the few marked
# `serial` (Flower's engine and servers, rounds against a timeout), alone. Pytest options pass
# through to both parts, e.g. `bash scripts/test.sh -m "not slow"` or `-k resume`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
# pytest exits 5 when a part selects no test (e.g. `-k` names only serial tests): not a failure
part() {
  local rc=0
  .venv/bin/python -m pytest -q --durations=15 "$@" || rc=$?
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then exit "$rc"; fi
}
# one torch thread per worker: the workers already fill the cores, and a second thread each
# only contends (measured: MiniLM's full fine-tuning test took 3.6x as long with two workers
# of two threads as alone)
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 part --part parallel -n auto --maxprocesses 4 "$@"
part --part serial "$@"
