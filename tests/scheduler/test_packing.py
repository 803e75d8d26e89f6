"""Trial packs in the scheduler: grouping by shape, sizing, splitting, and a packed grid end
to end on local Ray (spec -> packs -> workers -> Parquet -> DuckDB)."""

from __future__ import annotations

import pytest

from scheduler.packing import (
    CPU_MAX_PACK,
    GPU_MAX_PACK,
    GpuFacts,
    Pack,
    chunk,
    group_by_shape,
    pack_resources,
    pack_size,
    plan_packs,
    split_for_packs,
    trial_threads,
)
from scheduler.runner import run_grid
from scheduler.spec import SpecError, parse_spec
from warehouse.db import connect

GRID = {
    "experiment": "packed",
    "dataset": {"name": "mnist1d", "n_train": 600},
    "model": {"name": "mlp", "hidden": [16]},
    "max_epochs": 2,
    "measure": {"checkpoints": False},
    "grid": {"batch_size": [64, 128], "lr": [0.05, 0.1], "seed": [0, 1]},
    "resources": {"cpus_per_trial": 1, "pack": True, "max_pack_size": 4},
}


def _trials(**grid):
    return parse_spec({**GRID, "grid": {**GRID["grid"], **grid}}).trials()


def test_groups_follow_the_shape_key():
    trials = _trials(momentum=[0.0, 0.9], batchnorm=[False, True])
    groups = group_by_shape(trials)
    # batch size and batchnorm change shapes; lr, seed and momentum do not.
    assert len(groups) == 4
    for members in groups.values():
        assert len(members) == 8
        assert len({(t.batch_size, t.model.batchnorm) for t in members}) == 1
    # The optimizer's name is part of the key (Adam keeps two state tensors, SGD one).
    adam = parse_spec({**GRID, "optimizer": "adam"}).trials()
    assert not set(group_by_shape(adam)) & set(group_by_shape(_trials()))


def test_chunks_are_equal_and_cover_the_group():
    trials = _trials(lr=[0.01 * (i + 1) for i in range(25)], batch_size=[64])  # 50 trials
    packs = chunk(trials, 16)
    assert [len(p) for p in packs] == [13, 13, 12, 12]
    assert [t.trial_id for p in packs for t in p.trials] == [t.trial_id for t in trials]
    assert len({p.pack_id for p in packs}) == 4
    with pytest.raises(ValueError, match="max_size"):
        chunk(trials, 0)


def test_halves_and_pack_ids():
    p = Pack(tuple(_trials(batch_size=[64])))
    a, b = p.halves()
    ids = [t.trial_id for t in p.trials]
    assert (len(a), len(b)) == (2, 2) and [t.trial_id for t in a.trials + b.trials] == ids
    assert len({p.pack_id, a.pack_id, b.pack_id}) == 3
    assert Pack(tuple(reversed(p.trials))).pack_id == p.pack_id  # order does not matter
    with pytest.raises(ValueError, match="cannot be split"):
        Pack(a.trials[:1]).halves()


