"""Compaction: merge a table's many small per-trial files into few large Parquet files.

`compact(root)` works directory by directory (`tables/<table>/experiment=<exp>/`):

1. list the directory: per-trial files `<key>.parquet`, live parts, stale parts
   (`Layout.table_files`);
2. choose a mode:
   - `append`: the per-trial files go into one new part of the current generation, next to
     the live parts (when none of their keys is in a live part and the new part holds at
     least `min_rows` rows, or there is no live part yet);
   - `rewrite`: the per-trial files and every live part go into one new part of the next
     generation (when a key is in both: a trial re-written after a compaction, or a live
     part is smaller than `min_rows`: merges small parts). The new generation hides the old
     one the moment it appears; rows of a re-written key come from its per-trial file;
3. write the part under a hidden name, rename it into place (atomic), check its row count;
4. once every directory's part is written, wait `grace_s` (a reader lists a directory in
   one pass while files come and go: the wait keeps one listing from missing both a merged
   file and its new part), then delete the merged per-trial files, each only if unchanged
   since the listing (a trial re-written meanwhile keeps its new file, which takes
   precedence over the part), and the replaced parts.

Readers see the same rows at every moment: while a merged per-trial file and the part both
exist, the per-trial file takes precedence over the part's rows of that key (the rule in
`warehouse.db`). Files created after the listing are untouched. Running it again does
nothing (a directory with one part and no per-trial files is done). Run one compaction per
storage root at a time. A connection made before a compaction reads the files it listed:
its next query fails with "file not found" once they are deleted; reconnect.
Corrupt files are left in place and reported (`batchlab check --quarantine` moves them).
A compaction killed midway leaves a hidden temporary part (`.part-g...tmp-<host>-<pid>-...`,
invisible to readers); the next compaction (like the next run) deletes those of dead
processes on this host, or older than an hour, before it starts (`Layout.clean_temporaries`).
A storage fault (a full disk, a read-only file system) is an OSError naming the directory
or file it could not write, never a hidden temporary's name.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from warehouse.export import errno_of, os_error_from
from warehouse.layout import TMP_MARK, Layout, TableFile, TableFiles, check_experiment, file_schema
from warehouse.schemas import KEY_COLUMN, SCHEMA_VERSION, SCHEMA_VERSION_KEY, SCHEMAS

# A part smaller than this is merged again by the next compaction (rows).
DEFAULT_MIN_ROWS = 1_000_000
# Rows per Parquet row group of a part: DuckDB scans row groups in parallel, and 100k+ rows
# per group keeps per-group overhead small.
ROW_GROUP_ROWS = 131_072
# Seconds between writing the new parts and deleting what they replace (see `compact`).
GRACE_S = 1.0


@dataclass
class DirCompaction:
    """What compaction did in one `tables/<table>/experiment=<exp>/` directory."""

    table: str
    experiment: str
    mode: str = "none"  # none | append | rewrite
    files_in: int = 0  # per-trial files merged
    parts_in: int = 0  # live parts rewritten
    rows_out: int = 0  # rows in the new part
    part: str | None = None  # the new part's path
    deleted: int = 0  # files deleted (merged per-trial files, replaced and stale parts)
    kept_changed: list[str] = field(default_factory=list)  # re-written during the run: kept
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): left as is
    seconds: float = 0.0


@dataclass
class CompactionReport:
    root: str
    dirs: list[DirCompaction] = field(default_factory=list)
    seconds: float = 0.0
    removed_temporaries: int = 0  # hidden temporaries of killed writers removed first

    @property
    def files_in(self) -> int:
        return sum(d.files_in for d in self.dirs)

    @property
    def rows_out(self) -> int:
        return sum(d.rows_out for d in self.dirs)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [s for d in self.dirs for s in d.skipped]

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "seconds": self.seconds, "dirs": [asdict(d) for d in self.dirs]}

    def summary(self) -> str:
        done = [d for d in self.dirs if d.mode != "none"]
        lines = [
            f"compacted {self.files_in} per-trial files into {len(done)} new parts "
            f"({self.rows_out} rows) in {self.seconds:.1f} s; {len(self.dirs) - len(done)} "
            "directories already compact"
        ]
        if self.removed_temporaries:
            lines.append(
                f"  removed {self.removed_temporaries} temporary files left by killed writers"
            )
        for d in done:
            lines.append(
                f"  {d.table}/experiment={d.experiment}: {d.mode}, {d.files_in} files + "
                f"{d.parts_in} parts -> {d.rows_out} rows, {d.deleted} files deleted"
            )
        for d in self.dirs:
            for path in d.kept_changed:
                lines.append(f"  kept {path}: re-written during the compaction")
            for path, why in d.skipped:
                lines.append(f"  skipped {path}: {why}")
        if self.skipped:
            lines.append("  (`batchlab check --quarantine` moves corrupt files aside)")
        return "\n".join(lines)


def compact(
    root: str | Layout | None = None,
    experiment: str | None = None,
    table: str | None = None,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
    row_group_rows: int = ROW_GROUP_ROWS,
    read_threads: int = 4,
    grace_s: float = GRACE_S,
) -> CompactionReport:
    """Compact every table (or `table`) of every experiment (or `experiment`) under `root`;
    see the module docstring. Returns what it did, directory by directory."""
    layout = root if isinstance(root, Layout) else Layout.open(root)
    if table is not None and table not in SCHEMAS:
        raise ValueError(f"table: {table!r} is not a table; tables: {sorted(SCHEMAS)}")
    if experiment is not None:
        check_experiment(experiment)
    if min_rows < 1 or row_group_rows < 1:
        raise ValueError(f"min_rows={min_rows}, row_group_rows={row_group_rows}: both must be >= 1")
    t0 = time.perf_counter()
    report = CompactionReport(layout.root)
    try:
        report.removed_temporaries = layout.clean_temporaries()
        _compact(layout, report, experiment, table, min_rows, row_group_rows, read_threads, grace_s)
    except OSError as exc:
        raise _named(exc, layout) from exc
    except duckdb.IOException as exc:  # rebuilding batchlab.duckdb on a full disk
        raise (os_error_from(exc, layout.duckdb_file) or exc) from exc
    report.seconds = time.perf_counter() - t0
    return report


def _named(exc: OSError, layout: Layout) -> OSError:
    """`exc` naming the file or directory it is about, not a hidden temporary (or the root
    when it names nothing)."""
    name = exc.filename
    if not exc.errno:  # not a storage fault the OS reported: keep its own message
        return exc
    if name and TMP_MARK not in os.path.basename(str(name)):
        return exc
    hidden = name and TMP_MARK in os.path.basename(str(name))
    where = (os.path.dirname(str(name)) if hidden else name) or layout.root
    code = errno_of(exc)
    return OSError(code, os.strerror(code), where)


def _compact(
    layout: Layout,
    report: CompactionReport,
    experiment: str | None,
    table: str | None,
    min_rows: int,
    row_group_rows: int,
    read_threads: int,
    grace_s: float,
) -> None:
    cleanups = []
    for t in [table] if table else list(SCHEMAS):
        listed = layout.table_files(t, experiment)
        for exp in sorted({f.experiment for f in (*listed.per_trial, *listed.parts)}):
            files = TableFiles(
                t,
                [f for f in listed.per_trial if f.experiment == exp],
                [f for f in listed.parts if f.experiment == exp],
                [f for f in listed.stale_parts if f.experiment == exp],
            )
            rep, cleanup = _compact_dir(layout, files, exp, min_rows, row_group_rows, read_threads)
            report.dirs.append(rep)
            cleanups.append(cleanup)
    if layout.is_local and any(d.part for d in report.dirs):
        # batchlab.duckdb lists the live parts: rebuilt before anything is deleted, so its
        # clients see the new parts while the per-trial files they replace still shadow them.
        from warehouse.db import write_duckdb_file

        write_duckdb_file(layout)
    if any(c.merged or c.replaced for c in cleanups):
        time.sleep(grace_s)  # see step 4 of the module docstring
    for rep, cleanup in zip(report.dirs, cleanups, strict=True):
        _clean(layout, rep, cleanup)


def _compact_dir(
    layout: Layout,
    files: TableFiles,
    experiment: str,
    min_rows: int,
    row_group_rows: int,
    read_threads: int,
) -> tuple[DirCompaction, _Cleanup]:
    """Write the directory's new part (if any); returns what to delete afterwards."""
    t0 = time.perf_counter()
    table, key = files.table, KEY_COLUMN[files.table]
    rep = DirCompaction(table, experiment)
    cleanup = _Cleanup()
    inputs = []
    for f in files.per_trial:
        why = layout.parquet_problem(f.path, f.size)
        if why:
            rep.skipped.append((f.path, why))
        else:
            inputs.append(f)
    for f in files.parts:
        why = layout.parquet_problem(f.path, f.size)
        if why:
            # Rewriting would drop its (unreadable) rows for good: leave the directory alone.
            rep.skipped.append((f.path, f"{why}; directory not compacted until it is moved aside"))
            rep.seconds = time.perf_counter() - t0
            return rep, cleanup

    live = files.parts
    part_keys: set[str] = set()
    if inputs and live:
        for p in live:
            part_keys |= _keys_of(layout, p, key)
    part_rows = {p.path: _num_rows(layout, p) for p in live}
    small = any(n < min_rows for n in part_rows.values())
    if not inputs:
        mode = "rewrite" if len(live) > 1 and small else "none"
    elif not live:
        mode = "append"
    elif {f.key for f in inputs} & part_keys:
        mode = "rewrite"
    else:
        new_rows = sum(_num_rows(layout, f) for f in inputs)
        if new_rows == 0:  # only tombstones of keys no part holds: nothing to merge
            mode, cleanup.merged, rep.files_in = "none", inputs, len(inputs)
        else:
            mode = "rewrite" if small or new_rows < min_rows else "append"

    if mode != "none":
        rep.mode = mode
        generation = max((p.generation or 0 for p in live), default=0)
        if mode == "rewrite" or not live:
            generation += 1
        if not layout.exists(marker := layout.compacted_marker(table, experiment)):
            layout.put_bytes(marker, b"")
        path = layout.part_file(table, experiment, generation)
        merged, rows = _write_part(
            layout,
            path,
            table,
            inputs,
            live if mode == "rewrite" else [],
            generation,
            row_group_rows,
            read_threads,
            rep,
        )
        written = pq.read_metadata(path, filesystem=layout.fs).num_rows
        if written != rows:  # never delete inputs for a part that does not hold them all
            layout.delete(path)
            raise RuntimeError(
                f"compaction of {table}/experiment={experiment}: wrote {written} rows to "
                f"{path}, expected {rows}; the part was removed, nothing else changed"
            )
        if rows == 0 and mode == "append":
            layout.delete(path)  # only empty files (tombstones of keys in no part) were merged
            path = None
        rep.part, rep.rows_out = path, rows
        rep.files_in = len(merged)
        rep.parts_in = len(live) if mode == "rewrite" else 0
        cleanup.merged = merged
        cleanup.replaced = live if mode == "rewrite" else []
    cleanup.replaced = [*cleanup.replaced, *files.stale_parts]  # invisible since a later generation
    rep.seconds = time.perf_counter() - t0
    return rep, cleanup


