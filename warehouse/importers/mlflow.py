"""`batchlab import mlflow STORE`: MLflow runs, read through the mlflow client.

STORE is a local tracking folder (`mlruns/`, the file store: read with
`MLFLOW_ALLOW_FILE_STORE=true`, which MLflow 3 asks for), a SQLite file (`mlflow.db`) or a
tracking URI (`sqlite:///...`, `file:///...`). Every run of every experiment in it is a
trial, keyed `<experiment name>/<run id>`; runs still RUNNING are left out (import again
once they end: unchanged runs are not rewritten). A run's params are its hyperparameters
(batch size, lr, seed by their common names, or `--map`), its user tags (not `mlflow.*`)
join them as `tag.<name>`; FAILED / KILLED runs are `failed`.

Epochs: when the run logged an `epoch` metric, each metric value belongs to the epoch
logged at (or last before) its step, the last value of an epoch wins; otherwise every step
is an epoch (steps from 0 count as epochs from 1). Each metric's whole history is read
(`get_metric_history`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from warehouse.importers import SourceTrial, timestamp
from warehouse.importers.reading import ImportError_

EPOCH_METRIC = "epoch"


def tracking_uri(path: str | Path) -> str:
    """The mlflow tracking URI of a folder, a SQLite file or a URI."""
    text = str(path)
    if "://" in text or text.startswith("file:"):
        return text
    p = Path(text).resolve()
    if p.is_dir():
        return p.as_uri()
    if p.is_file():
        return f"sqlite:///{p}"
    raise ImportError_(f"{text}: no such MLflow store (give mlruns/, mlflow.db or a URI)")


def client(path: str | Path) -> Any:
    """An `MlflowClient` on the store at `path` (the file store allowed)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise ImportError_(
            "batchlab import mlflow needs the mlflow client: pip install 'batchlab[integrations]'"
        ) from exc
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=tracking_uri(path))


def _epochs(histories: dict[str, list[Any]]) -> list[dict[str, Any]]:
    marks = sorted((m.step, m.value) for m in histories.get(EPOCH_METRIC, []))
    rows: dict[float, dict[str, Any]] = defaultdict(dict)
    for name, hist in histories.items():
        for m in sorted(hist, key=lambda m: (m.step, m.timestamp)):
            if marks:
                at = [e for s, e in marks if s <= m.step]
                epoch = at[-1] if at else marks[0][1]
            else:
                epoch = m.step
            rows[epoch][name] = m.value
            rows[epoch].setdefault("step", m.step)
    out = []
    for epoch in sorted(rows):
        row = rows[epoch]
        row[EPOCH_METRIC] = epoch
        if not marks:
            row.pop("step", None)
        out.append(row)
    if out and not marks and out[0][EPOCH_METRIC] == 0:
        for r in out:
            r[EPOCH_METRIC] += 1
    return out


def read(path: str | Path) -> list[SourceTrial]:
    """Every ended run of the store at `path`."""
    c = client(path)
    trials = []
    for exp in c.search_experiments():
        for run in c.search_runs([exp.experiment_id], max_results=50_000):
            info, data = run.info, run.data
            if info.status in ("RUNNING", "SCHEDULED"):
                continue
            params: dict[str, Any] = dict(data.params)
            params |= {f"tag.{k}": v for k, v in data.tags.items() if not k.startswith("mlflow.")}
            hist = {k: c.get_metric_history(info.run_id, k) for k in data.metrics}
            end = info.end_time / 1000 if info.end_time else None
            start = info.start_time / 1000 if info.start_time else None
            meta = {
                "started_at": timestamp(start),
                "finished_at": timestamp(end),
                "wall_time_s": end - start if end and start else None,
                "error": None if info.status == "FINISHED" else f"mlflow run {info.status}",
                "file": f"{tracking_uri(path)}#{info.run_id}",
            }
            trials.append(SourceTrial(f"{exp.name}/{info.run_id}", params, _epochs(hist), meta))
    return trials


def default_experiment(path: str | Path) -> str:
    p = Path(str(path).split("://", 1)[-1])
    return p.stem if p.suffix else p.resolve().name


# ---- export: a batchlab study into MLflow ---------------------------------------------

