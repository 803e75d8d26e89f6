"""A lone trial that runs out of device memory: recorded as `failed` with the reason
"out of memory", its resume checkpoint kept, the grid goes on; the next run resumes it.

There is no GPU here: `BATCHLAB_FAULT_OOM_AT_EPOCH` raises the very exception a CUDA
allocation failure raises (`torch.cuda.OutOfMemoryError`) at the end of an epoch, where
`run_trial` lets it through on purpose (packs are split on it; see the pack tests in
tests/scheduler/test_packing.py for "retried smaller").
"""

from __future__ import annotations

import json

import pytest
import torch

from scheduler.runner import plan, run_grid
from scheduler.spec import parse_spec
from scheduler.tasks import execute_trial
from tests.reliability.helpers import assert_readers_see_only_committed, tiny_grid
from warehouse.db import connect
from warehouse.layout import Layout

OOM_LINE = "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB"


def _execute(cfg, root: str) -> dict:
    threads = torch.get_num_threads()
    try:
        return execute_trial(
            cfg.model_dump_json(), "oom", root, code_version="t", device="cpu", num_threads=1
        )
    finally:
        torch.set_num_threads(threads)


def _epochs(root: str, trial_id: str) -> list[tuple]:
    return (
        connect(root)
        .execute(
            "SELECT epoch, train_loss, val_loss, dist_from_init FROM epochs WHERE trial_id = ? "
            "ORDER BY epoch",
            [trial_id],
        )
        .fetchall()
    )


def test_out_of_memory_is_recorded_as_failed_with_the_reason_and_resumes_next_run(
    tmp_path, monkeypatch
):
    cfg = parse_spec(tiny_grid("oom", [0], max_epochs=3)).trials()[0]
    ref_root, root = str(tmp_path / "ref"), str(tmp_path / "runs")
    _execute(cfg, ref_root)

    monkeypatch.setenv("BATCHLAB_FAULT_OOM_AT_EPOCH", "2")
    rec = _execute(cfg, root)
    assert rec["status"] == "failed" and rec["error"].startswith(OOM_LINE), rec
    con = connect(root)
    status, reason, error, attempt = con.execute(
        "SELECT status, stop_reason, error, attempt FROM trials"
    ).fetchone()
    assert (status, reason, attempt) == ("failed", "out_of_memory", 1)
    assert "OutOfMemoryError" in error and error.splitlines()[-1].startswith(OOM_LINE)
    # No partial rows of a failed trial; its epoch-1 resume checkpoint is kept.
    assert con.execute("SELECT count(*) FROM epochs").fetchone()[0] == 0
    layout = Layout.open(root)
    assert layout.exists(layout.checkpoint_file("oom", cfg.trial_id, "resume"))

    monkeypatch.delenv("BATCHLAB_FAULT_OOM_AT_EPOCH")
    rec = _execute(cfg, root)
    assert rec["status"] == "completed" and rec["attempt"] == 2
    row = connect(root).execute("SELECT status, resumed_from_epoch, attempt FROM trials").fetchone()
    assert row == ("completed", 1, 2)
    assert _epochs(root, cfg.trial_id) == _epochs(ref_root, cfg.trial_id)


@pytest.mark.slow
def test_grid_goes_on_past_an_out_of_memory_trial(ray_local, tmp_path, monkeypatch):
    spec = parse_spec(tiny_grid("oom", [0, 1, 2], max_epochs=2))
    victim = spec.trials()[1]
    monkeypatch.setenv("BATCHLAB_FAULT_PLAN", json.dumps({victim.trial_id: {"OOM_AT_EPOCH": "1"}}))
    root = str(tmp_path / "runs")
    report = run_grid(spec, root, progress=False)
    assert report.counts == {"completed": 2, "diverged": 0, "failed": 1}, report.results
    (failed,) = [r for r in report.results if r["status"] == "failed"]
    assert failed["trial_id"] == victim.trial_id
    assert failed["error"].startswith(OOM_LINE) and failed["stop_reason"] == "out_of_memory"
    committed = assert_readers_see_only_committed(root, "oom")
    assert {k: v["status"] for k, v in committed.items()} == {
        t.trial_id: ("failed" if t.trial_id == victim.trial_id else "completed")
        for t in spec.trials()
    }
    # `failed` is not done: the next `batchlab run` tries it again.
    assert [t.trial_id for t in plan(spec, Layout.open(root)).to_run] == [victim.trial_id]
