"""Choose a batch size: the advisor's answer (warehouse/advice.py, the numbers of `batchlab
advise`) for one experiment and setting: the fastest batch size (lone timing probe where
there is one, else the trials' own seconds), the one with the fewest examples, the lr rule
with its evidence, how sure each is; the McCandlish fit with bootstrap intervals, B_crit,
the 20%-overhead critical batch size; B_simple over training; F-11 / F-15 / F-29 on every
sharpness measure and the measures ranked by granulated Kendall tau (warehouse/measures.py,
warehouse/sharpness_verdicts.py). Every missing piece says which command produces it."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import streamlit as st

from app.choose_charts import b_simple_chart, steps_fit_chart
from app.common import con, filters, no_data, require_data, storage_root, version
from app.show import show_chart
from warehouse import advice_text as txt
from warehouse.advice import Target, advise
from warehouse.b_simple import b_simple_by_epoch
from warehouse.measures import BASELINE, measure_ranking
from warehouse.queries import Filters
from warehouse.sharpness_verdicts import (
    agreement,
    eos_prediction,
    measure_label,
    measure_verdicts,
)

RESAMPLES = 300
KINDS = {
    "stored": "the grid's stored target",
    "val_error": "validation error <=",
    "train_loss": "training loss <=",
}


@st.cache_data(max_entries=64, show_spinner=False)
def cached_experiments(root: str, v: str, f: Filters) -> list[str]:
    return txt.experiments(con(), f)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_target(root: str, v: str, f: Filters) -> Target:
    return txt.suggest_target(con(), f)


@st.cache_data(max_entries=64, show_spinner="Bootstrapping the advice ...")
def cached_advice(root: str, v: str, f: Filters, kind: str, value: float | None) -> list[dict]:
    return advise(con(), f, Target(kind, value), n_resamples=RESAMPLES, seed=0)


@st.cache_data(max_entries=64, show_spinner=False)
def cached_b_simple(root: str, v: str, f: Filters) -> pd.DataFrame:
    return b_simple_by_epoch(con(), f)


@st.cache_data(max_entries=64, show_spinner="Judging F-11, F-15, F-29 on every measure ...")
def cached_measures(root: str, v: str, f: Filters) -> tuple[pd.DataFrame, list[dict], pd.DataFrame]:
    c = con()
    return measure_verdicts(c, f), eos_prediction(c, f), measure_ranking(c, f)


def pick_target(exp: str, suggested: Target) -> Target:
    """The target widgets (defaults: the suggested target)."""
    kinds = list(KINDS)
    a, b = st.columns([2, 1])
    kind = a.radio(
        "Target: reached when",
        kinds,
        index=kinds.index(suggested.kind),
        format_func=KINDS.get,
        horizontal=True,
        key=f"choose_kind_{exp}",
    )
    if kind == "stored":
        return Target()
    default = suggested.value if suggested.kind == kind else 0.1
    value = b.number_input(
        KINDS[kind],
        min_value=0.0,
        value=float(default),
        step=0.01,
        format="%.4g",
        key=f"choose_value_{exp}_{kind}",
    )
    return Target(kind, float(value))


def estimate_marks(a: dict, b_simple: float | None) -> pd.DataFrame:
    rows = []
    if math.isfinite(a["fit"]["b_crit"]):
        rows.append({"what": "B_crit = E_min / S_min", "value": a["fit"]["b_crit"]})
    if math.isfinite(a["cbs20"]["cbs"]):
        rows.append({"what": "20%-overhead critical batch size", "value": a["cbs20"]["cbs"]})
    if b_simple is not None and math.isfinite(b_simple):
        rows.append({"what": "B_simple (last probed epoch)", "value": b_simple})
    return pd.DataFrame(rows, columns=["what", "value"])


def setting_rows(df: pd.DataFrame, group: dict) -> pd.DataFrame:
    """`b_simple_by_epoch` rows of the advice group's setting (all its lrs)."""
    for c in ("experiment", "dataset", "model", "batchnorm", "optimizer", "lr_scaling"):
        if c in df and group.get(c) is not None:
            df = df[df[c] == group[c]]
    return df


def show_answer(a: dict, ns: pd.DataFrame) -> None:
    for line in txt.answer_lines(a):
        st.markdown(f"- {line}")
    if a["flags"]:
        st.caption("Notes: " + " · ".join(a["flags"]))
    if not txt.has_answer(a):
        return
    last = ns.sort_values("epoch").groupby("batch_size")["b_simple_mean"].last()
    b_simple = float(last.median()) if len(last) else None
    st.subheader("Steps to the target and the critical batch size")
    st.caption(
        "Points: steps to the target at each batch size's best lr (bars: 95% bootstrap "
        "interval over seeds); dashed: the McCandlish fit S = S_min + E_min / B; rules: "
        "B_crit, the 20%-overhead critical batch size (Zhang et al.) and the measured B_simple."
    )
    key = "-".join(str(v) for v in a["group"].values())
    show_chart(
        f"choose-fit-{key}",
        steps_fit_chart,
        txt.points_frame(a),
        txt.fit_curve(a),
        estimate_marks(a, b_simple),
    )
    st.dataframe(txt.table_frame(a), hide_index=True, width="stretch")
    if a["time_source"] == "probe":
        t = pd.DataFrame(a["timings"])
        cols = ["batch_size", "s_per_step", "s_per_step_iqr", "repeats", "device_name"]
        cols += ["torch_threads", "load1_before", "load1_after", "measured_at"]
        st.caption("Lone timing probe (the `timings` table) behind the seconds:")
        st.dataframe(t[[c for c in cols if c in t]], hide_index=True, width="stretch")


