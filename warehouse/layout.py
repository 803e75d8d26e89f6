"""The storage layout: the only code that builds paths under a storage root.

    <root>/
      batchlab.duckdb                                 views for any DuckDB client
      tables/<table>/experiment=<exp>/<trial_id>.parquet     one file per trial and table
      tables/<table>/experiment=<exp>/part-<uuid>.parquet    compacted files
      checkpoints/experiment=<exp>/<trial_id>/<name>.pt      init / final / resume states
      runs/experiment=<exp>/<run_id>.json             one record per `batchlab run`
      quarantine/...                                  corrupt files moved aside

Partitioned only by low-cardinality keys (table, experiment). A root is a local path or a
URI that pyarrow understands (`s3://bucket/prefix`, `file:///...`); every write goes through
`put_bytes`, which is atomic on both: hidden temporary file + rename on a local or NFS
filesystem, a single PUT (visible only when complete) on an object store.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from warehouse.schemas import SCHEMAS

DEFAULT_ROOT = "./batchlab-runs"
EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TMP_MARK = ".tmp-"


def default_root() -> str:
    return os.environ.get("BATCHLAB_STORAGE", DEFAULT_ROOT)


def check_experiment(name: str) -> str:
    if not EXPERIMENT_RE.match(name):
        raise ValueError(
            f"experiment: {name!r} is not a valid name; use letters, digits, '_', '-', '.' "
            "(starting with a letter or digit, at most 128 characters)"
        )
    return name


@dataclass(frozen=True)
class Layout:
    """Paths and I/O under one storage root."""

    root: str
    fs: pafs.FileSystem
    base: str  # root path inside `fs`

    @classmethod
    def open(cls, root: str | os.PathLike | None = None) -> Layout:
        root = str(root if root is not None else default_root())
        if "://" in root:
            fs, base = pafs.FileSystem.from_uri(root)
        else:
            base = str(Path(root).expanduser().resolve())
            fs = pafs.LocalFileSystem()
        return cls(root=root, fs=fs, base=base.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    # ---- paths ----
    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def table_dir(self, table: str, experiment: str) -> str:
        if table not in SCHEMAS:
            raise KeyError(f"unknown table {table!r}; tables: {sorted(SCHEMAS)}")
        return self.path("tables", table, f"experiment={check_experiment(experiment)}")

    def table_file(self, table: str, experiment: str, key: str) -> str:
        return f"{self.table_dir(table, experiment)}/{key}.parquet"

    def table_glob(self, table: str) -> str:
        """Glob of every committed file of `table` (hidden temporaries never match)."""
        return self.path("tables", table, "experiment=*", "*.parquet")

    def checkpoint_file(self, experiment: str, trial_id: str, name: str) -> str:
        return self.path(
            "checkpoints", f"experiment={check_experiment(experiment)}", trial_id, f"{name}.pt"
        )

    def run_file(self, experiment: str, run_id: str) -> str:
        return self.path("runs", f"experiment={check_experiment(experiment)}", f"{run_id}.json")

    @property
    def duckdb_file(self) -> str:
        return self.path("batchlab.duckdb")

    @property
    def quarantine_dir(self) -> str:
        return self.path("quarantine")

    # ---- atomic I/O ----
    def put_bytes(self, path: str, data: bytes) -> None:
        """Write `data` to `path` so that readers see the old file or the whole new one."""
        parent = path.rsplit("/", 1)[0]
        if self.is_local:
            self.fs.create_dir(parent, recursive=True)
            # The writer's host and pid are in the name, so a cleanup can tell a crashed
            # writer's leftovers from a live writer's file.
            tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp = f"{parent}/.{path.rsplit('/', 1)[1]}{TMP_MARK}{tag}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # atomic on POSIX, NFS included (same directory)
        else:
            # Object stores: one PUT; the object appears only when the upload completes.
            with self.fs.open_output_stream(path) as out:
                out.write(data)

    def get_bytes(self, path: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(path) as fh:
                return fh.read()
        except (FileNotFoundError, OSError) as exc:
            if (
                isinstance(exc, FileNotFoundError)
                or "not found" in str(exc).lower()
                or "No such" in str(exc)
            ):
                return None
            raise

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_table(self, path: str, table: pa.Table, row_group_size: int | None = None) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
        self.put_bytes(path, sink.getvalue().to_pybytes())

    def list_files(self, table: str, experiment: str | None = None) -> list[str]:
        """Committed Parquet files of `table` (all experiments, or one)."""
        base = self.table_dir(table, experiment) if experiment else self.path("tables", table)
        sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        out = []
        for info in self.fs.get_file_info(sel):
            name = info.base_name
            if (
                info.type == pafs.FileType.File
                and name.endswith(".parquet")
                and not name.startswith(".")
            ):
                out.append(info.path)
        return sorted(out)

    def list_experiments(self) -> list[str]:
        sel = pafs.FileSelector(self.path("tables", "trials"), allow_not_found=True)
        return sorted(
            i.base_name.split("=", 1)[1]
            for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.Directory and i.base_name.startswith("experiment=")
        )

    def clean_temporaries(self, max_age_s: float = 3600.0) -> int:
        """Delete temporary files left by crashed writers (local roots only): those of a dead
        process on this host, or older than `max_age_s` from anywhere. Returns the count."""
        if not self.is_local:
            return 0
        n = 0
        host = socket.gethostname()
        now = time.time()
        for sub in ("tables", "checkpoints", "runs"):
            sel = pafs.FileSelector(self.path(sub), recursive=True, allow_not_found=True)
            for info in self.fs.get_file_info(sel):
                name = info.base_name
                if (
                    info.type != pafs.FileType.File
                    or TMP_MARK not in name
                    or not name.startswith(".")
                ):
                    continue
                w_host, _, rest = name.rsplit(TMP_MARK, 1)[1].rpartition("-")[0].rpartition("-")
                stale = now - info.mtime.timestamp() > max_age_s
                if stale or (
                    w_host == host and not _pid_alive(int(rest) if rest.isdigit() else -1)
                ):
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.delete_file(info.path)
                        n += 1
        return n


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
