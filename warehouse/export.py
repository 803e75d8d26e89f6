"""`batchlab export`: the warehouse's committed rows as plain files for any tool.

One file per table (`<table>.parquet`, `.csv` or `.jsonl`), holding what the views of
`warehouse.db.connect` show (committed trials only, a per-trial file taking precedence over
compacted rows), optionally only some experiments, plus `README.md` listing every table's
columns with their types, generated from `warehouse.schemas.SCHEMAS` (and the meaning of each
column from docs/warehouse.md when the source tree is at hand). DuckDB's COPY streams each
table to a hidden temporary file that is renamed into place, so a reader of the output
directory never sees a half-written file and a failed export leaves the previous files.

Where it writes (`check_output_dir`, `check_output_file`, docs/cli.md "Exports"): never under
the storage root (files there would be read as warehouse rows), and into an existing
non-empty folder only when batchlab made it (its manifest `batchlab-export.json`) or with
`force`; `batchlab sql --output F` replaces an existing file only with `force`. A killed
export leaves hidden temporaries (`.<name>.tmp-<host>-<pid>-<id>`): the next export into the
folder deletes those of dead processes on this host, or older than an hour. CSV cells of
string columns that a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`,
tab or CR) are written with a leading `'` (OWASP CSV injection), unless `escape_formulas`
is off; numbers are never changed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.schemas import KEY_COLUMN, SCHEMA_VERSION, SCHEMAS
from warehouse.writers import dead_writer

FORMATS = {
    "parquet": ("parquet", "(FORMAT parquet, COMPRESSION zstd)"),
    "csv": ("csv", "(FORMAT csv, HEADER true)"),
    "jsonl": ("jsonl", "(FORMAT json)"),  # newline-delimited JSON: one object per row
}
_DOC = Path(__file__).resolve().parent.parent / "docs" / "warehouse.md"
MANIFEST = "batchlab-export.json"  # marks a folder batchlab's export wrote (see check_output_dir)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs such a cell as a formula
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


_OUTPUT_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or choose --output on another disk",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose --output elsewhere",
    errno.EROFS: "the file system is read-only: choose --output on a writable one",
    errno.EACCES: "no permission to write there: choose --output in a folder you can write",
    errno.EPERM: "not permitted to write there: choose --output in a folder you can write",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another --output",
    errno.EEXIST: "a file is in the way of a folder there: choose another --output",
}


class OutputRefused(ValueError):
    """`--output` names a place batchlab will not write (the one-line message says why)."""


def errno_of(exc: BaseException) -> int:
    """The errno of an OSError, also when pyarrow only names it in the message; else EIO."""
    code = getattr(exc, "errno", None)
    if not code:
        m = re.search(r"errno (\d+)", str(exc), re.IGNORECASE)
        code = int(m.group(1)) if m else errno.EIO
    return code


class OutputUnwritable(OSError):
    """An output that could not be written (a full disk, a read-only file system, no
    permission); str() is one line: "batchlab: cannot write PATH: <strerror>; <hint>"."""

    def __init__(self, exc: BaseException, path: str | os.PathLike):
        code = errno_of(exc)
        super().__init__(code, os.strerror(code), str(path))
        hint = _OUTPUT_HINTS.get(code, "check the disk, or choose another --output")
        self.line = f"batchlab: cannot write {path}: {os.strerror(code)}; {hint}"

    def __str__(self) -> str:
        return self.line


@dataclass
class ExportReport:
    output: str
    format: str
    experiments: list[str]
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows written
    files: dict[str, str] = field(default_factory=dict)  # table -> path
    escape_formulas: bool = False  # CSV: formula cells of text columns got a leading '
    removed_temporaries: int = 0  # a killed export's temporaries removed first

    def summary(self) -> str:
        total = sum(self.rows.values())
        per = ", ".join(f"{t} {n}" for t, n in self.rows.items())
        text = f"exported {total} rows ({per}) as {self.format} to {self.output}"
        if self.removed_temporaries:
            text += f"; removed {self.removed_temporaries} temporaries of a killed export"
        return text


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _order(table: str) -> str:
    """A stable row order: experiment, the file key, then the table's natural key."""
    extra = {
        "epochs": ["epoch"],
        "steps": ["step"],
        "layers": ["epoch", "layer"],
        "probes": ["epoch", "probe", "settings_json"],
        "metrics": ["epoch", "step", "name"],
        "landscapes": ["kind", "split", "alpha", "beta"],
    }.get(table, [])
    cols = ["experiment", KEY_COLUMN.get(table, "experiment"), *extra]
    return ", ".join(c for c in dict.fromkeys(cols) if c in SCHEMAS[table].names)


