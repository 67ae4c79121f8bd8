#!/usr/bin/env bash
# The demo job: generates the synthetic demo corpus into runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/demo
start=$(date +%s)
.venv/bin/x2vlm-shards demo --out "$out/corpus" --images 600 --videos 60 --seed 0
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "  raw demo corpus: $out/corpus (annotations in $out/corpus/annotations)"
