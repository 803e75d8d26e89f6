"""`batchlab export`: the warehouse's committed rows as plain files for any tool.

One file per table (`<table>.parquet`, `.csv` or `.jsonl`), holding what the views of
`warehouse.db.connect` show (committed trials only, a per-trial file taking precedence over
compacted rows), optionally only some experiments, plus `README.md` listing every table's
columns with their types, generated from `warehouse.schemas.SCHEMAS` (and the meaning of each
column from docs/warehouse.md when the source tree is at hand). DuckDB's COPY streams each
table to a hidden temporary file that is renamed into place, so a reader of the output
directory never sees a half-written file and a failed export leaves the previous files.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.schemas import KEY_COLUMN, SCHEMA_VERSION, SCHEMAS

FORMATS = {
    "parquet": ("parquet", "(FORMAT parquet, COMPRESSION zstd)"),
    "csv": ("csv", "(FORMAT csv, HEADER true)"),
    "jsonl": ("jsonl", "(FORMAT json)"),  # newline-delimited JSON: one object per row
}
_DOC = Path(__file__).resolve().parent.parent / "docs" / "warehouse.md"


@dataclass
class ExportReport:
    output: str
    format: str
    experiments: list[str]
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows written
    files: dict[str, str] = field(default_factory=dict)  # table -> path

    def summary(self) -> str:
        total = sum(self.rows.values())
        per = ", ".join(f"{t} {n}" for t, n in self.rows.items())
        return f"exported {total} rows ({per}) as {self.format} to {self.output}"


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


def _replace_atomically(write, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def export(
    root: str | Layout | None,
    fmt: str,
    output: str | os.PathLike,
    experiments: list[str] | tuple[str, ...] = (),
) -> ExportReport:
    """Write every table of `root` (only `experiments`, when given) to `output/<table>.<ext>`
    and `output/README.md`. Raises ValueError for an unknown format."""
    if fmt not in FORMATS:
        raise ValueError(f"format: {fmt!r} is not one of {sorted(FORMATS)}")
    layout = root if isinstance(root, Layout) else Layout.open(root)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output: {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    con = connect(layout)
    exps = list(experiments) or [
        e for (e,) in con.sql("SELECT DISTINCT experiment FROM trials ORDER BY 1").fetchall()
    ]
    report = ExportReport(str(out), fmt, exps)
    ext, options = FORMATS[fmt]
    where = "experiment IN (" + ", ".join(_sql_str(e) for e in exps) + ")" if exps else "false"
    for table in SCHEMAS:
        query = f"SELECT * FROM {table} WHERE {where} ORDER BY {_order(table)}"
        path = out / f"{table}.{ext}"

        def write(tmp: Path, query: str = query) -> None:
            con.execute(f"COPY ({query}) TO {_sql_str(str(tmp))} {options}")

        _replace_atomically(write, path)
        report.rows[table] = con.sql(f"SELECT count(*) FROM {table} WHERE {where}").fetchall()[0][0]
        report.files[table] = str(path)
    _replace_atomically(lambda tmp: tmp.write_text(readme(report)), out / "README.md")
    return report


def write_dataframe_parquet(df, path: str | os.PathLike) -> None:
    """`batchlab sql --format parquet --output F`: a query result as one Parquet file,
    written under a temporary name and renamed."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    _replace_atomically(lambda tmp: pq.write_table(table, tmp, compression="zstd"), Path(path))
