"""Round 3 (issue 24): storage that cannot be written, and `--dry-run` refusing what the run
refuses (scheduler/storage_errors.py, batchlab/cli.py `main`, scheduler/runner.py).

The tests run as root, so chmod cannot make a folder unwritable: a root that is a file
(ENOTDIR / EEXIST) is real; a read-only file system (EROFS) and a full disk (ENOSPC) are
simulated by making the warehouse's own write raise that OSError in-process, where the
driver runs (`batchlab.cli.main` called in this process, its trials on the session's Ray).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from batchlab.cli import EXIT_STORAGE, EXIT_USAGE, main
from tests.reliability.helpers import REPO, pids_mentioning, tiny_grid, write_grid
from warehouse.layout import Layout


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "batchlab.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_root_that_is_a_file_is_refused_by_dry_run_and_by_run_before_ray(tmp_path, ray_tmp, where):
    grid = write_grid(tmp_path / "g.yaml", tiny_grid("ro", [0]))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    root = str(blocker if where == "file" else blocker / "runs")
    env = {"RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    for extra in (["--dry-run"], ["--num-cpus", "2", "--no-progress"]):
        t0 = time.monotonic()
        p = _cli("run", str(grid), "--storage", root, *extra, env=env)
        took = time.monotonic() - t0
        assert p.returncode == EXIT_STORAGE, (extra, p.returncode, p.stdout, p.stderr)
        err = p.stderr.strip().splitlines()
        assert "Traceback" not in p.stderr and len(err) == 1, p.stderr
        assert err[0].startswith(f"batchlab: cannot write {blocker}"), err
        assert "pass --storage a directory" in err[0]
        assert "scheduling on" not in p.stdout  # refused before Ray started
        print(f"\n{where} {extra[0]}: exit {p.returncode} in {took:.1f} s: {err[0]}")
    assert pids_mentioning(ray_tmp) == []
    assert blocker.read_text() == "not a folder"


LOOP = """
from batchlab import trial


def main():
    if trial.seed == 1:
        raise RuntimeError("boom in the user's loop")
    trial.log_epoch(1, train_loss=1.0, val_loss=1.0, val_acc=0.5)