@dataclass
class _Cleanup:
    """What a directory's compaction deletes once its new part is in place."""

    merged: list[TableFile] = field(default_factory=list)  # per-trial files now in the part
    replaced: list[TableFile] = field(default_factory=list)  # parts of an older generation


def _clean(layout: Layout, rep: DirCompaction, cleanup: _Cleanup) -> None:
    t0 = time.perf_counter()
    for f in cleanup.merged:
        if layout.delete_if_unchanged(f):
            rep.deleted += 1
        else:
            rep.kept_changed.append(f.path)
    for p in cleanup.replaced:
        layout.delete(p.path)
        rep.deleted += 1
    rep.seconds += time.perf_counter() - t0


def _num_rows(layout: Layout, f: TableFile) -> int:
    return pq.read_metadata(f.path, filesystem=layout.fs).num_rows


def _keys_of(layout: Layout, f: TableFile, key: str) -> set[str]:
    """Distinct values of the key column of a part (read as a dictionary: cheap)."""
    t = pq.read_table(f.path, columns=[key], read_dictionary=[key], filesystem=layout.fs)
    out: set[str] = set()
    for chunk in t.column(key).chunks:
        out.update(pc.unique(chunk.dictionary.take(pc.unique(chunk.indices))).to_pylist())
    return out


