"""The timing probe of examples/cpu/advise-mnist.yaml (run by examples/make_demo.sh after the grid).

An ordinary grid has no timing probe (docs/advise.md: there is no grid-spec switch for it;
`batchlab advise --dataset D --model M` runs one after its own study). This script runs the
same probe for the grid's trials: one `timings` row per batch size, each a lone Ray task
that reserves a whole node's CPUs, one at a time, after every trial has finished
(`scheduler.advise_study.run_timings`, with the study's defaults: 10 warm-up steps, 9
repeats of 30 timed steps, the trials' 1 torch thread), so `batchlab advise --experiment
demo-advise-mnist` answers "least wall time" from the probe's seconds per step instead of
the trials' own (packed) seconds. A re-run skips the batch sizes already timed.

    python examples/cpu/advise_mnist_timing.py [--storage ROOT] [GRID]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class _OneBatchSize:
    """What run_timings reads of a stage's spec: its experiment, data files and a trial config."""

    def __init__(self, experiment: str, cfg, data_dir: str | None) -> None:
        self.experiment, self.data_dir = experiment, data_dir
        self._cfg = cfg

    def trials(self) -> list:
        return [self._cfg]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("grid", nargs="?", default=str(HERE / "advise-mnist.yaml"))
    p.add_argument("--storage", default=str(HERE.parent / "results"))
    p.add_argument("--num-cpus", type=int, default=None)
    args = p.parse_args(argv)

    from scheduler.advise_study import StudyOptions, run_timings
    from scheduler.spec import load_spec
    from warehouse.db import write_duckdb_file
    from warehouse.layout import Layout

    spec = load_spec(args.grid)
    first: dict[int, object] = {}
    for cfg in spec.trials():
        first.setdefault(cfg.batch_size, cfg)
    specs = [_OneBatchSize(spec.experiment, first[b], spec.data_dir) for b in sorted(first)]
    cpus = spec.resources.cpus_per_trial
    opts = StudyOptions(
        dataset=spec.dataset.name,
        model=spec.model.name,
        experiment=spec.experiment,
        cpus_per_trial=cpus,
    )
    layout = Layout.open(args.storage)
    rows = run_timings(layout, specs, opts, {"num_cpus": args.num_cpus}, sys.stdout)
    write_duckdb_file(layout)
    print(f"{len(rows)} timing row(s) written to {args.storage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
