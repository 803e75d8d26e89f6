#!/usr/bin/env bash
# Rebuild the committed demo warehouse (examples/results) from the example grids that run
# on a CPU, compact it, check it and regenerate its report:
#   bash examples/make_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=examples/results
for grid in examples/quick.yaml examples/cpu/*.yaml; do
  batchlab run "$grid" --storage "$ROOT" --no-progress
done
rm -rf "$ROOT/checkpoints"          # weights are not needed by the app (keeps the demo small)
batchlab compact --storage "$ROOT"
batchlab check --storage "$ROOT"
batchlab report --storage "$ROOT" --output "$ROOT/REPORT.md"
