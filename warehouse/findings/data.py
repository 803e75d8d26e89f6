"""Per-trial data for the verdicts: one row per trial (every seed its own point), with the
flags the comparison rules need, and equivalent trials shared between lr rules.

The named queries (`warehouse.queries`) answer with seed means and stds; the statistics of
`warehouse.stats` need the seeds themselves, so the findings read per-trial values here, from
the same rows and the same per-trial summaries (`_sel_with_epoch_summaries`).

**Equivalent trials.** At `batch_size == base_batch_size` every scaling rule gives the grid
lr (`scaled_lr == lr`, checked), and warmup from lr to the same lr is no warmup: such a trial
is the same training whatever its `lr_scaling`. Such a trial
serves every lr rule its setting was run with: it is counted in the `none`, `linear` and
`sqrt` groups alike (`shared` is True in the copies), and two such trials of the same
setting and seed (the same training run twice) count once. The sidebar's lr-rule filter is
applied after this, so a `linear` selection still sees the shared trial. The named queries
apply the same rule in SQL (`queries.sel_cte`), so the pages and the verdicts count alike.

**Convergence.** `converged` is True when the trial stopped by its own criterion
(`stop_reason` in `CONVERGED_STOPS`) or ended with training accuracy >= `TRAIN_ACC_CONVERGED`
(full training set, eval mode); a trial stopped by its budget cap (`max_epochs`) while still
improving is not at convergence.
"""

from __future__ import annotations

import dataclasses
import math

import duckdb
import numpy as np
import pandas as pd

from warehouse import queries as q
from warehouse.timings import probe_timings

CONVERGED_STOPS = ("early_stopping", "target_reached", "train_target_reached")
TRAIN_ACC_CONVERGED = 0.99
RULES_ORDER = ("none", "linear", "sqrt")
CFG = tuple(c for c in q.GROUP if c != "lr_scaling")  # a setting, lr rule aside
# The trial columns a per-trial table (probes, layers, epochs) carries.
ID_COLUMNS = (*q.KEY, "seed", "trial_id", "stop_reason", "final_train_acc", "converged", "shared")


def _unfiltered(f: q.Filters, **changes) -> q.Filters:
    """`f` without its lr-rule filter (applied after the equivalence expansion)."""
    return dataclasses.replace(f, lr_scaling=(), **changes)


def _fetch(con: duckdb.DuckDBPyConnection, f: q.Filters) -> pd.DataFrame:
    sel, params = q.sel_with_epoch_summaries(con, _unfiltered(f))
    cols = ", ".join(f"s.{c}" for c in q.KEY)
    df = con.execute(
        f"""
        WITH {sel},
        ids AS (SELECT DISTINCT experiment, trial_id FROM sel),  -- a shared trial once
        last AS (
            SELECT s.experiment, s.trial_id,
                   arg_max(e.train_acc_eval, e.epoch) AS final_train_acc,
                   arg_max(e.train_loss_eval, e.epoch) AS final_train_loss_eval,
                   avg(e.update_norm_median) FILTER (WHERE isfinite(e.update_norm_median))
                       AS epoch_update_norm_median,
                   list(CASE WHEN isfinite(e.train_loss_eval) THEN e.train_loss_eval
                             ELSE e.train_loss END ORDER BY e.epoch) AS train_loss_by_epoch
            FROM ids s JOIN epochs_raw e USING (experiment, trial_id)
            GROUP BY ALL
        )
        SELECT {cols}, s.trial_id, s.seed, s.status, s.stop_reason, s.epochs_run, s.max_epochs,
               s.steps_run, s.best_epoch, s.best_val_loss, s.final_train_loss, s.scaled_lr,
               s.base_batch_size, s.warmup_epochs, s.diverged_step, s.device_name,
               coalesce(s.pack_size, 1) AS pack_size,
               s.mean_epoch_time_s AS epoch_time_s, s.at_best_elapsed_s AS time_to_min_s,
               CASE WHEN s.best_epoch >= 1 THEN s.best_epoch END AS epochs_to_min,
               s.final_dist_from_init AS dist_from_init, s.mean_epoch_distance,
               coalesce(s.step_update_norm_median, l.epoch_update_norm_median)
                   AS update_norm_median,
               s.step_update_norm_median IS NULL AS update_norm_from_epochs,
               l.final_train_acc, l.final_train_loss_eval, l.train_loss_by_epoch
        FROM sel s LEFT JOIN last l USING (experiment, trial_id)
        ORDER BY {", ".join(q.KEY)}, s.seed, s.trial_id
        """,
        params,
    ).fetchdf()
    return _plain_strings(df)


