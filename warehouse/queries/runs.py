"""The explorer's run-level data (the Runs, Trial, Compare and Parallel-coordinates pages):
the selected trials with every hyperparameter (the `trials` columns plus the flattened
`config_json`), one trial's row, the rows of a few trials in one table, and a few example
runs for the screenshots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from warehouse.queries.base import Filters, fetch
from warehouse.schemas import SCHEMAS

# Columns of `trials` the runs table leaves out: long texts and lists (on the Trial page).
HIDDEN = ("config_json", "error")
# How `trial_rows` orders each table's rows within a trial.
ROW_ORDER = {"epochs": "epoch", "steps": "step", "layers": "epoch, layer", "probes": "epoch"}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level: nested keys joined with dots, lists as JSON text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, f"{name}.")
        elif isinstance(v, list):
            out[name] = json.dumps(v)
        else:
            out[name] = v
    return out


def config_columns(configs: pd.Series) -> pd.DataFrame:
    """`cfg.<key>` for every key of the resolved configs (nested keys joined with dots)."""
    rows = []
    for text in configs:
        try:
            rows.append(flatten(json.loads(text)) if isinstance(text, str) and text else {})
        except ValueError:
            rows.append({})
    df = pd.DataFrame(rows, index=configs.index)
    return df.rename(columns=lambda c: f"cfg.{c}")


def runs_table(con: duckdb.DuckDBPyConnection, f: Filters) -> pd.DataFrame:
    """One row per selected trial: every scalar `trials` column (not `HIDDEN`) and its
    hyperparameters as `cfg.*` columns (config keys that repeat a trials column left out)."""
    cond, params = f.where("t")
    scalar = [
        fld.name
        for fld in SCHEMAS["trials"]
        if fld.name not in HIDDEN and not str(fld.type).startswith("list")
    ]
    cols = ", ".join(f"t.{c}" for c in [*scalar, "config_json"])
    df = fetch(
        con,
        f"SELECT {cols} FROM trials t WHERE {cond} "
        "ORDER BY t.experiment, t.batch_size, t.lr, t.lr_scaling, t.seed, t.trial_id",
        params,
    )
    cfg = config_columns(df.pop("config_json"))
    # Config keys that repeat a trials column (cfg.batch_size) add nothing: keep the rest.
    dup = [c for c in cfg.columns if c[4:] in df.columns]
    return pd.concat([df, cfg.drop(columns=dup)], axis=1)


def trial_rows(
    con: duckdb.DuckDBPyConnection, table: str, trial_ids: Sequence[str]
) -> pd.DataFrame:
    """The committed rows of `table` (epochs, steps, layers, probes, ...) of these trials,
    ordered by trial, then epoch/step."""
    if table not in SCHEMAS or table == "trials":
        raise ValueError(f"table: {table!r} is not a per-trial table; tables: {sorted(SCHEMAS)}")
    return fetch(
        con,
        f"SELECT * FROM {table} WHERE trial_id IN (SELECT unnest($ids)) "
        f"ORDER BY trial_id, {ROW_ORDER.get(table, 'trial_id')}",
        {"ids": list(trial_ids)},
    )


def trial_row(con: duckdb.DuckDBPyConnection, experiment: str, trial_id: str) -> pd.DataFrame:
    """The whole `trials` row of one trial (no row when it is not committed)."""
    return fetch(
        con,
        "SELECT * FROM trials WHERE experiment = $e AND trial_id = $t",
        {"e": experiment, "t": trial_id},
    )


def example_runs(con: duckdb.DuckDBPyConnection, n: int = 3) -> pd.DataFrame:
    """A few completed trials of one setting (the last experiment, seed 0), one per batch
    size, smallest batch sizes first: `trial_id`, `batch_size`."""
    return fetch(
        con,
        """SELECT trial_id, batch_size FROM (
            SELECT trial_id, batch_size, row_number() OVER (
                PARTITION BY batch_size ORDER BY experiment DESC, lr, lr_scaling) AS k
            FROM trials WHERE status = 'completed' AND seed = 0
              AND experiment = (SELECT max(experiment) FROM trials)
        ) WHERE k = 1 ORDER BY batch_size LIMIT $n""",
        {"n": n},
    )