class _Unusable(Exception):
    """A per-trial file compaction leaves alone (the reason is the message)."""


def _conform(t: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """`t` with exactly `schema`'s columns: missing (older schema version) columns NULL."""
    extra = sorted(set(t.column_names) - set(schema.names))
    if extra:
        raise _Unusable(
            f"columns {extra} are unknown to schema version {SCHEMA_VERSION} (written by a "
            f"newer batchlab?); upgrade before compacting {where}"
        )
    cols = [
        t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


def _read_inputs(
    layout: Layout, inputs: list[TableFile], table: str, threads: int
) -> Iterator[tuple[TableFile, pa.Table | str]]:
    """Per-trial files in order, read ahead by `threads`: (file, conformed table or why not)."""
    schema, key = SCHEMAS[table], KEY_COLUMN[table]

    def read(f: TableFile) -> pa.Table | str:
        try:
            t = _conform(pq.read_table(f.path, filesystem=layout.fs), schema, f.path)
        except _Unusable as exc:
            return str(exc)
        except (OSError, pa.ArrowException) as exc:
            return f"unreadable: {exc}"
        if len(t) and not (
            pc.all(pc.equal(t.column(key), f.key)).as_py()
            and pc.all(pc.equal(t.column("experiment"), f.experiment)).as_py()
        ):
            return (
                f"holds rows of another {key} or experiment than its name says "
                f"({f.key!r}, experiment {f.experiment!r}); left as is"
            )
        return t

    with ThreadPoolExecutor(threads) as pool:
        it = iter(inputs)
        pending = deque((f, pool.submit(read, f)) for f in islice(it, 4 * threads))
        while pending:
            f, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))
            yield f, fut.result()


