"""The Running view (issue 15) on a live storage root: a driver and a trial publishing."""

from __future__ import annotations

from tests.app.test_pages import assert_clean, open_page
from warehouse.layout import Layout
from warehouse.live import LiveRun, LiveTrial


def test_running_view_shows_live_trials_and_curves(monkeypatch, tmp_path):
    root = str(tmp_path / "runs")
    layout = Layout.open(root)
    run = LiveRun(
        layout,
        "live-exp",
        "r1",
        [{"trial_id": "t1", "max_epochs": 5}, {"trial_id": "t2", "max_epochs": 5}],
    )
    t = LiveTrial(layout, "live-exp", "t1", max_epochs=5, interval_s=0)
    try:
        for e in (1, 2):
            t.epoch({"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.5 / e, "epoch_time_s": 0.5})
        at = open_page(monkeypatch, root, "running.py")
        assert_clean(at, "running")
        assert [s.value for s in at.subheader] == ["live-exp"]
        (table,) = at.dataframe
        states = dict(zip(table.value["trial"], table.value["state"], strict=True))
        assert states == {"t1": "running", "t2": "queued"}
        assert "driver alive" in at.caption[0].value
        run.mark("t2", "completed")
        run.finish("finished")
        t.close()
        at = open_page(monkeypatch, root, "running.py")
        assert_clean(at, "running finished")
        assert "driver finished" in at.caption[0].value
    finally:
        t.close()


def test_running_view_without_runs(monkeypatch, empty_root):
    at = open_page(monkeypatch, empty_root, "running.py")
    assert_clean(at, "running empty")
    assert "Nothing runs" in at.info[0].value
