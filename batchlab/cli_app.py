"""`batchlab report` (the Findings page as Markdown) and `batchlab app` (the Streamlit
explorer, bound to 127.0.0.1 unless --host says otherwise). Exit codes as docs/cli.md: 1 when
the report leaves out incomplete trials, 3 no warehouse; `app` exits with Streamlit's code."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchlab.cli import EXAMPLES, EXIT_PROBLEMS, NoWarehouse, require_warehouse


def add_parser(sub: Any, storage_arg: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("report", help="write the Findings page as a Markdown report")
    storage_arg(p)
    p.add_argument(
        "--experiment", action="append", default=[], help="only these experiments (repeatable)"
    )
    p.add_argument("--output", default=None, help="file to write (default: print to stdout)")

    p = sub.add_parser("app", help="open the Streamlit explorer")
    storage_arg(p)
    p.add_argument("--port", type=int, default=8501)
    p.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--demo", action="store_true", help="open the committed demo warehouse")


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


def cmd_app(args: argparse.Namespace) -> int:
    import app

    entry = Path(app.__file__).resolve().parent / "main.py"
    env = dict(os.environ)
    if args.demo:
        env["BATCHLAB_STORAGE"] = str(EXAMPLES / "results")
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
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(entry),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    print(
        f"batchlab app on http://{args.host}:{args.port}  (storage: {env.get('BATCHLAB_STORAGE', './batchlab-runs')})"
    )
    return subprocess.call(cmd, env=env)
