"""Anytime-valid gate verdicts: a confidence sequence on candidate minus stable.

Why this exists
---------------
The operator judges a step every ``analysisInterval`` over the step so far
(``rollout.analysis_window``) and acts on the first look that fails (after
``failureLimit`` in a row) or passes (once the step's duration is over). A
fixed-level test re-run at every look is wrong far more often than its level
says (Armitage, McPherson & Rowe 1969; Johari et al. 2017). A
*confidence sequence* is a sequence of intervals that holds at every look at
once: ``P(there is a look where Δ is outside the interval) <= alpha``, so the
operator may look as often as it likes and stop on whichever look it likes.

What is computed
----------------
Per arm three counters, the shape every evaluator exports (samples, score sum,
sum of squared scores): ``n``, ``S = Σx``, ``Q = Σx²`` (pass/fail: ``Q = S``).
For the difference ``Δ = m_cand - m_stable`` with estimate ``Δ̂`` and variance
``V = v_c/n_c + v_s/n_s`` the two-sided normal-mixture sequential probability
ratio test (mixing distribution ``N(0, τ²)`` over the effect) rejects ``Δ``
once its likelihood ratio reaches ``1/alpha``; inverted, the interval is ::

    Δ̂ ± sqrt( V (V + τ²) / τ² · [ 2 ln(1/alpha) + ln((V + τ²) / V) ] )

Sources: Robbins, "Statistical methods related to the law of the iterated
logarithm", Ann. Math. Statist. 41 (1970) (the normal mixture); Johari,
Koomen, Pekelis & Walsh, "Peeking at A/B tests", KDD 2017 (the two-sample
mixture SPRT); Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49 (2021)
(the same boundary in their notation, ``rho = 1/τ²``, and its tuning);
GrowthBook ``docs/docs/statistics/sequential.mdx`` (the tuning parameter as
an expected sample size).

Assumptions, and why they hold well enough here
-----------------------------------------------
* The boundary is exact for Gaussian increments of known variance. With a
  plug-in variance it is an *asymptotic* confidence sequence (Waudby-Smith,
  Arnold, Wu, Wang & Ramdas, "Time-uniform central limit theory and asymptotic
  confidence sequences", Ann. Statist. 2024): the variances are floored (see
  ``Counters.variance``) so that a handful of samples cannot look certain,
  and ``tests/unit/test_sequential.py`` and ``bench/gate_statistics.py``
  check the error rate by simulation under the operator's own look schedule.
* The two-sample form needs the share of samples going to each arm to be
  fixed: each rollout step has one weight and is judged on its own data only
  (the analysis window starts at the step's start), so within one sequence it is.
* Observations are independent given the arm; sticky users whose answers are
  correlated make the interval too narrow (not specific to this method).

Verdicts (non-inferiority with a margin)
----------------------------------------
With "higher is better" (``Direction.HIGHER``) and ``margin`` ``m >= 0``:

* ``Fail``: upper bound < -m, the candidate is worse by more than the margin.
  Roll back now; the sequence is valid at this look, no second look needed.
* ``Pass``: both arms have ``min_samples`` and lower bound > -m.
* ``Continue``: otherwise (the operator's ``Inconclusive``: hold the step).

"Lower is better" mirrors it (Fail when lower > +m, Pass when upper < +m).
A true ``Δ`` at exactly -m is then passed with probability ≤ alpha and an
identical candidate failed with probability ≤ alpha, at every look together.

Pure: standard library ``math`` only. Shadow pairs and pairwise judges use the
one-sample form on per-pair differences (``compare_paired``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

MINUS: Final = "\u2212"  # the typographic minus of the rendered lines


class Direction(StrEnum):
    HIGHER = "HigherIsBetter"  # quality, pass rate, judge wins
    LOWER = "LowerIsBetter"  # latency, refusal rate, cost


class SequentialVerdict(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"
    CONTINUE = "Continue"  # maps to gates.Verdict.INCONCLUSIVE: hold the step, never promote


# -------------------------------------------------------------------- counters


@dataclass(frozen=True)
class Counters:
    """One sample's sufficient statistics: ``n``, ``s = Σx``, ``q = Σx²``; each ``x`` in ``[low, high]``.

    Floats, not ints: Prometheus' ``increase()`` extrapolates to the window's
    edges, so a count of 2.67 is what the operator will be handed.
    """

    n: float
    s: float
    q: float
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not all(math.isfinite(x) for x in (self.n, self.s, self.q, self.low, self.high)):
            raise ValueError(f"counters must be finite: {self}")
        if self.n < 0:
            raise ValueError(f"a sample count cannot be negative: n={self.n}")
        if not self.low < self.high:
            raise ValueError(f"bounds must satisfy low < high: [{self.low}, {self.high}]")

    @classmethod
    def bernoulli(cls, n: float, passes: float) -> Counters:
        """Pass/fail outcomes: ``x ∈ {0, 1}``, so ``Σx² = Σx``."""
        return cls(n, passes, passes)

    @classmethod
    def scores(cls, n: float, total: float, squares: float, low: float = 0.0, high: float = 1.0) -> Counters:
        """Bounded scores (a rubric 0..1, a 1..5 grade) from their count, sum and sum of squares."""
        return cls(n, total, squares, low, high)

    @classmethod
    def differences(
        cls, n: float, total: float, squares: float, low: float = 0.0, high: float = 1.0
    ) -> Counters:
        """Per-pair differences ``d = x_cand - x_stable`` of scores in ``[low, high]`` (shadow pairs).

        A difference lies in ``[low - high, high - low]``, which is what its variance floor uses.
        """
        span = high - low
        return cls(n, total, squares, -span, span)

    @classmethod
    def pairwise(cls, wins: float, losses: float, ties: float = 0.0) -> Counters:
        """A pairwise judge's outcomes for the candidate: ``d = +1`` win, ``-1`` loss, ``0`` tie.

        ``S = wins - losses`` and, since ``d² = 1`` unless a tie, ``Q = wins + losses``.
        """
        return cls(wins + losses + ties, wins - losses, wins + losses, -1.0, 1.0)

    def __add__(self, other: Counters) -> Counters:
        """Pooled counters (e.g. the aggregate of disjoint slices); the bounds must agree."""
        if (self.low, self.high) != (other.low, other.high):
            raise ValueError("cannot pool counters with different bounds")
        return Counters(self.n + other.n, self.s + other.s, self.q + other.q, self.low, self.high)

    @property
    def mean(self) -> float | None:
        """``S/n``; None without samples (no data is not a value)."""
        return self.s / self.n if self.n > 0 else None

    @property
    def variance(self) -> float:
        """The per-observation variance, never below a floor that keeps a small sample uncertain.

        Raw: ``(Q - S²/n)/(n - 1)`` (with ``n >= 2``). Floor: the variance of the
        sample with one extra observation at each bound, ``low`` and ``high``.
        For pass/fail data that is ``(S+1)(n-S+1)/(n+2)²``: add one pass and one
        failure to each arm (Agresti & Caffo, "Simple and effective confidence
        intervals for proportions and differences of proportions result from
        adding two successes and two failures", Am. Statist. 54 (2000)). So
        an all-pass arm of 20 has variance 21/484, not 0, and its interval is
        not a point. Always > 0, also with ``n = 0`` (then it is ``(span/2)²``,
        the largest a bounded variable can have).
        """
        n, s, q = self.n, self.s, self.q
        n2 = n + 2
        s2 = s + self.low + self.high
        q2 = q + self.low**2 + self.high**2
        # The two pseudo-observations alone give at least 2/(n+2) · (span/2)²;
        # the max guards against counters a little inconsistent from
        # extrapolation, where Q2/n2 - (S2/n2)² could come out too small.
        floor = max(q2 / n2 - (s2 / n2) ** 2, (self.high - self.low) ** 2 / (2 * n2))
        if n < 2:
            return floor
        raw = (q - s * (s / n)) / (n - 1)
        return max(raw, floor)

    @property
    def variance_of_mean(self) -> float:
        """``variance / n``: infinite without samples."""
        return self.variance / self.n if self.n > 0 else math.inf


# --------------------------------------------------------------- the boundary


def optimal_ratio(alpha: float) -> float:
    """``r*`` with ``r* = 2 ln(1/alpha) + ln(1 + r*)``: the ``τ²/V`` at which the interval is narrowest.

    The squared half-width is ``V · (1 + 1/r) · (2 ln(1/alpha) + ln(1 + r))`` with
    ``r = τ²/V``; setting its derivative in ``r`` to zero gives this fixed
    point (Howard et al. 2021 give the same optimum for their ``rho``; GrowthBook
    uses the one-step approximation ``2 ln(1/alpha) + ln(1 + 2 ln(1/alpha))``). The
    iteration contracts (the map's slope is ``1/(1 + r) < 1``); 60 steps are
    far more than double precision needs.
    """
    _check_alpha(alpha)
    two_log = 2 * math.log(1 / alpha)
    r = two_log
    for _ in range(60):
        r = two_log + math.log1p(r)
    return r


def mixing_variance(alpha: float, planned_variance: float) -> float:
    """``τ²`` that makes the interval narrowest when ``V`` reaches ``planned_variance``.

    ``planned_variance`` is ``V`` at the sample size where decisions are
    expected (``v_c/n_c* + v_s/n_s*``, from the traffic a step will see): the
    ``rho² N* V`` rule of the brief, with ``rho²`` the optimum. Any ``τ² > 0`` keeps
    the error rate at most alpha; ``τ²`` only moves where the power is. It must be
    fixed before the data arrive: chosen from what was seen, it is no longer
    a fixed mixture and the guarantee is gone.
    """
    if not (planned_variance > 0 and math.isfinite(planned_variance)):
        raise ValueError(f"planned_variance must be positive and finite, got {planned_variance}")
    return optimal_ratio(alpha) * planned_variance


def margin_mixing_variance(margin: float, alpha: float) -> float:
    """``τ²`` for which the half-width first reaches ``margin`` soonest (at the largest ``V``).

    Both decisions need a half-width of about the margin: an identical
    candidate passes once ``half-width < margin``, and a candidate ``2·margin``
    worse fails at about the same point. Tuning the mixture to be narrowest
    exactly there needs no traffic forecast: at the optimum ``r*``, the
    half-width is ``sqrt(V (1 + r*))``, so it equals the margin at
    ``V* = margin² / (1 + r*)``, and ``τ² = r* V* = margin² · r*/(1 + r*)``
    (just under ``margin²``). Any other ``τ²`` is wider at ``V*``, so it needs
    more samples to reach the margin. Depends only on the margin and alpha: fixed
    before the data, as the guarantee requires.
    """
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be positive to tune the mixture from it, got {margin}")
    r = optimal_ratio(alpha)
    return margin * margin * r / (1 + r)


def half_width(variance: float, tau2: float, alpha: float) -> float:
    """``sqrt(V (V + τ²)/τ² · [2 ln(1/alpha) + ln((V + τ²)/V)])``; infinite for an infinite ``V``."""
    _check_alpha(alpha)
    if not (tau2 > 0 and math.isfinite(tau2)):
        raise ValueError(f"the mixing variance tau2 must be positive and finite, got {tau2}")
    if variance < 0 or math.isnan(variance):
        raise ValueError(f"variance must be >= 0, got {variance}")
    if math.isinf(variance):
        return math.inf
    if variance == 0:
        return 0.0  # the limit of the formula: a known mean (unreachable with floored variances)
    # log1p(τ²/V) == ln((V + τ²)/V), accurate when V >> τ² (few samples).
    return math.sqrt(
        variance * (variance + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log1p(tau2 / variance))
    )


def confidence_sequence(estimate: float, variance: float, tau2: float, alpha: float) -> tuple[float, float]:
    """The interval ``estimate ± half_width(variance, tau2, alpha)``; valid at every look at once."""
    w = half_width(variance, tau2, alpha)
    return estimate - w, estimate + w


def split_alpha(alpha: float, evaluations: int, windows: int = 1) -> float:
    """Bonferroni: the alpha of one sequence when a stack has ``evaluations x windows`` of them.

    ``evaluations``: the stack's (gate, slice) pairs, aggregate included
    (``sum(len(g.slices) + 1 for g in gates)``). ``windows``: the steps in
    which the candidate gets traffic; each is judged on its own data, so each
    starts a new sequence. The rollback fires on the first ``Fail`` of any
    sequence, so the stack's false-rollback probability is at most the sum
    of their alpha (union bound, at every look, since each bound is). Bonferroni
    because it needs no independence: the aggregate contains every slice and
    all gates read the same requests, so Šidák's independence is not there;
    and it costs little at these sizes (12 sequences at alpha = 0.05: 0.00417
    each against Šidák's 0.00427). A ``Pass`` is not split further: promotion
    needs a pass in every window, so a false promotion needs a false pass in
    each of them, at most ``alpha / (evaluations x windows)`` already.
    """
    _check_alpha(alpha)
    if evaluations < 1 or windows < 1:
        raise ValueError(f"evaluations and windows must be >= 1, got {evaluations}, {windows}")
    return alpha / (evaluations * windows)


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


# ------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class NonInferiority:
    """The rule of one (gate, slice) sequence; fixed before the data, like everything it holds.

    ``alpha``: this sequence's share (``split_alpha``). ``margin``: the largest
    harm tolerated, in the metric's units (0.05 = five points of a pass rate).
    ``tau2``: the mixing variance; None takes ``margin_mixing_variance``
    (which needs ``margin > 0``). ``min_samples``: per arm (per pair when
    paired) before a Pass; a Fail needs none, the floored variance already
    keeps a few samples from deciding.
    """

    margin: float
    alpha: float
    direction: Direction = Direction.HIGHER
    min_samples: float = 0.0
    tau2: float | None = None

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin must be >= 0 and finite, got {self.margin}")
        if self.tau2 is None and self.margin == 0:
            raise ValueError("margin 0 cannot tune the mixture: give tau2")
        if self.tau2 is not None and not (self.tau2 > 0 and math.isfinite(self.tau2)):
            raise ValueError(f"tau2 must be positive and finite, got {self.tau2}")

    @property
    def mixing_variance(self) -> float:
        return self.tau2 if self.tau2 is not None else margin_mixing_variance(self.margin, self.alpha)


@dataclass(frozen=True)
class SequentialResult:
    """One look at one (gate, slice): both arms, ``Δ̂ = m_cand - m_stable``, its interval, the verdict.

    For a paired comparison both ``n`` are the number of pairs and the arm
    means are None (only differences were counted). ``delta`` is None and the
    interval infinite while an arm has no samples.
    """

    label: str
    verdict: SequentialVerdict
    delta: float | None
    lower: float
    upper: float
    candidate_n: float
    candidate_mean: float | None
    stable_n: float
    stable_mean: float | None
    margin: float
    direction: Direction
    alpha: float

    def line(self, digits: int = 2) -> str:
        """``billing  Δ -0.08 [-0.13, -0.03]  FAIL``; the aggregate (label "") reads ``all``."""
        delta = "none" if self.delta is None else _num(self.delta, digits)
        interval = f"[{_num(self.lower, digits)}, {_num(self.upper, digits)}]"
        return f"{self.label or 'all'}  \u0394 {delta} {interval}  {self.verdict.value.upper()}"


def _num(x: float, digits: int) -> str:
    if math.isinf(x):
        return f"{MINUS}\u221e" if x < 0 else "+\u221e"
    text = f"{x:.{digits}f}"
    if text.startswith("-"):
        # "-0.00" is zero: print it without a sign.
        text = text[1:] if float(text) == 0 else MINUS + text[1:]
    return text


def _verdict(lower: float, upper: float, enough: bool, rule: NonInferiority) -> SequentialVerdict:
    # Orient the interval as "improvement" (positive = candidate better) so both
    # directions share one rule: Fail when even the best case is a harm beyond
    # the margin, Pass when even the worst case is within it.
    better_low, better_high = (lower, upper) if rule.direction == Direction.HIGHER else (-upper, -lower)
    if better_high < -rule.margin:
        return SequentialVerdict.FAIL
    if enough and better_low > -rule.margin:
        return SequentialVerdict.PASS
    return SequentialVerdict.CONTINUE


def compare(candidate: Counters, stable: Counters, rule: NonInferiority, label: str = "") -> SequentialResult:
    """Two-sample verdict on ``Δ = m_cand - m_stable`` (canary traffic: different requests per arm).

    ``V = v_c/n_c + v_s/n_s`` with floored variances; an arm without samples
    gives an infinite interval, so ``Continue``.
    """
    if (candidate.low, candidate.high) != (stable.low, stable.high):
        raise ValueError("candidate and stable must be on the same scale (same bounds)")
    m_c, m_s = candidate.mean, stable.mean
    delta = m_c - m_s if m_c is not None and m_s is not None else None
    variance = candidate.variance_of_mean + stable.variance_of_mean
    span = candidate.high - candidate.low
    return _judge(label, delta, variance, min(candidate.n, stable.n), rule, (candidate.n, m_c, stable.n, m_s), (-span, span))


def _judge(
    label: str,
    delta: float | None,
    variance: float,
    n: float,
    rule: NonInferiority,
    arms: tuple[float, float | None, float, float | None],
    bounds: tuple[float, float],
) -> SequentialResult:
    """The interval on ``delta`` (infinite without one) and the verdict; ``n``: the smaller arm.

    The interval is cut to ``bounds``, the values ``delta`` can take at all
    (a difference of scores in 0..1 lies in -1..1): that changes no verdict
    (the margin is inside the bounds) but keeps the status from showing an
    interval wider than anything possible.
    """
    if delta is None:
        lower, upper = -math.inf, math.inf
    else:
        lower, upper = confidence_sequence(delta, variance, rule.mixing_variance, rule.alpha)
        lower, upper = max(lower, bounds[0]), min(upper, bounds[1])
    enough = n >= rule.min_samples and delta is not None
    return SequentialResult(
        label, _verdict(lower, upper, enough, rule), delta, lower, upper, *arms, rule.margin, rule.direction, rule.alpha
    )


def compare_paired(differences: Counters, rule: NonInferiority, label: str = "") -> SequentialResult:
    """One-sample verdict on the mean per-pair difference (shadow pairs, pairwise judges).

    ``differences`` counts ``d = x_cand - x_stable`` for each pair answering
    the same request (``Counters.differences``), or a judge's win/tie/loss as
    ``+1/0/-1`` (``Counters.pairwise``). The pairing removes the between-request
    variance, which is why a shadow step decides with fewer requests than a
    canary. For a judge the margin is in net wins per pair (0.05: the
    candidate may lose at most 5 points more often than it wins).
    """
    n = differences.n
    return _judge(label, differences.mean, differences.variance_of_mean, n, rule, (n, None, n, None), (differences.low, differences.high))