def _column_docs() -> dict[str, dict[str, str]]:
    """table -> column -> meaning, from docs/warehouse.md's column tables (if present)."""
    if not _DOC.exists():
        return {}
    out: dict[str, dict[str, str]] = {}
    table = None
    for line in _DOC.read_text().splitlines():
        m = re.match(r"^### `(\w+)`", line)
        if m:
            table = m.group(1)
            out[table] = {}
            continue
        m = re.match(r"^\| `(\w+)` \| [^|]* \| ([^|]*) \| (.*) \|$", line)
        if table and m:
            unit, meaning = m.group(2).strip(), m.group(3).strip()
            out[table][m.group(1)] = meaning + ("" if unit in ("-", "") else f" ({unit})")
    return out


def _type_name(t: pa.DataType) -> str:
    return str(t).replace("timestamp[us, tz=UTC]", "timestamp (UTC, microseconds)")


def readme(report: ExportReport) -> str:
    """The README.md of an export: what each file holds, column by column."""
    docs = _column_docs()
    ext = FORMATS[report.format][0]
    lines = [
        "# batchlab export",
        "",
        f"Format: {report.format}. Experiments: {', '.join(report.experiments) or '(none)'}. "
        f"Schema version {SCHEMA_VERSION}. Written by `batchlab export`; one file per table,",
        "committed trials only. Missing values are empty (CSV) or null (Parquet, JSON); NaN is a",
        "measured value that was not finite, or a measurement unavailable for this trial (for",
        "imported studies: everything that needs the model's weights). Column meanings and",
        "units: docs/warehouse.md in the batchlab source.",
        "",
    ]
    for table, schema in SCHEMAS.items():
        lines += [
            f"## `{table}.{ext}`",
            "",
            f"{report.rows.get(table, 0)} rows.",
            "",
            "| column | type | meaning |",
            "| --- | --- | --- |",
        ]
        meanings = docs.get(table, {})
        for f in schema:
            meaning = meanings.get(f.name, "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | {_type_name(f.type)} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


# ---- where an output may go -----------------------------------------------------------


def _under_root(layout: Layout, path: Path) -> bool:
    if not layout.is_local:
        return False  # a local output cannot be inside an object store
    root = Path(os.path.realpath(layout.base))
    return Path(os.path.realpath(path)).is_relative_to(root)


def _made_by_batchlab(folder: Path) -> bool:
    """Whether `folder` holds a batchlab export: its manifest, or (exports before the
    manifest) a README.md that starts "# batchlab export"."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        return "batchlab_export" in json.loads((folder / MANIFEST).read_text())
    with (
        contextlib.suppress(OSError, UnicodeDecodeError),
        (folder / "README.md").open(encoding="utf-8") as fh,
    ):
        return fh.readline().strip() == "# batchlab export"
    return False


def check_outside_root(layout: Layout, out: str | os.PathLike) -> None:
    """Refuse (OutputRefused) an output path (a local one; links resolved) under the
    storage root: files there would be read as warehouse rows."""
    if "://" not in str(out) and _under_root(layout, Path(out)):
        raise OutputRefused(
            f"--output: {str(out)!r} is inside the storage root {layout.base}: files there "
            "would be read as warehouse rows; choose a folder outside the root"
        )


def check_output_dir(layout: Layout, out: Path, force: bool = False) -> None:
    """Refuse (OutputRefused) an export folder under the storage root, a file, or an
    existing non-empty folder batchlab did not make (unless `force`)."""
    check_outside_root(layout, out)
    if out.exists() and not out.is_dir():
        raise OutputRefused(f"--output: {str(out)!r} exists and is not a directory")
    if out.is_dir() and not force and any(out.iterdir()) and not _made_by_batchlab(out):
        raise OutputRefused(
            f"--output: {str(out)!r} is a non-empty folder that batchlab did not write (no "
            f"{MANIFEST}); its files would be replaced: choose a new or empty folder, or pass "
            "--force to write into it anyway"
        )


def check_output_file(layout: Layout, path: Path, force: bool = False) -> None:
    """Refuse (OutputRefused) a result file under the storage root, a folder, or an
    existing file (unless `force`)."""
    if _under_root(layout, path):
        raise OutputRefused(
            f"--output: {str(path)!r} is inside the storage root {layout.base}: a file there "
            "could be read as warehouse rows; choose a path outside the root"
        )
    if path.is_dir():
        raise OutputRefused(f"--output: {str(path)!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise OutputRefused(
            f"--output: the folder {str(path.parent)!r} does not exist; create it or choose "
            "another path"
        )
    if path.exists() and not force:
        raise OutputRefused(
            f"--output: {str(path)!r} exists; pass --force to replace it, or choose a new name"
        )


# ---- writing ------------------------------------------------------------------------------


def clean_stale_temporaries(folder: Path, names: set[str]) -> int:
    """Delete hidden temporaries `.<name>.tmp-<host>-<pid>-<id>` of the files `names` in
    `folder` that a killed writer left: its pid is gone (this host), or older than an hour
    (any host). A live writer's and any other file are kept. Returns the count."""
    now, n = time.time(), 0
    if not folder.is_dir():
        return 0
    for p in folder.iterdir():
        m = _TMP_RE.match(p.name)
        if not m or m["name"] not in names or p.is_symlink() or not p.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):
            if dead_writer(m["host"], int(m["pid"]), p.stat().st_mtime, now=now):
                p.unlink()
                n += 1
    return n