"""


def _grid_with_a_failing_trial(tmp_path: Path) -> Path:
    (tmp_path / "loop.py").write_text(LOOP)
    g = tiny_grid("full", [0, 1], max_epochs=1, trainable="./loop.py:main")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(g))
    return path


def test_read_only_root_fails_before_ray_with_one_line(tmp_path, monkeypatch, capsys):
    grid = _grid_with_a_failing_trial(tmp_path)
    root = str(tmp_path / "runs")

    def read_only(self, path, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(Layout, "put_bytes", read_only)
    rc = main(["run", str(grid), "--storage", root, "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == EXIT_STORAGE, (out, err)
    assert err.strip().startswith(f"batchlab: cannot write {Path(root).resolve()}/.write-probe")
    assert "Read-only file system; the file system is read-only" in err
    assert "scheduling on" not in out and "Traceback" not in err


def test_full_disk_after_training_lists_failed_trials_first_then_one_line(
    ray_local, tmp_path, monkeypatch, capsys
):
    """The disk fills while the DuckDB file is rebuilt: the failed trial was already listed
    (id and cause), the command ends in one line naming the path and exit 5; the committed
    trials are intact and the next run skips them. Other commands get the same treatment
    from `main` (here `compact`)."""
    import scheduler.runner
    import warehouse.compact

    grid = _grid_with_a_failing_trial(tmp_path)
    root = str(tmp_path / "runs")
    db = Layout.open(root).duckdb_file

    def full(layout):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), db)

    monkeypatch.setattr(scheduler.runner, "write_duckdb_file", full)
    rc = main(["run", str(grid), "--storage", root, "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == EXIT_STORAGE, (out, err)
    assert err.strip() == (
        f"batchlab: cannot write {db}: No space left on device; the disk is full: free space "
        "there (or pass --storage on another disk), then run the same command again; "
        "committed trials are kept"
    ), err
    listed = [line for line in out.splitlines() if line.strip().startswith("failed ")]
    assert len(listed) == 1 and "boom in the user's loop" in listed[0], out
    assert len(Layout.open(root).list_files("trials", "full")) == 2

    def compact_full(layout, experiment=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{root}/tables/epochs/x")

    monkeypatch.setattr(warehouse.compact, "compact", compact_full)
    assert main(["compact", "--storage", root]) == EXIT_STORAGE
    _, err = capsys.readouterr()
    assert err.startswith(f"batchlab: cannot write {root}/tables/epochs/x: No space left")


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpus_per_trial": 1000}, "needs 1000 CPUs per trial"),
        ({"cpus_per_trial": 1, "gpus_per_trial": 1}, "has no GPU"),
    ],
)
def test_dry_run_refuses_infeasible_resources_like_the_run(tmp_path, capsys, resources, message):
    if resources.get("gpus_per_trial"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU: gpus_per_trial 1 is feasible here")
    grid = write_grid(tmp_path / "g.yaml", tiny_grid("inf", [0], resources=resources))
    root = tmp_path / "runs"
    rc = main(["run", str(grid), "--storage", str(root), "--dry-run", "--num-cpus", "2"])
    _, err = capsys.readouterr()
    assert rc == EXIT_USAGE and message in err, err
    assert not root.exists()  # a dry run writes nothing


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    """A real tmpfs of `size` at `path` (skips where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_real_read_only_and_full_disks_through_batchlab_run(tmp_path, ray_tmp):
    """A tmpfs remounted read-only (EROFS): `run` and `--dry-run` refuse before Ray starts.
    A tmpfs with a few KiB left (ENOSPC): the probe passes, the trials cannot commit, the
    run lists every failed trial (id and cause) and then ends in one line, exit 5."""
    grid = write_grid(tmp_path / "g.yaml", tiny_grid("disk", [0, 1], max_epochs=1))
    env = {"RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0"}
    with _tmpfs(tmp_path / "ro", "1m") as ro:
        (ro / "runs").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        for extra in (["--dry-run"], ["--num-cpus", "2", "--no-progress"]):
            p = _cli("run", str(grid), "--storage", str(ro / "runs"), *extra, env=env)
            assert p.returncode == EXIT_STORAGE, (extra, p.stdout, p.stderr)
            assert p.stderr.strip().splitlines() == [p.stderr.strip()], p.stderr
            assert f"cannot write {ro}/runs" in p.stderr and "Read-only file system" in p.stderr
            assert "scheduling on" not in p.stdout
    with _tmpfs(tmp_path / "full", "256k") as disk:
        st = os.statvfs(disk)
        with open(disk / "filler", "wb") as fh, contextlib.suppress(OSError):
            fh.write(b"\0" * (st.f_bavail * st.f_frsize - 8 * 1024))  # leave 8 KiB
        p = _cli(
            "run",
            str(grid),
            "--storage",
            str(disk / "runs"),
            "--num-cpus",
            "2",
            "--no-progress",
            env=env,
        )
        print(f"\nfull disk: exit {p.returncode}\n{p.stdout[-1500:]}\n{p.stderr[-800:]}")
        assert p.returncode == EXIT_STORAGE, (p.stdout, p.stderr)
        err = [x for x in p.stderr.strip().splitlines() if x.startswith("batchlab:")]
        assert len(err) == 1 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().endswith(err[0])  # the last line (above it: Ray's start-up log)
        assert (
            err[0].startswith(f"batchlab: cannot write {disk}/runs") and "No space left" in err[0]
        )
        listed = [x for x in p.stdout.splitlines() if x.strip().startswith("failed ")]
        assert len(listed) == 2, p.stdout
        assert all(f"cannot write {disk}/runs" in x and "No space left" in x for x in listed)
