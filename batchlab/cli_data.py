"""The data commands: `batchlab sql`, `export`, `import`, `compact` and `check` (docs/cli.md,
docs/warehouse.md). Exit codes: 2 bad input or SQL, 3 no warehouse, 5 an output or storage
root that cannot be written, 1 when `check` finds problems."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchlab.cli import EXIT_OK, EXIT_PROBLEMS, EXIT_STORAGE, EXIT_USAGE, require_warehouse


def add_parser(sub: Any, storage_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("sql", help="run SQL over the warehouse (argument or stdin)")
    p.add_argument("query", nargs="?", help="SQL text; read from stdin when omitted or '-'")
    storage_arg(p)
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument(
        "--output", default=None, help="write the result to this file (needed for parquet)"
    )
    p.add_argument("--max-rows", type=int, default=50, help="rows shown in table format")
    p.add_argument("--timeout-s", type=float, default=60.0, help="stop the query after this long")
    _output_args(p, "replace an existing --output file")

    p = sub.add_parser("export", help="every table to one file each, plus a README")
    storage_arg(p)
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
    storage_arg(p)
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
    storage_arg(p)
    p.add_argument("--experiment", default=None, help="only this experiment (default: all)")

    p = sub.add_parser("check", help="find corrupt files and integrity problems")
    storage_arg(p)
    p.add_argument(
        "--quarantine", action="store_true", help="move corrupt files to <root>/quarantine/"
    )
    p.add_argument("--deep", action="store_true", help="also read every file in full")
    p.add_argument(  # warehouse/check.py: repair (issue 19)
        "--repair",
        action="store_true",
        help="read every file in full, quarantine damaged ones and mark the trials that lost "
        "rows for a re-run by the next `batchlab run`",
    )


def _output_args(p: argparse.ArgumentParser, force_help: str) -> None:
    """--force and --no-formula-escape of `sql` and `export` (warehouse/export.py)."""
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument(
        "--no-formula-escape",
        action="store_true",
        help="CSV: write text cells starting with = + - @ as they are (default: a leading ')",
    )


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
