"""The verdict engine: what a finding's test returns per group, how the groups' tests are
adjusted (Holm over every test of the finding), decided (`warehouse.stats.decide`) and
combined into the finding's verdict, with the conditions under which each verdict holds."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from warehouse import queries as q
from warehouse import stats

SUPPORTED = stats.SUPPORTED
CONTRADICTED = stats.CONTRADICTED
UNDECIDED = stats.UNDECIDED
NOT_ENOUGH = UNDECIDED  # the former name of "undecided"
MIXED = "mixed"  # some settings support the claim, others contradict it
VERDICTS = (SUPPORTED, CONTRADICTED, MIXED, UNDECIDED)

# What a finding compares (Finding.needs): which trials it can judge.
AT_CONVERGENCE = "at convergence"
AT_EQUAL_EPOCHS = "at equal epochs"
ANY_BUDGET = "any budget"


@dataclass(frozen=True)
class Part:
    """One test of a group: `test` on a claim of `direction` (+1 rise / -1 fall / > 0)."""

    what: str  # description with the numbers ("rho = +0.9; bs 32 -> 256: ...")
    test: stats.Test | None = None  # None: not testable (`note` says why)
    direction: int = +1
    note: str = ""
    verdict: str = UNDECIDED
    precondition: bool = False  # must be supported for the claim to be testable at all


@dataclass(frozen=True)
class GroupResult:
    """The test of one finding on one group of trials."""

    group: str
    verdict: str
    statistic: str
    spread: str = ""  # the interval and p-value behind the verdict, in words
    note: str = ""
    key: tuple = field(default=(), compare=False, repr=False)  # the group's column values
    parts: tuple[Part, ...] = field(default=(), compare=False, repr=False)
    cols: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def test(self) -> stats.Test | None:
        """The deciding part's test (the first, unless another decided the verdict)."""
        tested = [p for p in self.parts if p.test is not None]
        for p in tested:
            if p.verdict == self.verdict:
                return p.test
        return tested[0].test if tested else None

    def row(self) -> dict[str, object]:
        t = self.test
        nan = math.nan
        return {
            "group": self.group,
            "verdict": self.verdict,
            "statistic": self.statistic,
            "spread": self.spread,
            "note": self.note,
            "effect": t.effect if t else nan,
            "ci_low": t.low if t else nan,
            "ci_high": t.high if t else nan,
            "p": t.p if t else nan,
            "p_holm": t.p_holm if t else nan,
            "n_seeds": min(t.n) if t and t.n else 0,
            "method": t.method if t else "",
        }


def group(name: str, key: tuple, parts: list[Part], cols: Iterable[str] = q.GROUP) -> GroupResult:
    """A group's result before adjustment (verdicts filled by `judge`)."""
    return GroupResult(name, UNDECIDED, "", key=key, parts=tuple(parts), cols=tuple(cols))


def left_out(name: str, why: str, key: tuple = (), cols: Iterable[str] = q.GROUP) -> GroupResult:
    """A group the finding cannot judge, and why (the note)."""
    return GroupResult(name, UNDECIDED, "not judged", note=why, key=key, cols=tuple(cols))


