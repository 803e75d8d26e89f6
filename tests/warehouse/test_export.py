"""`batchlab export` and `batchlab sql --format parquet --output F`: what the views show,
one file per table, a README of every column, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from batchlab.cli import main
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS, to_table
from warehouse.store import write_rows

READERS = {
    "parquet": lambda p: pd.read_parquet(p),
    "csv": lambda p: (
        pd.read_csv(p, float_precision="round_trip") if p.stat().st_size else pd.DataFrame()
    ),
    "jsonl": lambda p: (
        pd.read_json(p, lines=True, precise_float=True) if p.stat().st_size else pd.DataFrame()
    ),
}


@pytest.fixture
def root(tmp_path, fake) -> Layout:
    layout = Layout.open(tmp_path / "runs")
    for i in range(4):
        fake(layout, "a" if i < 3 else "b", i)
    write_rows(
        layout,
        "analyses",
        "a",
        "an1",
        [{"experiment": "a", "analysis_id": "an1", "kind": "interpolate", "status": "completed"}],
    )
    # An orphan (a trial being written: epochs, no trials row): not committed, not exported.
    rows = pq.read_table(layout.table_file("epochs", "a", "t000000000000000")).to_pylist()
    layout.write_table(
        layout.table_file("epochs", "a", "t999"),
        to_table("epochs", [{**r, "trial_id": "t999"} for r in rows]),
    )
    return layout


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_writes_each_table_as_the_views_show_it(root, tmp_path, fmt, capsys) -> None:
    out = tmp_path / "out"
    assert main(["export", "--storage", root.root, "--format", fmt, "--output", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    con = connect(root)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*(f"{t}.{fmt}" for t in SCHEMAS), "README.md"])
    for table in SCHEMAS:
        got = READERS[fmt](out / f"{table}.{fmt}")
        want = con.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        assert len(got) == want, table
    trials = READERS[fmt](out / f"trials.{fmt}")
    view = con.sql("SELECT trial_id, best_val_loss FROM trials ORDER BY experiment, trial_id")
    assert list(zip(trials["trial_id"], trials["best_val_loss"], strict=True)) == [
        tuple(r) for r in view.fetchall()
    ]
    epochs = READERS[fmt](out / f"epochs.{fmt}")
    assert "t999" not in set(epochs["trial_id"]) and len(epochs) == 12
    if fmt == "parquet":  # typed as the schema says
        assert pq.read_schema(out / "epochs.parquet").names == SCHEMAS["epochs"].names
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_export_readme_lists_every_column_and_experiment_filter(root, tmp_path) -> None:
    out = tmp_path / "out"
    argv = ["export", "--storage", root.root, "--format", "csv", "--output", str(out)]
    assert main([*argv, "--experiment", "b"]) == 0
    text = (out / "README.md").read_text()
    assert "Experiments: b." in text
    for table, schema in SCHEMAS.items():
        section = text[text.index(f"## `{table}.csv`") :]
        for f in schema:
            assert f"| `{f.name}` |" in section, (table, f.name)
    assert "| `best_val_loss` | double |" in text  # meanings come from docs/warehouse.md
    trials = pd.read_csv(out / "trials.csv")
    assert set(trials["experiment"]) == {"b"} and len(trials) == 1
    # A second export replaces the files in place.
    assert main(argv) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 4


def test_export_refuses_a_file_as_output(root, tmp_path, capsys) -> None:
    f = tmp_path / "file"
    f.write_text("keep me")
    argv = ["export", "--storage", root.root, "--format", "csv", "--output", str(f)]
    assert main(argv) == 2
    assert "is not a directory" in capsys.readouterr().err and f.read_text() == "keep me"


def test_sql_to_parquet_file(root, tmp_path, capsys) -> None:
    out = tmp_path / "q.parquet"
    sql = "SELECT trial_id, batch_size, best_val_loss FROM trials ORDER BY trial_id"
    argv = ["sql", "--storage", root.root, "--format", "parquet", "--output", str(out), sql]
    assert main(argv) == 0
    t = pq.read_table(out)
    assert t.num_rows == 4 and t.column_names == ["trial_id", "batch_size", "best_val_loss"]
    assert t.column("trial_id").to_pylist() == sorted(t.column("trial_id").to_pylist())
    assert "wrote 4 rows" in capsys.readouterr().err
    # JSON to a file, and parquet without --output is a usage error.
    js = tmp_path / "q.json"
    assert main(["sql", "--storage", root.root, "--format", "json", "--output", str(js), sql]) == 0
    assert len(json.loads(js.read_text())) == 4
    assert main(["sql", "--storage", root.root, "--format", "parquet", sql]) == 2
    assert "--output" in capsys.readouterr().err
    assert not Path(tmp_path / ".q.parquet").exists()
