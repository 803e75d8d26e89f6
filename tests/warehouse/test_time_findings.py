"""F-3, F-5, F-14 on packed trials: with a lone timing probe for every batch size of a group
they are judged on the probe's seconds (s/step x steps) and say so; without it, on the
trials' own times (a packed trial's being its pack's), and say that.

The warehouse: bs 16 / 64 / 256 x 3 seeds, fixed lr and linear scaling, 4,096 training
examples, every trial packed. The packs' seconds per epoch rise with batch size (1, 2, 4 s);
the probe's seconds per step (0.001 + 1e-5 B) make an epoch shorter the larger the batch
(0.30, 0.10, 0.057 s), and the time to the minimum too (best epoch 2, 3, 4)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from warehouse import findings as fi
from warehouse import queries as q
from warehouse.db import connect
from warehouse.findings.training import LONE, PACKS
from warehouse.layout import Layout
from warehouse.store import write_rows, write_trial

N_TRAIN, EPOCHS = 4096, 8
OWN_EPOCH_S = {16: 1.0, 64: 2.0, 256: 4.0}  # the packs' seconds per epoch: rise with B
BEST_EPOCH = {16: 2, 64: 3, 256: 4}


def s_per_step(b: int) -> float:
    return 0.001 + 1e-5 * b


def _timings(layout: Layout, sizes) -> None:
    for b in sizes:
        row = {
            "experiment": "packs",
            "timing_id": f"t{b}",
            "dataset": "d",
            "model": "m",
            "batchnorm": False,
            "optimizer": "sgd",
            "batch_size": b,
            "s_per_step": s_per_step(b),
            "s_per_step_iqr": 1e-6,
            "s_per_step_all": json.dumps([s_per_step(b)] * 3),
            "repeats": 3,
            "steps": 20,
            "device": "cpu",
            "device_name": "cpu",
            "measured_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        }
        write_rows(layout, "timings", "packs", row["timing_id"], [row])


def build(root: str, timed: tuple[int, ...]) -> str:
    """The warehouse, with a timing probe row for each batch size in `timed`."""
    layout = Layout.open(root)
    _timings(layout, timed)
    for rule in ("none", "linear"):
        for b, per_epoch in OWN_EPOCH_S.items():
            if rule == "linear" and b == 16:
                continue  # the base batch size: the fixed-lr trials serve both rules
            lr = 0.01 * (b / 16 if rule == "linear" else 1.0)
            spe = N_TRAIN // b
            for seed in range(3):
                best = BEST_EPOCH[b] + (seed == 2)
                epochs = [
                    {
                        "epoch": e,
                        "step": e * spe,
                        "train_loss": 1.0 / e,
                        "train_loss_eval": 1.0 / e,
                        "train_acc_eval": 0.9,
                        "val_loss": abs(e - best) + 0.1,
                        "val_acc": 0.9,
                        "epoch_time_s": per_epoch,
                        "elapsed_s": e * per_epoch,
                    }
                    for e in range(1, EPOCHS + 1)
                ]
                tid = f"{rule}-b{b}-s{seed}"
                write_trial(
                    layout,
                    "packs",
                    {
                        "trial_id": tid,
                        "config_hash": tid,
                        "status": "completed",
                        "stop_reason": "target_reached",
                        "dataset": "d",
                        "model": "m",
                        "batchnorm": False,
                        "optimizer": "sgd",
                        "batch_size": b,
                        "lr": 0.01,
                        "scaled_lr": lr,
                        "lr_scaling": rule,
                        "base_batch_size": 16,
                        "seed": seed,
                        "n_train": N_TRAIN,
                        "epochs_run": EPOCHS,
                        "max_epochs": EPOCHS,
                        "steps_run": EPOCHS * spe,
                        "best_epoch": best,
                        "best_val_loss": 0.1,
                        "train_time_s": EPOCHS * per_epoch,
                        "pack_size": 4,
                        "device_name": "cpu",
                    },
                    {"epochs": epochs},
                )
    return root


def _verdicts(root: str) -> dict[str, fi.Verdict]:
    con = connect(root)
    try:
        return {v.id: v for v in fi.evaluate(con, q.Filters()) if v.id in ("F-3", "F-5", "F-14")}
    finally:
        con.close()


@pytest.mark.parametrize("timed", [(16, 64, 256), (16, 64), ()], ids=["all", "some", "none"])
def test_time_findings_follow_the_lone_timings_and_say_so(tmp_path, timed):
    """Every batch size timed: the probe; one not timed, or none: the trials' own."""
    v = _verdicts(build(str(tmp_path / "runs"), timed))
    timings = len(timed) == len(OWN_EPOCH_S)
    # probe: shorter epochs and less time to the minimum the larger the batch;
    # the packs' own seconds: the opposite
    want = (
        {"F-3": "supported", "F-5": "contradicted", "F-14": "supported"}
        if timings
        else {"F-3": "contradicted", "F-5": "supported", "F-14": "contradicted"}
    )
    said, other = (LONE, PACKS) if timings else (PACKS, LONE)
    for fid, verdict in want.items():
        detail = "\n".join(f"{r.verdict}: {r.group}: {r.statistic}" for r in v[fid].groups)
        assert v[fid].verdict == verdict, f"{fid}: {v[fid].verdict}, want {verdict}\n{detail}"
        judged = [r for r in v[fid].groups if r.parts]
        assert judged and all(f"({said})" in r.statistic for r in judged), detail
        assert not any(other in r.statistic for r in v[fid].groups), detail
