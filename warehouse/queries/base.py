"""What every named query shares: the filters (`Filters`), the configuration key (`GROUP`,
`KEY`), the CTE `sel` (committed trials, filtered, trials equivalent across lr rules shared
between them), the per-seed statistics and the per-configuration-epoch aggregation.

Aggregation over seeds: trials that share a configuration key (`KEY`: experiment, dataset,
model, batchnorm, optimizer, lr_scaling, lr, workers, batch_size) are the seeds of one
configuration; each query computes its statistic per trial first, then reports `<x>_mean`,
`<x>_std` (sample std over seeds; NULL with one seed) and `n_seeds` (trials in the group).
Non-finite values (NaN from a disabled measurement) are left out of means and stds.
`workers` is `data_parallel_workers` (1 when unset). `lr` is the grid's lr before the
scaling rule; `scaled_lr` is the peak lr the trials used.

Every query starts from the CTE `sel` (`sel_cte`) and joins it with the `<table>_raw` views:
an inner join with committed trials keeps exactly the rows the committed views (`epochs`,
`steps`, ...) hold, without their second semi-join on `trials`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd

from warehouse.summaries import AT_BEST, MEANS


@dataclass(frozen=True)
class Filters:
    """Which trials a query covers; an empty tuple means 'all'."""

    experiment: tuple[str, ...] = ()
    dataset: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    optimizer: tuple[str, ...] = ()
    lr_scaling: tuple[str, ...] = ()
    seed: tuple[int, ...] = ()
    batch_size: tuple[int, ...] = ()
    lr: tuple[float, ...] = ()
    trial_id: tuple[str, ...] = ()  # the explorer's selected runs
    status: tuple[str, ...] = ("completed",)
    extra: dict[str, Any] = field(default_factory=dict)

    def where(self, alias: str = "t") -> tuple[str, dict[str, Any]]:
        """A SQL condition over the trials alias and its bound parameters."""
        conds, params = ["true"], {}
        for name in (
            "experiment",
            "dataset",
            "model",
            "optimizer",
            "lr_scaling",
            "seed",
            "batch_size",
            "lr",
            "trial_id",
            "status",
        ):
            values = getattr(self, name)
            if values:
                conds.append(f"{alias}.{name} IN (SELECT unnest(${name}))")
                params[name] = list(values)
        return " AND ".join(conds), params

    def __hash__(self) -> int:  # `extra` is a dict; hash the rest (st.cache_data keys on it)
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)[:-1]))


def fetch(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> pd.DataFrame:
    return con.execute(sql, params).fetchdf()


# The configuration key: trials equal on these are seeds of one configuration.
GROUP = ("experiment", "dataset", "model", "batchnorm", "optimizer", "lr_scaling", "lr", "workers")


KEY = (*GROUP, "batch_size")


KEY_SQL = ", ".join(KEY)


GROUP_SQL = ", ".join(GROUP)


def sel_cte(f: Filters) -> tuple[str, dict[str, Any]]:
    """CTE `sel`: the filtered trials with the key columns normalized (no NULL keys).

    Equivalent trials are shared between lr rules: at `batch_size == base_batch_size` every
    rule gives the grid lr (`scaled_lr == lr`, checked), so such a trial is the same training
    under `none`, `linear` and `sqrt`; it appears once under every lr rule its setting (the
    other `GROUP` columns) was run with, and the same training run twice (same setting,
    batch size and seed) appears once (fixed lr first, then the lowest trial_id). The
    lr-rule filter applies after this."""
    rules = f.lr_scaling
    cond, params = dataclasses.replace(f, lr_scaling=()).where("t")
    cfg = ", ".join(c for c in GROUP if c != "lr_scaling")
    keep = "WHERE lr_scaling IN (SELECT unnest($lr_scaling))" if rules else ""
    if rules:
        params["lr_scaling"] = list(rules)
    return (
        f"""sel AS (
            WITH t0 AS (
                SELECT t.* EXCLUDE (batchnorm), coalesce(t.batchnorm, false) AS batchnorm,
                       coalesce(t.data_parallel_workers, 1) AS workers,
                       t.batch_size = t.base_batch_size
                           AND abs(t.scaled_lr - t.lr) <= 1e-9 * abs(t.lr) AS equivalent_
                FROM trials t WHERE {cond}
            ),
            rules_ AS (SELECT DISTINCT {cfg}, lr_scaling AS rule_ FROM t0),
            one_ AS (
                SELECT * FROM t0 WHERE equivalent_
                QUALIFY row_number() OVER (
                    PARTITION BY {cfg}, batch_size, seed
                    ORDER BY lr_scaling <> 'none', lr_scaling, trial_id) = 1
            ),
            all_ AS (
                SELECT * FROM t0 WHERE NOT coalesce(equivalent_, false)
                UNION ALL BY NAME
                SELECT one_.* REPLACE (rules_.rule_ AS lr_scaling)
                FROM one_ JOIN rules_ USING ({cfg})
            )
            SELECT * EXCLUDE (equivalent_) FROM all_ {keep}
        )""",
        params,
    )


def best_lr_flag(mean: str) -> str:
    """`is_best_lr`: whether a row's lr has the lowest `mean` (NULLs last, ties to the
    smaller lr) among the lrs of its batch size within its group."""
    others = ", ".join(c for c in KEY if c != "lr")
    return (
        f"{mean} IS NOT NULL AND row_number() OVER (PARTITION BY {others} "
        f"ORDER BY {mean} ASC NULLS LAST, lr) = 1 AS is_best_lr"
    )


def seed_stat(expr: str, name: str, *, seeds: bool = False) -> str:
    """Mean and sample std over seeds of a per-trial expression, finite values only; with
    `seeds`, also `<name>_seeds`: the per-seed values as a list of {seed, value} (the
    charts' per-seed points), NULL when none is finite."""
    ok = f"isfinite({expr})"
    per = (
        f", list({{'seed': seed, 'value': {expr}}} ORDER BY seed) FILTER (WHERE {ok}) "
        f"AS {name}_seeds"
    )
    return (
        f"avg({expr}) FILTER (WHERE {ok}) AS {name}_mean, "
        f"stddev_samp({expr}) FILTER (WHERE {ok}) AS {name}_std" + (per if seeds else "")
    )


def per_config_epoch(sel: str, aggs: str, where: str = "") -> str:
    """SQL: per configuration (`KEY`) and epoch, the aggregates `aggs` over the `epochs`
    rows (alias `e`) of the trials in `sel`, ordered by key and epoch. Grouped on a dense
    integer id of the configuration instead of its ten key columns (measured: ~20% faster
    at 2M epoch rows), then the key columns are joined back."""
    return f"""
        WITH {sel},
        g AS (SELECT experiment, trial_id, dense_rank() OVER (ORDER BY {KEY_SQL}) AS gid FROM sel),
        k AS (SELECT DISTINCT dense_rank() OVER (ORDER BY {KEY_SQL}) AS gid, {KEY_SQL} FROM sel),
        agg AS (
            SELECT g.gid, e.epoch, {aggs}
            FROM g JOIN epochs_raw e USING (experiment, trial_id)
            {where}
            GROUP BY g.gid, e.epoch
        )
        SELECT k.* EXCLUDE (gid), agg.* EXCLUDE (gid) FROM agg JOIN k USING (gid)
        ORDER BY {KEY_SQL}, epoch
        """


def sel_with_epoch_summaries(
    con: duckdb.DuckDBPyConnection, f: Filters
) -> tuple[str, dict[str, Any]]:
    """`sel_cte` whose rows all carry the epoch summaries (`at_best_*`, `mean_*`; schema
    version 2): rows written before them get the same numbers computed from `epochs`, as
    `warehouse.summaries.summarize_epochs` does, so per-trial queries need one code path."""
    sel, params = sel_cte(f)
    missing = con.execute(
        f"WITH {sel} SELECT count(*) FROM sel WHERE epochs_n IS NULL", params
    ).fetchone()[0]
    if not missing:
        return sel, params
    at_best = [f"at_best_{c}" for c in AT_BEST]
    means = [f"mean_{c}" for c in MEANS]
    computed = ", ".join(
        [f"max(e.{c}) FILTER (WHERE e.epoch = s.best_epoch) AS at_best_{c}" for c in AT_BEST]
        + [f"avg(e.{c}) FILTER (WHERE isfinite(e.{c})) AS mean_{c}" for c in MEANS]
    )
    filled = ", ".join(f"coalesce(s.{c}, x.{c}) AS {c}" for c in (*at_best, *means))
    return (
        sel.replace("sel AS (", "sel0 AS (", 1)
        + f""",
        old AS (
            SELECT s.experiment, s.trial_id, {computed}
            FROM sel0 s JOIN epochs_raw e USING (experiment, trial_id)
            WHERE s.epochs_n IS NULL GROUP BY ALL
        ),
        sel AS (
            SELECT s.* REPLACE ({filled})
            FROM sel0 s LEFT JOIN old x USING (experiment, trial_id)
        )""",
        params,
    )


def unsummarized(con: duckdb.DuckDBPyConnection, sel: str, params: dict[str, Any]) -> bool:
    """Whether a selected trial has no step summaries (its row predates schema version 2):
    its per-step numbers must come from `steps` itself."""
    return bool(
        con.execute(
            f"WITH {sel} SELECT count(*) FROM sel WHERE step_update_norm_n IS NULL", params
        ).fetchone()[0]
    )


PROBE_EPS = (
    "CASE WHEN json_valid(p.settings_json) "
    "THEN TRY_CAST(json_extract_string(p.settings_json, '$.eps') AS DOUBLE) END"
)
