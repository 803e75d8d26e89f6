#!/usr/bin/env bash
# Rebuild the committed demo warehouse (examples/results) from the example grids that run
# on a CPU, compact it, check it and regenerate its report:
#   bash examples/make_demo.sh
# Starts from an empty warehouse (examples/results/README.md is kept). The convergence-
# matched Keskar study adds seeds to the groups its findings leave undecided (--until-decided).
# The MNIST study (examples/cpu/advise-mnist*.yaml) reads the official files from
# ../shared/data/mnist (the grids' data_dir) and gets its timing probes from
# examples/cpu/advise_mnist_timing.py after its trials (an ordinary grid has none).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=examples/results
find "$ROOT" -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
for grid in examples/quick.yaml examples/cpu/lr-batch-digits.yaml examples/cpu/lr-decades-mnist1d.yaml; do
  batchlab run "$grid" --storage "$ROOT" --no-progress
done
batchlab run examples/cpu/keskar-digits.yaml --storage "$ROOT" --no-progress \
  --until-decided F-2,F-4,F-5,F-7,F-10,F-11,F-12,F-13,F-15,F-16,F-27,F-28,F-29 --max-seeds 6
for grid in examples/cpu/advise-mnist.yaml examples/cpu/advise-mnist-rules.yaml; do
  batchlab run "$grid" --storage "$ROOT" --no-progress
  python examples/cpu/advise_mnist_timing.py "$grid" --storage "$ROOT"
done
rm -rf "$ROOT/checkpoints" "$ROOT/live"  # weights and the runs' live records: not needed by the app
batchlab compact --storage "$ROOT"
batchlab check --storage "$ROOT"
batchlab report --storage "$ROOT" --output "$ROOT/REPORT.md"
