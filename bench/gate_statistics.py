"""Gate statistics under the operator's own look schedule: false rollbacks, false promotions, samples to detect.

    python bench/gate_statistics.py [--runs 1000] [--seed 1] [--processes 2] [--check-schedule 20]

Simulates whole rollouts, pure Python, no cluster. Each look is what the
operator does (core/rollout.py): an analysis every ``analysisInterval`` over
the step so far, the first ``minAnalysisWindowSeconds`` into each step; a
step ends at the first look after its duration where every (gate, slice)
passes; a rollback when one fails ``failureLimit`` looks in a row. Prints one
table comparing

* the new verdict (core/sequential.py: an anytime-valid confidence sequence
  on candidate minus stable, non-inferiority with a margin), and
* the rule core/gates.py applies today: ``compare.maxRelativeDrop`` judged on
  the two means at every look, with ``minSamples`` and ``failureLimit``,

on three candidates: identical to stable (A/A: every rollback is false), 5
points worse on a slice with 4 % of the traffic (every promotion is false),
and 10 points worse there (how many samples until the rollback). A
fixed-horizon test with the same per-comparison alpha and the same power
gives the reference sample size. ``--check-schedule N`` first replays N
rollouts per rule through the real ``core.rollout.decide`` and checks that
they end exactly as the fast simulation says (same outcome, same second).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "e2e"))

from dataplane import SLICE_WEIGHTS  # noqa: E402  (the e2e load generator's slice mix)
from inferstack.api.v1alpha1 import Gate, RolloutSpec  # noqa: E402
from inferstack.core.config import OperatorConfig  # noqa: E402
from inferstack.core.durations import parse_seconds  # noqa: E402
from inferstack.core.sequential import (  # noqa: E402
    Counters,
    NonInferiority,
    SequentialVerdict,
    compare,
    split_alpha,
)
from scenario import QUALITY_GATE  # noqa: E402  (the e2e quality gate: maxRelativeDrop 0.2, minSamples 3)

# ---------------------------------------------------------------- assumptions

RATE = 40.0  # requests/s, sent at a fixed interval like the e2e load generator (dataplane.Load)
SLICES = tuple(SLICE_WEIGHTS)  # billing 4 %, shipping 36 %, general 60 %
SMALL = "billing"
STABLE_PASS = 0.90  # pass rate of the stable revision on every slice
INTERVAL = parse_seconds(RolloutSpec().analysis_interval)  # 30 s, the API default
MIN_WINDOW = OperatorConfig.model_fields["min_analysis_window_seconds"].default  # 60 s, the operator default
FAILURE_LIMIT = Gate.model_fields["failure_limit"].default  # 1
STEP = 300.0  # 5m: the default canary and ramp durations
# simulate() checks the step's end at looks only: exact when the step ends on a look.
assert (STEP - MIN_WINDOW) % INTERVAL == 0
# e2e/scenario.py's steps without the shadow step (shadow pairs need a correlation model this
# bench does not make up): canary 25 %, then a ramp of +25 % -> 50 %, 75 %, then 100 % = promotion.
WEIGHTS = (0.25, 0.50, 0.75)
EVALUATIONS = len(SLICES) + 1  # each listed slice and the aggregate
ALPHA = 0.05
MARGIN = 0.05  # five points of pass rate: the largest drop that is still acceptable
SEQ_ALPHA = split_alpha(ALPHA, EVALUATIONS, windows=len(WEIGHTS))
SEQ_MIN_SAMPLES = 30.0
HORIZON = 4 * 3600.0  # a rollout neither promoted nor rolled back by then counts as held
SCENARIOS = {"A/A": 0.0, "-5 pts": -0.05, "-10 pts": -0.10}  # candidate minus stable, billing only


# --------------------------------------------------------------------- random


def binomial(rng: random.Random, n: int, p: float) -> int:
    """An exact Binomial(n, p) draw (Python 3.11 has no random.binomialvariate).

    Inversion by sequential search for small ``n·p``; otherwise Hörmann's BTRS
    (transformed rejection with squeeze: W. Hörmann, "The generation of
    binomial random variates", J. Statist. Comput. Simul. 46 (1993) 101-110),
    the algorithm numpy uses.
    """
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1.0 - p)
    q = 1.0 - p
    if n * p < 10.0:
        # P(0) = q^n, then P(k+1) = P(k) · (n-k)/(k+1) · p/q.
        u, k, pk, ratio = rng.random(), 0, q**n, p / q
        while u > pk and k < n:
            u -= pk
            pk *= (n - k) / (k + 1) * ratio
            k += 1
        return k
    spq = math.sqrt(n * p * q)
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * p
    c = n * p + 0.5
    v_r = 0.92 - 4.2 / b
    alpha = (2.83 + 5.1 / b) * spq
    lpq = math.log(p / q)
    m = math.floor((n + 1) * p)
    h = math.lgamma(m + 1) + math.lgamma(n - m + 1)
    while True:
        u = rng.random() - 0.5
        v = rng.random()
        us = 0.5 - abs(u)
        k = math.floor((2 * a / us + b) * u + c)
        if k < 0 or k > n:
            continue
        if us >= 0.07 and v <= v_r:
            return k
        v *= alpha / (a / (us * us) + b)
        if math.log(v) <= h - math.lgamma(k + 1) - math.lgamma(n - k + 1) + (k - m) * lpq:
            return k


def traffic(
    rng: random.Random, seconds: float, weight: float, effect: float
) -> list[tuple[int, int, int, int]]:
    """One chunk of traffic: per slice (n_cand, passes_cand, n_stable, passes_stable)."""
    left, share_left = round(RATE * seconds), 1.0
    out = []
    for i, name in enumerate(SLICES):
        share = SLICE_WEIGHTS[name]
        n = left if i == len(SLICES) - 1 else binomial(rng, left, share / share_left)
        left, share_left = left - n, share_left - share
        nc = binomial(rng, n, weight)
        pc = STABLE_PASS + (effect if name == SMALL else 0.0)
        out.append((nc, binomial(rng, nc, pc), n - nc, binomial(rng, n - nc, STABLE_PASS)))
    return out


# ---------------------------------------------------------------------- rules

# One look's verdict for one (gate, slice): "Pass", "Fail" or "Inconclusive".
Judge = Callable[[int, int, int, int], str]


@dataclass(frozen=True)
class Rule:
    name: str
    judge: Judge
    failure_limit: int
    relative_drop: float | None = None  # for the decide() replay's gate spec


def sequential_rule(margin: float, name: str, tau2: float | None = None) -> Rule:
    rule = NonInferiority(margin=margin, alpha=SEQ_ALPHA, min_samples=SEQ_MIN_SAMPLES, tau2=tau2)

    def judge(nc: int, sc: int, ns: int, ss: int) -> str:
        v = compare(Counters.bernoulli(nc, sc), Counters.bernoulli(ns, ss), rule).verdict
        return "Inconclusive" if v == SequentialVerdict.CONTINUE else v.value

    return Rule(name, judge, FAILURE_LIMIT)


def relative_drop_rule(drop: float, min_samples: int, failure_limit: int, name: str) -> Rule:
    """core/gates.py's compare rule on a pass-rate query: Fail when candidate < baseline·(1 - drop)."""

    def judge(nc: int, sc: int, ns: int, ss: int) -> str:
        if nc < min_samples or nc == 0 or ns == 0:  # too few samples, or no value / no baseline
            return "Inconclusive"
        return "Fail" if sc / nc < (ss / ns) * (1 - drop) else "Pass"

    return Rule(name, judge, failure_limit, drop)


def rules() -> list[Rule]:
    drop = MARGIN / STABLE_PASS  # the same five points as a relative drop: 5.6 %
    scenario_drop, scenario_min = QUALITY_GATE["compare"]["maxRelativeDrop"], QUALITY_GATE["minSamples"]
    return [
        sequential_rule(MARGIN, f"sequential, margin {MARGIN * 100:.0f} pts"),
        sequential_rule(
            0.0,
            "sequential, margin 0 (validity check: Fails on any proven drop, never passes a tie)",
            tau2=NonInferiority(margin=MARGIN, alpha=SEQ_ALPHA).mixing_variance,
        ),
        relative_drop_rule(
            scenario_drop,
            scenario_min,
            FAILURE_LIMIT,
            f"relative drop {scenario_drop:.0%}, minSamples {scenario_min}, failureLimit {FAILURE_LIMIT} (e2e gate)",
        ),
        relative_drop_rule(
            drop, 3, 1, f"relative drop {drop:.1%} (= {MARGIN * 100:.0f} pts), minSamples 3, failureLimit 1"
        ),
        relative_drop_rule(drop, 100, 3, f"relative drop {drop:.1%}, minSamples 100, failureLimit 3"),
    ]


# ----------------------------------------------------------------- simulation


@dataclass(frozen=True)
class Outcome:
    kind: str  # promoted | rolled back | held
    seconds: float  # since the first step started
    samples: int  # answers of the small slice judged, both arms, since the rollout started


def _verdicts(rule: Rule, window: list[list[int]]) -> list[str]:
    """Verdicts of every (slice, aggregate) from the window's per-slice counts."""
    aggregate = [sum(s[i] for s in window) for i in range(4)]
    return [rule.judge(*counts) for counts in (*window, aggregate)]


def simulate(rule: Rule, effect: float, rng: random.Random) -> Outcome:
    """One rollout with the operator's schedule (mirrors core/rollout.py; --check-schedule verifies it)."""
    start, samples_before = 0.0, 0
    for weight in WEIGHTS:
        window = [[0, 0, 0, 0] for _ in SLICES]
        failures = [0] * EVALUATIONS
        t = start
        look = start + MIN_WINDOW  # the first analysis of a step; then one every INTERVAL
        while True:
            for chunk in _chunks(t, look, start):
                for counts, new in zip(window, traffic(rng, chunk, weight, effect), strict=True):
                    for i in range(4):
                        counts[i] += new[i]
            t = look
            samples = samples_before + window[0][0] + window[0][2]
            if t > HORIZON:
                return Outcome("held", t, samples)
            verdicts = _verdicts(rule, window)
            for i, v in enumerate(verdicts):
                failures[i] = failures[i] + 1 if v == "Fail" else 0 if v == "Pass" else failures[i]
            if any(f >= rule.failure_limit for f in failures):
                return Outcome("rolled back", t, samples)
            if t >= start + STEP and all(v == "Pass" for v in verdicts):
                break
            look = t + INTERVAL
        start, samples_before = t, samples
    return Outcome("promoted", start, samples_before)


def _chunks(t: float, until: float, step_start: float) -> list[float]:
    """Traffic between two looks in INTERVAL-long pieces aligned to the step's start (the
    --check-schedule replay draws the same pieces in the same order)."""
    out = []
    while t < until - 1e-9:
        nxt = min(until, step_start + (math.floor((t - step_start) / INTERVAL + 1e-9) + 1) * INTERVAL)
        out.append(nxt - t)
        t = nxt
    return out


def _cell(args: tuple[int, int, int, int, int]) -> list[Outcome]:
    rule_index, scenario_index, chunk, runs, seed = args
    rule, effect = rules()[rule_index], list(SCENARIOS.values())[scenario_index]
    rng = random.Random(f"{seed}/{rule_index}/{scenario_index}/{chunk}")
    return [simulate(rule, effect, rng) for _ in range(runs)]


# -------------------------------------------------- replay through decide()


def check_schedule(runs: int, seed: int) -> int:
    """Replays rollouts through core.rollout.decide with the same random draws; returns how many matched."""
    from inferstack.api.v1alpha1 import InferenceStackSpec
    from inferstack.core.gates import GateVerdict, Verdict
    from inferstack.core.rollout import Analysis, Observations, RolloutState, analysis_window, decide
    from scenario import GOOD_PROMPT, support_stack

    matched = 0
    for rule_index, rule in enumerate(rules()):
        gate = dict(QUALITY_GATE, compare={"maxRelativeDrop": rule.relative_drop or 0.05}, minSamples=0)
        gate["failureLimit"] = rule.failure_limit
        steps = [
            {"canary": {"weight": round(WEIGHTS[0] * 100), "duration": f"{STEP:.0f}s"}},
            {"ramp": {"increment": round((WEIGHTS[1] - WEIGHTS[0]) * 100), "duration": f"{STEP:.0f}s"}},
        ]
        body = support_stack(
            "bench", GOOD_PROMPT, gates=[gate], analysisInterval=f"{INTERVAL:.0f}s", steps=steps
        )
        spec = InferenceStackSpec.model_validate(body["spec"])
        min_window = timedelta(seconds=MIN_WINDOW)
        for scenario_index, effect in enumerate(SCENARIOS.values()):
            for run in range(runs):
                fast = simulate(
                    rule, effect, random.Random(f"check/{seed}/{rule_index}/{scenario_index}/{run}")
                )
                rng = random.Random(f"check/{seed}/{rule_index}/{scenario_index}/{run}")
                t0 = datetime(2026, 1, 1, tzinfo=UTC)
                now, obs = t0, Observations(revision="cand", ready=frozenset({"cand"}))
                decision = decide(
                    spec, RolloutState(stable="stable"), obs, now, min_window
                )  # pods Ready: step 1
                state = decision.state
                step_start, sampled_to, samples_before = state.step_started_at, now, 0
                window = [[0, 0, 0, 0] for _ in SLICES]
                outcome: Outcome | None = None
                while outcome is None:
                    assert decision.requeue_after is not None and step_start is not None
                    now += decision.requeue_after
                    if state.step_started_at != step_start:  # a new step: a new window
                        samples_before += window[0][0] + window[0][2]
                        window = [[0, 0, 0, 0] for _ in SLICES]
                        assert state.step_started_at is not None
                        step_start = sampled_to = state.step_started_at
                    seconds = (now - t0).total_seconds()
                    pieces = _chunks(
                        (sampled_to - t0).total_seconds(), seconds, (step_start - t0).total_seconds()
                    )
                    for chunk in pieces:
                        new = traffic(rng, chunk, state.candidate_weight / 100, effect)
                        for counts, add in zip(window, new, strict=True):
                            for i in range(4):
                                counts[i] += add[i]
                    sampled_to = now
                    samples = samples_before + window[0][0] + window[0][2]
                    analysis = None
                    win = analysis_window(spec, state, now, min_window)
                    if win is not None:
                        if seconds > HORIZON:
                            outcome = Outcome("held", seconds, samples)
                            break
                        verdicts = tuple(
                            GateVerdict(gate["name"], s, Verdict(v))
                            for s, v in zip([*SLICES, ""], _verdicts(rule, window), strict=True)
                        )
                        analysis = Analysis("cand", now, verdicts, window_start=now - win)
                    decision = decide(spec, state, replace(obs, analysis=analysis), now, min_window)
                    state = decision.state
                    if decision.rollback is not None:
                        outcome = Outcome("rolled back", seconds, samples)
                    elif decision.promoted is not None:
                        outcome = Outcome("promoted", seconds, samples)
                if outcome != fast:
                    raise SystemExit(
                        f"schedule check failed: {rule.name}, effect {effect}: decide() {outcome}, simulation {fast}"
                    )
                matched += 1
    return matched


# --------------------------------------------------------------------- report


def fixed_horizon_samples(power: float) -> float:
    """Samples of the small slice (both arms, first step's split) for a one-look z test of
    H0: Δ >= -margin at the sequential's per-comparison alpha, with this power at Δ = -10 pts."""
    z = statistics.NormalDist()
    w = WEIGHTS[0]
    pc, ps = STABLE_PASS + SCENARIOS["-10 pts"], STABLE_PASS
    per_sample = pc * (1 - pc) / w + ps * (1 - ps) / (1 - w)  # V = per_sample / n
    distance = -SCENARIOS["-10 pts"] - MARGIN
    return per_sample * ((z.inv_cdf(1 - SEQ_ALPHA) + z.inv_cdf(power)) / distance) ** 2


def _rate(outcomes: Sequence[Outcome], kind: str) -> float:
    return sum(o.kind == kind for o in outcomes) / len(outcomes)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.inf


def _fmt_count(x: float) -> str:
    return "never" if math.isinf(x) else f"{x:,.0f}"


def _fmt_minutes(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds / 60:.1f} min"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="rollouts per (rule, candidate)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--check-schedule",
        type=int,
        default=10,
        metavar="N",
        help="rollouts per rule and candidate replayed through decide()",
    )
    args = parser.parse_args()

    began = time.monotonic()
    if args.check_schedule:
        checked = check_schedule(args.check_schedule, args.seed)
        print(
            f"schedule check: {checked} rollouts replayed through core.rollout.decide ended as simulated",
            flush=True,
        )

    chunks = 4  # fixed, so the result depends on --seed only, not on --processes
    per_chunk = [args.runs // chunks + (i < args.runs % chunks) for i in range(chunks)]
    tasks = [
        (r, s, c, per_chunk[c], args.seed)
        for r in range(len(rules()))
        for s in range(len(SCENARIOS))
        for c in range(chunks)
    ]
    with multiprocessing.Pool(args.processes) as pool:
        results = pool.map(_cell, tasks, chunksize=1)
    cells: dict[tuple[int, int], list[Outcome]] = {}
    for (r, s, _, _, _), outcomes in zip(tasks, results, strict=True):
        cells.setdefault((r, s), []).extend(outcomes)
    elapsed = time.monotonic() - began

    horizon_h = HORIZON / 3600
    print(
        f"\n{args.runs} simulated rollouts per rule and candidate, seed {args.seed}, {elapsed:.0f} s on {args.processes} processes"
    )
    print("assumptions:")
    print(f"  traffic   {RATE:g} req/s at a fixed rate; slices " + ", ".join(f"{k} {v:.0%}" for k, v in SLICE_WEIGHTS.items())
          + " (e2e/dataplane.py); each request to the candidate with probability = its weight")  # fmt: skip
    print(
        f"  quality   one pass/fail score per answer; stable passes {STABLE_PASS:.0%} on every slice; a worse candidate only on {SMALL}"
    )
    print(f"  rollout   canary {WEIGHTS[0]:.0%}, ramp to " + ", ".join(f"{w:.0%}" for w in WEIGHTS[1:])
          + f", 100% = promotion; {STEP / 60:.0f} min per step (defaults); analysisInterval {INTERVAL:.0f}s,"
          f" minAnalysisWindowSeconds {MIN_WINDOW:.0f}: looks at {MIN_WINDOW:.0f} s, {MIN_WINDOW + INTERVAL:.0f} s, ... of"
          " each step over the step so far")  # fmt: skip
    print(
        f"  gate      one pass-rate gate on {', '.join(SLICES)} + the aggregate: {EVALUATIONS} verdicts per look"
    )
    print(f"  new rule  margin {MARGIN:g}, alpha {ALPHA:g} / ({EVALUATIONS} evaluations x {len(WEIGHTS)} step windows) = {SEQ_ALPHA:.5f}"
          f" per sequence, tau^2 = {NonInferiority(margin=MARGIN, alpha=SEQ_ALPHA).mixing_variance:.5f} (from the margin),"
          f" Pass needs {SEQ_MIN_SAMPLES:.0f} samples per arm, failureLimit {FAILURE_LIMIT}")  # fmt: skip
    print(f"  horizon   {horizon_h:g} h per rollout (neither promoted nor rolled back by then: held)")
    print(f"  samples   {SMALL} answers judged, both arms, from the first step's start to the look that rolled back;"
          " median over all runs, undetected runs counted as never")  # fmt: skip
    print()

    header = (
        "rule",
        "false rollback rate (A/A)",
        f"false promotion rate ({SMALL} -5 pts; held at {HORIZON / 3600:g} h)",
        f"rolled back ({SMALL} -10 pts)",
        "median samples to detect",
        "median time to detect",
        f"A/A promoted within {horizon_h:g} h (median time)",
    )
    rows = []
    seq_power = 0.0
    for r, rule in enumerate(rules()):
        aa, bad5, bad10 = (cells[(r, s)] for s in range(len(SCENARIOS)))
        detected = [o for o in bad10 if o.kind == "rolled back"]
        power = len(detected) / len(bad10)
        if r == 0:
            seq_power = power
        samples = sorted([float(o.samples) for o in detected] + [math.inf] * (len(bad10) - len(detected)))
        seconds = sorted([o.seconds for o in detected] + [math.inf] * (len(bad10) - len(detected)))
        promoted = [o.seconds for o in aa if o.kind == "promoted"]
        rows.append((
            rule.name,
            f"{_rate(aa, 'rolled back'):.3f}",
            f"{_rate(bad5, 'promoted'):.3f} ({_rate(bad5, 'held'):.3f} held)",
            f"{power:.3f}",
            _fmt_count(statistics.median(samples)),
            _fmt_minutes(statistics.median(seconds)),
            f"{len(promoted) / len(aa):.3f} ({_fmt_minutes(_median(promoted))})",
        ))  # fmt: skip
    # The sequential rule's power, capped: a fixed test of power 1 needs infinitely many samples.
    power = min(seq_power, 0.99)
    n_fixed = fixed_horizon_samples(power)
    slice_rate = RATE * SLICE_WEIGHTS[SMALL]
    rows.append((
        f"fixed-horizon z test, one look, alpha {SEQ_ALPHA:.5f}, power {power:.3f} (the new rule's, at most 0.99)",
        "-", "-", f"{power:.3f}", _fmt_count(n_fixed), _fmt_minutes(n_fixed / slice_rate), "-",
    ))  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for p in (0.5, 0.8, 0.9):
        n = fixed_horizon_samples(p)
        print(f"(fixed-horizon at power {p:.2f}: {_fmt_count(n)} samples, {_fmt_minutes(n / slice_rate)})")


if __name__ == "__main__":
    main()
