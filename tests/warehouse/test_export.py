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
from warehouse.export import MANIFEST
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
    assert names == sorted([*(f"{t}.{fmt}" for t in SCHEMAS), "README.md", MANIFEST])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] is True and manifest["rows"]["trials"] == 4
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


# ---- round 3 (issue 24): where an output may go, formula cells ----------------------------


def _trials_count(root: Layout) -> int:
    return connect(root).sql("SELECT count(*) FROM trials").fetchall()[0][0]


def test_export_refuses_the_storage_root_and_anything_under_it(root, tmp_path, capsys) -> None:
    """An export into ROOT/tables/trials/experiment=a took the trials view from 14 to 36,754
    rows (its CSV/Parquet files were read as trials); now refused, with or without --force."""
    before = sorted(p for p in Path(root.base).rglob("*"))
    link = tmp_path / "link-into-root"
    link.symlink_to(Path(root.base) / "tables")
    for out in (
        Path(root.base) / "tables" / "trials" / "experiment=a",
        Path(root.base),
        Path(root.base) / "new-folder",
        link / "trials",
    ):
        for force in ([], ["--force"]):
            argv = ["export", "--storage", root.root, "--format", "parquet", "--output", str(out)]
            assert main([*argv, *force]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "is inside the storage root" in err, err
            assert str(out) in err and "choose a folder outside the root" in err
    mlruns = Path(root.base) / "mlruns"  # an MLflow store there too
    argv = ["export", "--storage", root.root, "--format", "mlflow", "--output", str(mlruns)]
    assert main(argv) == 2 and "is inside the storage root" in capsys.readouterr().err
    assert sorted(p for p in Path(root.base).rglob("*")) == before
    assert _trials_count(root) == 4
    sql = ["sql", "--storage", root.root, "--format", "csv", "SELECT 1 AS x"]
    target = Path(root.base) / "tables" / "trials" / "experiment=a" / "x.parquet"
    assert main([*sql, "--output", str(target), "--force"]) == 2
    assert "is inside the storage root" in capsys.readouterr().err and not target.exists()


def test_export_refuses_a_folder_it_did_not_make_unless_forced(root, tmp_path, capsys) -> None:
    """It silently replaced a user's README.md."""
    user = tmp_path / "my-project"
    user.mkdir()
    (user / "README.md").write_text("my notes")
    argv = ["export", "--storage", root.root, "--format", "csv", "--output", str(user)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-empty folder that batchlab did not write" in err
    assert "--force" in err and (user / "README.md").read_text() == "my notes"
    assert sorted(p.name for p in user.iterdir()) == ["README.md"]
    assert main([*argv, "--force"]) == 0  # asked for: written, marked as an export
    assert (user / MANIFEST).exists() and "# batchlab export" in (user / "README.md").read_text()
    # An export folder (its manifest) is batchlab's: a new export replaces it, files of the
    # earlier format listed in the manifest go, files the user added stay.
    out = tmp_path / "out"
    assert main(["export", "--storage", root.root, "--format", "csv", "--output", str(out)]) == 0
    (out / "mine.txt").write_text("kept")
    assert main(["export", "--storage", root.root, "--format", "jsonl", "--output", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "trials.jsonl" in names and "trials.csv" not in names and "mine.txt" in names
    # An export written before the manifest existed (README.md "# batchlab export") too.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "README.md").write_text("# batchlab export\n\nold\n")
    (legacy / "trials.csv").write_text("old")
    assert main(["export", "--storage", root.root, "--format", "csv", "--output", str(legacy)]) == 0


def test_sql_output_refuses_an_existing_file_unless_forced(root, tmp_path, capsys) -> None:
    out = tmp_path / "notes.csv"
    out.write_text("precious")
    sql = ["sql", "--storage", root.root, "--format", "csv", "SELECT 1 AS x"]
    assert main([*sql, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists; pass --force" in err
    assert out.read_text() == "precious"
    assert main([*sql, "--output", str(out), "--force"]) == 0
    assert out.read_text() == "x\n1\n"
    assert main([*sql, "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main([*sql, "--output", str(tmp_path / "no" / "q.csv")]) == 2
    assert "does not exist; create it" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sql_output_to_a_bare_file_name_in_the_current_folder(root, tmp_path, monkeypatch) -> None:
    """`--output best.parquet` (no folder in the name, as docs/cli.md writes it)."""
    monkeypatch.chdir(tmp_path)
    sql = ["sql", "--storage", root.root, "--format", "csv", "SELECT 1 AS x"]
    assert main([*sql, "--output", "best.csv"]) == 0
    assert (tmp_path / "best.csv").read_text() == "x\n1\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


FORMULAS = ['=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tlead", "\rcr"]


@pytest.fixture
def formula_root(tmp_path, fake) -> Layout:
    layout = Layout.open(tmp_path / "fruns")
    for i, text in enumerate(FORMULAS):
        fake(layout, "f", i)
        row = pq.read_table(layout.table_file("trials", "f", f"t{i:015d}")).to_pylist()[0]
        row |= {"model": text, "best_val_loss": -0.5 - i}
        layout.write_table(
            layout.table_file("trials", "f", f"t{i:015d}"), to_table("trials", [row])
        )
    return layout


def test_csv_formula_cells_are_escaped_numbers_untouched(formula_root, tmp_path, capsys) -> None:
    """Cells starting with = + - @ tab CR are written with a leading ' in text columns (OWASP
    CSV injection); -0.5 in a number column stays a number; --no-formula-escape turns it off."""
    out = tmp_path / "out"
    argv = ["export", "--storage", formula_root.root, "--format", "csv", "--output", str(out)]
    assert main(argv) == 0
    got = pd.read_csv(out / "trials.csv", keep_default_na=False).sort_values("trial_id")
    assert list(got["model"]) == ["'" + f for f in FORMULAS]
    assert list(got["best_val_loss"]) == [-0.5 - i for i in range(len(FORMULAS))]
    assert got["best_val_loss"].dtype == float
    assert main([*argv, "--no-formula-escape"]) == 0
    raw = pd.read_csv(out / "trials.csv", keep_default_na=False).sort_values("trial_id")
    assert list(raw["model"]) == FORMULAS
    capsys.readouterr()
    # batchlab sql: to stdout and to a file.
    q = "SELECT model, best_val_loss FROM trials ORDER BY trial_id"
    sql = ["sql", "--storage", formula_root.root, "--format", "csv", q]
    assert main(sql) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == '"\'=HYPERLINK(""http://x"",""y"")",-0.5', lines
    f = tmp_path / "q.csv"
    assert main([*sql, "--output", str(f)]) == 0
    got = list(pd.read_csv(f, keep_default_na=False)["model"])
    # (pandas' CSV writer leaves a cell holding a CR unquoted: the CR cell is checked raw)
    assert got[:5] == ["'" + x for x in FORMULAS[:5]] and b"\n'\rcr," in f.read_bytes()
    assert main([*sql, "--no-formula-escape"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith('"=HYPERLINK(')
