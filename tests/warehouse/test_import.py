"""`batchlab import`: studies made by the real Ray Tune (a tiny `tune.run` on local Ray) and a
real `torch.utils.tensorboard.SummaryWriter`, and a CSV sweep export, into warehouse rows
that the queries and the verdicts read; idempotent; unavailable measurements NULL."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from batchlab.cli import main
from warehouse import findings as fnd
from warehouse import queries as q
from warehouse.db import connect
from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS

BATCH_SIZES = (16, 64, 256)
SEEDS = (0, 1)
EPOCHS = 3


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _softmax_regression(batch_size: int, lr: float, seed: int):
    """A real (tiny) training run: minibatch SGD of softmax regression on sklearn digits;
    yields per-epoch (train_loss, val_loss, val_acc, train_acc)."""
    xt, yt, xv, yv = _digits()
    rng = np.random.default_rng(seed)
    w = np.zeros((64, 10))

    def loss_acc(x, y):
        z = x @ w
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        return float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean()), float(
            (p.argmax(1) == y).mean()
        )

    for _ in range(EPOCHS):
        order = rng.permutation(len(yt))
        for i in range(0, len(order), batch_size):
            b = order[i : i + batch_size]
            z = xt[b] @ w
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(b)), yt[b]] -= 1
            w -= lr * xt[b].T @ p / len(b)
        tl, ta = loss_acc(xt, yt)
        vl, va = loss_acc(xv, yv)
        yield tl, vl, va, ta


def _ray_trainable(config):
    from ray import tune

    for epoch, (tl, vl, va, ta) in enumerate(
        _softmax_regression(config["batch_size"], config["lr"], config["seed"]), 1
    ):
        tune.report(
            {"epoch": epoch, "train_loss": tl, "val_loss": vl, "val_acc": va, "train_acc": ta}
        )


@pytest.fixture(scope="module")
def ray_tune_dir(ray_local, tmp_path_factory) -> Path:
    """A Ray Tune result folder made by the real tune.run: 3 batch sizes x 2 seeds."""
    import sys

    from ray import cloudpickle, tune

    # The trainable lives in this test module, which Ray's workers cannot import by name.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path_factory.mktemp("tune")
    tune.run(
        _ray_trainable,
        config={
            "batch_size": tune.grid_search(list(BATCH_SIZES)),
            "lr": 0.5,
            "seed": tune.grid_search(list(SEEDS)),
        },
        storage_path=str(out),
        name="bs_sweep",
        verbose=0,
    )
    return out / "bs_sweep"


def _failing_trainable(config):
    from ray import tune

    tune.report({"epoch": 1, "train_loss": 2.0, "val_loss": 2.1})
    raise RuntimeError(f"out of luck at batch size {config['batch_size']}")


def test_import_ray_tune_failed_trial(ray_tune_dir, tmp_path, capsys) -> None:
    """A trial that raised: Ray Tune writes error.txt; imported as failed, with the error
    and the epochs it reported, and the import itself succeeds."""
    from ray import tune

    tune.run(
        _failing_trainable,
        config={"batch_size": 8, "lr": 0.1},
        storage_path=str(tmp_path / "tune"),
        name="crashy",
        verbose=0,
        raise_on_failed_trial=False,
    )
    (err,) = (tmp_path / "tune" / "crashy").rglob("error.txt")
    root = tmp_path / "runs"
    assert (
        main(["import", "ray-tune", str(tmp_path / "tune" / "crashy"), "--storage", str(root)]) == 0
    )
    row = (
        connect(str(root))
        .sql("SELECT status, stop_reason, error, epochs_run, final_val_loss FROM trials")
        .fetchall()
    )
    assert len(row) == 1
    status, reason, error, epochs, final = row[0]
    assert (status, reason, epochs, final) == ("failed", "error", 1, 2.1)
    assert "out of luck at batch size 8" in error and error == err.read_text().strip()


def _results(tune_dir: Path) -> dict[tuple[int, int], list[dict]]:
    out = {}
    for rj in tune_dir.rglob("result.json"):
        rows = [json.loads(line) for line in rj.read_text().splitlines() if line.strip()]
        cfg = json.loads((rj.parent / "params.json").read_text())
        out[(cfg["batch_size"], cfg["seed"])] = rows
    return out


def _files(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (root / "tables").rglob("*.parquet")}


def test_import_ray_tune(ray_tune_dir, tmp_path, capsys) -> None:
    root = tmp_path / "runs"
    assert main(["import", "ray-tune", str(ray_tune_dir), "--storage", str(root)]) == 0
    assert "imported 6 trials from ray-tune into experiment 'bs_sweep'" in capsys.readouterr().out
    con = connect(str(root))
    trials = con.sql(
        "SELECT batch_size, seed, lr, status, code_version, epochs_run, best_val_loss, "
        "best_epoch, final_dist_from_init, train_time_s, wall_time_s, host, config_json "
        "FROM trials ORDER BY batch_size, seed"
    ).fetchdf()
    assert list(zip(trials.batch_size, trials.seed, strict=True)) == [
        (b, s) for b in BATCH_SIZES for s in SEEDS
    ]
    assert set(trials.status) == {"completed"} and set(trials.lr) == {0.5}
    assert set(trials.code_version) == {"import:ray-tune"}
    assert set(trials.epochs_run) == {EPOCHS}
    assert json.loads(trials.config_json[0])["source"] == "ray-tune"
    # The numbers are Ray's, as reported.
    results = _results(ray_tune_dir)
    for _, t in trials.iterrows():
        rows = results[(t.batch_size, t.seed)]
        vls = [r["val_loss"] for r in rows]
        assert t.best_val_loss == min(vls) and t.best_epoch == 1 + vls.index(min(vls))
        assert t.wall_time_s == pytest.approx(rows[-1]["time_total_s"])
        assert t.train_time_s == pytest.approx(sum(r["time_this_iter_s"] for r in rows))
        assert t.host == rows[-1]["hostname"]
        assert t.final_dist_from_init is None or math.isnan(t.final_dist_from_init)
    ep = con.sql(
        "SELECT t.batch_size, t.seed, e.epoch, e.val_loss, e.train_acc_eval, e.dist_from_init "
        "FROM epochs e JOIN trials t USING (experiment, trial_id) ORDER BY 1, 2, 3"
    ).fetchall()
    assert len(ep) == 6 * EPOCHS
    for b, s, e, vl, ta, dist in ep:
        r = results[(b, s)][e - 1]
        assert (vl, ta, dist) == (r["val_loss"], r["train_acc"], None)
    # What needs the weights is not there: no steps, layers or probes rows.
    for table in ("steps", "layers", "probes"):
        assert con.sql(f"SELECT count(*) FROM {table}").fetchall() == [(0,)]

    # Idempotent: the same folder again, or from the folder above, writes nothing.
    before = _files(root)
    assert main(["import", "ray-tune", str(ray_tune_dir), "--storage", str(root)]) == 0
    argv = ["import", "ray-tune", str(ray_tune_dir.parent), "--experiment", "bs_sweep"]
    assert main([*argv, "--storage", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("imported 0 trials") == 2 and "(6 already there, unchanged)" in out
    assert _files(root) == before
    assert connect(str(root)).sql("SELECT count(*) FROM trials").fetchall() == [(6,)]

    # The pages' queries and the loss-only verdicts read them.
    f = q.Filters()
    assert len(q.curves(con, f)) == 3 * EPOCHS
    assert len(q.generalization_by_batch_size(con, f)) == 3
    assert len(q.time_by_batch_size(con, f)) == 3
    assert len(q.lr_batch_table(con, f)) == 3
    verdicts = {v.id: v for v in fnd.evaluate(con, f)}
    for fid in ("F-1", "F-3"):  # at equal epochs / any budget: losses and times suffice
        v = verdicts[fid]
        assert "no data" not in v.statistic and "needs >= 3 batch sizes" not in v.statistic, v
        assert v.groups and all(g.test is not None for g in v.groups), v
    # Sharpness needs the weights: no data, not an invented number.
    assert verdicts["F-11"].statistic == "no data for this test in the selection"


def test_import_tensorboard(tmp_path, capsys) -> None:
    """Runs written by the real SummaryWriter: hyperparameters from add_hparams (written
    into a sub-folder of the run) or from `key=value` run folder names."""
    from torch.utils.tensorboard import SummaryWriter

    logs = tmp_path / "tb_study"
    for b in BATCH_SIZES:
        for s in SEEDS:
            name = f"run-{b}-{s}" if s == 0 else f"batch_size={b},lr=0.5,seed={s}"
            w = SummaryWriter(str(logs / name))
            for epoch, (tl, vl, va, _) in enumerate(_softmax_regression(b, 0.5, s)):
                w.add_scalar("Loss/train", tl, epoch)  # 0-based epochs, as usual
                w.add_scalar("Loss/val", vl, epoch)
                w.add_scalar("Accuracy/val", va, epoch)
                w.add_scalar("grad_scale", 1.0 + epoch, epoch)  # no batchlab column
            if s == 0:
                w.add_hparams({"batch_size": b, "lr": 0.5, "seed": s}, {"hparam/best": vl})
            w.close()
    root = tmp_path / "runs"
    assert main(["import", "tensorboard", str(logs), "--storage", str(root)]) == 0
    assert (
        "imported 6 trials from tensorboard into experiment 'tb_study'" in capsys.readouterr().out
    )
    con = connect(str(root))
    rows = con.sql(
        "SELECT batch_size, seed, lr, epochs_run, code_version, best_val_loss, train_time_s "
        "FROM trials ORDER BY 1, 2"
    ).fetchall()
    assert [(r[0], r[1]) for r in rows] == [(b, s) for b in BATCH_SIZES for s in SEEDS]
    assert {(r[2], r[3], r[4]) for r in rows} == {(0.5, EPOCHS, "import:tensorboard")}
    assert all(r[6] is not None and r[6] >= 0 for r in rows)
    want = {
        (b, s): [vl for _, vl, _, _ in _softmax_regression(b, 0.5, s)]
        for b in BATCH_SIZES
        for s in SEEDS
    }
    got = con.sql(
        "SELECT t.batch_size, t.seed, list(e.val_loss ORDER BY e.epoch), min(e.epoch), "
        "max(e.epoch) FROM epochs e JOIN trials t USING (experiment, trial_id) GROUP BY 1, 2"
    ).fetchall()
    for b, s, vls, lo, hi in got:
        assert (lo, hi) == (1, EPOCHS)
        assert vls == pytest.approx(want[(b, s)], rel=1e-6)  # TensorBoard stores float32
    if "metrics" in SCHEMAS:  # every other numeric scalar, by name
        assert con.sql("SELECT DISTINCT name FROM metrics").fetchall() == [("grad_scale",)]
    assert main(["import", "tensorboard", str(logs), "--storage", str(root)]) == 0
    assert "imported 0 trials" in capsys.readouterr().out
    verdicts = {v.id: v for v in fnd.evaluate(con, q.Filters())}
    assert "needs >= 3 batch sizes" not in verdicts["F-1"].statistic


def test_import_csv_with_a_mapping(tmp_path, capsys) -> None:
    """A W&B-style history export: run name, config columns, per-epoch metrics."""
    path = tmp_path / "wandb_export.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["Name", "mini_batch", "learning_rate", "epoch", "train/loss", "val/loss", "val/acc"]
        )
        for b in BATCH_SIZES:
            for s in SEEDS:
                for e, (tl, vl, va, _) in enumerate(_softmax_regression(b, 0.5, s), 1):
                    w.writerow([f"run-{b}-{s}", b, 0.5, e, tl, vl, va])
    root = tmp_path / "runs"
    base = ["import", "csv", str(path), "--storage", str(root)]
    # Without the mapping the batch size is not found: an error naming the trial and params.
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "no batch_size in its params" in err and "--map batch_size=" in err
    assert not root.exists() or not any((root / "tables").rglob("*.parquet"))
    assert main([*base, "--map", "nosuch=x"]) == 2
    assert "unknown field 'nosuch'" in capsys.readouterr().err
    mapped = [
        *base,
        "--map",
        "batch_size=mini_batch",
        "--map",
        "run=Name",
        "--map",
        "val_loss=val/loss",
    ]
    assert main(mapped) == 0
    assert "imported 6 trials from csv into experiment 'wandb_export'" in capsys.readouterr().out
    con = connect(str(root))
    rows = con.sql(
        "SELECT batch_size, lr, seed, epochs_run, code_version FROM trials ORDER BY 1, 3"
    ).fetchall()
    # No seed column: replicates of one configuration are numbered in run-name order.
    assert rows == [(b, 0.5, s, EPOCHS, "import:csv") for b in BATCH_SIZES for s in SEEDS]
    n = con.sql("SELECT count(*), count(val_loss), count(val_acc) FROM epochs").fetchall()
    assert n == [(18, 18, 18)]
    assert main(mapped) == 0
    assert "imported 0 trials" in capsys.readouterr().out
    assert os.path.exists(Layout.open(root).duckdb_file)


PAGES_ON_IMPORTS = ("curves.py", "generalization.py", "timing.py", "lr_batch.py")


@pytest.mark.parametrize("source", ["ray-tune", "tensorboard"])
def test_imported_study_is_judged_on_the_findings_page(
    source, ray_tune_dir, tmp_path, monkeypatch
) -> None:
    """The acceptance check: a real Ray Tune grid and a real TensorBoard log, imported, are
    judged on the Findings page (Streamlit AppTest), with the verdicts of
    warehouse.findings.evaluate, and the curves/generalization/time/lr x batch pages render."""
    from streamlit.testing.v1 import AppTest

    if source == "ray-tune":
        src = ray_tune_dir
    else:
        from torch.utils.tensorboard import SummaryWriter

        src = tmp_path / "tb"
        for b in BATCH_SIZES:
            for s in SEEDS:
                w = SummaryWriter(str(src / f"bs={b},lr=0.5,seed={s}"))
                for epoch, (tl, vl, va, _) in enumerate(_softmax_regression(b, 0.5, s)):
                    w.add_scalar("loss/train", tl, epoch)
                    w.add_scalar("loss/val", vl, epoch)
                    w.add_scalar("accuracy/val", va, epoch)
                w.close()
    root = tmp_path / "runs"
    assert main(["import", source, str(src), "--storage", str(root)]) == 0
    app = Path(__file__).resolve().parents[2] / "app" / "main.py"
    monkeypatch.setenv("BATCHLAB_STORAGE", str(root))
    at = AppTest.from_file(str(app), default_timeout=180)
    at.switch_page("views/findings.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    expected = {v.id: v.verdict for v in fnd.evaluate(connect(str(root)), q.Filters())}
    df = at.table[0].value  # the full-text table, indexed by finding id
    assert dict(zip(df.index, df["verdict"], strict=True)) == expected
    for page in PAGES_ON_IMPORTS:
        at.switch_page(f"views/{page}")
        at.run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not any("No trials" in i.value for i in at.info), page
