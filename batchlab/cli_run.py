"""`batchlab run GRID.yaml` and `batchlab demo`: plan or run a grid on Ray, report what ran,
compact a large experiment at the end, and exit with the run's code (docs/cli.md): 0, 4 when
trials failed (`--allow-failed` keeps 0), 130 when interrupted. Heavy imports (torch, Ray)
happen inside the commands."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import Any

from batchlab.cli import EXAMPLES, EXIT_INTERRUPTED, EXIT_OK, EXIT_TRIALS_FAILED

# `batchlab run` compacts an experiment at the end once it has this many per-trial files:
# queries over epochs/steps read one file per trial before compaction (seconds at 10,000
# trials), a few large files after it.
DEFAULT_COMPACT_THRESHOLD = 1000


def add_parser(sub: Any, storage_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("run", help="run a grid (skips trials already stored)")
    p.add_argument("grid", help="path to grid.yaml")
    storage_arg(p)
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default $RAY_ADDRESS, else a local Ray)",
    )
    p.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray instance"
    )
    p.add_argument("--dry-run", action="store_true", help="validate and plan only; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--allow-failed",
        action="store_true",
        help=f"exit 0 even when trials failed (default: exit {EXIT_TRIALS_FAILED})",
    )
    p.add_argument(
        "--compact-threshold",
        type=int,
        default=DEFAULT_COMPACT_THRESHOLD,
        metavar="N",
        help="after the run, compact the experiment when it has at least N uncompacted trials "
        f"(default {DEFAULT_COMPACT_THRESHOLD}; 0: never); see docs/warehouse.md",
    )
    p.add_argument(
        "--storage-shared",
        action="store_true",
        default=None,
        help="declare a local-path storage root shared by every node (NFS); see docs/cluster.md",
    )

    p.add_argument("--until-decided", metavar="F-2,F-11", default=None, help="add seeds to the groups of these findings still undecided after each round (scheduler/decide.py)")  # fmt: skip
    p.add_argument("--max-seeds", type=int, default=8, help="--until-decided: seeds per setting at most (default 8)")  # fmt: skip
    p.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        metavar="N",
        help="cap every trial at N epochs (a smoke test of the grid; a changed config, so "
        "new trial ids: docs/cli.md)",
    )

    p = sub.add_parser("demo", help="run the built-in quick grid on CPU and summarize it")
    storage_arg(p)
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--allow-failed", action="store_true", help="exit 0 even when trials failed")


def cmd_run(args: argparse.Namespace) -> int:
    from scheduler.preflight import preflight
    from scheduler.spec import load_spec

    spec = load_spec(args.grid)
    if args.max_epochs is not None:  # docs/cli.md: every trial capped, so new trial ids
        if args.max_epochs < 1:
            raise ValueError(f"--max-epochs: {args.max_epochs} is not allowed: at least 1")
        spec = spec.model_copy(update={"max_epochs": min(spec.max_epochs, args.max_epochs)})
        spec._trials = None  # not the copied expansion of the uncapped grid
    preflight(spec, args.storage)  # user code and data-set sizes, before anything is queued
    if args.until_decided and not args.dry_run:
        from scheduler.decide import run_cli
        from warehouse.layout import Layout

        return run_cli(spec, Layout.open(args.storage).root, args.until_decided, args.max_seeds,
                       address=args.address, num_cpus=args.num_cpus,
                       progress=not args.no_progress, storage_shared=args.storage_shared)  # fmt: skip
    return _run(
        spec,
        args.storage,
        args.address,
        args.num_cpus,
        args.dry_run,
        not args.no_progress,
        args.storage_shared,
        args.compact_threshold,
        args.allow_failed,
    )


def _run(
    spec,
    storage,
    address,
    num_cpus,
    dry_run: bool,
    progress: bool,
    storage_shared: bool | None = None,
    compact_threshold: int = DEFAULT_COMPACT_THRESHOLD,
    allow_failed: bool = False,
) -> int:
    from scheduler.runner import check_feasible, plan, run_grid
    from scheduler.storage_errors import check_writable
    from warehouse.layout import Layout

    layout = Layout.open(storage)
    if dry_run:
        check_writable(layout, create=False)  # what the run checks first, writing nothing
        p = plan(spec, layout)
        print(p.describe())
        for t in p.to_run[:20]:
            print(
                f"  run   {t.trial_id}  batch_size={t.batch_size} lr={t.lr:g} lr_scaling={t.lr_scaling} seed={t.seed}"
            )
        if len(p.to_run) > 20:
            print(f"  ... and {len(p.to_run) - 20} more")
        try:  # the run's own resource check, after the plan so the plan is still shown
            check_feasible(spec, p.to_run, address, num_cpus)
        except ValueError as exc:
            raise type(exc)(
                f"{exc} To plan this grid for a cluster instead, add --address ADDRESS "
                "(e.g. --address auto; a dry run connects to nothing)."
            ) from exc
        return 0
    report = run_grid(
        spec,
        layout.root,
        address=address,
        num_cpus=num_cpus,
        progress=progress,
        storage_shared=storage_shared,
    )
    c = report.counts
    print(  # the failed trials were listed by run_grid, before any post-processing
        f"done in {report.wall_time_s:.1f} s: {c.get('completed', 0)} completed, "
        f"{c.get('diverged', 0)} diverged, {c.get('failed', 0)} failed, {report.skipped} skipped"
    )
    if compact_threshold > 0 and not report.cancelled:
        _compact_if_many(layout, spec.experiment, compact_threshold)
    print(f"results: {layout.root}  (DuckDB file: {layout.duckdb_file})")
    return _run_exit_code(report, allow_failed)


def _run_exit_code(report, allow_failed: bool) -> int:
    """A run's exit code from its RunReport: interrupted, else trials failed (unless
    allowed), else 0. Diverged trials are results, not failures."""
    if report.cancelled:
        from scheduler import interrupts

        sig = interrupts.received()
        by = f" by {signal.Signals(sig).name}" if sig else ""
        print(f"run interrupted{by}: not every trial ran (run it again to resume)", file=sys.stderr)
        return interrupts.exit_code(EXIT_INTERRUPTED)
    failed = report.counts.get("failed", 0)
    if failed and not allow_failed:
        print(
            f"{failed} trial(s) failed (exit {EXIT_TRIALS_FAILED}; --allow-failed exits 0); "
            "`batchlab run` again retries them",
            file=sys.stderr,
        )
        return EXIT_TRIALS_FAILED
    return EXIT_OK


def _compact_if_many(layout, experiment: str, threshold: int) -> None:
    """Compact `experiment` when it has at least `threshold` uncompacted trials; a failed
    compaction changes nothing (docs/warehouse.md) and does not fail the run."""
    from warehouse.compact import compact

    n = len(layout.table_files("trials", experiment).per_trial)
    if n < threshold:
        return
    print(f"compacting experiment {experiment}: {n} uncompacted trials (>= {threshold})")
    try:
        print(compact(layout, experiment=experiment).summary().splitlines()[0])
    except Exception as exc:  # the per-trial files are intact: querying still works
        print(
            f"compaction failed, results untouched: {exc}; run `batchlab compact "
            f"--storage {layout.root} --experiment {experiment}` later",
            file=sys.stderr,
        )


def cmd_demo(args: argparse.Namespace) -> int:
    from scheduler.spec import load_spec
    from warehouse.db import connect
    from warehouse.layout import Layout

    grid = EXAMPLES / "quick.yaml"
    spec = load_spec(grid)
    print(f"batchlab demo: {grid.name}, {len(spec.trials())} trials of an MLP on MNIST-1D (CPU)")
    rc = _run(spec, args.storage, None, args.num_cpus, False, True, allow_failed=args.allow_failed)
    if rc:
        return rc
    layout = Layout.open(args.storage)
    con = connect(layout)
    print("\nbest validation loss by batch size and lr rule (mean over seeds):")
    print(
        con.sql(
            """
            SELECT batch_size, lr_scaling, count(*) AS trials,
                   round(avg(best_val_loss), 4) AS min_val_loss,
                   round(avg(best_val_acc), 4) AS best_val_acc,
                   round(avg(final_dist_from_init), 3) AS dist_from_init,
                   round(avg(train_time_s), 2) AS train_time_s
            FROM trials WHERE experiment = $exp AND status = 'completed'
            GROUP BY ALL ORDER BY lr_scaling, batch_size
            """,
            params={"exp": spec.experiment},
        )
        .fetchdf()
        .to_string(index=False)
    )
    storage = f" --storage {args.storage}" if args.storage else ""
    print(f"\nopen the explorer:  batchlab app{storage}")
    print(f'ad-hoc SQL:         batchlab sql{storage} "SELECT * FROM epochs LIMIT 5"')
    return 0
