"""Sharpness: Keskar sharpness and the Hessian's top eigenvalue by batch size, with and
without lr scaling (F-11, F-15, F-29); gradient noise scale and the critical batch size
against the measured steps to target."""

from __future__ import annotations

import streamlit as st

from app.charts import batch_chart, critical_batch_chart
from app.common import filters, no_data, query, require_data
from app.show import heading, per_experiment, show_chart

st.title("Sharpness and the critical batch size")
st.caption(
    "F-11/F-29: large batches converge to sharper minima. F-15: a scaled lr makes them flatter, "
    "still sharper than small batches. Values at the last probed epoch; mean +-1 std over seeds."
)
require_data()
f = filters()
sh = query("sharpness_by_batch_size", f)
left, right = st.columns(2)
with left:
    st.subheader("Keskar sharpness")
    ks = sh[sh["probe"] == "keskar_sharpness"] if not sh.empty else sh
    if ks.empty:
        no_data("Keskar sharpness probes", "Enable measure.sharpness in grid.yaml.")
    else:
        eps = sorted(ks["eps"].dropna().unique())
        if eps:
            e = st.selectbox(
                "eps (box half-width, relative)",
                eps,
                index=eps.index(1e-3) if 1e-3 in eps else 0,
                format_func=lambda v: f"{v:g}",
                key="sharp_eps",
            )
            ks = ks[ks["eps"] == e]
        for exp, d in per_experiment({"ks": ks}):
            heading(exp)
            show_chart(
                f"keskar-{exp or 'all'}",
                batch_chart,
                d["ks"],
                "value",
                "Keskar sharpness phi (%, log)",
                log_y=True,
            )
with right:
    st.subheader("Hessian top eigenvalue")
    he = sh[sh["probe"] == "hessian_top_eig"] if not sh.empty else sh
    if he.empty:
        no_data("Hessian probes", "Enable measure.hessian in grid.yaml.")
    else:
        for exp, d in per_experiment({"he": he}):
            heading(exp)
            show_chart(
                f"hessian-{exp or 'all'}",
                batch_chart,
                d["he"],
                "value",
                "top eigenvalue of the loss Hessian (1/parameter^2, log)",
                log_y=True,
            )

st.subheader("Noise scale and critical batch size")
st.caption(
    "Points: steps to the validation-error target with each batch size's best lr; dashed "
    "line: the fit S = S_min + E_min / B (McCandlish et al. 2018); rules: B_crit = E_min / S_min "
    "and the measured gradient noise scale B_simple."
)
steps = query("steps_to_target", f)
fit = query("critical_batch_size", f)
best = steps[steps["is_best_lr"]] if not steps.empty else steps
if best.empty:
    no_data(
        "trials that reached a target",
        "Set target_val_error in grid.yaml to measure steps to target.",
    )
else:
    for exp, d in per_experiment({"best": best, "fit": fit}, exclude=("batch_size", "lr")):
        heading(exp)
        show_chart(f"bcrit-{exp or 'all'}", critical_batch_chart, d["best"], d["fit"])
    st.dataframe(fit, hide_index=True, width="stretch")
noise = query("noise_scale_by_batch_size", f)
if noise.empty:
    no_data("noise-scale probes", "Enable measure.noise_scale in grid.yaml.")
else:
    for exp, d in per_experiment({"noise": noise}):
        heading(exp)
        show_chart(
            f"noise-{exp or 'all'}",
            batch_chart,
            d["noise"],
            "value",
            "gradient noise scale B_simple (examples, log)",
            log_y=True,
        )
