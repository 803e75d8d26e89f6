"""The verdict statistics (warehouse/stats.py) on known answers, and their operating
characteristics measured over many simulated studies: a true effect is found at the stated
power, no effect is undecided at the stated false-positive rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from warehouse import stats as s

N_STUDIES = 500
BS = np.repeat([32, 64, 128, 256], 2)  # 4 batch sizes x 2 seeds: the demo's design
DOUBLINGS = np.log2(BS / 32)


def _tol(rate: float, n: int = N_STUDIES) -> float:
    """3 binomial standard deviations of a rate measured over n studies."""
    return 3 * math.sqrt(rate * (1 - rate) / n)


def _rates(verdicts: list[str]) -> dict[str, float]:
    return {v: verdicts.count(v) / len(verdicts) for v in (s.SUPPORTED, s.CONTRADICTED)}


def _trend_study(rng: np.random.Generator, effect_sd_per_doubling: float) -> str:
    y = effect_sd_per_doubling * DOUBLINGS + rng.normal(size=len(BS))
    return s.decide(s.trend(BS, y, n_resamples=999), +1)


# ---- known answers ---------------------------------------------------------------------
def test_trend_exact_p_of_a_perfect_order():
    # 3 batch sizes x 2 seeds, values in batch-size order: of the 6! = 720 arrangements,
    # 2^3 = 8 (swaps within a batch size) reach rho's observed value and 8 its negative.
    t = s.trend([16, 16, 64, 64, 256, 256], [1.0, 1.1, 2.0, 2.1, 3.0, 3.1])
    assert t.p == pytest.approx(16 / 720)
    assert "exact" in t.method and t.n == (2, 2, 2)
    assert t.effect == pytest.approx(2.0) and t.low <= 2.0 <= t.high
    assert s.decide(t, +1) == s.SUPPORTED and s.decide(t, -1) == s.CONTRADICTED


def test_trend_without_spread_or_levels():
    assert math.isnan(s.trend([32, 32], [1.0, 2.0]).p)  # one batch size: untested
    one_seed = s.trend([32, 64, 128], [1.0, 2.0, 3.0])
    assert s.decide(one_seed, +1) == s.UNDECIDED  # 1 seed per batch size: no spread
    flat = s.trend(BS, np.ones(len(BS)))
    assert flat.p == 1.0 and s.decide(flat, +1) == s.UNDECIDED


def test_welch_matches_scipy_ttest():
    a, b = [1.0, 1.3, 0.8, 1.1], [2.0, 2.6, 1.9]
    t = s.difference(a, b)
    ref = st.ttest_ind(b, a, equal_var=False)
    assert t.p == pytest.approx(ref.pvalue) and t.stat == pytest.approx(ref.statistic)
    ci = ref.confidence_interval(0.95)
    assert (t.low, t.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert t.effect == pytest.approx(np.mean(b) - np.mean(a))


def test_one_cell_contrast_is_the_one_sample_t():
    d = [0.5, 0.7, 0.2, 0.9]
    t = s.contrast([d], [1.0])
    assert t.p == pytest.approx(st.ttest_1samp(d, 0).pvalue)


def test_contrast_without_spread_is_not_tested():
    t = s.difference([1.0, 1.0], [2.0, 2.0])
    assert math.isnan(t.p) and s.decide(t, +1) == s.UNDECIDED


def test_holm_known_answer():
    assert s.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert s.holm([0.02, math.nan]) == [0.02, pytest.approx(math.nan, nan_ok=True)]
    assert s.holm([0.5, 0.9]) == [1.0, 1.0]


def test_rho_and_delta_must_agree():
    # A rising rank order whose largest batch size ends lower than the smallest one.
    t = s.Test(-1.0, -2.0, -0.5, 0.001, (3, 3, 3), "permutation test of rho (exact)", 0.8)
    assert s.decide(t, +1) == s.UNDECIDED


# ---- operating characteristics over simulated studies ---------------------------------
def test_trend_no_effect_is_undecided_at_the_stated_rate():
    rng = np.random.default_rng(1)
    r = _rates([_trend_study(rng, 0.0) for _ in range(N_STUDIES)])
    decided = r[s.SUPPORTED] + r[s.CONTRADICTED]
    assert decided <= s.ALPHA + _tol(s.ALPHA), r


def test_trend_true_effect_is_found_at_the_stated_power():
    # Stated power (docs/app.md): 2 noise sd per batch-size doubling, 4 sizes x 2 seeds:
    # >= 90% supported, never contradicted.
    rng = np.random.default_rng(2)
    r = _rates([_trend_study(rng, 2.0) for _ in range(N_STUDIES)])
    assert r[s.SUPPORTED] >= 0.90 - _tol(0.90), r
    assert r[s.CONTRADICTED] == 0.0, r


def test_difference_false_positive_rate_and_power():
    rng = np.random.default_rng(3)
    null = [
        s.decide(s.difference(rng.normal(size=3), rng.normal(size=3)), +1) for _ in range(N_STUDIES)
    ]
    r0 = _rates(null)
    assert r0[s.SUPPORTED] + r0[s.CONTRADICTED] <= s.ALPHA + _tol(s.ALPHA), r0
    # Stated power: a 2-sd difference with 5 seeds per side is found >= 75% of the time.
    hits = [
        s.decide(s.difference(rng.normal(size=5), 2 + rng.normal(size=5)), +1)
        for _ in range(N_STUDIES)
    ]
    r1 = _rates(hits)
    assert r1[s.SUPPORTED] >= 0.75 - _tol(0.75) and r1[s.CONTRADICTED] == 0.0, r1


def test_holm_keeps_the_family_wise_rate_over_groups():
    # 5 groups of a finding, none with an effect: P(any group decided) <= alpha.
    rng = np.random.default_rng(4)
    any_decided = 0
    for _ in range(N_STUDIES):
        tests = s.adjust([s.difference(rng.normal(size=4), rng.normal(size=4)) for _ in range(5)])
        any_decided += any(s.decide(t, +1) != s.UNDECIDED for t in tests)
    rate = any_decided / N_STUDIES
    assert rate <= s.ALPHA + _tol(s.ALPHA), rate


def test_deterministic():
    y = [1.0, 1.4, 2.2, 1.9, 3.1, 2.5, 3.0, 4.2, 3.3, 5.0]
    x = np.repeat([32, 64, 128, 256, 512], 2)
    assert s.trend(x, y) == s.trend(x, y)  # seeded permutations and bootstrap
