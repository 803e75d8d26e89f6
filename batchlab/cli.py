"""The `batchlab` command line.

    batchlab run GRID.yaml [--storage ROOT] [--address ADDR] [--dry-run] [--allow-failed]
    batchlab demo                      the built-in quick grid (MNIST-1D, CPU, minutes)
    batchlab sql "SELECT ..."          ad-hoc SQL over the warehouse (or the query on stdin)
    batchlab compact [--experiment E]  merge per-trial files into few large Parquet files
    batchlab check [--quarantine]      corrupt files and integrity problems
    batchlab report [--experiment E]   the Findings page as Markdown
    batchlab export --format F --output DIR   every table as Parquet, CSV or JSONL
    batchlab import ray-tune|tensorboard|csv PATH   a study run elsewhere
    batchlab app [--storage ROOT]      the Streamlit explorer (binds 127.0.0.1)

Exit codes (docs/cli.md): 0 done; 1 `check` found problems (or an unexpected error, with
its traceback); 2 bad arguments, grid spec or input; 3 no warehouse at the root, or an
unknown experiment; 4 trials failed (`run`, `demo`; `--allow-failed` keeps 0); 5 storage
that cannot be written (full, read-only); 130 interrupted (143 SIGTERM, 129 SIGHUP). Heavy imports (torch, Ray, Streamlit) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

# The example grids live at the top of the source tree (installed editable, as README says).
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        default=None,
        help="storage root: a directory or s3://bucket/prefix (default $BATCHLAB_STORAGE or ./batchlab-runs)",
    )


EXIT_OK = 0
EXIT_PROBLEMS = 1  # `check` found problems, `report` incomplete trials (also a traceback's code)
EXIT_USAGE = 2  # bad arguments, grid spec, input or SQL (argparse's own code too)
EXIT_NO_WAREHOUSE = 3  # no warehouse at the root, or an experiment it does not hold
EXIT_TRIALS_FAILED = 4  # `run` / `demo`: at least one trial failed
EXIT_STORAGE = 5  # the storage root (or a file under it) cannot be written: full, read-only
EXIT_INTERRUPTED = 130  # Ctrl-C, or a run cancelled by it (128 + SIGINT, like a shell)
# SIGTERM / SIGHUP: 143 / 129, 128 + the signal (scheduler/interrupts.py)


class NoWarehouse(Exception):
    """The root holds no warehouse, or not the experiments asked for (exit 3)."""


def require_warehouse(storage: str | None, experiments: list[str] | tuple[str, ...] = ()):
    """The root's Layout when it holds committed trials of every experiment asked for; else
    NoWarehouse naming the root and the experiments it does hold."""
    from warehouse.layout import Layout

    layout = Layout.open(storage)
    have = layout.list_experiments()
    if not have:
        raise NoWarehouse(
            f"no warehouse at {layout.root} (no tables/trials/experiment=*/ there): run "
            f"`batchlab run GRID.yaml --storage {layout.root}` or `batchlab import ...` first, "
            "or pass --storage ROOT (default $BATCHLAB_STORAGE or ./batchlab-runs)"
        )
    unknown = [e for e in experiments if e not in have]
    if unknown:
        raise NoWarehouse(
            f"experiment {', '.join(map(repr, unknown))} not in the warehouse at "
            f"{layout.root}; experiments there: {', '.join(have)}"
        )
    return layout


# `batchlab run` compacts an experiment at the end once it has this many per-trial files:
# queries over epochs/steps read one file per trial before compaction (seconds at 10,000
# trials), a few large files after it.
DEFAULT_COMPACT_THRESHOLD = 1000


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="batchlab", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a grid (skips trials already stored)")
    p.add_argument("grid", help="path to grid.yaml")
    _storage_arg(p)
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
    _storage_arg(p)
    p.add_argument("--num-cpus", type=int, default=None)
    p.add_argument("--allow-failed", action="store_true", help="exit 0 even when trials failed")

    p = sub.add_parser("sql", help="run SQL over the warehouse (argument or stdin)")
    p.add_argument("query", nargs="?", help="SQL text; read from stdin when omitted or '-'")
    _storage_arg(p)
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument(
        "--output", default=None, help="write the result to this file (needed for parquet)"
    )
    p.add_argument("--max-rows", type=int, default=50, help="rows shown in table format")
    p.add_argument("--timeout-s", type=float, default=60.0, help="stop the query after this long")
    _output_args(p, "replace an existing --output file")

    p = sub.add_parser("export", help="every table to one file each, plus a README")
    _storage_arg(p)
    p.add_argument("--format", choices=["parquet", "csv", "jsonl", "mlflow"], required=True)
    p.add_argument("--output", required=True, metavar="DIR", help="directory to write into")
    p.add_argument(
        "--experiment", action="append", default=[], help="only these experiments (repeatable)"
    )
    _output_args(p, "write into a non-empty folder batchlab did not make")

    p = sub.add_parser("import", help="a study run elsewhere into the warehouse")
    p.add_argument("source", choices=["ray-tune", "tensorboard", "csv", "mlflow"])
    p.add_argument(
        "path",
        help="Ray Tune experiment folder, TensorBoard log folder, CSV file or MLflow store "
        "(mlruns/, mlflow.db, a tracking URI)",
    )
    _storage_arg(p)
    p.add_argument(
        "--experiment", default=None, help="experiment name (default: the folder or file name)"
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="FIELD=NAME",
        help="where a field is in the source, e.g. batch_size=bs, lr=learning_rate, "
        "val_loss=loss/val, run=run_id (repeatable; docs/cli.md)",
    )

    p = sub.add_parser("compact", help="merge per-trial files into few large Parquet files")
    _storage_arg(p)
    p.add_argument("--experiment", default=None, help="only this experiment (default: all)")

    p = sub.add_parser("check", help="find corrupt files and integrity problems")
    _storage_arg(p)
    p.add_argument(
        "--quarantine", action="store_true", help="move corrupt files to <root>/quarantine/"
    )
    p.add_argument("--deep", action="store_true", help="also read every file in full")
    p.add_argument(  # warehouse/check.py: repair (issue 19)
        "--repair", action="store_true",
        help="read every file in full, quarantine damaged ones and mark the trials that lost "
        "rows for a re-run by the next `batchlab run`",
    )  # fmt: skip

    p = sub.add_parser("report", help="write the Findings page as a Markdown report")
    _storage_arg(p)
    p.add_argument(
        "--experiment", action="append", default=[], help="only these experiments (repeatable)"
    )
    p.add_argument("--output", default=None, help="file to write (default: print to stdout)")

    p = sub.add_parser("app", help="open the Streamlit explorer")
    _storage_arg(p)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--demo", action="store_true", help="open the committed demo warehouse")
    from batchlab.cli_advise import add_parser as add_advise
    from batchlab.cli_status import add_parser as add_status

    add_status(sub, _storage_arg)
    add_advise(sub, _storage_arg)
    return ap


def _output_args(p: argparse.ArgumentParser, force_help: str) -> None:
    """--force and --no-formula-escape of `sql` and `export` (warehouse/export.py)."""
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument(
        "--no-formula-escape",
        action="store_true",
        help="CSV: write text cells starting with = + - @ as they are (default: a leading ')",
    )


def main(argv: list[str] | None = None) -> int:
    from scheduler import interrupts
    from scheduler.storage_errors import describe

    args = build_parser().parse_args(argv)
    interrupts.install()  # SIGTERM / SIGHUP stop a command as Ctrl-C does, exit 143 / 129
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        sig = interrupts.received()
        print(f"interrupted{f' ({signal.Signals(sig).name})' if sig else ''}", file=sys.stderr)
        return interrupts.exit_code(EXIT_INTERRUPTED)
    except NoWarehouse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_WAREHOUSE
    except Exception as exc:
        from scheduler.spec import SpecError

        if (line := describe(exc)) is not None:  # full disk, read-only, a file in the way
            print(line, file=sys.stderr)
            return EXIT_STORAGE
        if isinstance(exc, (SpecError, ValueError, FileNotFoundError)):
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


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


def cmd_sql(args: argparse.Namespace) -> int:
    from warehouse.sql import run_readonly

    if args.output:  # refused before the query runs (warehouse/export.py)
        from warehouse.export import check_output_file
        from warehouse.layout import Layout

        check_output_file(Layout.open(args.storage), Path(args.output), args.force)
    query = args.query
    if query in (None, "-"):
        query = sys.stdin.read()
    if not query.strip():
        print("error: no SQL given (pass it as an argument or on stdin)", file=sys.stderr)
        return EXIT_USAGE
    # Read-only and locked down (warehouse/sql.py): SELECTs over the views, nothing else.
    # A refused statement is exit 2 whether or not the root holds data; then an empty root
    # is exit 3 rather than "0 rows".
    df = run_readonly(args.storage, query, timeout_s=args.timeout_s, max_rows=1_000_000)
    require_warehouse(args.storage)
    if df.attrs.get("truncated"):
        if args.output:  # a file must hold the whole result
            raise ValueError(
                f"the result has more than {len(df)} rows; add a LIMIT, or use "
                "`batchlab export` for whole tables; nothing written"
            )
        print(f"note: only the first {len(df)} rows were fetched", file=sys.stderr)
    if args.format == "parquet" and not args.output:
        raise ValueError("--format parquet needs --output FILE (Parquet is not for a terminal)")
    if args.output:
        from warehouse.export import OutputUnwritable

        try:
            _write_result(df, args.format, args.output, args)
        except OutputUnwritable as exc:  # the output's disk, not the storage root's
            print(exc, file=sys.stderr)
            return EXIT_STORAGE
        print(f"wrote {len(df)} rows to {args.output}", file=sys.stderr)
    elif args.format == "csv":
        from warehouse.export import escape_formula_cells

        (df if args.no_formula_escape else escape_formula_cells(df)).to_csv(sys.stdout, index=False)
    elif args.format == "json":
        df.to_json(sys.stdout, orient="records", date_format="iso")
        print()
    else:
        import pandas as pd

        with pd.option_context("display.max_columns", None, "display.width", 200):
            print(df.head(args.max_rows).to_string(index=False))
        if len(df) > args.max_rows:
            print(f"... {len(df)} rows ({args.max_rows} shown; --max-rows to see more)")
    return 0


def _write_result(df, fmt: str, output: str, args: argparse.Namespace | None = None) -> None:
    from warehouse.export import write_result
    from warehouse.layout import Layout

    force = bool(args and args.force)
    escape = not (args and args.no_formula_escape)
    storage = args.storage if args else None
    write_result(Layout.open(storage), df, fmt, output, force=force, escape_formulas=escape)


def cmd_export(args: argparse.Namespace) -> int:
    from warehouse.export import OutputUnwritable, check_outside_root, export

    layout = require_warehouse(args.storage, args.experiment)
    check_outside_root(layout, args.output)  # every format, MLflow stores too
    if args.format == "mlflow":  # --output: an MLflow store (docs/integrations.md)
        from warehouse.importers.mlflow import export_mlflow

        print(export_mlflow(layout, args.output, args.experiment or None))
        return EXIT_OK
    escape = not args.no_formula_escape
    try:
        report = export(
            layout,
            args.format,
            args.output,
            args.experiment,
            force=args.force,
            escape_formulas=escape,
        )
    except OutputUnwritable as exc:  # the output's disk, not the storage root's
        print(exc, file=sys.stderr)
        return EXIT_STORAGE
    print(report.summary())
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from warehouse.importers import (
        experiment_name,
        import_trials,
        mlflow,
        parse_mapping,
        ray_tune,
        table,
        tensorboard,
    )
    from warehouse.layout import Layout

    mapping = parse_mapping(args.map)
    module = {"ray-tune": ray_tune, "tensorboard": tensorboard, "csv": table, "mlflow": mlflow}[
        args.source
    ]
    trials = module.read(args.path, mapping) if module is table else module.read(args.path)
    experiment = args.experiment or experiment_name(module.default_experiment(args.path))
    layout = Layout.open(args.storage)
    report = import_trials(layout, args.source, str(args.path), experiment, trials, mapping)
    print(report.summary())
    print(f"results: {layout.root}  (DuckDB file: {layout.duckdb_file})")
    return EXIT_OK


def cmd_compact(args: argparse.Namespace) -> int:
    from warehouse.compact import compact

    layout = require_warehouse(args.storage, [args.experiment] if args.experiment else [])
    report = compact(layout, experiment=args.experiment)
    print(report.summary())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from warehouse.check import check_warehouse, quarantine_corrupt

    require_warehouse(args.storage)
    if args.repair:  # warehouse/check.py (issue 19)
        from warehouse.check import repair

        print(repair(args.storage).summary())
    elif args.quarantine:
        for c in quarantine_corrupt(args.storage, deep=args.deep):
            print(f"quarantined {c.path} -> {c.moved_to}: {c.reason}")
    problems = check_warehouse(args.storage, deep=args.deep)
    for p in problems:
        print(p)
    print(f"{len(problems)} problems" if problems else "no problems found")
    return EXIT_PROBLEMS if problems else EXIT_OK


def cmd_app(args: argparse.Namespace) -> int:
    import app

    entry = Path(app.__file__).resolve().parent / "main.py"
    env = dict(os.environ)
    if args.demo:
        env["BATCHLAB_STORAGE"] = str(
            Path(__file__).resolve().parent.parent / "examples" / "results"
        )
    elif args.storage:
        env["BATCHLAB_STORAGE"] = args.storage
    warm = True
    if not args.demo:
        try:  # a server: it starts on an empty root (a run into it shows up on reload)
            require_warehouse(env.get("BATCHLAB_STORAGE"))
        except NoWarehouse as exc:
            warm = False
            print(f"note: {exc}", file=sys.stderr)
    if warm:  # every page rendered once in the background: first visits read the disk cache
        from app.warm import start_background
        from warehouse.layout import default_root

        start_background(env.get("BATCHLAB_STORAGE") or default_root())
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(entry),
        "--server.address", args.host, "--server.port", str(args.port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    print(
        f"batchlab app on http://{args.host}:{args.port}  (storage: {env.get('BATCHLAB_STORAGE', './batchlab-runs')})"
    )
    return subprocess.call(cmd, env=env)


def cmd_report(args: argparse.Namespace) -> int:
    from warehouse.queries import Filters
    from warehouse.report import incomplete, render_report

    layout = require_warehouse(args.storage, args.experiment)
    f = Filters(experiment=tuple(args.experiment))
    text = render_report(layout, f)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text)
    gone = incomplete(layout, f)
    if gone:  # the report is written, and says so; the request did not fully succeed
        print(
            f"warning: {len(gone)} trial(s) incomplete (rows lost; `batchlab check` lists "
            "them): re-run their grids; the verdicts are judged without them",
            file=sys.stderr,
        )
        return EXIT_PROBLEMS
    return 0


_COMMANDS = {
    "report": cmd_report,
    "run": cmd_run,
    "demo": cmd_demo,
    "sql": cmd_sql,
    "export": cmd_export,
    "import": cmd_import,
    "compact": cmd_compact,
    "check": cmd_check,
    "app": cmd_app,
    "status": lambda args: __import__("batchlab.cli_status").cli_status.cmd_status(args),
    "advise": lambda args: __import__("batchlab.cli_advise").cli_advise.cmd_advise(args),
}


def entry() -> None:
    """The console script: `main()`, then an exit that keeps our exit code. Native threads
    of libraries (Ray's core worker, DuckDB, Arrow) can abort the interpreter's teardown with
    "terminate called without an active exception" (SIGABRT, exit 134) after every result
    is written; so Ray is shut down explicitly, the streams flushed, and the process leaves
    with os._exit(code). Tests call `main()` in-process and are not affected."""
    from scheduler import interrupts

    code = main()
    # After SIGTERM / SIGHUP the grace period is short and Ray's own processes may be dying
    # too (SLURM signals every process of the step): no ray.shutdown, which can wait on them;
    # the embedded instance's watchdog (scheduler/watchdog.py) tears it down.
    if "ray" in sys.modules and interrupts.received() is None:
        try:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        except Exception:  # the exit code is about the user's request, not the teardown
            pass
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    entry()
