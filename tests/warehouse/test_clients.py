"""The warehouse in standard clients: `<root>/batchlab.duckdb` in the real DuckDB CLI of the
oldest and newest releases `.ci/run` installs, and in the oldest supported Python duckdb
(1.1); views that follow a copied or moved root; table folders read by pyarrow, pandas,
polars and DuckDB with their default options.

The outside clients live in `<repo>/.duckdb-clients/` (or `$BATCHLAB_DUCKDB_CLIENTS`), put
there by `.ci/run`: `cli-<version>/` (pip's `duckdb-cli` wheels) and `python-<version>/`
(a `pip install --target` of the `duckdb` package). Tests of a missing client skip, saying so.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from warehouse.compact import compact
from warehouse.db import STORAGE_VERSION, connect, write_duckdb_file
from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS

REPO = Path(__file__).resolve().parents[2]


def _helpers():
    """tests/warehouse/conftest.py's writers (module-scoped fixtures need them directly)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_wh_helpers", Path(__file__).with_name("conftest.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fake_trial = _helpers().fake_trial
fake_analysis = _helpers().fake_analysis
CLIENTS = Path(os.environ.get("BATCHLAB_DUCKDB_CLIENTS", REPO / ".duckdb-clients"))
TABLES = list(SCHEMAS)
COUNTS_SQL = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t}) AS {t}" for t in TABLES)


def _version_key(name: str) -> tuple[int, ...]:
    v = name.split("-", 1)[1]
    return tuple(int(x) for x in v.replace("post", ".").split(".") if x.isdigit())


def _cli_binaries() -> dict[str, Path]:
    """version -> the real `duckdb` executable of each installed duckdb-cli wheel."""
    out = {}
    for d in sorted(CLIENTS.glob("cli-*"), key=lambda p: _version_key(p.name)):
        for cand in (d / "duckdb_cli" / "duckdb", d / "bin" / "duckdb"):
            if cand.is_file() and cand.read_bytes()[:4] == b"\x7fELF":
                if not os.access(cand, os.X_OK):  # pip --target drops the mode of data files
                    cand.chmod(cand.stat().st_mode | stat.S_IXUSR)
                out[d.name.split("-", 1)[1]] = cand
                break
    return out


CLIS = _cli_binaries()
PY_CLIENTS = {
    d.name.split("-", 1)[1]: d
    for d in sorted(CLIENTS.glob("python-*"), key=lambda p: _version_key(p.name))
    if (d / "duckdb").is_dir()
}


def _need(kind: str, found: dict) -> None:
    if not found:
        msg = f"no DuckDB {kind} in {CLIENTS} (bash .ci/run installs them)"
        print(f"SKIP: {msg}")
        pytest.skip(msg)


def _cli(binary: Path, db: str | Path, sql: str, cwd: Path) -> list[dict[str, str]]:
    r = subprocess.run(
        [str(binary), "-readonly", "-csv", str(db), "-c", sql],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(cwd)},  # no ~/.duckdbrc of the machine
    )
    assert r.returncode == 0 and "Error" not in r.stderr, r.stderr
    return list(csv.DictReader(io.StringIO(r.stdout)))


