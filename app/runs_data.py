"""Run-level data for the Runs, Trial, Compare and Parallel-coordinates pages: the selected
trials with every hyperparameter (the `trials` columns plus the flattened `config_json`),
one trial's rows in every table, its checkpoints, its part in the verdicts. Read-only SQL
over the warehouse views, cached per data version like the named queries."""

from __future__ import annotations

import json
import math

import pandas as pd
import pyarrow.fs as pafs
import streamlit as st

from app.common import _connection, storage_root, version
from app.disk_cache import persisted
from warehouse import queries as q
from warehouse.layout import Layout
from warehouse.schemas import SCHEMAS

# Columns of `trials` the runs table leaves out: long texts and lists (on the Trial page).
_HIDDEN = ("config_json", "error")
# Provenance, shown on the Trial page (the lead's custom-trainable columns when present).
PROVENANCE = (
    "trial_id", "config_hash", "code_version", "batchlab_version", "torch_version",
    "cuda_version", "python_version", "ray_version", "host", "node_id", "device",
    "device_name", "started_at", "finished_at", "attempt", "resumed_from_epoch", "pack_id",
    "pack_size", "schema_version", "loss", "model_factory", "dataset_loader", "trainable",
    "user_code_hash", "user_code_version",
)  # fmt: skip
# Every per-epoch column a curve can show (the epochs table's numbers).
EPOCH_X = {"epoch": "epoch", "step": "iterations", "examples_seen": "examples", "elapsed_s": "time"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out: dict = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, f"{name}.")
        elif isinstance(v, list):
            out[name] = json.dumps(v)
        else:
            out[name] = v
    return out


def _config_columns(configs: pd.Series) -> pd.DataFrame:
    """`cfg.<key>` for every key of the resolved configs (nested keys joined with dots)."""
    rows = []
    for text in configs:
        try:
            rows.append(_flatten(json.loads(text)) if isinstance(text, str) and text else {})
        except ValueError:
            rows.append({})
    df = pd.DataFrame(rows, index=configs.index)
    return df.rename(columns=lambda c: f"cfg.{c}")


@st.cache_data(max_entries=64, show_spinner=False)
@persisted
def _runs(root: str, v: str, f: q.Filters) -> pd.DataFrame:
    cond, params = f.where("t")
    scalar = [
        fld.name
        for fld in SCHEMAS["trials"]
        if fld.name not in _HIDDEN and not str(fld.type).startswith("list")
    ]
    cols = ", ".join(f"t.{c}" for c in [*scalar, "config_json"])
    df = (
        _connection(root, v)
        .cursor()
        .execute(
            f"SELECT {cols} FROM trials t WHERE {cond} "
            "ORDER BY t.experiment, t.batch_size, t.lr, t.lr_scaling, t.seed, t.trial_id",
            params,
        )
        .fetchdf()
    )
    cfg = _config_columns(df.pop("config_json"))
    # Config keys that repeat a trials column (cfg.batch_size) add nothing: keep the rest.
    dup = [c for c in cfg.columns if c[4:] in df.columns]
    return pd.concat([df, cfg.drop(columns=dup)], axis=1)


def runs(f: q.Filters) -> pd.DataFrame:
    """One row per selected trial: every scalar `trials` column and `cfg.*` hyperparameters."""
    return _runs(storage_root(), version(), f)


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


@st.cache_data(max_entries=256, show_spinner=False)
@persisted
def _table(root: str, v: str, table: str, trial_ids: tuple[str, ...]) -> pd.DataFrame:
    order = {"epochs": "epoch", "steps": "step", "layers": "epoch, layer", "probes": "epoch"}
    return (
        _connection(root, v)
        .cursor()
        .execute(
            f"SELECT * FROM {table} WHERE trial_id IN (SELECT unnest($ids)) "
            f"ORDER BY trial_id, {order.get(table, 'trial_id')}",
            {"ids": list(trial_ids)},
        )
        .fetchdf()
    )


def rows(table: str, trial_ids: list[str]) -> pd.DataFrame:
    """The rows of `table` (epochs, steps, layers, probes) of these trials."""
    return _table(storage_root(), version(), table, tuple(trial_ids))


@st.cache_data(max_entries=256, show_spinner=False)
@persisted
def _trial(root: str, v: str, experiment: str, trial_id: str) -> dict:
    got = (
        _connection(root, v)
        .cursor()
        .execute(
            "SELECT * FROM trials WHERE experiment = $e AND trial_id = $t",
            {"e": experiment, "t": trial_id},
        )
        .fetchdf()
    )
    return got.iloc[0].to_dict() if len(got) else {}


def trial(experiment: str, trial_id: str) -> dict:
    """The whole `trials` row of one trial ({} when it is not committed)."""
    return _trial(storage_root(), version(), experiment, trial_id)


def checkpoints(experiment: str, trial_id: str) -> pd.DataFrame:
    """The trial's checkpoint files (init / final / resume states): name, size, time."""
    layout = Layout.open(storage_root())
    base = layout.checkpoint_dir(experiment, trial_id)
    sel = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    infos = [i for i in layout.fs.get_file_info(sel) if i.type == pafs.FileType.File]
    return pd.DataFrame(
        [
            {
                "file": i.path[len(base) :].lstrip("/"),
                "size_mb": round((i.size or 0) / 2**20, 3),
                "modified": pd.Timestamp(i.mtime_ns, unit="ns", tz="UTC") if i.mtime_ns else None,
                "path": i.path,
            }
            for i in sorted(infos, key=lambda i: i.path)
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
