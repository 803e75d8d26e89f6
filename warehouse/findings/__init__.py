"""Verdicts on the findings (FINDINGS.md, F-n): is each claim supported by the selected data?

`evaluate(con, filters)` tests every finding the warehouse can back, per comparable group of
trials, and returns one `Verdict` per finding:

- each finding states the comparison it needs (`Finding.needs`: at convergence, at equal
  epochs, or any budget) and judges only the trials that meet it; the others are left out,
  and the group's note says which and why (`data.py`: what "at convergence" means);
- per group, an effect with its 95% interval over seeds and a p-value (`warehouse.stats`:
  permutation test of Spearman's rho for trends, Welch's t for contrasts), Holm-adjusted over
  every test of the finding, and a verdict: *supported*, *contradicted* or *undecided*;
- the finding's verdict counts its groups: *supported* (or *contradicted*) when the decided
  groups agree, *mixed* when some support and others contradict (`conditions` names the
  settings under which each holds), *undecided* when no group is decided.

A group is one setting (`queries.GROUP`: experiment, dataset, model, batchnorm, optimizer,
lr rule, lr, workers) with its batch sizes; equivalent trials (`scaled_lr == lr`) serve every
lr rule of their setting (`data.share_equivalent`). docs/app.md states every finding's rule.

The tests live in one module per family of claims: `training` (F-1, F-3..F-6, F-14),
`generalization` (F-2, F-13, F-17, F-18, F-25, F-27, F-28), `geometry` (F-7, F-8, F-9,
F-16), `sharpness` (F-10, F-11, F-12, F-15, F-29). Pure pandas + numpy + scipy on top of
the warehouse: no torch, no Ray, no Streamlit.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pandas as pd

from warehouse import queries as q
from warehouse.findings import generalization, geometry, sharpness, training  # noqa: F401
from warehouse.findings.core import (
    ANY_BUDGET,
    AT_CONVERGENCE,
    AT_EQUAL_EPOCHS,
    CONTRADICTED,
    MIXED,
    NOT_ENOUGH,
    REGISTRY,
    SUPPORTED,
    UNDECIDED,
    VERDICTS,
    Finding,
    GroupResult,
    Part,
    combine,
    conditions,
    counts,
    judge,
    label,
)
from warehouse.findings.data import Data
from warehouse.stats import ALPHA, MIN_SEEDS, describe, spearman

__all__ = [
    "ALPHA",
    "ANY_BUDGET",
    "AT_CONVERGENCE",
    "AT_EQUAL_EPOCHS",
    "CONTRADICTED",
    "FINDINGS",
    "MIN_SEEDS",
    "MIXED",
    "NOT_ENOUGH",
    "NOT_JUDGED",
    "SUPPORTED",
    "UNDECIDED",
    "VERDICTS",
    "Finding",
    "GroupResult",
    "Part",
    "Verdict",
    "combine",
    "evaluate",
    "findings_table",
    "group_table",
    "label",
    "spearman",
    "undecided_groups",
]

FINDINGS: tuple[Finding, ...] = tuple(sorted(REGISTRY, key=lambda f: int(f.id[2:])))

# Findings the warehouse does not judge, and why (the app lists them under the table).
NOT_JUDGED: dict[str, tuple[str, str]] = {
    "F-19": ("a time-optimal and an accuracy-optimal batch size", "an existence claim"),
    "F-20": ("full batch stalls, batch size 1 is noisy", "qualitative"),
    "F-21": ("multiples of 8 are fastest on GPU", "needs non-multiples of 8 on a GPU"),
    "F-22": ("scrape losses from logs", "the warehouse replaces it"),
    "F-23": ("try lrs on a decade grid", "advice; see the lr x batch size page"),
    "F-24": ("step decay on plateau", "a technique (plateau_decay), not a claim"),
    "F-26": ("compare train and validation loss", "advice; see the Generalization gap page"),
    "F-30": ("epochs, iterations, examples", "definitions; the Curves page draws every x axis"),
    "F-31": ("LeNet/Adam/MNIST: bs 64 fastest, bs 32 best", "specific to that setup; see Curves"),
}


@dataclass(frozen=True)
class Verdict:
    """One finding's verdict on the selected data (one row of the Findings table)."""

    id: str
    claim: str
    test: str  # the rule, in words
    verdict: str
    statistic: str  # the deciding group's statistic
    spread: str  # its effect, interval and p-value, in words
    page: str  # url path of the app page that shows the figure
    groups: tuple[GroupResult, ...] = ()
    needs: str = ""  # the comparison the finding needs
    conditions: str = ""  # under which settings each verdict holds

    @property
    def counts(self) -> dict[str, int]:
        return counts(list(self.groups))

    @property
    def shown(self) -> GroupResult | None:
        return combine(list(self.groups))[1]

    def as_row(self) -> dict[str, object]:
        c = self.counts
        g = self.shown
        t = g.test if g is not None else None
        nan = float("nan")
        return {
            "id": self.id,
            "claim": self.claim,
            "statistic": self.statistic,
            "spread": self.spread,
            "verdict": self.verdict,
            "test": self.test,
            "page": self.page,
            "groups": len(self.groups),
            "supported": c[SUPPORTED],
            "contradicted": c[CONTRADICTED],
            "undecided": c[UNDECIDED],
            "conditions": self.conditions,
            "needs": self.needs,
            "effect": t.effect if t else nan,
            "ci_low": t.low if t else nan,
            "ci_high": t.high if t else nan,
            "p": t.p if t else nan,
            "p_holm": t.p_holm if t else nan,
        }


