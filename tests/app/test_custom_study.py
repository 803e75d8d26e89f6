"""The explorer on a study of user code (issue 14): a trainable with its own metric, a user
model and a user data set, written by the real worker task (scheduler/tasks.execute_trial,
what a Ray task runs); every page renders and the user metric is shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.common import PAGES
from scheduler.spec import load_spec
from scheduler.tasks import execute_trial
from tests.app.test_pages import assert_clean, open_page
from warehouse.db import write_duckdb_file

CUSTOM = Path(__file__).resolve().parents[2] / "examples" / "custom"


@pytest.fixture(scope="module")
def custom_root(tmp_path_factory, data_cache) -> str:
    root = str(tmp_path_factory.mktemp("custom-study") / "runs")
    spec = load_spec(CUSTOM / "train.yaml")
    for cfg in spec.trials()[:2]:  # batch sizes 32 and 256, momentum 0
        cfg = cfg.model_copy(update={"max_epochs": 2})
        rec = execute_trial(
            cfg.model_dump_json(),
            spec.experiment,
            root,
            code_version="test",
            code_dir=spec.code_dir,
        )
        assert rec["status"] == "completed", rec
    write_duckdb_file(root)
    return root


@pytest.mark.parametrize("page", [p.file for p in PAGES])
def test_every_page_renders_on_a_custom_study(monkeypatch, custom_root, page):
    at = open_page(monkeypatch, custom_root, page)
    assert_clean(at, page)


def test_user_metric_is_plotted_on_the_curves_page(monkeypatch, custom_root):
    at = open_page(monkeypatch, custom_root, "curves.py")
    assert "User-defined metrics" in [h.value for h in at.header]
    (pick,) = [m for m in at.multiselect if m.label == "metrics"]
    assert pick.options == ["weight_norm"] and pick.value == ["weight_norm"]
