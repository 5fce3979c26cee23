"""Anytime-valid verdicts (core/sequential.py).

Known values are hand-computed or come from an independent implementation
in this file: the interval is found again by integrating the normal-mixture
likelihood ratio numerically and solving ``ratio = 1/alpha`` by bisection,
never by the closed form under test (scipy/numpy are not in the venv).
"""

from __future__ import annotations

import math
import random

import pytest

from inferstack.core.sequential import (
    Counters,
    Direction,
    NonInferiority,
    SequentialResult,
    SequentialVerdict,
    compare,
    compare_paired,
    confidence_sequence,
    half_width,
    margin_mixing_variance,
    mixing_variance,
    optimal_ratio,
    split_alpha,
)

PASS, FAIL, CONTINUE = SequentialVerdict.PASS, SequentialVerdict.FAIL, SequentialVerdict.CONTINUE

# ------------------------------------------------------- independent reference


def log_mixture_ratio(x: float, variance: float, tau2: float) -> float:
    """ln ∫ exp(θx/V - θ²/(2V)) N(θ; 0, τ²) dθ by Simpson's rule: the log mixture likelihood ratio
    of "Δ = Δ0 + θ" against "Δ = Δ0" for an estimate x away from Δ0 with variance V."""
    # The integrand is a Gaussian bump; integrate ±14 of its standard deviations around its peak,
    # scaled by its peak value so nothing overflows.
    precision = 1 / variance + 1 / tau2
    centre, sd = (x / variance) / precision, math.sqrt(1 / precision)
    lo, hi, steps = centre - 14 * sd, centre + 14 * sd, 4000
    h = (hi - lo) / steps

    def log_f(theta: float) -> float:
        log_lr = theta * x / variance - theta * theta / (2 * variance)
        return log_lr - theta * theta / (2 * tau2) - 0.5 * math.log(2 * math.pi * tau2)

    peak = log_f(centre)

    def f(theta: float) -> float:
        return math.exp(log_f(theta) - peak)

    total = f(lo) + f(hi) + sum((4 if i % 2 else 2) * f(lo + i * h) for i in range(1, steps))
    return peak + math.log(total * h / 3)


def reference_half_width(variance: float, tau2: float, alpha: float) -> float:
    """The distance x at which the mixture ratio reaches 1/alpha (bisection; the ratio grows with |x|)."""
    target = math.log(1 / alpha)
    lo, hi = 0.0, math.sqrt(variance)
    while log_mixture_ratio(hi, variance, tau2) < target:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if log_mixture_ratio(mid, variance, tau2) < target else (lo, mid)
    return (lo + hi) / 2