def show_b_simple(ns: pd.DataFrame) -> None:
    st.subheader("B_simple over training")
    if ns.empty:
        no_data("noise-scale probes", f"To measure B_simple: {txt.HOW['noise']}.")
        return
    st.caption(
        "The gradient noise scale B_simple (McCandlish et al. 2018), mean over seeds at each "
        "probed epoch: the batch size beyond which larger batches stop paying off rises as "
        "training goes on."
    )
    if ns["epoch"].nunique() < 2:
        st.info(
            "B_simple was measured at one point of training only (the end): drawn against "
            "batch size. Set `measure.probe_every_epochs: N` in grid.yaml to see it over "
            "training."
        )
    show_chart(f"choose-bsimple-{len(ns)}", b_simple_chart, ns)


def show_measures(f: Filters) -> None:
    st.subheader("F-11, F-15, F-29 on every sharpness measure")
    table, pred, rank = cached_measures(storage_root(), version(), f)
    if table.empty:
        no_data("sharpness probes", f"To measure them: {txt.HOW['measures']}.")
        return
    st.caption(
        "Each finding's own test (same groups, convergence rule, Holm adjustment) with the "
        "measure in place of the one it names (F-11, F-15: Keskar; F-29: lambda_max)."
    )
    show = table[["id", "label", "verdict", "supported", "contradicted", "undecided"]]
    st.dataframe(
        show.rename(columns={"label": "measure"}),
        hide_index=True,
        width="stretch",
        height=35 * (len(show) + 1) + 3,  # every row, no scrolling inside the table
    )
    for fid, text in agreement(table).items():
        st.markdown(f"- **{fid}**: {text}")
    st.markdown("**What the 2/lr bound predicts** (edge of stability; lambda_max of SGD):")
    for p in pred or [{"text": "no lambda_max probes of SGD trials in the selection"}]:
        st.markdown(f"- {p['text']}")
    present = {m.split("@")[0] for m in table["measure"]}
    missing = [m for m in ("batch_sharpness", "adaptive_sharpness_worst_linf") if m not in present]
    if missing:
        st.info(f"Not measured here: {', '.join(missing)}. {txt.HOW['measures']}.")
    st.markdown("**Which measure tracks the generalization gap** (granulated Kendall tau):")
    if rank.empty or rank["granulated_tau"].isna().all():
        no_data(
            "generalization gap to rank the measures against",
            "It needs validation and full-training-set losses at the probed epoch: enable "
            "`measure.train_eval` in grid.yaml.",
        )
        return
    r = rank.assign(
        measure=[
            "lr / batch size (baseline)" if m == BASELINE else measure_label(m)
            for m in rank["measure"]
        ]
    )
    cols = ["measure", "granulated_tau", "overall_tau", "n_trials", "axes"]
    st.dataframe(r[cols], hide_index=True, width="stretch")


st.title("Choose a batch size")
st.caption(
    "Which batch size, with which lr, reaches a target in the least time on this hardware, and "
    "which with the fewest examples: `batchlab advise` on the selected trials (docs/advise.md)."
)
require_data()
f = filters()
root, v = storage_root(), version()
exps = cached_experiments(root, v, f)
if not exps:
    no_data("completed trials", "Run a grid (`batchlab run grid.yaml`) or widen the filters.")
    st.stop()
exp = st.selectbox("Experiment", exps, key="choose_exp")
fe = dataclasses.replace(f, experiment=(exp,))
suggested = cached_target(root, v, fe)
if suggested.kind != "stored":
    st.caption(
        f"No trial of {exp} has a stored target (`target_val_error` in grid.yaml): the "
        f"suggested target is {txt.TARGET_MARGIN:g} x the loosest batch size's best "
        "validation error reached by every seed of one lr (change it below)."
    )
target = pick_target(exp, suggested)
res = cached_advice(root, v, fe, target.kind, target.value)
ns_all = cached_b_simple(root, v, fe)
if not res:
    no_data("trials", "Widen the filters.")
else:
    answered = [i for i, a in enumerate(res) if txt.has_answer(a)]
    i = 0
    if len(res) > 1:
        i = st.selectbox(
            "Setting",
            range(len(res)),
            index=answered[0] if answered else 0,
            format_func=lambda k: (
                txt.group_label(res[k]["group"])
                + ("" if k in answered else " (target not reached)")
            ),
            key=f"choose_group_{exp}",
        )
    a = res[i]
    st.subheader("The answer")
    st.caption(f"Target: {txt.target_note(target)}; {RESAMPLES} bootstrap resamples over seeds.")
    ns = setting_rows(ns_all, a["group"])
    show_answer(a, ns)
    show_b_simple(ns)
show_measures(f)
