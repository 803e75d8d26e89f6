"""Schemas: every table round-trips through Parquet and the views; files of an older schema
version (fewer columns) read with NULLs; docs/warehouse.md documents every column."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from warehouse.compact import compact
from warehouse.db import connect
from warehouse.layout import Layout, file_schema
from warehouse.schemas import SCHEMA_VERSION, SCHEMA_VERSION_KEY, SCHEMAS, to_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "warehouse.md"
SAMPLE = {
    pa.float64(): 1.25,
    pa.int64(): 7,
    pa.string(): "x",
    pa.bool_(): True,
    pa.timestamp("us", tz="UTC"): dt.datetime(2025, 5, 1, 12, 30, tzinfo=dt.timezone.utc),
    pa.list_(pa.int64()): [-3, 2],
}


def _full_row(table: str, i: int) -> dict:
    row = {f.name: SAMPLE[f.type] for f in SCHEMAS[table]}
    row.update(experiment="e", trial_id=f"t{i}", analysis_id=f"a{i}")
    return {k: v for k, v in row.items() if k in SCHEMAS[table].names}


@pytest.mark.parametrize("table", list(SCHEMAS))
def test_every_table_round_trips_through_parquet_and_views(tmp_path, table):
    layout = Layout.open(tmp_path / "runs")
    written = to_table(table, [_full_row(table, 0)])
    key = "a0" if table in ("landscapes", "analyses") else "t0"  # the file's KEY_COLUMN
    path = layout.table_file(table, "e", key)
    layout.write_table(path, written)
    if table not in ("trials", "landscapes", "analyses"):  # visible once committed
        layout.write_table(
            layout.table_file("trials", "e", "t0"), to_table("trials", [_full_row("trials", 0)])
        )

    back = pq.read_table(path)
    # Stored as `file_schema`: the partition column dictionary-encoded (warehouse/layout.py).
    assert back.schema.equals(file_schema(SCHEMAS[table])), "Parquet keeps every column's type"
    assert back.to_pylist() == written.to_pylist()
    meta = pq.read_metadata(path).metadata
    assert meta[SCHEMA_VERSION_KEY.encode()] == str(SCHEMA_VERSION).encode()

    got = connect(layout).sql(f"SELECT * FROM {table}").to_arrow_table()
    assert got.column_names == SCHEMAS[table].names
    # DuckDB names the UTC zone "Etc/UTC": same instants, same unit.
    norm = lambda t: pa.timestamp(t.unit, "UTC") if pa.types.is_timestamp(t) else t  # noqa: E731
    assert [norm(f.type) for f in got.schema] == [f.type for f in SCHEMAS[table]]
    assert got.to_pylist() == written.to_pylist()


def test_to_table_rejects_unknown_columns():
    with pytest.raises(KeyError, match="val_los"):
        to_table("epochs", [{"epoch": 1, "val_los": 0.1}], experiment="e", trial_id="t")


def _old_version(table: str, rows: list[dict], drop: tuple[str, ...]) -> pa.Table:
    """A file as an older batchlab (without the columns `drop`) would have written it."""
    t = to_table(table, rows)
    return t.drop_columns(list(drop)).replace_schema_metadata({SCHEMA_VERSION_KEY: "0"})


def test_older_schema_version_files_read_with_nulls(tmp_path, sums):
    layout = Layout.open(tmp_path / "runs")
    old_cols = ("examples_per_s", "grad_norm_max")
    # Trial "old": every file written before the newer columns existed.
    layout.write_table(
        layout.table_file("epochs", "e", "old"),
        _old_version(
            "epochs",
            [{"experiment": "e", "trial_id": "old", "epoch": 1, "val_loss": 0.5}],
            old_cols,
        ),
    )
    layout.write_table(
        layout.table_file("trials", "e", "old"),
        _old_version(
            "trials",
            [{"experiment": "e", "trial_id": "old", "status": "completed", "batch_size": 32}],
            ("peak_memory_mb", "schema_version"),
        ),
    )
    con = connect(layout)
    # Even when no file has a column, the views still have it, typed, and NULL.
    cols = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE epochs)").fetchall())
    assert cols["examples_per_s"] == "DOUBLE" and cols["grad_norm_max"] == "DOUBLE"
    assert con.execute("SELECT examples_per_s, val_loss FROM epochs").fetchall() == [(None, 0.5)]
    assert con.execute("SELECT peak_memory_mb, batch_size FROM trials").fetchall() == [(None, 32)]

    # A newer trial next to it: union by name, each row with what its file had.
    layout.write_table(
        layout.table_file("epochs", "e", "new"),
        to_table("epochs", [{"epoch": 1, "val_loss": 0.25, "examples_per_s": 900.0}],
                 experiment="e", trial_id="new"),
    )  # fmt: skip
    layout.write_table(
        layout.table_file("trials", "e", "new"),
        to_table("trials", [{"experiment": "e", "trial_id": "new", "status": "completed"}]),
    )
    con = connect(layout)
    assert con.execute(
        "SELECT trial_id, examples_per_s FROM epochs ORDER BY trial_id"
    ).fetchall() == [("new", 900.0), ("old", None)]

    # Compaction conforms old files to the current schema: same rows, NULLs kept.
    before = sums(con)
    compact(layout, min_rows=1, grace_s=0)
    part = layout.table_files("epochs").parts[0].path
    assert pq.read_schema(part).names == SCHEMAS["epochs"].names
    assert sums(connect(layout)) == before


def test_file_with_columns_unknown_to_this_version_is_not_compacted(tmp_path):
    """A file from a newer batchlab reads (extra columns included) but compaction, which
    would drop the unknown columns, leaves it alone and says why."""
    layout = Layout.open(tmp_path / "runs")
    t = to_table("epochs", [{"epoch": 1}], experiment="e", trial_id="t1")
    layout.write_table(
        layout.table_file("epochs", "e", "t1"), t.append_column("new_metric", pa.array([1.0]))
    )
    layout.write_table(
        layout.table_file("trials", "e", "t1"),
        to_table("trials", [{"experiment": "e", "trial_id": "t1", "status": "completed"}]),
    )
    assert connect(layout).execute("SELECT new_metric FROM epochs").fetchall() == [(1.0,)]
    report = compact(layout, table="epochs", grace_s=0)
    (skipped,) = report.skipped
    assert skipped[0].endswith("t1.parquet") and "new_metric" in skipped[1]
    assert layout.exists(layout.table_file("epochs", "e", "t1"))


def test_docs_list_every_column_of_every_table():
    """docs/warehouse.md has one table per warehouse table with a row per column."""
    text = DOCS.read_text()
    for table, schema in SCHEMAS.items():
        m = re.search(rf"^### `{table}`\n(.*?)(?=^### |\Z)", text, re.S | re.M)
        assert m, f"docs/warehouse.md: no '### `{table}`' section"
        documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", m.group(1), re.M))
        missing = [c for c in schema.names if c not in documented]
        assert not missing, f"docs/warehouse.md, table {table}: columns not documented: {missing}"
        extra = documented - set(schema.names)
        assert not extra, f"docs/warehouse.md, table {table}: not in the schema: {sorted(extra)}"
