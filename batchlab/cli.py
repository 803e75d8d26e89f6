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

This module holds the parser, `main`, `entry`, the exit codes and the helpers the commands
share; each command group is its own module, imported when the parser is built and adding its
subcommands with `add_parser(sub, storage_arg)`: cli_run.py (run, demo), cli_data.py (sql,
export, import, compact, check), cli_app.py (report, app), cli_status.py, cli_advise.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from scheduler.run_command import (  # noqa: F401  (the run codes, re-exported for the commands)
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_TRIALS_FAILED,
    EXIT_USAGE,
)

# The example grids live at the top of the source tree (installed editable, as README says).
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        default=None,
        help="storage root: a directory or s3://bucket/prefix (default $BATCHLAB_STORAGE or ./batchlab-runs)",
    )


# The exit codes of a run (0, 2 bad input, 4 trials failed, 5 storage, 130 interrupted) are
# the scheduler's (scheduler/run_command.py); the CLI adds two of its own commands' codes.
EXIT_PROBLEMS = 1  # `check` found problems, `report` incomplete trials (also a traceback's code)
EXIT_NO_WAREHOUSE = 3  # no warehouse at the root, or an experiment it does not hold
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


# The command modules, in the order their subcommands appear in `batchlab --help`.
COMMAND_MODULES = ("cli_run", "cli_data", "cli_app", "cli_status", "cli_advise")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="batchlab", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"batchlab.{name}").add_parser(sub, storage_arg)
    return ap


def main(argv: list[str] | None = None) -> int:
    from scheduler.run_command import guarded

    args = build_parser().parse_args(argv)

    def command() -> int:
        try:
            return _COMMANDS[args.command](args)
        except NoWarehouse as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_NO_WAREHOUSE

    # SIGTERM / SIGHUP stop a command as Ctrl-C does (exit 143 / 129 / 130); a full or
    # read-only storage root exits 5, bad input 2 (scheduler/run_command.py `guarded`).
    return guarded(command)


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """`module.name(args)`, the module imported on the first call."""
    return lambda args: getattr(importlib.import_module(f"batchlab.{module}"), name)(args)


_COMMANDS = {
    "report": _command("cli_app", "cmd_report"),
    "run": _command("cli_run", "cmd_run"),
    "demo": _command("cli_run", "cmd_demo"),
    "sql": _command("cli_data", "cmd_sql"),
    "export": _command("cli_data", "cmd_export"),
    "import": _command("cli_data", "cmd_import"),
    "compact": _command("cli_data", "cmd_compact"),
    "check": _command("cli_data", "cmd_check"),
    "app": _command("cli_app", "cmd_app"),
    "status": _command("cli_status", "cmd_status"),
    "advise": _command("cli_advise", "cmd_advise"),
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
    # `python -m batchlab.cli` runs this file as __main__, a second copy of batchlab.cli (the
    # module the command modules import): run batchlab.cli's own entry, so that `main` catches
    # the NoWarehouse that `require_warehouse` raises (exit 3, not a traceback).
    import batchlab.cli

    batchlab.cli.entry()