def _plain_strings(df: pd.DataFrame) -> pd.DataFrame:
    """String columns as Python objects: row selections on them (every group's filter) are
    several times faster than on Arrow-backed strings."""
    cols = [c for c in df.columns if pd.api.types.is_string_dtype(df[c].dtype)]
    return df.astype({c: object for c in cols}) if cols else df


def _equivalent(df: pd.DataFrame) -> pd.Series:
    """Trials every lr rule would train alike: at the base batch size (each rule's lr is the
    grid lr there), checked against the peak lr the trial ran with."""
    lr, peak = df["lr"].astype(float), df["scaled_lr"].astype(float)
    same_lr = pd.Series(np.isclose(lr, peak, rtol=1e-9, atol=0.0), index=df.index)
    at_base = df["batch_size"].astype(float) == df["base_batch_size"].astype(float)
    return (same_lr & at_base).fillna(False).astype(bool)


def share_equivalent(df: pd.DataFrame, rules: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows of equivalent trials (see the module docstring) copied into every lr rule of
    their setting; duplicates of one training (same setting, batch size, seed) kept once.
    Then only the lr rules in `rules` (all when empty)."""
    if df.empty:
        return df.assign(shared=pd.Series(dtype=bool))
    df = df.assign(shared=False)
    eq = _equivalent(df)
    present = df.groupby(list(CFG), dropna=False)["lr_scaling"].agg(lambda s: sorted(set(s)))
    order = {r: i for i, r in enumerate(RULES_ORDER)}
    same = df[eq].assign(_o=df.loc[eq, "lr_scaling"].map(lambda r: order.get(r, 99)))
    same = same.sort_values([*CFG, "batch_size", "seed", "_o", "trial_id"])
    same = same.drop_duplicates([*CFG, "batch_size", "seed"]).drop(columns="_o")
    copies = []
    for _, row in same.iterrows():
        key = tuple(row[c] for c in CFG)
        for rule in present.get(key, [row["lr_scaling"]]):
            copies.append(
                {**row.to_dict(), "lr_scaling": rule, "shared": rule != row["lr_scaling"]}
            )
    out = pd.concat([df[~eq], pd.DataFrame(copies, columns=df.columns)], ignore_index=True)
    if rules:
        out = out[out["lr_scaling"].isin(rules)]
    out["shared"] = out["shared"].astype(bool)
    return out.sort_values([*q.KEY, "seed", "trial_id"]).reset_index(drop=True)


def mark_converged(df: pd.DataFrame) -> pd.DataFrame:
    acc = df["final_train_acc"].astype(float)
    ok = df["stop_reason"].isin(CONVERGED_STOPS) | (acc >= TRAIN_ACC_CONVERGED)
    return df.assign(converged=ok.fillna(False).astype(bool))


def with_common_epoch(df: pd.DataFrame) -> pd.DataFrame:
    """`train_loss_at_epoch`: each trial's training loss at the last epoch every trial of
    its group (`queries.GROUP`, all batch sizes) reached (`common_epoch`)."""
    if df.empty:
        out = df.assign(common_epoch=pd.Series(dtype=float), train_loss_at_epoch=np.nan)
        return out.drop(columns="train_loss_by_epoch")
    n = df["train_loss_by_epoch"].map(lambda v: 0 if v is None else len(v))
    common = n.groupby([df[c] for c in q.GROUP], dropna=False).transform("min")

    def at(v, e) -> float:
        return float(v[int(e) - 1]) if v is not None and e >= 1 else math.nan

    loss = [at(v, e) for v, e in zip(df["train_loss_by_epoch"], common, strict=True)]
    out = df.assign(common_epoch=common, train_loss_at_epoch=loss)
    return out.drop(columns="train_loss_by_epoch")


class Data:
    """The selection's per-trial tables, each computed once. `measure_label` names the
    sharpness measure served as the probes when it is not the one a finding names
    (warehouse/sharpness_verdicts.py); statistics then carry that name and no unit."""

    measure_label: str | None = None

    def __init__(self, con: duckdb.DuckDBPyConnection, f: q.Filters):
        self.con, self.f, self._cache = con, f, {}

    def _get(self, name: str, make) -> pd.DataFrame:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    @property
    def trials(self) -> pd.DataFrame:
        """Completed (the filter's statuses) trials, equivalents shared, flags added."""

        def make() -> pd.DataFrame:
            df = share_equivalent(_fetch(self.con, self.f), self.f.lr_scaling)
            return with_common_epoch(mark_converged(df))

        return self._get("trials", make)

    @property
    def all_statuses(self) -> pd.DataFrame:
        """Every trial whatever its status (F-25: divergence)."""
        f = dataclasses.replace(self.f, status=())
        return self._get("all", lambda: share_equivalent(_fetch(self.con, f), f.lr_scaling))

    @property
    def timings(self) -> pd.DataFrame:
        """The timing probe's rows of the selection's experiments (`warehouse.timings`):
        seconds per step of the model alone, per batch size and device (the time findings)."""
        return self._get("timings", lambda: probe_timings(self.con, self.f))

    def rule(self, lr_scaling: str = "none", df: pd.DataFrame | None = None) -> pd.DataFrame:
        df = self.trials if df is None else df
        return df if df.empty else df[df["lr_scaling"] == lr_scaling]

    def _per_trial(self, name: str, sql: str, extra: dict | None = None) -> pd.DataFrame:
        """A per-(experiment, trial_id) table joined onto the (expanded) trials."""

        def make() -> pd.DataFrame:
            sel, params = q.sel_cte(_unfiltered(self.f))
            # `sel` holds a shared trial once per lr rule: its rows are read once (`ids`).
            ids = "ids AS (SELECT DISTINCT experiment, trial_id FROM sel)"
            rows = self.con.execute(
                f"WITH {sel}, {ids} {sql}", {**params, **(extra or {})}
            ).fetchdf()
            rows = _plain_strings(rows)
            return self.trials[list(ID_COLUMNS)].merge(rows, on=["experiment", "trial_id"])

        return self._get(name, make)

    @property
    def probes(self) -> pd.DataFrame:
        """Keskar sharpness (per eps) and Hessian top eigenvalue per trial, at the trial's
        last probed epoch."""
        return self._per_trial(
            "probes",
            f"""SELECT s.experiment, s.trial_id, p.probe, {q.PROBE_EPS} AS eps,
                       p.epoch AS probe_epoch, p.value
                FROM ids s JOIN probes_raw p USING (experiment, trial_id)
                WHERE p.probe IN ('keskar_sharpness', 'hessian_top_eig')
                  AND coalesce(p.status, 'ok') = 'ok' AND isfinite(p.value)
                  AND coalesce(p.measured_at, 'final') <> 'best'  -- measure.at: best is not the final point
                QUALIFY p.epoch = max(p.epoch) OVER (
                    PARTITION BY s.experiment, s.trial_id, p.probe, eps)""",
        )

    @property
    def layers(self) -> pd.DataFrame:
        """Per layer, each trial's distance from init at its last recorded epoch."""
        return self._per_trial(
            "layers",
            """SELECT l.experiment, l.trial_id, l.layer,
                      arg_max_null(l.dist_from_init, l.epoch) AS layer_dist
               FROM layers_raw l SEMI JOIN ids USING (experiment, trial_id)
               GROUP BY ALL""",
        )

    @property
    def epoch_distances(self) -> pd.DataFrame:
        """Each trial's epoch distance per epoch (F-8's ratio)."""
        return self._per_trial(
            "epoch_distances",
            """SELECT e.experiment, e.trial_id, e.epoch, e.epoch_distance
               FROM epochs_raw e SEMI JOIN ids USING (experiment, trial_id)
               WHERE isfinite(e.epoch_distance)""",
        )

    def landscape(self, kind: str) -> pd.DataFrame:
        """`landscape_1d` / `landscape_2d` rows with both ends' convergence."""

        def make() -> pd.DataFrame:
            fn = q.landscape_1d if kind == "1d" else q.landscape_2d
            df = fn(self.con, self.f)
            conv = self.trials.drop_duplicates(["experiment", "trial_id"]).set_index(
                ["experiment", "trial_id"]
            )["converged"]
            if df.empty:
                return df.assign(converged=pd.Series(dtype=bool))
            a = [
                conv.get((e, t), False)
                for e, t in zip(df["experiment"], df["trial_id"], strict=True)
            ]
            b = [
                True if t is None or pd.isna(t) else conv.get((e, t), False)
                for e, t in zip(df["experiment"], df["trial_id_b"], strict=True)
            ]
            return df.assign(converged=np.array(a, bool) & np.array(b, bool))

        return self._get(f"landscape_{kind}", make)
