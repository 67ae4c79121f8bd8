#!/usr/bin/env bash
# Runs the test suite inside .venv. Without a GPU, DeepSpeed is pointed at its CPU accelerator.
# TESTS picks a part: tests/unit (fast, in-process) or tests/integration (several processes,
# DeepSpeed ranks, a real Slurm cluster, the demo run); the default is both.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
    export DS_ACCELERATOR=cpu
fi
export PYTHONUNBUFFERED=1
# The venv's tools first: DeepSpeed keys its compiled-op cache on the ninja it finds, and a
# different ninja in a child process would rebuild the ops from scratch.
export PATH="$PWD/.venv/bin:$PATH"
# The slowest tests are listed at the end: the suite must stay within its time on CI.
exec .venv/bin/python -m pytest ${TESTS:-tests} --durations=20 "$@"
