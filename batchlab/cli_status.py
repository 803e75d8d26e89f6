"""`batchlab status [--watch]`: the trials of a running (or finished, or orphaned) grid, from
another terminal, without Ray: warehouse/status.py reads the live area and the committed
rows. Exit codes as docs/cli.md: 0, 3 when the root holds neither a warehouse nor a run."""

from __future__ import annotations

import argparse
import sys
import time


def add_parser(sub, storage_arg) -> None:
    p = sub.add_parser("status", help="the trials of a running grid: state, epoch, losses, ETA")
    storage_arg(p)
    p.add_argument("--experiment", default=None, help="default: every experiment with a run")
    p.add_argument("--watch", action="store_true", help="refresh in place until the run ends")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument(
        "--stall-after",
        type=float,
        default=None,
        help="seconds without a heartbeat before a trial or driver counts as stalled (60)",
    )


def cmd_status(args: argparse.Namespace) -> int:
    from warehouse import live
    from warehouse.layout import Layout
    from warehouse.status import experiment_status, format_status

    layout = Layout.open(args.storage)
    stall = args.stall_after if args.stall_after is not None else live.STALL_S
    known = sorted(set(live.live_experiments(layout)) | set(layout.list_experiments()))
    if args.experiment:
        if args.experiment not in known:
            print(
                f"error: experiment {args.experiment!r} has no run or trials under "
                f"{layout.root}; there: {', '.join(known) or 'none'}",
                file=sys.stderr,
            )
            return 3
        names = [args.experiment]
    else:
        names = live.live_experiments(layout) or layout.list_experiments()
    if not names:
        print(f"error: no warehouse and no run under {layout.root}", file=sys.stderr)
        return 3
    while True:
        states = [experiment_status(layout, e, stall) for e in names]
        text = "\n\n".join(format_status(s) for s in states)
        if args.watch and sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")  # refreshed in place, like Ray Tune's table
        print(text, flush=True)
        busy = any(
            s["driver"] == "alive" or any(r["state"] == "running" for r in s["rows"])
            for s in states
        )
        if not args.watch or not busy:
            return 0
        time.sleep(args.interval)
        if not sys.stdout.isatty():
            print()
