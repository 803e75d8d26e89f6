"""Run a grid on a Ray cluster started with `ray up`: the script `ray submit` runs on the head.

    ray submit deploy/cluster.yaml scheduler/submit.py examples/seed002.yaml
    ray submit deploy/cluster.yaml scheduler/submit.py -- examples/seed002.yaml --dry-run

`ray submit` uploads this one file to `~/submit.py` on the head node and runs
`python ~/submit.py ARGS` there through a remote shell, with ARGS joined by spaces and not
quoted. So this script:

1. finds the grid inside the project that `ray up` mounted on the head (`file_mounts` in
   deploy/cluster.yaml; the project is the checkout `pip install -e` installed there), or
   relative to the current folder, or at an absolute path on the head;
2. checks that the storage root ($BATCHLAB_STORAGE, set on every node by deploy/cluster.yaml,
   or --storage) is reachable from the head, connects to the running cluster
   (`address="auto"`), and fails with a message naming what is missing and where to fix it;
3. runs the grid with the same code as `batchlab run --address auto` (the preflight, then
   scheduler/run_command.py), which probes the storage root from every node before the
   first trial (scheduler/cluster.py). It imports the scheduler, never the CLI package.

Exit status: `batchlab run`'s (docs/cli.md): 0 done, 2 bad input or unreachable grid /
storage / cluster, 4 trials failed, 130 interrupted (cancelled).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# `python scheduler/submit.py` puts scheduler/ first on sys.path, where our modules
# (spec, runner, cluster, ...) would shadow any top-level module of the same name.
_HERE = str(Path(__file__).resolve().parent)
if sys.path and sys.path[0] == _HERE and Path(_HERE, "__init__.py").exists():
    sys.path.pop(0)

SHELL_SPECIAL = set(" \t*?[]$;&|()<>'\"`\\!{}~#")
INSTALL_HINT = (
    "batchlab is not importable on this node ({exc}); the cluster's setup_commands must "
    "install it (`pip install -e ~/batchlab` in deploy/cluster.yaml); re-run "
    "`ray up deploy/cluster.yaml` and check its output"
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="submit.py",
        description="Run a batchlab grid on the Ray cluster this script runs on (ray submit).",
    )
    ap.add_argument(
        "grid",
        nargs="+",
        help="grid.yaml, relative to the mounted project (e.g. examples/seed002.yaml), to the "
        "current folder, or absolute on the head node",
    )
    ap.add_argument(
        "--storage",
        default=None,
        help="storage root (default $BATCHLAB_STORAGE); s3://... or a folder every node mounts",
    )
    ap.add_argument(
        "--storage-shared",
        action="store_true",
        help="the local-path storage root is the same folder on every node (NFS, EFS, Lustre)",
    )
    ap.add_argument("--dry-run", action="store_true", help="validate and plan only")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def project_root() -> Path:
    """The batchlab checkout installed on this node ($BATCHLAB_PROJECT overrides): the
    folder above the installed `scheduler` package (this file may be a copy elsewhere)."""
    if os.environ.get("BATCHLAB_PROJECT"):
        return Path(os.environ["BATCHLAB_PROJECT"]).expanduser().resolve()
    import scheduler

    return Path(scheduler.__file__).resolve().parent.parent


def resolve_grid(words: list[str], project: Path, cwd: Path) -> Path:
    """The grid file named by `words` (the arguments `ray submit` split at spaces), looked
    up in the project, then in `cwd`. Raises FileNotFoundError listing where it looked."""
    given = " ".join(words)
    p = Path(given).expanduser()
    candidates = [p] if p.is_absolute() else [project / p, cwd / p]
    for c in dict.fromkeys(candidates):
        if c.is_file():
            return c.resolve()
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    msg = (
        f"grid {given!r} not found on this node ({os.uname().nodename}); looked at: {looked}. "
        f"Grid files must be inside the project mounted at {project} (file_mounts in "
        "deploy/cluster.yaml): add the file to your checkout and run `ray up --no-restart "
        "deploy/cluster.yaml` (it syncs the mounts again), or copy it with `ray rsync-up "
        f"deploy/cluster.yaml GRID {project}/GRID`; or pass an absolute path on the head."
    )
    if len(words) > 1 or SHELL_SPECIAL & set(given):
        msg += (
            " Note: `ray submit` passes arguments to a remote shell unquoted, so a path with "
            "spaces or shell characters arrives split or changed; rename the file, or use "
            "`ray job submit --working-dir . -- batchlab run GRID` instead."
        )
    raise FileNotFoundError(msg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from scheduler import runner
        from scheduler.cluster import ClusterStorageError, check_storage_here
        from scheduler.preflight import preflight
        from scheduler.run_command import guarded, run_command
        from scheduler.spec import SpecError, load_spec
    except ImportError as exc:
        print(f"error: {INSTALL_HINT.format(exc=exc)}", file=sys.stderr)
        return 2

    try:
        grid = resolve_grid(args.grid, project_root(), Path.cwd())
        spec = load_spec(grid)
        layout = check_storage_here(args.storage)
    except (FileNotFoundError, SpecError, ClusterStorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"grid {grid}: {spec.n_trials} trials; storage root {layout.root}")
    if not args.dry_run:
        try:
            where = runner.init_ray("auto")
        except ConnectionError as exc:
            print(
                f"error: no running Ray cluster found from {os.uname().nodename} "
                f"(address='auto': {exc}). This script runs on the head node of a cluster: "
                "`ray up deploy/cluster.yaml`, then `ray submit deploy/cluster.yaml "
                "scheduler/submit.py GRID`.",
                file=sys.stderr,
            )
            return 2
        print(f"connected: {where}")
    if args.storage_shared:
        os.environ["BATCHLAB_STORAGE_SHARED"] = "1"  # read by scheduler.cluster.check_cluster

    def run() -> int:  # what `batchlab run GRID --address auto --storage ROOT` does
        preflight(spec, layout.root)  # user code and data-set sizes, before anything is queued
        return run_command(
            spec,
            layout.root,
            address="auto",
            dry_run=args.dry_run,
            progress=not args.no_progress,
        )

    return guarded(run)


if __name__ == "__main__":
    raise SystemExit(main())