def os_error_from(exc: Exception, path: str | os.PathLike) -> OSError | None:
    """DuckDB's I/O error as the OSError it reports (a full disk, a read-only file system)."""
    text = str(exc)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.ENOTDIR, errno.EIO):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code), str(path))
    return None


def _replace_atomically(write, path: Path) -> None:
    """`write(tmp)` a hidden temporary next to `path`, then rename it into place; a failed
    write of the output is an OutputUnwritable naming `path`."""
    tmp = Path(Layout.temp_path(str(path.absolute())))  # a bare file name has no "/"
    try:
        try:
            write(tmp)
            os.replace(tmp, path)
        except duckdb.IOException as exc:
            err = os_error_from(exc, path)
            if err is None:
                raise
            raise OutputUnwritable(err, path) from exc
        except OSError as exc:
            raise OutputUnwritable(exc, path) from exc
    finally:
        with contextlib.suppress(OSError):  # (a read-only disk answers EROFS, not ENOENT)
            tmp.unlink()


def _all_names() -> set[str]:
    return {MANIFEST, "README.md", *(f"{t}.{e}" for t in SCHEMAS for e, _ in FORMATS.values())}


def _escaped(table: str) -> str:
    """The select list of `table` with formula cells of its string columns escaped."""
    starts = ", ".join(f"chr({ord(c)})" for c in FORMULA_START)
    cols = []
    for f in SCHEMAS[table]:
        q = '"' + f.name.replace('"', '""') + '"'
        if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
            q = f"CASE WHEN left({q}, 1) IN ({starts}) THEN chr(39) || {q} ELSE {q} END AS {q}"
        cols.append(q)
    return ", ".join(cols)