def _write_part(
    layout: Layout,
    path: str,
    table: str,
    inputs: list[TableFile],
    parts: list[TableFile],
    generation: int,
    row_group_rows: int,
    read_threads: int,
    rep: DirCompaction,
) -> tuple[list[TableFile], int]:
    """Stream the per-trial inputs, then the parts' rows not superseded by them, into one
    Parquet file at `path` (row groups of `row_group_rows`). Returns (merged files, rows)."""
    key = KEY_COLUMN[table]
    schema = SCHEMAS[table].with_metadata(
        {SCHEMA_VERSION_KEY: str(SCHEMA_VERSION), "batchlab.generation": str(generation)}
    )
    stored = file_schema(schema)  # the partition column dictionary-encoded (layout.py)
    merged: list[TableFile] = []
    rows = 0
    buf: list[pa.Table] = []
    buffered = 0

    with layout.open_output(path) as out:
        # Snappy and dictionary encoding for the string columns only: measured on a 10M-row
        # steps part, 2.7x faster DuckDB scans and 3.5x faster writes than zstd with
        # dictionaries everywhere, and a smaller file (benchmarks/warehouse.py).
        writer = pq.ParquetWriter(
            out,
            stored,
            compression="snappy",
            use_dictionary=[f.name for f in schema if pa.types.is_string(f.type)],
        )

        def flush(final: bool) -> None:
            # Whole row groups only, until the end: every row group but the last is full.
            nonlocal buffered, rows
            whole = pa.concat_tables(buf)
            n = len(whole) if final else len(whole) // row_group_rows * row_group_rows
            writer.write_table(whole.slice(0, n).cast(stored), row_group_size=row_group_rows)
            rows += n
            rest = whole.slice(n)
            buf[:] = [rest] if len(rest) else []
            buffered = len(rest)

        def emit(t: pa.Table) -> None:
            nonlocal buffered
            if len(t):
                buf.append(t)
                buffered += len(t)
            if buffered >= row_group_rows:
                flush(final=False)

        for f, t in _read_inputs(layout, inputs, table, read_threads):
            if isinstance(t, str):
                rep.skipped.append((f.path, t))
                continue
            merged.append(f)
            emit(t)
        superseded = pa.array(sorted({f.key for f in merged}), pa.string())
        for p in parts:
            pf = pq.ParquetFile(p.path, filesystem=layout.fs)
            for batch in pf.iter_batches(batch_size=row_group_rows):
                t = _conform(pa.Table.from_batches([batch]), SCHEMAS[table], p.path)
                if len(superseded):
                    t = t.filter(pc.invert(pc.is_in(t.column(key), value_set=superseded)))
                emit(t)
        if buffered:
            flush(final=True)
        writer.close()
    return merged, rows
