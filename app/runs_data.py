"""Run-level data for the Runs, Trial, Compare and Parallel-coordinates pages: the selected
trials with every hyperparameter (the `trials` columns plus the flattened `config_json`),
one trial's rows in every table, its checkpoints, its part in the verdicts. Named queries of
the warehouse (`warehouse.queries.runs`), cached per data version like the others."""

from __future__ import annotations

import math

import pandas as pd

from app.common import query, storage_root
from warehouse import queries as q
from warehouse.layout import Layout
from warehouse.store import list_checkpoints

# Provenance, shown on the Trial page (the lead's custom-trainable columns when present).
PROVENANCE = (
    "trial_id",
    "config_hash",
    "code_version",
    "batchlab_version",
    "torch_version",
    "cuda_version",
    "python_version",
    "ray_version",
    "host",
    "node_id",
    "device",
    "device_name",
    "started_at",
    "finished_at",
    "attempt",
    "resumed_from_epoch",
    "pack_id",
    "pack_size",
    "schema_version",
    "loss",
    "model_factory",
    "dataset_loader",
    "trainable",
    "user_code_hash",
    "user_code_version",
)
# Every per-epoch column a curve can show (the epochs table's numbers).
EPOCH_X = {"epoch": "epoch", "step": "iterations", "examples_seen": "examples", "elapsed_s": "time"}


def runs(f: q.Filters) -> pd.DataFrame:
    """One row per selected trial: every scalar `trials` column and `cfg.*` hyperparameters."""
    return query("runs_table", f)


def varying(df: pd.DataFrame, cols: list[str] | None = None) -> list[str]:
    """Columns with more than one distinct value (NaN counts as a value)."""
    cols = list(df.columns) if cols is None else cols
    out = []
    for c in cols:
        try:
            n = df[c].nunique(dropna=False)
        except TypeError:
            n = df[c].astype(str).nunique()
        if n > 1:
            out.append(c)
    return out


def rows(table: str, trial_ids: list[str]) -> pd.DataFrame:
    """The rows of `table` (epochs, steps, layers, probes) of these trials."""
    return query("trial_rows", table=table, trial_ids=tuple(trial_ids))


def trial(experiment: str, trial_id: str) -> dict:
    """The whole `trials` row of one trial ({} when it is not committed)."""
    got = query("trial_row", experiment=experiment, trial_id=trial_id)
    return got.iloc[0].to_dict() if len(got) else {}


def checkpoints(experiment: str, trial_id: str) -> pd.DataFrame:
    """The trial's checkpoint files (init / final / resume states): name, size, time."""
    files = list_checkpoints(Layout.open(storage_root()), experiment, trial_id)
    return pd.DataFrame(
        [
            {
                "file": c.file,
                "size_mb": round(c.size / 2**20, 3),
                "modified": pd.Timestamp(c.mtime_ns, unit="ns", tz="UTC") if c.mtime_ns else None,
                "path": c.path,
            }
            for c in files
        ],
        columns=["file", "size_mb", "modified", "path"],
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)
    return a == b


def verdict_contributions(verdicts: list, row: dict) -> pd.DataFrame:
    """Every tested group (of every finding) the trial belongs to: its settings equal the
    group's key. The trial's seeds and batch sizes are the group's data."""
    values = {
        **row,
        "batchnorm": bool(row.get("batchnorm")) if row.get("batchnorm") is not None else False,
        "workers": int(row.get("data_parallel_workers") or 1),
    }
    out = []
    for v in verdicts:
        for g in v.groups:
            cols = tuple(getattr(g, "cols", ()) or q.GROUP)
            key = tuple(g.key or ())
            if not key or len(key) > len(cols):
                continue
            if all(_same(values.get(c), k) for c, k in zip(cols, key, strict=False)):
                out.append(
                    {
                        "finding": v.id,
                        "finding verdict": v.verdict,
                        "group": g.group,
                        "group verdict": g.verdict,
                        "statistic": g.statistic,
                        "note": g.note,
                    }
                )
    return pd.DataFrame(
        out,
        columns=["finding", "finding verdict", "group", "group verdict", "statistic", "note"],
    )