TRIAL_PARAMS = (
    "dataset",
    "model",
    "optimizer",
    "momentum",
    "batch_size",
    "lr",
    "scaled_lr",
    "lr_scaling",
    "base_batch_size",
    "seed",
    "max_epochs",
    "loss",
)
EPOCH_METRICS = (
    "train_loss",
    "train_loss_eval",
    "train_acc_eval",
    "val_loss",
    "val_acc",
    "lr",
    "dist_from_init",
    "epoch_distance",
    "epoch_time_s",
    "examples_per_s",
    "update_norm_median",
    "grad_norm_median",
)
SUMMARY_METRICS = ("best_val_loss", "best_val_acc", "final_dist_from_init", "train_time_s")
_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}


def _finite(v: Any) -> bool:
    return (
        isinstance(v, int | float) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
    )


def export_mlflow(root: Any, uri: str | Path, experiments: list[str] | None = None) -> str:
    """Every committed trial under `root` (only `experiments` when given) as an MLflow run
    in the store at `uri` (folder, SQLite file or URI): experiment = the batchlab
    experiment, run name = trial id, params = the config columns and `params_json`'s free
    axes, metrics = the epochs' columns at step = epoch plus the summary, tags
    `batchlab.trial_id`, `batchlab.config_hash`, `batchlab.status`, `batchlab.stop_reason`.
    A trial already exported with the same config hash and status is skipped; a changed
    one replaces its run. Returns a one-line summary."""
    import json

    from mlflow.entities import Metric, Param

    from warehouse.db import connect

    c = client(uri) if "://" in str(uri) or Path(str(uri)).exists() else None
    if c is None:  # a new local folder: the file store, created by mlflow
        Path(str(uri)).mkdir(parents=True)
        c = client(uri)
    con = connect(root)
    where = ""
    if experiments:
        where = "WHERE experiment IN (" + ", ".join("?" for _ in experiments) + ")"
    cur = con.execute(
        f"SELECT * FROM trials {where} ORDER BY experiment, trial_id", experiments or []
    )
    names = [d[0] for d in cur.description]
    trials = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    written = skipped = 0
    for t in trials:
        exp = c.get_experiment_by_name(t["experiment"])
        exp_id = exp.experiment_id if exp else c.create_experiment(t["experiment"])
        old = c.search_runs([exp_id], f"tags.`batchlab.trial_id` = '{t['trial_id']}'")
        if any(
            r.data.tags.get("batchlab.config_hash") == t["config_hash"]
            and r.data.tags.get("batchlab.status") == t["status"]
            for r in old
        ):
            skipped += 1
            continue
        for r in old:
            c.delete_run(r.info.run_id)
        tags = {
            "batchlab.trial_id": t["trial_id"],
            "batchlab.config_hash": t["config_hash"],
            "batchlab.status": t["status"],
            "batchlab.stop_reason": t.get("stop_reason") or "",
            "batchlab.code_version": t.get("code_version") or "",
        }
        run = c.create_run(exp_id, run_name=t["trial_id"], tags=tags)
        params = {k: t[k] for k in TRIAL_PARAMS if t.get(k) is not None}
        if t.get("params_json"):
            params |= {f"params.{k}": v for k, v in json.loads(t["params_json"]).items()}
        eps = con.execute(
            "SELECT * FROM epochs WHERE experiment = ? AND trial_id = ? ORDER BY epoch",
            [t["experiment"], t["trial_id"]],
        )
        cols = [d[0] for d in eps.description]
        now = int((t.get("finished_at") or 0) and t["finished_at"].timestamp() * 1000)
        metrics = [
            Metric(k, float(e[k]), now, int(e["epoch"]))
            for e in (dict(zip(cols, r, strict=True)) for r in eps.fetchall())
            for k in EPOCH_METRICS
            if k in e and _finite(e[k])
        ]
        metrics += [Metric(k, float(t[k]), now, 0) for k in SUMMARY_METRICS if _finite(t.get(k))]
        ps = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(ps), 100):  # MLflow's limits per batch: 100 params
            c.log_batch(run.info.run_id, params=ps[i : i + 100])
        for i in range(0, len(metrics), 1000):  # ... and 1000 metrics
            c.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
        c.set_terminated(run.info.run_id, _STATUS.get(t["status"], "FINISHED"))
        written += 1
    return f"exported {written} trials to MLflow at {tracking_uri(uri)} ({skipped} unchanged)"
