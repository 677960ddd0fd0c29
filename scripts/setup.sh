#!/usr/bin/env bash
# Create .venv with the pinned stack (requirements.lock) and install autofednlp into it.
# Idempotent: does nothing when the lock file and pyproject.toml have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.autofednlp-$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the pinned dependencies (a few minutes the first time)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  .venv/bin/python -m pip check
  rm -f .venv/.autofednlp-*
  touch "$stamp"
fi
