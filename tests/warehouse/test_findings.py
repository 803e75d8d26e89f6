"""Findings verdicts: fixture data built to support, to contradict, or to be too thin for
every judged claim gives the right verdict; the statistics' rules on small cases."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from warehouse import findings as fi
from warehouse import queries as q
from warehouse.db import connect

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def _load_fixture_module():
    spec = importlib.util.spec_from_file_location(
        "synthetic_warehouse", FIXTURES / "synthetic_warehouse.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sw = _load_fixture_module()
IDS = [f.id for f in fi.FINDINGS]


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[str, dict[str, fi.Verdict]]:
    root = sw.build(tmp_path_factory.mktemp("findings-warehouse") / "runs")
    con = connect(root)
    out = {}
    for name, exps in {
        "support": ("support",),
        "contradict": ("contradict",),
        "sparse": ("sparse",),
        "mixed": ("support", "contradict"),
    }.items():
        out[name] = {v.id: v for v in fi.evaluate(con, q.Filters(experiment=exps))}
    con.close()
    out["empty"] = {
        v.id: v for v in fi.evaluate(connect(str(tmp_path_factory.mktemp("empty"))), q.Filters())
    }
    return out


def _detail(v: fi.Verdict) -> str:
    return "\n".join(
        f"  {r.verdict}: {r.group}: {r.statistic} {r.spread} {r.note}" for r in v.groups
    )


@pytest.mark.parametrize("fid", IDS)
@pytest.mark.parametrize(
    "case, expected",
    [
        ("support", fi.SUPPORTED),
        ("contradict", fi.CONTRADICTED),
        ("sparse", fi.NOT_ENOUGH),
        ("empty", fi.NOT_ENOUGH),
        # One conclusive counter-example contradicts a general rule.
        ("mixed", fi.CONTRADICTED),
    ],
)
def test_verdict(verdicts, case, expected, fid):
    v = verdicts[case][fid]
    assert v.verdict == expected, f"{fid} on {case}: {v.verdict}\n{v.statistic}\n{_detail(v)}"


def test_every_verdict_is_explained(verdicts):
    for case, vs in verdicts.items():
        assert list(vs) == IDS
        for v in vs.values():
            assert v.claim and v.test and v.statistic, (case, v.id)
            assert v.page in {
                "curves",
                "generalization",
                "time",
                "distance",
                "sharpness",
                "landscapes",
                "lr_batch",
            }
            if v.verdict != fi.NOT_ENOUGH:
                assert v.spread, (case, v.id)
    assert "rho = +0.8" in verdicts["support"]["F-2"].statistic
    table = fi.findings_table
    assert callable(table)
    assert set(fi.NOT_JUDGED).isdisjoint(IDS)
    assert sorted(set(IDS) | set(fi.NOT_JUDGED), key=lambda s: int(s[2:])) == [
        f"F-{i}" for i in range(1, 32)
    ]


def test_group_table(verdicts):
    df = fi.group_table(list(verdicts["support"].values()))
    assert list(df.columns) == ["id", "group", "verdict", "statistic", "spread", "note"]
    f2 = df[df["id"] == "F-2"]
    assert set(f2["verdict"]) == {fi.SUPPORTED, fi.NOT_ENOUGH}  # the 4-worker group has 2 sizes


# ---- the rules on small cases ---------------------------------------------------------
B = [32, 64, 128, 256]


def test_trend_supported_and_contradicted():
    up = fi.trend_test("g", B, [1.0, 2.0, 3.0, 4.0], [0.1] * 4, [3] * 4, +1)
    assert up.verdict == fi.SUPPORTED and "rho = +1" in up.statistic
    down = fi.trend_test("g", B, [1.0, 2.0, 3.0, 4.0], [0.1] * 4, [3] * 4, -1)
    assert down.verdict == fi.CONTRADICTED


def test_trend_within_spread_is_not_enough():
    r = fi.trend_test("g", B, [1.0, 1.1, 1.2, 1.3], [0.5] * 4, [3] * 4, +1)
    assert r.verdict == fi.NOT_ENOUGH and "spread" in r.note


def test_trend_needs_batch_sizes_and_seeds():
    assert fi.trend_test("g", B[:2], [1, 2], [0.1, 0.1], [3, 3], +1).verdict == fi.NOT_ENOUGH
    one_seed = fi.trend_test("g", B, [1, 2, 3, 4], [math.nan] * 4, [1] * 4, +1)
    assert one_seed.verdict == fi.NOT_ENOUGH and one_seed.spread == "no spread"
    nan_points = fi.trend_test("g", B, [1, math.nan, math.nan, 4], [0.1] * 4, [3] * 4, +1)
    assert nan_points.verdict == fi.NOT_ENOUGH


def test_trend_non_monotone_is_not_enough():
    # Ends differ beyond the spread, but the order in between is reversed: rho = -0.2.
    r = fi.trend_test("g", B, [1.0, 3.0, 2.5, 1.2], [0.01] * 4, [3] * 4, +1)
    assert r.verdict == fi.NOT_ENOUGH


def test_spearman_ties_and_constants():
    assert fi.spearman([1, 2, 3], [1, 2, 3]) == pytest.approx(1)
    assert fi.spearman([1, 2, 3], [0, 0, 1]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(fi.spearman([1, 2, 3], [1, 1, 1]))


def test_combine_and_all_of():
    s = fi.GroupResult("a", fi.SUPPORTED, "x")
    c = fi.GroupResult("b", fi.CONTRADICTED, "y")
    n = fi.GroupResult("c", fi.NOT_ENOUGH, "z")
    assert fi.combine([s, n]) == (fi.SUPPORTED, s)
    assert fi.combine([n, s, c]) == (fi.CONTRADICTED, c)
    assert fi.combine([n]) == (fi.NOT_ENOUGH, n)
    assert fi.combine([]) == (fi.NOT_ENOUGH, None)
    assert fi.all_of("g", [s, s]).verdict == fi.SUPPORTED
    assert fi.all_of("g", [s, n]).verdict == fi.NOT_ENOUGH
    assert fi.all_of("g", [s, c]).verdict == fi.CONTRADICTED


def test_no_torch_or_ray():
    code = (
        "import sys, warehouse.findings, warehouse.queries;"
        "bad = [m for m in ('torch', 'ray', 'streamlit') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