def test_pack_size_from_measured_memory_and_caps():
    trials = _trials(lr=[0.01 * (i + 1) for i in range(50)], batch_size=[64])  # 100 trials
    assert pack_size(trials, "cpu", None, None) == CPU_MAX_PACK
    assert pack_size(trials, "cuda", None, None) == GPU_MAX_PACK
    assert pack_size(trials, "cpu", 3, None) == 3
    assert pack_size(trials[:5], "cuda", None, None) == 5
    gib = 2**30
    key, dataset = trials[0].shape_key(), trials[0].dataset.model_dump_json()
    gpu = GpuFacts(free_bytes=10 * gib, total_bytes=16 * gib, data_bytes={dataset: gib},
                   members={key: (gib // 4, gib // 2)})  # fmt: skip
    # 0.85 * 10 GiB - 1 GiB data - 0.5 GiB fixed - ~0.6 GiB context = 6.4 GiB -> 25 members
    assert pack_size(trials, "cuda", None, gpu) == 25
    assert pack_size(trials, "cuda", 10, gpu) == 10
    # A pack asks Ray for the larger of its per-trial share and its memory share, <= 1 GPU.
    p10 = Pack(tuple(trials[:10]))
    assert pack_resources(p10, 1.0, 0.01, "cuda", None)[1] == pytest.approx(0.1)
    cpus, gpus = pack_resources(p10, 1.0, 0.01, "cuda", gpu)
    assert cpus == 1.0 and 0.3 < gpus < 0.4  # (1 + 0.5 + 2.5 GiB + context) / (0.85 * 16)
    assert pack_resources(Pack(tuple(trials[:64])), 1.0, 0.1, "cuda", gpu)[1] == 1.0
    # On CPU a pack asks for cpus_per_trial: its threads (trial_threads), whatever its size.
    assert pack_resources(Pack(tuple(trials[:4])), 1.0, 0.0, "cpu", None) == (1.0, 0.0)
    plan = plan_packs(_trials(), "cpu", 2, None)
    assert [len(p) for p in plan] == [2, 2, 2, 2] and plan[0].trials[0].batch_size == 64


def test_cpu_pack_threads_depend_on_cpus_per_trial_only():
    """On CPU a pack asks Ray for cpus_per_trial CPUs and trains with trial_threads of them,
    whatever its size or the number of packs beside it (issue 24: threads set by the
    cluster's CPUs over the packs made a trial's numbers depend on the grid it ran in)."""
    for n in (1, 2, 8):
        p = Pack(tuple(_trials(lr=[0.01, 0.02, 0.05, 0.1])[:n]))
        assert pack_resources(p, 1.0, 0.0, "cpu", None) == (1.0, 0.0)
        assert pack_resources(p, 2.0, 0.0, "cpu", None) == (2.0, 0.0)
    assert [trial_threads(c) for c in (0.25, 1.0, 1.5, 2.0, 4.0)] == [1, 1, 1, 2, 4]


def test_auto_packs_only_groups_a_pack_can_train(monkeypatch):
    """`pack: auto` (the default): groups of >= 2 trials packed; a group of one, data-parallel
    trials, the user's own loop and step-level fault injection train alone."""
    assert parse_spec({k: v for k, v in GRID.items() if k != "resources"}).resources.pack == "auto"
    trials = _trials(batch_size=[64, 128], seed=[0])  # 2 groups of 2 (lr 0.05 / 0.1)
    packed, lone = split_for_packs(trials, "auto")
    assert len(packed) == 4 and lone == []
    single = trials[:3]  # the bs-128 group is down to one trial
    packed, lone = split_for_packs(single, "auto")
    assert [t.batch_size for t in packed] == [64, 64] and [t.batch_size for t in lone] == [128]
    assert split_for_packs(single, True) == (single, [])
    assert split_for_packs(single, False) == ([], single)
    dp = [t.model_copy(update={"data_parallel_workers": 2}) for t in trials[:2]]
    own = [t.model_copy(update={"trainable": "./loop.py:train"}) for t in trials[2:]]
    assert split_for_packs(dp + own, "auto") == ([], dp + own)
    assert split_for_packs(dp, True) == ([], dp)
    monkeypatch.setenv("BATCHLAB_FAULT_PLAN", '{"ab": {"NONFINITE_AT_STEP": "3"}}')
    assert split_for_packs(trials, "auto") == ([], trials)
    monkeypatch.setenv("BATCHLAB_FAULT_PLAN", '{"ab": {"KILL_AT_EPOCH": "2"}}')  # packs hook it
    assert len(split_for_packs(trials, "auto")[0]) == 4


def test_pack_settings_are_validated():
    with pytest.raises(SpecError, match="pack"):
        parse_spec({**GRID, "resources": {"pack": "sometimes"}})
    with pytest.raises(SpecError, match="max_pack_size"):
        parse_spec({**GRID, "resources": {"pack": True, "max_pack_size": 0}})
    with pytest.raises(SpecError, match="pack_size"):  # unknown key, with a hint
        parse_spec({**GRID, "resources": {"pack": True, "pack_size": 4}})


@pytest.mark.slow
def test_packed_grid_end_to_end(ray_local, storage):
    """8 trials in 2 packs of 4 through run_grid: exactly one committed row set per trial,
    pack_id / pack_size set, the same rows a lone trial writes; a re-run skips them all."""
    spec = parse_spec(GRID)
    report = run_grid(spec, storage, progress=False)
    assert report.counts == {"completed": 8, "diverged": 0, "failed": 0}, report.results
    con = connect(storage)
    rows = con.execute(
        "SELECT trial_id, pack_id, pack_size, epochs_run, status, batch_size FROM trials"
    ).fetchall()
    assert len(rows) == 8 and len({r[0] for r in rows}) == 8
    assert all(r[2] == 4 and r[3] == 2 and r[4] == "completed" for r in rows)
    by_pack = {}
    for r in rows:
        by_pack.setdefault(r[1], set()).add(r[5])
    assert len(by_pack) == 2 and all(len(bs) == 1 for bs in by_pack.values())
    # One epoch row per trial and epoch, one step row per step, layers for each parameter.
    assert con.execute("SELECT count(*) FROM epochs").fetchone()[0] == 16
    n_steps = con.execute("SELECT sum(steps_run) FROM trials").fetchone()[0]
    assert con.execute("SELECT count(*) FROM steps").fetchone()[0] == n_steps
    assert con.execute("SELECT count(DISTINCT trial_id) FROM layers").fetchone()[0] == 8
    again = run_grid(spec, storage, progress=False)
    assert again.planned == 0 and again.skipped == 8


@pytest.mark.slow
def test_default_resources_pack_groups_of_two_or_more(ray_local, storage):
    """No `pack:` key: a pair of one shape trains as one pack, a lone trial of another shape
    alone (pack_size 1, no pack_id); trial ids are those of `pack: false`."""
    base = {**GRID, "resources": {"cpus_per_trial": 1}}
    pair = parse_spec({**base, "experiment": "auto-pair",
                       "grid": {"batch_size": [64], "lr": [0.05, 0.1], "seed": [0]}})  # fmt: skip
    one = parse_spec({**base, "experiment": "auto-one",
                      "grid": {"batch_size": [128], "lr": [0.05], "seed": [0]}})  # fmt: skip
    off = parse_spec({**base, "experiment": "auto-pair", "resources": {"pack": False},
                      "grid": {"batch_size": [64], "lr": [0.05, 0.1], "seed": [0]}})  # fmt: skip
    assert [t.trial_id for t in pair.trials()] == [t.trial_id for t in off.trials()]
    assert run_grid(pair, storage, progress=False).counts["completed"] == 2
    assert run_grid(one, storage, progress=False).counts["completed"] == 1
    rows = (
        connect(storage)
        .execute("SELECT batch_size, pack_size, pack_id FROM trials ORDER BY batch_size")
        .fetchall()
    )
    assert [(r[0], r[1]) for r in rows] == [(64, 2), (64, 2), (128, 1)]
    assert rows[0][2] and rows[0][2] == rows[1][2] and not rows[2][2]


@pytest.mark.slow
def test_out_of_memory_splits_the_pack(ray_local, storage, monkeypatch):
    """A pack that runs out of GPU memory comes back as two halves (injected OOM for packs
    of more than 2 members: 4 -> 2 + 2), every trial still written once."""
    monkeypatch.setenv("BATCHLAB_FAULT_PACK_OOM_ABOVE", "2")
    spec = parse_spec({**GRID, "experiment": "oom", "grid": {**GRID["grid"], "batch_size": [64]}})
    report = run_grid(spec, storage, progress=False)
    assert report.counts["completed"] == 4, report.results
    rows = connect(storage).execute("SELECT pack_id, pack_size FROM trials").fetchall()
    assert len(rows) == 4 and {r[1] for r in rows} == {2} and len({r[0] for r in rows}) == 2


@pytest.mark.slow
def test_killed_pack_resumes_from_its_members_checkpoints(ray_local, storage, monkeypatch):
    """SIGKILL of a pack's worker at the end of epoch 2: Ray re-runs the task, the members
    resume from their epoch-1 checkpoints, and end where an uninterrupted pack ends."""
    from workers.data import load_dataset
    from workers.pack import run_pack

    grid = {**GRID, "experiment": "killed", "max_epochs": 3,
            "grid": {"batch_size": [64], "lr": [0.05, 0.1], "seed": [0]}}  # fmt: skip
    spec = parse_spec(grid)
    trials = spec.trials()
    reference = run_pack(trials, data=load_dataset(trials[0].dataset))
    monkeypatch.setenv("BATCHLAB_FAULT_KILL_AT_EPOCH", "2")
    report = run_grid(spec, storage, progress=False)
    assert report.counts["completed"] == 2, report.results
    con = connect(storage)
    q = "SELECT trial_id, attempt, resumed_from_epoch, final_val_loss FROM trials"
    rows = {r[0]: r[1:] for r in con.execute(q).fetchall()}
    for ref in reference:
        attempt, resumed, final_val_loss = rows[ref.trial_id]
        assert (attempt, resumed) == (2, 1)
        assert final_val_loss == pytest.approx(ref.summary["final_val_loss"], rel=1e-6)
    assert con.execute("SELECT count(*) FROM epochs").fetchone()[0] == 6


NAN_LOADER = """
import torch

def data():
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(64, 5, generator=g), torch.randn(32, 5, generator=g)
    x[7, 2] = float("nan")
    return x, torch.arange(64) % 4, xv, torch.arange(32) % 4
"""


def test_bad_data_in_a_pack_fails_every_member_with_a_row(ray_local, storage, tmp_path):
    """A pack loads its data set before training: NaN inputs (workers/data_checks.py) used
    to fail the task, so the driver reported the members failed but no `trials` row was
    written. Now each member is committed `failed` with the data check's message, as a lone
    trial on that data is."""
    (tmp_path / "nan.py").write_text(NAN_LOADER)
    axes = {"batch_size": [16], "lr": [0.05, 0.1], "seed": [0]}
    grid = {**GRID, "experiment": "bad-data", "dataset": "./nan.py:data", "grid": axes}
    grid["code_dir"] = str(tmp_path)
    report = run_grid(parse_spec(grid), storage, progress=False)
    assert report.counts == {"completed": 0, "diverged": 0, "failed": 2}, report.results
    assert {r.get("pack_id") for r in report.results} != {None}  # it ran as a pack
    rows = connect(storage).execute("SELECT status, stop_reason, error, pack_size FROM trials")
    rows = rows.fetchall()
    assert len(rows) == 2
    for status, stop_reason, error, size in rows:
        last = error.strip().splitlines()[-1]
        assert (status, stop_reason, size) == ("failed", "error", 2), (status, error)
        assert "BadDataError: dataset.loader './nan.py:data': x_train holds 1 non-finite" in last
    assert all("x_train holds 1 non-finite" in r["error"] for r in report.results)