def _manifest(report: ExportReport, complete: bool) -> str:
    ext = FORMATS[report.format][0]
    manifest = {
        "batchlab_export": 1,
        "complete": complete,
        "format": report.format,
        "experiments": report.experiments,
        "schema_version": SCHEMA_VERSION,
        "files": [MANIFEST, "README.md", *(f"{t}.{ext}" for t in SCHEMAS)],
        "rows": report.rows,
        "escape_formulas": report.escape_formulas,
        "written_at": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    return json.dumps(manifest, indent=2)


def export(
    root: str | Layout | None,
    fmt: str,
    output: str | os.PathLike,
    experiments: list[str] | tuple[str, ...] = (),
    *,
    force: bool = False,
    escape_formulas: bool = True,
) -> ExportReport:
    """Write every table of `root` (only `experiments`, when given) to `output/<table>.<ext>`
    and `output/README.md`, and the manifest `output/batchlab-export.json`. Raises
    ValueError for an unknown format, OutputRefused for an output it will not write."""
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {sorted(FORMATS)}")
    layout = root if isinstance(root, Layout) else Layout.open(root)
    out = Path(output)
    check_output_dir(layout, out, force)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputUnwritable(exc, exc.filename or out) from exc
    cleaned = clean_stale_temporaries(out, _all_names())
    con = connect(layout)
    exps = list(experiments) or [
        e for (e,) in con.sql("SELECT DISTINCT experiment FROM trials ORDER BY 1").fetchall()
    ]
    report = ExportReport(str(out), fmt, exps, escape_formulas=fmt == "csv" and escape_formulas)
    report.removed_temporaries = cleaned
    previous = _previous_files(out)
    # The manifest first: a killed export leaves a folder marked as batchlab's (so the next
    # export may write into it), with "complete": false.
    _replace_atomically(lambda tmp: tmp.write_text(_manifest(report, False)), out / MANIFEST)
    ext, options = FORMATS[fmt]
    where = "experiment IN (" + ", ".join(_sql_str(e) for e in exps) + ")" if exps else "false"
    for table in SCHEMAS:
        cols = _escaped(table) if report.escape_formulas else "*"
        query = f"SELECT {cols} FROM {table} WHERE {where} ORDER BY {_order(table)}"
        path = out / f"{table}.{ext}"

        def write(tmp: Path, query: str = query) -> None:
            con.execute(f"COPY ({query}) TO {_sql_str(str(tmp))} {options}")

        _replace_atomically(write, path)
        report.rows[table] = con.sql(f"SELECT count(*) FROM {table} WHERE {where}").fetchall()[0][0]
        report.files[table] = str(path)
    _replace_atomically(lambda tmp: tmp.write_text(readme(report)), out / "README.md")
    _replace_atomically(lambda tmp: tmp.write_text(_manifest(report, True)), out / MANIFEST)
    keep = {MANIFEST, "README.md", *(Path(p).name for p in report.files.values())}
    for name in previous - keep:  # an earlier export's files in another format
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    return report


def _previous_files(out: Path) -> set[str]:
    """Files an earlier export listed in its manifest (only batchlab's own names)."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        files = json.loads((out / MANIFEST).read_text()).get("files", [])
        return {f for f in files if isinstance(f, str)} & _all_names()
    return set()


def escape_formula_cells(df):
    """A copy of the DataFrame `df` whose text cells starting like a formula get a leading
    `'` (numbers, and the other cells, unchanged)."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object or str(df[c].dtype) in ("string", "str"):
            df[c] = df[c].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v
            )
    return df


def write_result(
    layout: Layout,
    df,
    fmt: str,
    output: str | os.PathLike,
    *,
    force: bool = False,
    escape_formulas: bool = True,
) -> None:
    """`batchlab sql --output F`: a query result as one file (parquet, csv, json or the
    table text), refused where `check_output_file` says, written under a temporary name and
    renamed (stale temporaries of the same name from killed writers removed first)."""
    path = Path(output)
    check_output_file(layout, path, force)
    clean_stale_temporaries(path.parent, {path.name})
    if fmt == "csv" and escape_formulas:
        df = escape_formula_cells(df)
    if fmt == "parquet":
        table = pa.Table.from_pandas(df, preserve_index=False)
        _replace_atomically(lambda tmp: pq.write_table(table, tmp, compression="zstd"), path)
    elif fmt == "csv":
        _replace_atomically(lambda tmp: df.to_csv(tmp, index=False), path)
    elif fmt == "json":
        _replace_atomically(lambda tmp: df.to_json(tmp, orient="records", date_format="iso"), path)
    else:
        _replace_atomically(lambda tmp: tmp.write_text(df.to_string(index=False) + "\n"), path)