def reference_ratio(alpha: float) -> float:
    """Root of r - 2 ln(1/alpha) - ln(1 + r) by bisection (the module iterates a fixed point)."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid - 2 * math.log(1 / alpha) - math.log1p(mid) < 0 else (lo, mid)
    return lo


# -------------------------------------------------------------- the boundary


@pytest.mark.parametrize(
    ("variance", "tau2", "alpha"),
    [
        pytest.param(1e-3, 1e-3, 0.05, id="V-equals-tau2"),
        pytest.param(1e-4, 2.3e-3, 0.05 / 12, id="many-samples"),
        pytest.param(0.05, 2.3e-3, 0.05 / 12, id="few-samples"),
        pytest.param(2.5e-5, 1e-2, 0.01, id="tiny-V"),
        pytest.param(1.0, 1.0, 0.2, id="unit"),
    ],
)
def test_half_width_matches_the_mixture_likelihood_ratio(variance: float, tau2: float, alpha: float) -> None:
    assert half_width(variance, tau2, alpha) == pytest.approx(reference_half_width(variance, tau2, alpha), rel=1e-6)


@pytest.mark.parametrize(
    ("variance", "tau2", "alpha", "expected"),
    [
        # Hand-computed: sqrt(V(V+τ²)/τ² · [2 ln(1/alpha) + ln((V+τ²)/V)]).
        # V = τ² = 1e-3, alpha = 0.05: sqrt(2e-3 · (5.991465 + 0.693147)) = sqrt(0.01336922) = 0.1156254
        pytest.param(1e-3, 1e-3, 0.05, 0.1156254, id="V-equals-tau2"),
        # V = 1, τ² = 3, alpha = e^-2: sqrt(4/3 · (4 + ln 4)) = sqrt(4/3 · 5.386294) = 2.679874
        pytest.param(1.0, 3.0, math.exp(-2), 2.679874, id="round-numbers"),
    ],
)
def test_half_width_known_values(variance: float, tau2: float, alpha: float, expected: float) -> None:
    assert half_width(variance, tau2, alpha) == pytest.approx(expected, rel=1e-6)


def test_half_width_limits() -> None:
    assert half_width(math.inf, 1e-3, 0.05) == math.inf
    assert half_width(0.0, 1e-3, 0.05) == 0.0
    assert confidence_sequence(0.3, 1e-3, 1e-3, 0.05) == pytest.approx((0.3 - 0.1156254, 0.3 + 0.1156254))


@pytest.mark.parametrize("alpha", [0.2, 0.05, 0.05 / 12, 1e-6])
def test_optimal_ratio_solves_its_fixed_point(alpha: float) -> None:
    r = optimal_ratio(alpha)
    assert r == pytest.approx(reference_ratio(alpha), rel=1e-9)
    assert r == pytest.approx(2 * math.log(1 / alpha) + math.log1p(r), rel=1e-12)


def test_optimal_ratio_known_value() -> None:
    # alpha = 0.05: r = 5.991465 + ln(1 + r) -> 8.21197 (checked by hand iteration: 8.2120 -> 8.2120).
    assert optimal_ratio(0.05) == pytest.approx(8.21197, rel=1e-5)


@pytest.mark.parametrize(("margin", "alpha"), [(0.05, 0.05 / 12), (0.02, 0.05), (1.0, 0.01)])
def test_margin_mixing_variance_reaches_the_margin_soonest(margin: float, alpha: float) -> None:
    tau2 = margin_mixing_variance(margin, alpha)
    r = optimal_ratio(alpha)
    v_star = margin**2 / (1 + r)
    # At V* the half-width is exactly the margin ...
    assert half_width(v_star, tau2, alpha) == pytest.approx(margin, rel=1e-9)
    # ... and any other mixture is wider there, so it reaches the margin later (at a smaller V).
    for factor in (0.5, 0.8, 1.25, 2.0):
        assert half_width(v_star, tau2 * factor, alpha) > margin


def test_mixing_variance_is_narrowest_at_the_planned_variance() -> None:
    alpha, planned = 0.01, 4e-4
    tau2 = mixing_variance(alpha, planned)
    best = half_width(planned, tau2, alpha)
    for factor in (0.3, 0.7, 1.5, 3.0):
        assert half_width(planned, tau2 * factor, alpha) > best


def test_split_alpha_is_bonferroni() -> None:
    assert split_alpha(0.05, 4) == pytest.approx(0.0125)
    assert split_alpha(0.05, 4, windows=3) == pytest.approx(0.05 / 12)
    with pytest.raises(ValueError):
        split_alpha(0.05, 0)
    with pytest.raises(ValueError):
        split_alpha(1.5, 1)


# ------------------------------------------------------------------ counters


@pytest.mark.parametrize(
    ("counters", "mean", "variance"),
    [
        # raw (7 - 7²/10)/9 = 0.233333 > floor 8·4/12² = 0.222222
        pytest.param(Counters.bernoulli(10, 7), 0.7, 2.1 / 9, id="bernoulli"),
        # all pass: raw 0, floor (20+1)(0+1)/22² = 21/484
        pytest.param(Counters.bernoulli(20, 20), 1.0, 21 / 484, id="all-pass"),
        pytest.param(Counters.bernoulli(20, 0), 0.0, 21 / 484, id="all-fail"),
        # no samples: one pass and one failure, (1·1)/2² = 0.25, the largest a 0/1 variable has
        pytest.param(Counters.bernoulli(0, 0), None, 0.25, id="empty"),
        # one pass: (2·1)/3² = 2/9
        pytest.param(Counters.bernoulli(1, 1), 1.0, 2 / 9, id="one"),
        # scores 2, 3, 4, 5 on [1, 5]: raw (54 - 196/4)/3 = 5/3; with 1 and 5 added:
        # 80/6 - (20/6)² = 20/9 = 2.2222, the floor wins
        pytest.param(Counters.scores(4, 14, 54, low=1, high=5), 3.5, 20 / 9, id="scores-1-to-5"),
        # judge: 10 wins, 30 losses, 60 ties -> S = -20, Q = 40; raw 36/99 = 0.363636;
        # with -1 and +1 added: 42/102 - (20/102)² = 0.373318, the floor wins
        pytest.param(Counters.pairwise(10, 30, 60), -0.2, 42 / 102 - (20 / 102) ** 2, id="pairwise"),
    ],
)
def test_counters_mean_and_floored_variance(counters: Counters, mean: float | None, variance: float) -> None:
    assert counters.mean == (None if mean is None else pytest.approx(mean))
    assert counters.variance == pytest.approx(variance, rel=1e-9)


def test_variance_floor_vanishes_with_many_samples() -> None:
    c = Counters.bernoulli(1_000_000, 900_000)
    assert c.variance == pytest.approx(0.09, rel=1e-5)


def test_counters_pool_and_refuse_nonsense() -> None:
    assert Counters.bernoulli(10, 7) + Counters.bernoulli(30, 20) == Counters.bernoulli(40, 27)
    with pytest.raises(ValueError):
        Counters.bernoulli(10, 7) + Counters.scores(10, 30, 100, low=1, high=5)
    with pytest.raises(ValueError):
        Counters.bernoulli(-1, 0)
    with pytest.raises(ValueError):
        Counters.bernoulli(math.nan, 0)
    with pytest.raises(ValueError):
        Counters.scores(1, 1, 1, low=1, high=1)
    assert Counters.differences(5, 1, 3, low=1, high=5) == Counters(5, 1, 3, -4, 4)


def test_extrapolated_counts_are_accepted() -> None:
    # increase() extrapolates: a few more passes than requests must not break the variance.
    c = Counters.bernoulli(2.67, 2.8)
    assert c.variance > 0
    assert Counters.bernoulli(100.0, 100.4).variance > 0


# ------------------------------------------------------------------ verdicts

RULE = NonInferiority(margin=0.05, alpha=0.05 / 12, min_samples=30)


def _expected_interval(c: Counters, s: Counters, rule: NonInferiority) -> tuple[float, float]:
    assert c.mean is not None and s.mean is not None
    w = reference_half_width(c.variance / c.n + s.variance / s.n, rule.mixing_variance, rule.alpha)
    return c.mean - s.mean - w, c.mean - s.mean + w


@pytest.mark.parametrize(
    ("candidate", "stable", "verdict"),
    [
        pytest.param(Counters.bernoulli(4000, 3600), Counters.bernoulli(12000, 10800), PASS, id="identical-pass"),
        pytest.param(Counters.bernoulli(4000, 3200), Counters.bernoulli(12000, 10800), FAIL, id="10-points-fail"),
        pytest.param(Counters.bernoulli(400, 320), Counters.bernoulli(1200, 1080), CONTINUE, id="10-points-few"),
        pytest.param(Counters.bernoulli(4000, 3400), Counters.bernoulli(12000, 10800), CONTINUE, id="at-margin"),
        pytest.param(Counters.bernoulli(4000, 3800), Counters.bernoulli(12000, 10800), PASS, id="better"),
    ],
)
def test_compare_known_intervals(candidate: Counters, stable: Counters, verdict: SequentialVerdict) -> None:
    result = compare(candidate, stable, RULE, "billing")
    assert (result.lower, result.upper) == pytest.approx(_expected_interval(candidate, stable, RULE), rel=1e-6)
    assert result.verdict == verdict
    assert result.delta == pytest.approx(candidate.s / candidate.n - stable.s / stable.n)
    assert (result.candidate_n, result.stable_n) == (candidate.n, stable.n)


@pytest.mark.parametrize(
    ("candidate", "stable", "verdict"),
    [
        # A rate that counts a harm, stable at 10 %: the candidate's rate dropping is no harm.
        pytest.param(Counters.bernoulli(4000, 400), Counters.bernoulli(12000, 1200), PASS, id="identical-pass"),
        pytest.param(Counters.bernoulli(4000, 100), Counters.bernoulli(12000, 1200), PASS, id="dropped-pass"),
        pytest.param(Counters.bernoulli(4000, 800), Counters.bernoulli(12000, 1200), FAIL, id="rose-10-points-fail"),
        pytest.param(Counters.bernoulli(400, 80), Counters.bernoulli(1200, 120), CONTINUE, id="rose-10-points-few"),
        pytest.param(Counters.bernoulli(4000, 600), Counters.bernoulli(12000, 1200), CONTINUE, id="rose-by-the-margin"),
    ],
)
def test_compare_lower_is_better_known_intervals(candidate: Counters, stable: Counters, verdict: SequentialVerdict) -> None:
    rule = NonInferiority(margin=RULE.margin, alpha=RULE.alpha, direction=Direction.LOWER, min_samples=RULE.min_samples)
    result = compare(candidate, stable, rule, "billing")
    # The interval does not depend on the direction, only the verdict does.
    assert (result.lower, result.upper) == pytest.approx(_expected_interval(candidate, stable, rule), rel=1e-6)
    assert result.verdict == verdict
    assert result.direction == Direction.LOWER
    # The same data counted the other way round (passes instead of harms) is its mirror image.
    flipped = compare(
        Counters.bernoulli(candidate.n, candidate.n - candidate.s), Counters.bernoulli(stable.n, stable.n - stable.s), RULE, "billing"
    )
    assert (flipped.lower, flipped.upper) == pytest.approx((-result.upper, -result.lower), rel=1e-6)
    assert flipped.verdict == verdict


@pytest.mark.parametrize(
    ("direction", "anchor", "widths", "verdict"),
    [
        # Δ̂ placed at ±margin (m = 0.05) plus a multiple of the interval's half-width w.
        pytest.param(Direction.HIGHER, -1, -1.5, FAIL, id="higher-worse-than-margin"),
        pytest.param(Direction.HIGHER, -1, +1.5, PASS, id="higher-within-margin"),
        pytest.param(Direction.HIGHER, -1, 0.0, CONTINUE, id="higher-straddles"),
        pytest.param(Direction.HIGHER, +1, 0.0, PASS, id="higher-better"),
        pytest.param(Direction.LOWER, +1, +1.5, FAIL, id="lower-worse-than-margin"),
        pytest.param(Direction.LOWER, +1, -1.5, PASS, id="lower-within-margin"),
        pytest.param(Direction.LOWER, +1, 0.0, CONTINUE, id="lower-straddles"),
        pytest.param(Direction.LOWER, -1, 0.0, PASS, id="lower-better"),
    ],
)
def test_direction(direction: Direction, anchor: int, widths: float, verdict: SequentialVerdict) -> None:
    n, margin = 2000, 0.05
    rule = NonInferiority(margin=margin, alpha=0.05, direction=direction)
    stable = Counters.bernoulli(n, 0.5 * n)
    w = half_width(2 * stable.variance / n, rule.mixing_variance, rule.alpha)  # about the final width
    assert 0.01 < w < 0.05  # narrower than the margin: every case above is reachable
    passes = round((0.5 + anchor * margin + widths * w) * n)
    candidate = Counters.bernoulli(n, passes)
    result = compare(candidate, stable, rule)
    delta = passes / n - 0.5
    w_exact = half_width(candidate.variance / n + stable.variance / n, rule.mixing_variance, rule.alpha)
    assert (result.delta, result.lower, result.upper) == pytest.approx((delta, delta - w_exact, delta + w_exact))
    assert result.verdict == verdict


def test_min_samples_hold_a_pass_but_not_a_fail() -> None:
    strict = NonInferiority(margin=0.05, alpha=0.05 / 12, min_samples=5000)
    assert compare(Counters.bernoulli(4000, 3600), Counters.bernoulli(12000, 10800), strict).verdict == CONTINUE
    assert compare(Counters.bernoulli(4000, 3200), Counters.bernoulli(12000, 10800), strict).verdict == FAIL


def test_edge_cases() -> None:
    empty, one_pass, one_fail = Counters.bernoulli(0, 0), Counters.bernoulli(1, 1), Counters.bernoulli(1, 0)
    stable = Counters.bernoulli(10_000, 9_000)
    lax = NonInferiority(margin=0.05, alpha=0.05)
    # n = 0: no estimate, an infinite interval, never a decision.
    r = compare(empty, stable, lax)
    assert (r.delta, r.lower, r.upper, r.verdict, r.candidate_mean) == (None, -math.inf, math.inf, CONTINUE, None)
    assert compare(stable, empty, lax).verdict == CONTINUE
    # n = 1: the floored variance (2/9) keeps one sample from deciding either way.
    for single in (one_pass, one_fail):
        r = compare(single, stable, lax)
        assert r.verdict == CONTINUE and r.upper - r.lower > 1
    # all pass against all pass, 200 each: identical, a finite interval, not a point.
    all_pass = Counters.bernoulli(200, 200)
    r = compare(all_pass, all_pass, lax)
    assert r.delta == 0 and 0 < r.upper == -r.lower < 1
    # all fail against all pass, 200 each: certain harm.
    assert compare(Counters.bernoulli(200, 0), all_pass, lax).verdict == FAIL
    # identical arms never fail, however few or many samples.
    for n in (2, 10, 100, 10_000, 1e9):
        arm = Counters.bernoulli(n, 0.9 * n)
        r = compare(arm, arm, RULE)
        assert r.delta == 0 and r.lower == -r.upper and r.verdict != FAIL
    # huge n: a narrow interval and a clear verdict (no overflow, no cancellation to a negative variance).
    huge_c, huge_s = Counters.bernoulli(1e12, 0.9e12), Counters.bernoulli(1e12, 0.9e12 + 1e9)
    r = compare(huge_c, huge_s, RULE)
    assert r.upper - r.lower < 1e-4 and r.verdict == PASS
    assert r.delta == pytest.approx(-0.001)


def test_more_evidence_narrows_the_interval() -> None:
    widths = []
    for k in (1, 2, 4, 10, 100, 1000):
        c, s = Counters.bernoulli(40 * k, 34 * k), Counters.bernoulli(120 * k, 108 * k)
        r = compare(c, s, RULE)
        widths.append(r.upper - r.lower)
        assert r.delta == pytest.approx(-0.05)
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(widths)
    # the half-width grows with V for any fixed tau2 (alpha < 0.6), and shrinks as alpha grows
    vs = [10**e for e in range(-8, 2)]
    assert [half_width(v, 1e-3, 0.05) for v in vs] == sorted(half_width(v, 1e-3, 0.05) for v in vs)
    alphas = [1e-6, 1e-3, 0.01, 0.05, 0.2]
    assert [half_width(1e-3, 1e-3, a) for a in alphas] == sorted((half_width(1e-3, 1e-3, a) for a in alphas), reverse=True)


def test_compare_paired() -> None:
    rule = NonInferiority(margin=0.05, alpha=0.05 / 12, min_samples=30)
    # A judge: 10 % wins, 30 % losses out of 2000: clearly worse by 0.2 net.
    r = compare_paired(Counters.pairwise(200, 600, 1200), rule, "judge")
    assert r.verdict == FAIL and r.candidate_n == r.stable_n == 2000 and r.candidate_mean is None
    c = Counters.pairwise(200, 600, 1200)
    w = reference_half_width(c.variance / c.n, rule.mixing_variance, rule.alpha)
    assert (r.lower, r.upper) == pytest.approx((-0.2 - w, -0.2 + w), rel=1e-6)
    # Shadow pairs of 0..1 scores that agree: d = 0 always; the floor still leaves an interval.
    same = compare_paired(Counters.differences(20_000, 0.0, 0.0), rule)
    assert same.verdict == PASS and same.upper > 0
    assert compare_paired(Counters.differences(20, 0.0, 0.0), rule).verdict == CONTINUE  # below min_samples
    assert compare_paired(Counters.pairwise(0, 0), rule).verdict == CONTINUE


def test_rule_validation() -> None:
    with pytest.raises(ValueError):
        NonInferiority(margin=0.0, alpha=0.05)  # cannot tune tau2 from a zero margin
    NonInferiority(margin=0.0, alpha=0.05, tau2=1e-3)
    with pytest.raises(ValueError):
        NonInferiority(margin=-0.1, alpha=0.05)
    with pytest.raises(ValueError):
        NonInferiority(margin=0.1, alpha=0.0)
    with pytest.raises(ValueError):
        NonInferiority(margin=0.1, alpha=0.05, tau2=-1.0)
    with pytest.raises(ValueError):
        compare(Counters.bernoulli(1, 1), Counters.scores(1, 1, 1, low=0, high=5), RULE)


def test_line() -> None:
    result = SequentialResult(
        "billing", FAIL, -0.08, -0.13, -0.03, 400, 0.82, 1200, 0.90, 0.05, Direction.HIGHER, 0.004
    )
    assert result.line() == "billing  \u0394 \u22120.08 [\u22120.13, \u22120.03]  FAIL"
    r = compare(Counters.bernoulli(0, 0), Counters.bernoulli(5, 5), RULE, "")
    assert r.line() == "all  \u0394 none [\u2212\u221e, +\u221e]  CONTINUE"
    assert compare(Counters.bernoulli(4000, 3600), Counters.bernoulli(12000, 10800), RULE, "general").line() == (
        "general  \u0394 0.00 [\u22120.02, 0.02]  PASS"
    )


# ---------------------------------------------------------------- peeking


def _a_a_runs(
    runs: int, looks: int, batch: int, rng: random.Random, p: float = 0.9
) -> tuple[list[list[SequentialResult]], list[list[tuple[float, float]]]]:
    """A/A: candidate and stable both pass with probability p; a look after every ``batch`` per arm.

    Returns, per run, the sequential results (margin 0: Fail is "candidate proven worse") and
    the naive fixed-level 95 % intervals at the same looks.
    """
    tau2 = mixing_variance(0.05, 2 * p * (1 - p) / (looks * batch / 4))  # narrowest at a quarter of the run
    rule = NonInferiority(margin=0.0, alpha=0.05, tau2=tau2)
    results, naive = [], []
    for _ in range(runs):
        sc = ss = n = 0
        rs, nv = [], []
        for _ in range(looks):
            sc += sum(rng.random() < p for _ in range(batch))
            ss += sum(rng.random() < p for _ in range(batch))
            n += batch
            c, s = Counters.bernoulli(n, sc), Counters.bernoulli(n, ss)
            rs.append(compare(c, s, rule))
            se = math.sqrt(c.variance / n + s.variance / n)
            nv.append((sc / n - ss / n - 1.96 * se, sc / n - ss / n + 1.96 * se))
        results.append(rs)
        naive.append(nv)
    return results, naive


def test_a_a_false_fail_rate_under_peeking_stays_below_alpha() -> None:
    rng = random.Random(20260514)
    results, naive = _a_a_runs(runs=400, looks=60, batch=25, rng=rng)
    false_fail = sum(any(r.verdict == FAIL for r in run) for run in results) / len(results)
    miscovered = sum(any(r.lower > 0 or r.upper < 0 for r in run) for run in results) / len(results)
    naive_miscovered = sum(any(lo > 0 or hi < 0 for lo, hi in run) for run in naive) / len(naive)
    assert false_fail <= 0.05
    assert miscovered <= 0.05
    # The same data, judged with a fixed-level interval at every look, are wrong far more often:
    # the simulation is sensitive enough to see peeking.
    assert naive_miscovered > 2 * 0.05


def test_pairwise_judge_a_a_under_peeking() -> None:
    rng = random.Random(7)
    rule = NonInferiority(margin=0.0, alpha=0.05, tau2=mixing_variance(0.05, 0.5 / 400))
    fails = 0
    for _ in range(300):
        wins = losses = ties = 0
        failed = False
        for _ in range(40):
            for _ in range(40):
                u = rng.random()
                wins, losses, ties = wins + (u < 0.3), losses + (0.3 <= u < 0.6), ties + (u >= 0.6)
            failed = failed or compare_paired(Counters.pairwise(wins, losses, ties), rule).verdict == FAIL
        fails += failed
    assert fails / 300 <= 0.05


def test_the_interval_never_leaves_what_the_difference_can_be() -> None:
    # Three tied pairs: the raw interval is wider than -1..1; the shown one is cut to it, the verdict unchanged.
    rule = NonInferiority(margin=0.2, alpha=0.0016)
    paired = compare_paired(Counters.pairwise(0, 0, 3), rule)
    assert (paired.lower, paired.upper) == (-1.0, 1.0) and paired.verdict == SequentialVerdict.CONTINUE
    two = compare(Counters.bernoulli(2, 2), Counters.bernoulli(2, 0), rule)
    assert -1.0 <= two.lower <= two.upper == 1.0
