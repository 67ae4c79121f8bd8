#!/usr/bin/env bash
# Runs the test suite inside .venv. Without a GPU, DeepSpeed is pointed at its CPU accelerator.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
    export DS_ACCELERATOR=cpu
fi
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest tests "$@"