def _py_client(path: Path, code: str, cwd: Path) -> str:
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(path)},
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _counts(root: str | Path) -> dict[str, int]:
    con = connect(str(root))
    return {t: con.sql(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Two experiments, one compacted and then partly re-written (parts + per-trial files
    that take precedence), the other per-trial files only; batchlab.duckdb built."""
    path = tmp_path_factory.mktemp("clients") / "root"
    layout = Layout.open(path)
    for i in range(6):
        fake_trial(layout, "comp", i)
    compact(layout, experiment="comp", grace_s=0)
    fake_trial(layout, "comp", 2, value=5.0)  # re-written after the compaction
    for i in range(4):
        fake_trial(layout, "plain", i)
    write_duckdb_file(layout)
    return path


def test_storage_version_is_readable_by_duckdb_1_1(root: Path, tmp_path: Path) -> None:
    """The file is written in STORAGE_VERSION v1.1.0 (not the v2.0.0 format DuckDB 2 writes
    by default), so the oldest supported DuckDB opens it."""
    assert STORAGE_VERSION == "v1.1.0"
    _need("Python client", PY_CLIENTS)
    oldest = next(iter(PY_CLIENTS))
    code = (
        "import duckdb, json; print(duckdb.__version__); "
        f"c = duckdb.connect({str(root / 'batchlab.duckdb')!r}, read_only=True); "
        f"print(json.dumps(dict(zip({TABLES!r}, c.execute({COUNTS_SQL!r}).fetchone()))))"
    )
    out = _py_client(PY_CLIENTS[oldest], code, tmp_path).splitlines()
    assert out[0] == oldest
    import json

    assert json.loads(out[1]) == _counts(root)


@pytest.mark.parametrize("which", ["oldest", "newest"])
def test_real_cli_opens_the_file_from_any_directory(root: Path, tmp_path: Path, which) -> None:
    _need("CLI binary", CLIS)
    version = list(CLIS)[0 if which == "oldest" else -1]
    binary = CLIS[version]
    want = {t: str(n) for t, n in _counts(root).items()}
    assert int(want["trials"]) == 10 and int(want["epochs"]) == 30
    # An unrelated directory, the root itself (a relative name), and its parent.
    assert _cli(binary, root / "batchlab.duckdb", COUNTS_SQL, tmp_path) == [want]
    assert _cli(binary, "batchlab.duckdb", COUNTS_SQL, root) == [want]
    assert _cli(binary, "root/batchlab.duckdb", COUNTS_SQL, root.parent) == [want]
    # The re-written trial's per-trial file wins over its compacted rows.
    rows = _cli(
        binary,
        root / "batchlab.duckdb",
        "SELECT max(val_loss) AS v FROM epochs WHERE trial_id = 't000000000000002'",
        tmp_path,
    )
    assert float(rows[0]["v"]) == pytest.approx(5.0 + 2 + 0.3)


def test_copied_root_reads_its_own_files_after_the_original_is_deleted(
    root: Path, tmp_path: Path
) -> None:
    original = tmp_path / "orig"
    shutil.copytree(root, original)
    want = _counts(original)
    copy = tmp_path / "moved" / "copy"
    shutil.copytree(original, copy)
    # The original gets one more trial: the copy must not see it...
    fake_trial(Layout.open(original), "plain", 9)
    con = duckdb.connect(str(copy / "batchlab.duckdb"), read_only=True)
    assert dict(zip(TABLES, con.sql(COUNTS_SQL).fetchall()[0], strict=True)) == want
    con.close()
    # ... and once the original is gone the copy still answers, in every client.
    shutil.rmtree(original)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for version, binary in CLIS.items():
        got = _cli(binary, copy / "batchlab.duckdb", COUNTS_SQL, elsewhere)
        assert got == [{t: str(n) for t, n in want.items()}], version
    con = duckdb.connect(str(copy / "batchlab.duckdb"), read_only=True)
    assert dict(zip(TABLES, con.sql(COUNTS_SQL).fetchall()[0], strict=True)) == want
    files = con.sql(
        "SELECT DISTINCT filename FROM read_parquet(batchlab_root() || "
        "'tables/trials/*/*.parquet', filename = true)"
    ).fetchall()
    assert files and all(f.startswith(str(copy)) for (f,) in files)


def test_attached_file_needs_file_search_path(root: Path, tmp_path: Path) -> None:
    """ATTACHed into another session, the file cannot know where it lies: it says so instead
    of reading whatever `tables/` the working directory has; naming the root works."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{root / 'batchlab.duckdb'}' AS w (READ_ONLY)")
    with pytest.raises(duckdb.Error, match="file_search_path"):
        con.sql("SELECT count(*) FROM w.trials").fetchall()
    con.execute(f"SET file_search_path = '{root}'")
    assert con.sql("SELECT count(*) FROM w.trials").fetchall() == [(10,)]


def _folder_rows(root: Path, table: str) -> int:
    """Rows of the table's files (what a folder reader sees), via batchlab's reader rules
    when nothing is shadowed: the `<table>_raw` view."""
    return connect(str(root)).sql(f"SELECT count(*) FROM {table}_raw").fetchall()[0][0]


@pytest.fixture(scope="module")
def quiet_root(tmp_path_factory) -> Path:
    """A root whose folders hold exactly the live rows: per-trial files of one experiment,
    a finished compaction of the other, no superseded parts."""
    path = tmp_path_factory.mktemp("folders") / "root"
    layout = Layout.open(path)
    for i in range(5):
        fake_trial(layout, "a", i)
    for i in range(3):
        fake_trial(layout, "b", i)
    fake_analysis(layout, "a", "an1")
    fake_analysis(layout, "b", "an2")
    compact(layout, experiment="b", grace_s=0)
    return path


@pytest.mark.parametrize(
    "table", ["trials", "epochs", "steps", "layers", "probes", "landscapes", "analyses"]
)
def test_table_folders_read_with_default_options(quiet_root: Path, tmp_path: Path, table) -> None:
    import pandas as pd

    folder = quiet_root / "tables" / table
    n = _folder_rows(quiet_root, table)
    assert n > 0
    exps = sorted(
        connect(str(quiet_root)).sql(f"SELECT DISTINCT experiment FROM {table}_raw").fetchall()
    )
    # pyarrow.dataset (default: no partitioning; `experiment` comes from the files)
    t = pads.dataset(folder).to_table()
    assert t.num_rows == n
    assert sorted({(e,) for e in t.column("experiment").to_pylist()}) == exps
    # pyarrow.parquet.read_table and pandas (hive partitioning, inferred as dictionary)
    assert pq.read_table(folder).num_rows == n
    df = pd.read_parquet(folder)
    assert len(df) == n and sorted({(e,) for e in df["experiment"].astype(str)}) == exps
    # DuckDB with hive partitioning, absolute path from another directory and relative
    # from the root
    other = duckdb.connect()
    q = "SELECT count(*), count(DISTINCT experiment) FROM read_parquet('{}', hive_partitioning = true)"
    assert other.sql(q.format(f"{folder}/*/*.parquet")).fetchall() == [(n, len(exps))]
    cwd = os.getcwd()
    try:
        os.chdir(quiet_root)
        assert duckdb.connect().sql(q.format(f"tables/{table}/*/*.parquet")).fetchall() == [
            (n, len(exps))
        ]
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("table", ["trials", "epochs", "probes"])
def test_table_folders_read_with_polars(quiet_root: Path, table) -> None:
    pl = pytest.importorskip("polars", reason="polars is in the test extras")
    folder = quiet_root / "tables" / table
    n = _folder_rows(quiet_root, table)
    df = pl.read_parquet(folder)
    assert df.height == n
    assert set(df["experiment"].cast(pl.String).to_list()) == {"a", "b"}
    assert pl.scan_parquet(folder).collect().height == n


def test_old_warehouse_files_still_read(tmp_path: Path) -> None:
    """Files written before the partition column was dictionary-encoded (plain strings)
    read together with new ones, in batchlab's views and in batchlab.duckdb."""
    layout = Layout.open(tmp_path / "root")
    fake_trial(layout, "mix", 0)
    fake_trial(layout, "mix", 1)
    for table in ("trials", "epochs"):
        p = layout.table_file(table, "mix", "t000000000000001")
        old = pq.read_table(p)
        old = old.set_column(0, "experiment", old.column("experiment").cast(pa.string()))
        pq.write_table(old, p)  # as batchlab 0.1 wrote it
        assert pq.read_schema(p).field("experiment").type == pa.string()
    assert pq.read_schema(layout.table_file("trials", "mix", "t000000000000000")).field(
        "experiment"
    ).type == pa.dictionary(pa.int32(), pa.string())
    assert _counts(layout.base)["trials"] == 2
    assert _counts(layout.base)["epochs"] == 6
    write_duckdb_file(layout)
    con = duckdb.connect(layout.duckdb_file, read_only=True)
    assert con.sql("SELECT count(*) FROM epochs").fetchall() == [(6,)]
    # A compaction rewrites them in the new form.
    compact(layout, experiment="mix", grace_s=0)
    (part,) = layout.table_files("trials", "mix").parts
    assert pq.read_schema(part.path).field("experiment").type == pa.dictionary(
        pa.int32(), pa.string()
    )
    assert _counts(layout.base)["epochs"] == 6
