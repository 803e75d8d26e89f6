"""A grid run as a command: plan or run it, report what ran, compact a large experiment at
the end, and return the run's exit code (docs/cli.md): 0, 4 when trials failed
(`allow_failed` keeps 0), 130 (or 128 + the signal) when interrupted, 2 bad input, 5 an
unwritable storage root. Shared by `batchlab run` (batchlab/cli_run.py) and the cluster's
`ray submit` script (scheduler/submit.py), which must not import the CLI package.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from scheduler import interrupts

EXIT_OK = 0
EXIT_USAGE = 2  # bad arguments, grid spec or input
EXIT_TRIALS_FAILED = 4  # at least one trial failed
EXIT_STORAGE = 5  # the storage root (or a file under it) cannot be written: full, read-only
EXIT_INTERRUPTED = 130  # Ctrl-C, or a run cancelled by it (128 + SIGINT, like a shell)

# A run compacts an experiment at the end once it has this many per-trial files: queries
# over epochs/steps read one file per trial before compaction (seconds at 10,000 trials),
# a few large files after it.
DEFAULT_COMPACT_THRESHOLD = 1000


def run_command(
    spec: Any,
    storage: str | None,
    address: str | None = None,
    num_cpus: int | None = None,
    dry_run: bool = False,
    progress: bool = True,
    storage_shared: bool | None = None,
    compact_threshold: int = DEFAULT_COMPACT_THRESHOLD,
    allow_failed: bool = False,
) -> int:
    """Plan (`dry_run`) or run the grid `spec` under `storage`; prints what `batchlab run`
    prints and returns its exit code (errors raise: `guarded` maps them to codes)."""
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
                f"  run   {t.trial_id}  batch_size={t.batch_size} lr={t.lr:g} "
                f"lr_scaling={t.lr_scaling} seed={t.seed}"
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
        return EXIT_OK
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
        compact_if_many(layout, spec.experiment, compact_threshold)
    print(f"results: {layout.root}  (DuckDB file: {layout.duckdb_file})")
    return run_exit_code(report, allow_failed)


def run_exit_code(report: Any, allow_failed: bool) -> int:
    """A run's exit code from its RunReport: interrupted, else trials failed (unless
    allowed), else 0. Diverged trials are results, not failures."""
    if report.cancelled:
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


def compact_if_many(layout: Any, experiment: str, threshold: int) -> None:
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


def guarded(command: Callable[[], int]) -> int:
    """`command()`, its errors as `batchlab`'s exit codes with a one-line message on
    stderr: interrupted 130 / 128 + signal, an unwritable storage root 5, bad input 2."""
    from scheduler.spec_errors import SpecError
    from scheduler.storage_errors import describe

    interrupts.install()  # SIGTERM / SIGHUP stop the command as Ctrl-C does
    try:
        return command()
    except KeyboardInterrupt:
        sig = interrupts.received()
        print(f"interrupted{f' ({signal.Signals(sig).name})' if sig else ''}", file=sys.stderr)
        return interrupts.exit_code(EXIT_INTERRUPTED)
    except Exception as exc:
        if (line := describe(exc)) is not None:  # full disk, read-only, a file in the way
            print(line, file=sys.stderr)
            return EXIT_STORAGE
        if isinstance(exc, (SpecError, ValueError, FileNotFoundError)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise
