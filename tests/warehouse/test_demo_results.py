"""The committed demo warehouse (examples/results): intact, opens in the app, and its
REPORT.md is exactly what `batchlab report` generates from it."""

from __future__ import annotations

import shutil
from pathlib import Path

from streamlit.testing.v1 import AppTest

from warehouse.check import check_warehouse
from warehouse.report import render_report

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "results"


def _copy(tmp_path) -> str:
    # Work on a copy: opening a root may write its DuckDB file or clean temporaries.
    dst = tmp_path / "results"
    shutil.copytree(DEMO, dst)
    return str(dst)


def test_demo_warehouse_passes_integrity_checks(tmp_path):
    assert check_warehouse(_copy(tmp_path), deep=True) == []


def test_report_matches_the_committed_file(tmp_path):
    expected = (DEMO / "REPORT.md").read_text()
    got = render_report(_copy(tmp_path))
    assert got == expected, (
        "examples/results/REPORT.md is stale; regenerate it with "
        "`batchlab report --storage examples/results --output examples/results/REPORT.md`"
    )


def test_demo_opens_in_the_app(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHLAB_STORAGE", _copy(tmp_path))
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    # The Findings page (the default) leads with the verdicts (a table or a dataframe).
    shown = [t.value for t in (*at.table, *at.dataframe)]
    table = next(t for t in shown if "verdict" in t.columns)
    table = table.reset_index() if "id" not in table.columns else table
    report = (DEMO / "REPORT.md").read_text()
    # The "## Verdicts" table (later sections have per-measure rows starting "| F-" too).
    verdicts = report.split("\n## Verdicts", 1)[1].split("\n## ", 1)[0]
    assert len(table) == verdicts.count("\n| F-")
    for row in table.itertuples():
        assert f"| {row.id} |" in report, row.id
        line = next(x for x in report.splitlines() if x.startswith(f"| {row.id} |"))
        assert f"**{row.verdict}**" in line, (row.id, row.verdict)
