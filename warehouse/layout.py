"""The storage layout: the only code that builds paths under a storage root.

    <root>/
      batchlab.duckdb                                 views for any DuckDB client
      tables/<table>/experiment=<exp>/<key>.parquet   one file per trial (key = trial id) and table
      tables/<table>/experiment=<exp>/part-g<generation>-<uuid>.parquet   compacted files
      tables/<table>/experiment=<exp>/_compacted      marker: this directory has been compacted
      checkpoints/experiment=<exp>/<trial_id>/<name>.pt      init / final / resume states
      runs/experiment=<exp>/<run_id>.json             one record per `batchlab run`
      live/<kind>/experiment=<exp>/...                running attempts (warehouse/live.py)
      studies/experiment=<exp>/<name>                 an `advise --dataset` study's stages
      quarantine/<path under the root>                corrupt files moved aside (+ .reason.txt)
      quarantine/invalidated/experiment=<exp>/<trial_id>.json   invalidated trials
      cluster-check/<token>-<node>                    seconds-long files of the multi-node check

Partitioned only by low-cardinality keys (table, experiment). A root is a local path or a
URI that pyarrow understands (`s3://bucket/prefix?endpoint_override=...`, `file:///...`);
credentials come from the environment only, never from the URI. Every write is atomic:
hidden temporary file + rename on a local or NFS filesystem, a single PUT (or a hidden
temporary object + server-side copy for a large compacted file) on an object store.

Which files a reader uses (`Layout.table_files`, docs/warehouse.md "Compaction"):
- every per-trial file `<key>.parquet`;
- the compacted files of the highest generation in their directory (a compaction that
  rewrites a directory writes generation g+1; the older generation is then invisible);
- compacted rows whose key also has a per-trial file in the same directory are ignored:
  a per-trial file always takes precedence (a trial re-written after a compaction).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from warehouse.partitions import PARTITION_COLUMNS, file_schema, for_file
from warehouse.schemas import SCHEMAS
from warehouse.writers import STALE_TMP_S, dead_writer

# Re-exported: callers import the stored files' schema from the layout.
__all__ = ["PARTITION_COLUMNS", "file_schema", "for_file"]

DEFAULT_ROOT = "./batchlab-runs"
EXPERIMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TMP_MARK = ".tmp-"
# Compacted files: `part-g<generation>-<uuid>.parquet`; any other name is a per-trial file.
PART_RE = re.compile(r"^part-g(\d{6,})-[0-9a-f]{32}\.parquet$")
# URI query keys that would put a secret into a root string (roots are logged and shipped
# to workers); credentials come from the environment (AWS_ACCESS_KEY_ID, ...) instead.
_SECRET_QUERY_KEYS = {"access_key", "secret_key", "session_token"}


def default_root() -> str:
    return os.environ.get("BATCHLAB_STORAGE", DEFAULT_ROOT)


def check_experiment(name: str) -> str:
    # fullmatch: `$` alone would accept a trailing newline ("name\n" -> "experiment=name\n/").
    if not isinstance(name, str) or not EXPERIMENT_RE.fullmatch(name):
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
            fs, base = pafs.FileSystem.from_uri(_fs_uri(root))
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

    def table_root(self, table: str | None = None) -> str:
        """`tables/<table>` (every experiment's directory of `table`), or `tables`."""
        return self.path("tables", table) if table else self.path("tables")

    def table_dir(self, table: str, experiment: str) -> str:
        if table not in SCHEMAS:
            raise KeyError(f"unknown table {table!r}; tables: {sorted(SCHEMAS)}")
        return self.path("tables", table, f"experiment={check_experiment(experiment)}")

    def table_file(self, table: str, experiment: str, key: str) -> str:
        if not key or "/" in key or key.startswith((".", "part-g")):
            raise ValueError(
                f"key: {key!r} cannot name a table file: it must be non-empty, without '/', "
                "and not start with '.' (hidden) or 'part-g' (compacted files)"
            )
        return f"{self.table_dir(table, experiment)}/{key}.parquet"

    def table_glob(self, table: str) -> str:
        """Glob of every committed file of `table` (hidden temporaries never match)."""
        return self.path("tables", table, "experiment=*", "*.parquet")

    def checkpoint_dir(self, experiment: str, trial_id: str) -> str:
        return self.path("checkpoints", f"experiment={check_experiment(experiment)}", trial_id)

    def checkpoint_file(
        self, experiment: str, trial_id: str, name: str, suffix: str = ".pt"
    ) -> str:
        """A trial's state `<name>.pt`, or a small marker beside it (`suffix=".json"`)."""
        return f"{self.checkpoint_dir(experiment, trial_id)}/{name}{suffix}"

    def live_dir(self, kind: str, experiment: str | None = None) -> str:
        """`live/<kind>` or its experiment's directory (warehouse/live.py)."""
        if experiment is None:
            return self.path("live", kind)
        return self.path("live", kind, f"experiment={check_experiment(experiment)}")

    def study_file(self, experiment: str, name: str) -> str:
        """A file of an `advise --dataset` study (its stage grids, `study.json`)."""
        return self.path("studies", f"experiment={check_experiment(experiment)}", name)

    def invalidation_file(self, experiment: str | None = None, trial_id: str = "") -> str:
        """The record of an invalidated trial; without arguments, the records' directory."""
        if experiment is None:
            return self.path("quarantine", "invalidated")
        exp = f"experiment={check_experiment(experiment)}"
        return self.path("quarantine", "invalidated", exp, f"{trial_id}.json")

    def run_file(self, experiment: str, run_id: str) -> str:
        return self.path("runs", f"experiment={check_experiment(experiment)}", f"{run_id}.json")

    @property
    def duckdb_file(self) -> str:
        return self.path("batchlab.duckdb")

    @property
    def quarantine_dir(self) -> str:
        return self.path("quarantine")

    def cluster_check_file(self, name: str) -> str:
        """A small file `scheduler/cluster.py` writes and reads back from every Ray node to
        prove that all nodes see this same root (deleted right after the check)."""
        return self.path("cluster-check", name)

    # ---- atomic I/O ----
    @staticmethod
    def temp_path(path: str) -> str:
        """A hidden temporary name next to `path` to write under and rename. The writer's
        host and pid are in the name, so `clean_temporaries` can tell a crashed writer's
        leftovers from a live writer's file."""
        parent, name = path.rsplit("/", 1)
        tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        return f"{parent}/.{name}{TMP_MARK}{tag}"

    def put_bytes(self, path: str, data: bytes) -> None:
        """Write `data` to `path` so that readers see the old file or the whole new one."""
        parent = path.rsplit("/", 1)[0]
        if self.is_local:
            self.fs.create_dir(parent, recursive=True)
            tmp = self.temp_path(path)
            with open(tmp, "wb") as fh:
                _fault_crash_writing(path, fh, data)  # no-op unless a reliability test asks
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # atomic on POSIX, NFS included (same directory)
        else:
            # Object stores: one PUT; the object appears only when the upload completes.
            with self.fs.open_output_stream(path) as out:
                out.write(data)

    @contextlib.contextmanager
    def open_output(self, path: str) -> Iterator[pa.NativeFile]:
        """A stream whose bytes appear at `path` all at once when the block exits without an
        exception (nothing appears otherwise); for files too large for `put_bytes`."""
        tmp = self.temp_path(path)
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        try:
            if self.is_local:
                with pa.OSFile(tmp, "wb") as out:
                    yield out
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            else:
                # An object store publishes an object when its upload completes, even a partial
                # one if the writer fails: upload under a hidden name, then copy server-side.
                with self.fs.open_output_stream(tmp) as out:
                    yield out
                self.fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(path)

    def delete_if_unchanged(self, f: TableFile) -> bool:
        """Delete `f` unless it was replaced since it was listed (size or mtime differ): a
        trial re-written during a compaction keeps its new file. Returns whether it deleted.

        Locally the file is first renamed aside (atomic), then checked, so a writer's
        `os.replace` that lands at any moment is never lost; on an object store the check
        and the delete are two requests (a re-write in between loses to the delete; rare:
        only a trial re-written at that very moment, and its compacted rows remain)."""
        if not self.is_local:
            info = self.fs.get_file_info(f.path)
            if info.type != pafs.FileType.File or (info.size, info.mtime_ns) != (
                f.size,
                f.mtime_ns,
            ):
                return False
            self.delete(f.path)
            return True
        parent, name = f.path.rsplit("/", 1)
        aside = f"{parent}/.{name}.deleting-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(f.path, aside)
        except FileNotFoundError:
            return False
        st = os.stat(aside)
        if (st.st_size, st.st_mtime_ns) == (f.size, f.mtime_ns):
            os.unlink(aside)
            return True
        # A newer version was renamed into place after the listing: put it back, unless an
        # even newer one arrived meanwhile (then that one stands).
        with contextlib.suppress(FileExistsError):
            os.link(aside, f.path)
        os.unlink(aside)
        return False

    def parquet_problem(self, path: str, size: int | None = None) -> str | None:
        """Why `path` is not a readable Parquet file (a cheap check of the magic bytes and
        the footer length, two small reads), or None when it looks whole."""
        try:
            if self.is_local:
                with open(path, "rb") as fh:
                    size = os.fstat(fh.fileno()).st_size
                    if size < 12:
                        return f"{size} bytes: too small to be a Parquet file"
                    head = fh.read(4)
                    fh.seek(size - 8)
                    tail = fh.read(8)
            else:
                with self.fs.open_input_file(path) as fh:
                    size = fh.size() if size is None else size
                    if size < 12:
                        return f"{size} bytes: too small to be a Parquet file"
                    head, tail = fh.read_at(4, 0), fh.read_at(8, size - 8)
        except FileNotFoundError:
            return None  # gone since the listing: nothing to read, nothing wrong
        if head != b"PAR1":
            return "does not start with the Parquet magic bytes 'PAR1' (garbage, not Parquet)"
        if tail[4:] != b"PAR1":
            return "does not end with 'PAR1' (truncated: an incomplete copy or write)"
        footer = int.from_bytes(tail[:4], "little")
        if footer > size - 12:
            return f"footer of {footer} bytes does not fit in a {size}-byte file (truncated)"
        return None

    def quarantine(self, path: str, reason: str) -> str:
        """Move `path` (under the root) to `<root>/quarantine/<same relative path>`, with the
        reason beside it in `<name>.reason.txt`; returns the new path."""
        if not path.startswith(self.base + "/"):
            raise ValueError(f"path: {path!r} is not under the storage root {self.base!r}")
        rel = path[len(self.base) + 1 :]
        dest = f"{self.quarantine_dir}/{rel}"
        if self.exists(dest):
            dest = f"{dest}.{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
        self.fs.move(path, dest)
        self.put_bytes(dest + ".reason.txt", f"{path}\n{reason}\n".encode())
        return dest

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
        """Write `table` as one Parquet file at `path` (atomically), in `file_schema` form."""
        sink = pa.BufferOutputStream()
        pq.write_table(for_file(table), sink, compression="zstd", row_group_size=row_group_size)
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

    def table_files(self, table: str, experiment: str | None = None) -> TableFiles:
        """The files of `table` (all experiments, or one), sorted into what readers use:
        per-trial files, live compacted parts and superseded (stale) parts."""
        base = self.table_dir(table, experiment) if experiment else self.path("tables", table)
        sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        per_trial, parts = [], []
        for info in self.fs.get_file_info(sel):
            name = info.base_name
            if (
                info.type != pafs.FileType.File
                or not name.endswith(".parquet")
                or name.startswith(".")
            ):
                continue
            parent = info.path.rsplit("/", 2)[-2]
            if not parent.startswith("experiment="):
                continue
            m = PART_RE.match(name)
            f = TableFile(
                path=info.path,
                experiment=parent.split("=", 1)[1],
                key="" if m else name.removesuffix(".parquet"),
                size=info.size or 0,
                mtime_ns=info.mtime_ns or 0,
                generation=int(m.group(1)) if m else None,
            )
            (parts if m else per_trial).append(f)
        top: dict[str, int] = {}
        for f in parts:
            top[f.experiment] = max(top.get(f.experiment, 0), f.generation or 0)
        live = [f for f in parts if f.generation == top[f.experiment]]
        stale = [f for f in parts if f.generation != top[f.experiment]]
        key = lambda f: f.path  # noqa: E731
        return TableFiles(
            table, sorted(per_trial, key=key), sorted(live, key=key), sorted(stale, key=key)
        )

    def part_file(self, table: str, experiment: str, generation: int) -> str:
        """A new compacted file's path (a fresh uuid, so two never collide)."""
        return (
            f"{self.table_dir(table, experiment)}/part-g{generation:06d}-{uuid.uuid4().hex}.parquet"
        )

    def compacted_marker(self, table: str, experiment: str) -> str:
        """An empty file compaction leaves in a directory before its first part: a writer
        checks it (one cheap request) to know that compacted rows may exist there."""
        return f"{self.table_dir(table, experiment)}/_compacted"

    def list_experiments(self) -> list[str]:
        sel = pafs.FileSelector(self.table_root("trials"), allow_not_found=True)
        return sorted(
            i.base_name.split("=", 1)[1]
            for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.Directory and i.base_name.startswith("experiment=")
        )

    def clean_temporaries(self, max_age_s: float = STALE_TMP_S) -> int:
        """Delete temporary files left by crashed writers (local roots only): those of a dead
        process on this host, or older than `max_age_s` from anywhere. Returns the count."""
        if not self.is_local:
            return 0
        n = 0
        now = time.time()
        selectors = [
            pafs.FileSelector(self.path(sub), recursive=True, allow_not_found=True)
            for sub in ("tables", "checkpoints", "runs")
        ]
        # The root itself: batchlab.duckdb is rebuilt under a temporary name (and its .wal).
        selectors.append(pafs.FileSelector(self.base, allow_not_found=True))
        for sel in selectors:
            for info in self.fs.get_file_info(sel):
                name = info.base_name
                if (
                    info.type != pafs.FileType.File
                    or TMP_MARK not in name
                    or not name.startswith(".")
                ):
                    continue
                w_host, _, rest = name.rsplit(TMP_MARK, 1)[1].rpartition("-")[0].rpartition("-")
                pid = int(rest) if rest.isdigit() else -1
                if dead_writer(w_host, pid, info.mtime.timestamp(), now=now, max_age_s=max_age_s):
                    with contextlib.suppress(FileNotFoundError):
                        self.fs.delete_file(info.path)
                        n += 1
        return n


@dataclass(frozen=True)
class TableFile:
    """One committed Parquet file of a table, as listed."""

    path: str
    experiment: str
    key: str  # the file's stem for a per-trial file (a trial id); "" for a compacted part
    size: int  # bytes
    mtime_ns: int
    generation: int | None = None  # compacted parts only

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]


