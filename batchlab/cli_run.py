"""`batchlab run GRID.yaml` and `batchlab demo`: plan or run a grid on Ray, report what ran,
compact a large experiment at the end, and exit with the run's code (docs/cli.md): 0, 4 when
trials failed (`--allow-failed` keeps 0), 130 when interrupted. Heavy imports (torch, Ray)
happen inside the commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from batchlab.cli import EXAMPLES
from scheduler.run_command import DEFAULT_COMPACT_THRESHOLD, EXIT_TRIALS_FAILED, run_command


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

    p.add_argument(
        "--until-decided",
        metavar="F-2,F-11",
        default=None,
        help="add seeds to the groups of these findings still undecided after each round (scheduler/decide.py)",
    )
    p.add_argument(
        "--max-seeds",
        type=int,
        default=8,
        help="--until-decided: seeds per setting at most (default 8)",
    )
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

        return run_cli(
            spec,
            Layout.open(args.storage).root,
            args.until_decided,
            args.max_seeds,
            address=args.address,
            num_cpus=args.num_cpus,
            progress=not args.no_progress,
            storage_shared=args.storage_shared,
        )
    return run_command(
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


def cmd_demo(args: argparse.Namespace) -> int:
    from scheduler.spec import load_spec
    from warehouse.db import connect
    from warehouse.layout import Layout

    grid = EXAMPLES / "quick.yaml"
    spec = load_spec(grid)
    print(f"batchlab demo: {grid.name}, {len(spec.trials())} trials of an MLP on MNIST-1D (CPU)")
    rc = run_command(
        spec, args.storage, None, args.num_cpus, False, True, allow_failed=args.allow_failed
    )
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
