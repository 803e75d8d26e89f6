"""Storage faults and killed writers in import, compact, export and sql --output (issue 24,
round 3). Faults are real where the machine allows: a full disk is a tmpfs of a few hundred
KiB, a read-only root is a tmpfs remounted read-only (tests run as root, where chmod does
not stop writes), a root that is a file is a file; a killed writer is SIGKILLed in the
middle of writing. Each fault is one line "batchlab: cannot write PATH: <strerror>; <hint>"
and exit 5 (docs/cli.md), no traceback, and nothing half-written visible."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from batchlab.cli import main
from warehouse.db import connect
from warehouse.layout import Layout

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A real tmpfs of `size` mounted at `path` (skips where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _study(folder: Path, trials: int = 6, epochs: int = 400) -> Path:
    """A Ray Tune experiment folder: `trials` trials of `epochs` epochs."""
    for t in range(trials):
        d = folder / f"trial_{t}"
        d.mkdir(parents=True)
        (d / "params.json").write_text(json.dumps({"batch_size": 16 * (t + 1), "lr": 0.1}))
        rows = (
            {"epoch": e, "train_loss": 1 / e + t, "val_loss": 1.1 / e + t, "noise": e * 0.37 + t}
            for e in range(1, epochs + 1)
        )
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _fault_line(capsys, path: str, strerror: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"batchlab: cannot write {path}"), err
    assert f": {strerror}; " in err, err
    return err


def _fill(disk: Path, leave_kib: int) -> None:
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize - leave_kib * 1024
    with open(disk / "filler", "wb") as fh, contextlib.suppress(OSError):
        fh.write(b"\0" * max(free, 0))


def _committed(root: Path) -> tuple[int, int]:
    con = connect(str(root))
    q = "SELECT (SELECT count(*) FROM trials), (SELECT count(*) FROM epochs)"
    return tuple(con.sql(q).fetchall()[0])


def test_full_disk_during_import_and_compact(tmp_path, capsys) -> None:
    study = _study(tmp_path / "sweep")
    with tmpfs(tmp_path / "disk", "2m") as disk:
        root = disk / "runs"
        _fill(disk, leave_kib=120)
        assert main(["import", "ray-tune", str(study), "--storage", str(root)]) == 5
        line = _fault_line(capsys, str(root), "No space left on device")
        assert "free space there" in line and "run the same command again" in line
        trials, epochs = _committed(root)  # what committed is whole
        assert epochs == trials * 400
        (disk / "filler").unlink()
        assert main(["import", "ray-tune", str(study), "--storage", str(root)]) == 0
        assert _committed(root) == (6, 2400)
        # A compaction that meets a full disk changes nothing and says so.
        _fill(disk, leave_kib=40)
        assert main(["compact", "--storage", str(root)]) == 5
        _fault_line(capsys, str(root), "No space left on device")
        assert not [p for p in root.rglob(".*")], "a temporary was left behind"
        assert _committed(root) == (6, 2400)


def test_read_only_root(tmp_path, capsys) -> None:
    study = _study(tmp_path / "sweep", trials=2, epochs=5)
    other = _study(tmp_path / "other", trials=2, epochs=5)
    with tmpfs(tmp_path / "ro", "20m") as ro:
        root = ro / "runs"
        assert main(["import", "ray-tune", str(study), "--storage", str(root)]) == 0
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        assert main(["import", "ray-tune", str(other), "--storage", str(root)]) == 5
        line = _fault_line(capsys, "", "Read-only file system")
        assert str(root) in line and "pass --storage a writable directory" in line
        assert main(["compact", "--storage", str(root)]) == 5
        _fault_line(capsys, "", "Read-only file system")
        # Export and sql --output onto the read-only disk: the hint is about --output.
        out = ro / "export"
        assert (
            main(["export", "--storage", str(root), "--format", "csv", "--output", str(out)]) == 5
        )
        assert "choose --output on a writable one" in _fault_line(
            capsys, str(out), "Read-only file system"
        )
        q = ro / "q.csv"
        sql = ["sql", "--storage", str(root), "--output", str(q), "--format", "csv"]
        assert main([*sql, "SELECT 1 AS x"]) == 5
        _fault_line(capsys, str(q), "Read-only file system")
        assert _committed(root) == (2, 10)


def test_root_or_output_path_through_a_file(tmp_path, capsys) -> None:
    study = _study(tmp_path / "sweep", trials=1, epochs=3)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["import", "ray-tune", str(study), "--storage", str(blocker)]) == 5
    _fault_line(capsys, str(blocker), "Not a directory")
    assert main(["compact", "--storage", str(blocker)]) == 3  # no warehouse there
    assert "no warehouse at" in capsys.readouterr().err
    root = tmp_path / "runs"
    assert main(["import", "ray-tune", str(study), "--storage", str(root)]) == 0
    capsys.readouterr()
    out = blocker / "export"
    assert main(["export", "--storage", str(root), "--format", "csv", "--output", str(out)]) == 5
    _fault_line(capsys, str(blocker), "Not a directory")
    assert blocker.read_text() == "not a folder"


def _killed(script: str, *args: str) -> None:
    """Run `script` in a child that SIGKILLs itself where the script says."""
    cmd = [sys.executable, "-c", textwrap.dedent(script), *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def _live_temporary(folder: Path, name: str) -> Path:
    """A temporary of a live writer (this test process) that nothing may delete."""
    p = folder / f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-0123abcd"
    p.write_bytes(b"being written")
    return p


def test_killed_compaction_leaves_temporaries_the_next_one_removes(tmp_path, capsys) -> None:
    root = tmp_path / "runs"
    assert (
        main(["import", "ray-tune", str(_study(tmp_path / "sweep")), "--storage", str(root)]) == 0
    )
    before = _committed(root)
    _killed(
        """
        import os, signal, sys
        import pyarrow.parquet as pq
        write = pq.ParquetWriter.write_table
        def write_then_die(self, *a, **k):
            write(self, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
        pq.ParquetWriter.write_table = write_then_die
        from warehouse.compact import compact
        compact(sys.argv[1], row_group_rows=100)
        """,
        str(root),
    )
    left = [p for p in root.rglob(".*.tmp-*")]
    assert left, "the killed compaction left no temporary (the test did not kill it mid-write)"
    assert _committed(root) == before  # invisible to readers
    live = _live_temporary(left[0].parent, "part-g000009-live.parquet")
    capsys.readouterr()
    assert main(["compact", "--storage", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"removed {len(left)} temporary files left by killed writers" in out
    assert [p for p in root.rglob(".*.tmp-*")] == [live]  # a live writer's is kept
    assert _committed(root) == before


def test_killed_export_temporaries_are_removed_by_the_next_export(tmp_path, capsys) -> None:
    root = tmp_path / "runs"
    assert (
        main(["import", "ray-tune", str(_study(tmp_path / "sweep")), "--storage", str(root)]) == 0
    )
    out = tmp_path / "out"
    _killed(
        """
        import os, signal, sys
        from pathlib import Path
        import warehouse.export as ex
        calls = []
        replace = os.replace
        def replace_then_die(src, dst):
            calls.append(dst)
            if len(calls) == 3:  # the manifest and the trials file are in place
                os.kill(os.getpid(), signal.SIGKILL)
            replace(src, dst)
        ex.os.replace = replace_then_die
        ex.export(sys.argv[1], "csv", sys.argv[2])
        """,
        str(root),
        str(out),
    )
    left = sorted(p.name for p in out.glob(".*.tmp-*"))
    assert left, "the killed export left no temporary"
    manifest = json.loads((out / "batchlab-export.json").read_text())
    assert manifest["complete"] is False  # marked as batchlab's: the next export may write
    user = out / ".notes.tmp-x-1-0123abcd"  # not a name an export writes: never touched
    user.write_text("mine")
    live = _live_temporary(out, "trials.csv")
    capsys.readouterr()
    assert main(["export", "--storage", str(root), "--format", "csv", "--output", str(out)]) == 0
    assert f"removed {len(left)} temporaries of a killed export" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob(".*")) == sorted([live.name, user.name])
    assert json.loads((out / "batchlab-export.json").read_text())["complete"] is True
    assert Layout.open(root).list_experiments() == ["sweep"]


def test_killed_sql_leaves_a_private_folder_the_next_query_removes(tmp_path) -> None:
    """`batchlab sql` runs the query in a child with a private folder (up to 64 MiB of
    result): a parent killed mid-query left it in the temp directory for good."""
    import tempfile

    from warehouse.sql import remove_stale_private_dirs, run_readonly

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(tempfile.gettempdir()) / f"batchlab-sql-{dead.pid}-xyz"
    stale.mkdir()
    (stale / "result").write_bytes(b"\0" * 1000)
    live = Path(tempfile.mkdtemp(prefix=f"batchlab-sql-{os.getpid()}-"))
    try:
        run_readonly(str(tmp_path / "empty"), "SELECT 1 AS x")  # removes the dead one first
        assert not stale.exists() and live.exists()
        assert remove_stale_private_dirs() == 0
    finally:
        live.rmdir()