@dataclass(frozen=True)
class TableFiles:
    """A table's files sorted into what readers use (see the module docstring)."""

    table: str
    per_trial: list[TableFile] = field(default_factory=list)
    parts: list[TableFile] = field(default_factory=list)  # live: top generation of their dir
    stale_parts: list[TableFile] = field(default_factory=list)  # superseded; never read

    @property
    def shadowed(self) -> list[tuple[str, str]]:
        """(experiment, key) of per-trial files whose directory also has live parts: the
        parts' rows with that key are ignored (the per-trial file takes precedence)."""
        with_parts = {f.experiment for f in self.parts}
        return [(f.experiment, f.key) for f in self.per_trial if f.experiment in with_parts]


def _fs_uri(root: str) -> str:
    """The URI handed to pyarrow: refuses credentials in it, and lets S3 writes of small
    files be one PUT (`allow_delayed_open`) instead of a three-request multipart upload."""
    parts = urlsplit(root)
    query = parse_qsl(parts.query, keep_blank_values=True)
    secret = sorted({k for k, _ in query} & _SECRET_QUERY_KEYS)
    if parts.username or parts.password or secret:
        raise ValueError(
            f"storage root: credentials in the URI ({'user:password@' if parts.username else secret}) "
            "are not allowed (root strings are logged and sent to workers); set them in the "
            "environment instead (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)"
        )
    if parts.scheme == "s3" and "allow_delayed_open" not in {k for k, _ in query}:
        return root + ("&" if parts.query else "?") + "allow_delayed_open=true"
    return root


def _fault_crash_writing(path: str, fh, data: bytes) -> None:
    """Fault injection (scheduler/faults.py, docs/reliability.md): when
    BATCHLAB_FAULT_CRASH_WRITING is a substring of `path`, write half of `data` to the
    temporary file and SIGKILL this process: a writer that dies between write and rename."""
    marker = os.environ.get("BATCHLAB_FAULT_CRASH_WRITING")
    if marker and marker in path:
        import signal

        fh.write(data[: len(data) // 2])
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