def evaluate(con: duckdb.DuckDBPyConnection, f: q.Filters) -> list[Verdict]:
    """Every judged finding's verdict on the trials `f` selects."""
    data = Data(con, f)
    out = []
    for fd in FINDINGS:
        results = judge(fd.run(data))
        verdict, shown = combine(results)
        statistic, spread = "no data for this test in the selection", ""
        if shown is not None:
            statistic = f"{shown.statistic} [{shown.group}]"
            statistic += f" ({shown.note})" if shown.note and shown.note != shown.statistic else ""
            c = counts(results)
            if len(results) > 1:
                statistic += "; groups: " + ", ".join(f"{n} {v}" for v, n in c.items() if n)
            t = shown.test
            spread = describe(t) if t is not None else ""
        out.append(
            Verdict(
                fd.id,
                fd.claim,
                fd.test,
                verdict,
                statistic,
                spread,
                fd.page,
                tuple(results),
                fd.needs,
                conditions(results),
            )
        )
    return out


def findings_table(con: duckdb.DuckDBPyConnection, f: q.Filters) -> pd.DataFrame:
    """`evaluate` as a table: one row per finding (`Verdict.as_row`)."""
    return pd.DataFrame([v.as_row() for v in evaluate(con, f)])


GROUP_COLUMNS = ["id", "group", "verdict", "statistic", "spread", "note", "effect", "ci_low"]
GROUP_COLUMNS += ["ci_high", "p", "p_holm", "n_seeds", "method"]


def group_table(verdicts: list[Verdict]) -> pd.DataFrame:
    """Every group's result of every finding: the detail behind the table, with each group's
    effect, interval, p-values, seeds and method."""
    rows = [{"id": v.id, **r.row()} for v in verdicts for r in v.groups]
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def undecided_groups(
    con: duckdb.DuckDBPyConnection, f: q.Filters, ids: tuple[str, ...] = ()
) -> pd.DataFrame:
    """The groups still undecided in the findings `ids` (all when empty), for a scheduler
    that adds seeds until decided: id, the group's columns (`cols` names them), its note,
    and `more_seeds` (True when the group was tested, or lacked seeds, so more seeds can
    decide it; False when it lacks batch sizes, a rule, or trials at convergence)."""
    rows = []
    for v in evaluate(con, f):
        if ids and v.id not in ids:
            continue
        for r in v.groups:
            if r.verdict != UNDECIDED:
                continue
            tested = r.test is not None and r.test.enough_seeds
            thin = "seeds" in r.note and "needs >=" in r.note
            rows.append(
                {
                    "id": v.id,
                    "group": r.group,
                    "cols": r.cols,
                    **dict(zip(r.cols, r.key, strict=False)),
                    "note": r.note,
                    "more_seeds": bool(tested or thin),
                }
            )
    return pd.DataFrame(rows)