def _all_of(verdicts: list[str]) -> str:
    """A claim with several parts: contradicted if any part is, supported if every one is."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    return SUPPORTED if verdicts and all(v == SUPPORTED for v in verdicts) else UNDECIDED


def judge(results: list[GroupResult]) -> list[GroupResult]:
    """Holm over every test of the finding, then each part's and each group's verdict."""
    flat = [(i, j) for i, r in enumerate(results) for j, p in enumerate(r.parts) if p.test]
    adjusted = stats.adjust([results[i].parts[j].test for i, j in flat])
    parts = {ij: t for ij, t in zip(flat, adjusted, strict=True)}
    out = []
    for i, r in enumerate(results):
        if not r.parts:
            out.append(r)
            continue
        new = []
        for j, p in enumerate(r.parts):
            t = parts.get((i, j))
            v = stats.decide(t, p.direction) if t is not None else UNDECIDED
            new.append(replace(p, test=t, verdict=v))
        pre = [p for p in new if p.precondition]
        verdict = _all_of([p.verdict for p in new if not p.precondition])
        notes = [p.note for p in new if p.note]
        if any(p.verdict != SUPPORTED for p in pre):
            verdict = UNDECIDED
            # (one note: "; " separates a group's notes, so the details use ", ")
            notes.append(
                "precondition not met: " + ", ".join(p.what.replace("; ", ", ") for p in pre)
            )
        statistic = "; ".join(p.what for p in new if p.what)
        more = [p for p in new if not p.what and p.test is not None]  # sub-tests (layers)
        if more:
            c = {v: sum(p.verdict == v for p in more) for v in (SUPPORTED, CONTRADICTED)}
            statistic += (
                f"; {len(more)} more tests: {c[SUPPORTED]} supported, "
                f"{c[CONTRADICTED]} contradicted"
            )
        spread = "; ".join(_interval(p) for p in new if p.test is not None)
        if verdict == UNDECIDED and not notes:
            notes = [_why_undecided(new)]
        out.append(
            replace(
                r,
                verdict=verdict,
                statistic=statistic,
                spread=spread,
                note="; ".join(n for n in [r.note, *notes] if n),
                parts=tuple(new),
            )
        )
    return out


def _interval(p: Part) -> str:
    t = p.test
    n = f"seeds {min(t.n)}..{max(t.n)}" if t.n else "no seeds"
    return f"{stats.describe(t)}, {t.method}, {n}"


def _why_undecided(parts: list[Part]) -> str:
    for p in parts:
        t = p.test
        if p.verdict != UNDECIDED or t is None:
            continue
        if not t.enough_seeds:
            return f"needs >= {stats.MIN_SEEDS} seeds per batch size"
        if not math.isfinite(t.p):
            return "no spread between the seeds to test against"
        return f"not significant at alpha = {stats.ALPHA} (Holm over the finding's tests)"
    return "no test"


def combine(results: list[GroupResult]) -> tuple[str, GroupResult | None]:
    """A finding's verdict over its groups, and the group whose numbers the table shows:
    supported / contradicted when the decided groups agree, mixed when they do not,
    undecided when none is decided."""
    sup = [r for r in results if r.verdict == SUPPORTED]
    con = [r for r in results if r.verdict == CONTRADICTED]
    if sup and con:
        return MIXED, min(sup + con, key=_p)
    if sup or con:
        return (SUPPORTED if sup else CONTRADICTED), min(sup or con, key=_p)
    tested = [r for r in results if r.test is not None]
    return UNDECIDED, (min(tested, key=_p) if tested else (results[0] if results else None))


def _p(r: GroupResult) -> float:
    t = r.test
    return t.p_holm if t is not None and math.isfinite(t.p_holm) else math.inf


def counts(results: list[GroupResult]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in results) for v in (SUPPORTED, CONTRADICTED, UNDECIDED)}


def conditions(results: list[GroupResult]) -> str:
    """Under which settings each verdict holds: the decided groups named by the columns in
    which the groups differ ('supported: fixed lr (2); contradicted: linear scaling (1)')."""
    decided = [r for r in results if r.verdict in (SUPPORTED, CONTRADICTED) and r.key]
    if not decided:
        return ""
    cols = decided[0].cols
    same_cols = all(r.cols == cols for r in decided)
    keys = [r.key for r in results if r.key and r.cols == cols]
    varying = [
        i for i in range(len(cols)) if same_cols and len({k[i] for k in keys if len(k) > i}) > 1
    ]
    parts = []
    for v in (SUPPORTED, CONTRADICTED):
        rs = [r for r in decided if r.verdict == v]
        if not rs:
            continue
        if varying:
            names = sorted(
                {
                    label(dict((cols[i], r.key[i]) for i in varying), [cols[i] for i in varying])
                    for r in rs
                }
            )
        else:
            names = sorted({r.group for r in rs})
        parts.append(f"{v} in {len(rs)}: " + ", ".join(n or "all" for n in names))
    return "; ".join(parts)


def label(row: dict, cols: Iterable[str] = q.GROUP) -> str:
    """A readable name of a group: 'support / mnist1d / mlp+BN / sgd / fixed lr / lr 0.01'."""
    parts: list[str] = []
    for c in cols:
        if c not in row:
            continue
        v = row[c]
        if c == "batchnorm":
            if bool(v) and parts:
                parts[-1] += "+BN"
            elif not parts:
                parts.append("BN" if bool(v) else "no BN")
        elif c == "lr":
            parts.append(f"lr {v:g}")
        elif c == "lr_scaling":
            parts.append(f"{v} scaling" if v != "none" else "fixed lr")
        elif c == "workers":
            if int(v) != 1:
                parts.append(f"{int(v)} workers")
        elif c == "eps":
            parts.append(f"eps {v:g}")
        else:
            parts.append(str(v))
    return " / ".join(parts)


def each(
    df: pd.DataFrame, cols: Iterable[str] = q.GROUP
) -> Iterator[tuple[str, tuple, pd.DataFrame]]:
    """(label, key, rows) per group of `cols`."""
    cols = [c for c in cols if c in df.columns]
    if df.empty:
        return
    for key, g in df.groupby(cols, sort=True, dropna=False):
        yield label(dict(zip(cols, key, strict=True)), cols), tuple(key), g


@dataclass(frozen=True)
class Finding:
    id: str
    claim: str
    test: str
    page: str
    needs: str  # AT_CONVERGENCE | AT_EQUAL_EPOCHS | ANY_BUDGET
    run: Callable[..., list[GroupResult]]


REGISTRY: list[Finding] = []


def finding(id: str, page: str, needs: str, claim: str, test: str):
    """Register a finding's test."""

    def register(fn: Callable[..., list[GroupResult]]):
        REGISTRY.append(Finding(id, claim, test, page, needs, fn))
        return fn

    return register


def by_key(df: pd.DataFrame, cols: Iterable[str] = q.GROUP) -> dict[tuple, pd.DataFrame]:
    """The rows of `df` per value of `cols` (one groupby, for lookups by a group's key)."""
    cols = list(cols)
    if df.empty:
        return {}
    return {tuple(k): g for k, g in df.groupby(cols, sort=False, dropna=False)}


def finite(df: pd.DataFrame, col: str) -> pd.DataFrame:
    return df[np.isfinite(df[col].astype(float))]
