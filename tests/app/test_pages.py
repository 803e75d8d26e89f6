"""Every page of the explorer through Streamlit's AppTest, on the fixture warehouse and on an
empty root: renders without exception, filters change what is shown, the Findings page gives
the right verdicts, the SQL page refuses writes and file access."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.common import PAGES
from app.screens import TITLES
from app.warm import page_test
from warehouse.db import connect
from warehouse.findings import CONTRADICTED, FINDINGS, NOT_ENOUGH, SUPPORTED, VERDICTS, evaluate
from warehouse.queries import Filters

APP = Path(__file__).resolve().parents[2] / "app"
TIMEOUT_S = 120


def open_page(monkeypatch, root: str, page: str) -> AppTest:
    """The whole app (app/main.py) on `root`, showing `page` (a file under app/views/)."""
    monkeypatch.setenv("BATCHLAB_STORAGE", root)
    # page_test: switch_page alone opens the default page for a file whose name is not
    # its url path (timing.py is /time) on the first run.
    url = next(p.url_path for p in PAGES if p.file == page)
    return page_test(url, TIMEOUT_S).run()


def assert_clean(at: AppTest, where: str) -> None:
    assert not at.exception, f"{where}: {[e.value for e in at.exception]}"


def test_page_files_are_registered():
    files = sorted(p.name for p in (APP / "views").glob("*.py") if p.name != "__init__.py")
    assert files == sorted(p.file for p in PAGES)
    assert len({p.url_path for p in PAGES}) == len(PAGES)


@pytest.mark.parametrize("page", [p.file for p in PAGES])
def test_page_renders_on_fixture(monkeypatch, fixture_root, page):
    at = open_page(monkeypatch, fixture_root, page)
    assert_clean(at, page)
    assert at.title, f"{page}: no title"
    url = next(p.url_path for p in PAGES if p.file == page)
    assert at.title[0].value == TITLES[url], f"{page}: another page rendered"
    if page != "sql.py":  # default: every experiment of the warehouse
        assert at.sidebar.multiselect(key="f_experiment").value == [
            "contradict",
            "sparse",
            "support",
        ]


@pytest.mark.parametrize("page", [p.file for p in PAGES])
def test_page_renders_on_empty_root(monkeypatch, empty_root, page):
    at = open_page(monkeypatch, empty_root, page)
    assert_clean(at, page)
    if page == "sql.py":
        assert at.text_area(key="sql_text").value
    else:
        assert any("No trials" in i.value for i in at.info), f"{page}: {[i.value for i in at.info]}"


def _verdicts(at: AppTest) -> dict[str, str]:
    df = at.table[0].value  # the full-text table, indexed by finding id
    return dict(zip(df.index, df["verdict"], strict=True))


def test_findings_page_verdicts(monkeypatch, fixture_root):
    """The page shows, per experiment selected, exactly the verdicts of
    warehouse.findings.evaluate on that selection, and counts them right."""
    at = open_page(monkeypatch, fixture_root, "findings.py")
    con = connect(fixture_root)
    seen = set()
    for experiment in ("support", "contradict", "sparse"):
        at.sidebar.multiselect(key="f_experiment").set_value([experiment]).run()
        assert_clean(at, experiment)
        verdicts = _verdicts(at)
        assert list(verdicts) == [f.id for f in FINDINGS]
        expected = {v.id: v.verdict for v in evaluate(con, Filters(experiment=(experiment,)))}
        assert verdicts == expected, experiment
        metrics = {m.label: m.value for m in at.metric}
        for kind in VERDICTS:
            assert metrics[kind] == str(sum(v == kind for v in verdicts.values())), kind
        seen |= set(verdicts.values())
    # The fixture is built to give both directions somewhere.
    assert {SUPPORTED, CONTRADICTED} <= seen


def test_filters_change_what_is_shown(monkeypatch, fixture_root):
    at = open_page(monkeypatch, fixture_root, "overview.py")
    at.sidebar.multiselect(key="f_experiment").set_value(["contradict"]).run()
    n_contradict = len(at.dataframe[1].value)
    at.sidebar.multiselect(key="f_experiment").set_value(["sparse"]).run()
    assert len(at.dataframe[1].value) == 2  # one seed x two batch sizes
    at.sidebar.multiselect(key="f_experiment").set_value(["support", "contradict"]).run()
    both = at.dataframe[1].value
    assert set(both["experiment"]) == {"support", "contradict"}
    assert len(both) > n_contradict
    # A narrower lr rule selection narrows the table (the selection persists across pages).
    rules = next(w for w in at.sidebar.multiselect if w.label == "lr rule")
    rules.set_value(["linear"]).run()
    assert set(at.dataframe[1].value["lr_scaling"]) == {"linear"}
    at.switch_page("views/generalization.py").run()
    assert_clean(at, "generalization")
    table = at.dataframe[0].value
    assert set(table["lr_scaling"]) == {"linear"} and set(table["experiment"]) == {
        "support",
        "contradict",
    }


def test_findings_page_changes_with_filters(monkeypatch, fixture_root):
    at = open_page(monkeypatch, fixture_root, "findings.py")
    at.sidebar.multiselect(key="f_experiment").set_value(["support"]).run()
    assert _verdicts(at)["F-13"] == SUPPORTED
    # Without the linearly scaled trials nothing can test F-13 (fixed lr vs linear scaling).
    rules = next(w for w in at.sidebar.multiselect if w.label == "lr rule")
    rules.set_value(["none"]).run()
    assert _verdicts(at)["F-13"] == NOT_ENOUGH


def _sql(at: AppTest, text: str) -> AppTest:
    at.text_area(key="sql_text").input(text)
    return at.button(key="sql_run").click().run()


REFUSED = (
    "COPY trials TO '/tmp/batchlab-leak.csv'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "INSTALL httpfs",
    "ATTACH '/tmp/x.duckdb' AS x",
    "SET threads = 64",
    "DROP VIEW trials",
)


def test_sql_page_refuses(monkeypatch, fixture_root):
    at = open_page(monkeypatch, fixture_root, "sql.py")
    for statement in REFUSED:
        _sql(at, statement)
        assert_clean(at, statement)
        assert at.error, f"{statement}: no error shown"
        assert not at.dataframe, statement
        msg = at.error[0].value.lower()
        assert any(w in msg for w in ("refused", "not allowed", "read-only")), msg


def test_sql_page_answers(monkeypatch, fixture_root):
    at = open_page(monkeypatch, fixture_root, "sql.py")
    _sql(at, "SELECT experiment, count(*) AS n FROM trials GROUP BY ALL ORDER BY ALL")
    assert_clean(at, "select")
    assert not at.error
    df = at.dataframe[0].value
    assert df.to_dict("list") == {
        "experiment": ["contradict", "sparse", "support"],
        "n": [48, 2, 48],
    }
    assert at.get("download_button")
    # Examples load into the box.
    at.selectbox(key="sql_example").set_value("Tables and columns").run()
    assert at.text_area(key="sql_text").value == "DESCRIBE epochs"


def test_pages_on_thin_data(monkeypatch, fixture_root):
    """One seed, two batch sizes, no probes or surfaces: every page explains what is missing."""
    at = open_page(monkeypatch, fixture_root, "overview.py")
    at.sidebar.multiselect(key="f_experiment").set_value(["sparse"]).run()
    infos = []
    for page in PAGES:
        at.switch_page(f"views/{page.file}").run()
        assert_clean(at, page.file)
        assert at.sidebar.multiselect(key="f_experiment").value == ["sparse"], page.file
        infos += [i.value for i in at.info]
    assert any("No surfaces" in i for i in infos), infos
    assert any("one worker" in i for i in infos), infos


def test_findings_table_has_every_finding_in_full(monkeypatch, fixture_root):
    at = open_page(monkeypatch, fixture_root, "findings.py")
    table = at.table[0].value
    assert list(table.index) == [f.id for f in FINDINGS]
    assert list(table["claim"]) == [f.claim for f in FINDINGS]  # whole sentences
    assert len(at.expander) >= len(FINDINGS)  # one per finding: rule, figure, groups


def test_url_query_string_selects_and_records_the_view(monkeypatch, fixture_root):
    monkeypatch.setenv("BATCHLAB_STORAGE", fixture_root)
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=TIMEOUT_S)
    at.query_params["experiment"] = ["support", "sparse"]
    at.query_params["seed"] = "0"
    at.switch_page("views/overview.py").run()
    assert_clean(at, "overview")
    assert at.sidebar.multiselect(key="f_experiment").value == ["sparse", "support"]
    trials = at.dataframe[1].value
    assert set(trials["experiment"]) == {"support", "sparse"} and set(trials["seed"]) == {0}
    # A change is written back to the URL (a shareable view).
    at.sidebar.multiselect(key="f_experiment").set_value(["support"]).run()
    assert at.query_params["experiment"] in ("support", ["support"])
    # Every experiment again: the parameter goes (the default needs none).
    at.sidebar.multiselect(key="f_experiment").set_value(["contradict", "sparse", "support"])
    at.run()
    assert "experiment" not in at.query_params


@pytest.mark.parametrize("page", ["findings.py", "curves.py", "overview.py"])
def test_cleared_filter_selects_nothing(monkeypatch, fixture_root, page):
    at = open_page(monkeypatch, fixture_root, page)
    at.sidebar.multiselect(key="f_experiment").set_value([]).run()
    assert_clean(at, page)
    assert any("Nothing selected" in w.value for w in at.warning), [w.value for w in at.warning]
    assert not at.dataframe and not at.table and not at.get("vega_lite_chart")
    # Reset selects everything again.
    at.sidebar.button(key="f_reset").click().run()
    assert len(at.sidebar.multiselect(key="f_experiment").value) == 3


def test_demo_defaults_match_the_committed_report(monkeypatch):
    """The default selection is the whole warehouse: the Findings page's counts are the
    committed REPORT.md's (the issue: the first experiment alone gave 5/4/13)."""
    demo = APP.parent / "examples" / "results"
    line = next(
        ln for ln in (demo / "REPORT.md").read_text().splitlines() if "findings judged" in ln
    )
    want = {
        m.group(2): m.group(1)
        for m in re.finditer(r"(\d+) (supported|contradicted|not enough data)", line)
    }
    at = open_page(monkeypatch, str(demo), "findings.py")
    assert_clean(at, "findings")
    got = {m.label: m.value for m in at.metric}
    assert {k: got[k] for k in want} == want
    at.switch_page("views/sharpness.py").run()
    assert_clean(at, "sharpness")
    assert not any("No Keskar" in i.value for i in at.info)
