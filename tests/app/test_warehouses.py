"""Every page renders without an exception (AppTest, no browser) on the warehouses of
tests/fixtures/warehouses.py that the fixture warehouse does not cover: native, custom,
CSV-imported and Ray-Tune-imported studies side by side (the Parallel-coordinates page
raised TypeError on it), and 10,000 trials written as compacted parts."""

from __future__ import annotations

import pytest

from app.common import PAGES
from tests.app.test_pages import assert_clean, open_page


@pytest.mark.parametrize("page", [p.file for p in PAGES])
def test_every_page_renders_on_a_mixed_warehouse(monkeypatch, mixed_root, page):
    at = open_page(monkeypatch, mixed_root, page)
    assert_clean(at, page)


def test_mixed_warehouse_holds_every_kind_of_study(mixed_root):
    from warehouse.db import connect

    con = connect(mixed_root)
    got = dict(
        con.sql("SELECT experiment, any_value(code_version) FROM trials GROUP BY 1").fetchall()
    )
    con.close()
    assert {"support", "custom-model", "custom-train", "wandb_sweep", "tune_sweep"} <= set(got)
    assert got["wandb_sweep"] == "import:csv" and got["tune_sweep"] == "import:ray-tune"


@pytest.mark.slow
@pytest.mark.parametrize("page", ["parallel.py", "landscapes.py", "sharpness.py"])
def test_pages_render_on_ten_thousand_trials(monkeypatch, bench_root, page):
    at = open_page(monkeypatch, bench_root, page)
    assert_clean(at, page)
