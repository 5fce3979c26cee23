"""Evaluator gates: the queries the operator writes, the step windows alpha is split over, the verdicts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core.evaluation import (
    Arm,
    all_queries,
    evaluator_queries,
    judge,
    sequence_alpha,
    traffic_windows,
)
from inferstack.core.gates import AGGREGATE, Verdict

EVALUATION = {
    "slices": {"values": ["billing", "general"]},
    "evaluators": [{"name": "no-refusal", "rule": {"refusal": {}}}],
}
GATE = {"name": "quality", "evaluator": "no-refusal", "margin": 0.05, "minSamples": 30}


def spec(steps: list[dict[str, Any]] | None = None, gates: list[dict[str, Any]] | None = None, **evaluation: Any) -> InferenceStackSpec:
    return InferenceStackSpec.model_validate(
        {
            "model": {"name": "m", "revision": "a" * 40},
            "prompt": {"version": "v1", "system": "s"},
            "rollout": {"steps": steps or [{"canary": {"weight": 25}}, {"ramp": {"increment": 25}}]},
            "evaluation": {**EVALUATION, **evaluation},
            "gates": gates if gates is not None else [GATE],
        }
    )


def test_the_operator_writes_count_sum_and_squares_per_arm_and_slice() -> None:
    queries = evaluator_queries(spec(), stack="bot", namespace="team-a", candidate="cand", stable="stab", window=timedelta(minutes=2))
    assert [(q.gate, q.slice) for q in queries] == [("quality", "billing"), ("quality", "general"), ("quality", AGGREGATE)]
    billing = queries[0]
    assert billing.candidate.samples == (
        'sum(increase(inferstack_eval_samples_total{namespace="team-a",stack="bot",revision="cand",'
        'evaluator="no-refusal",slice=~"billing"}[2m]))'
    )
    assert "inferstack_eval_score_sum_total" in billing.stable.total and 'revision="stab"' in billing.stable.total
    assert "inferstack_eval_score_squares_sum_total" in billing.candidate.squares
    assert 'slice=~".*"' in queries[2].candidate.samples  # the aggregate
    assert len(all_queries(queries)) == 3 * 2 * 3


@pytest.mark.parametrize(
    ("steps", "windows"),
    [
        pytest.param([{"canary": {"weight": 25}}, {"ramp": {"increment": 25}}], 3, id="canary-25-ramp-50-75"),
        pytest.param([{"shadow": {"percent": 50}}, {"canary": {"weight": 10}}, {"pause": {}}, {"canary": {"weight": 50}}], 4, id="pause-with-traffic"),
        pytest.param([{"pause": {"duration": "1m"}}, {"canary": {"weight": 100}}], 1, id="pause-before-traffic-and-100"),
        pytest.param([{"ramp": {"increment": 10}}], 9, id="ramp-from-zero"),
    ],
)  # fmt: skip
def test_each_step_window_is_a_sequence(steps: list[dict[str, Any]], windows: int) -> None:
    assert traffic_windows(spec(steps=steps)) == windows


def test_alpha_is_split_over_every_sequence_of_the_rollout() -> None:
    # 3 evaluations (billing, general, all) x 3 windows
    assert sequence_alpha(spec()) == pytest.approx(0.05 / 9)
    assert sequence_alpha(spec(alpha=0.01)) == pytest.approx(0.01 / 9)


GATE_MODEL = spec().gates[0]
ALPHA = 0.05 / 9


@pytest.mark.parametrize(
    ("candidate", "stable", "verdict", "message"),
    [
        pytest.param(Arm(400, 396, 396), Arm(1200, 1188, 1188), Verdict.PASS, "billing  \u0394 0.00 [", id="identical-and-enough"),
        pytest.param(Arm(40, 0, 0), Arm(1200, 1188, 1188), Verdict.FAIL, "FAIL", id="refuses-everything"),
        pytest.param(Arm(10, 10, 10), Arm(1200, 1188, 1188), Verdict.INCONCLUSIVE, "continue: 10 of 30 samples", id="too-few"),
        pytest.param(Arm(None, None, None), Arm(1200, 1188, 1188), Verdict.INCONCLUSIVE, "no samples yet", id="no-series-yet"),
        pytest.param(Arm(error="prometheus did not answer within 2s"), Arm(1, 1, 1), Verdict.INCONCLUSIVE, "did not answer", id="error"),
    ],
)  # fmt: skip
def test_judge(candidate: Arm, stable: Arm, verdict: Verdict, message: str) -> None:
    v = judge(GATE_MODEL, "billing", candidate, stable, ALPHA)
    assert v.verdict == verdict, v
    assert message in v.message
    if verdict in (Verdict.PASS, Verdict.FAIL):
        assert v.delta is not None and v.delta_lower is not None and v.delta_upper is not None
        assert v.delta_lower <= v.delta <= v.delta_upper
        assert (v.samples, v.baseline_samples) == (candidate.samples, stable.samples)


def test_a_fail_is_kept_in_the_status_with_its_interval() -> None:
    v = judge(GATE_MODEL, "billing", Arm(40, 0, 0), Arm(1200, 1188, 1188), ALPHA)
    status = v.to_status()
    assert {"delta", "deltaLower", "deltaUpper", "baselineSamples"} <= set(status)
    from inferstack.core.gates import GateVerdict

    assert GateVerdict.from_status(status) == v


def test_the_plan_carries_the_declared_slices_and_evaluators_to_the_router() -> None:
    from inferstack.core.config import OperatorConfig
    from inferstack.core.trafficplan import TrafficPlan, traffic_plan

    sp = spec()
    parts = {"model": {"name": "m"}, "prompt": {"version": "v1", "system": "s"}}
    plan = traffic_plan({"name": "bot", "namespace": "ns"}, sp, OperatorConfig(), ("stab", parts))
    assert plan.evaluation.slices == ("billing", "general")
    assert plan.evaluation.slice_header == "x-inferstack-slice"
    assert [e.name for e in plan.evaluation.evaluators] == ["no-refusal"]
    assert TrafficPlan.model_validate_json(plan.model_dump_json(by_alias=True)) == plan


PAIRWISE = {
    "name": "preferred",
    "judge": {"mode": "Pairwise", "endpoint": {"url": "http://judge:8000/v1", "model": "j"}, "criteria": "Correct first."},
}
SHADOW_CANARY = [{"shadow": {"percent": 50}}, {"canary": {"weight": 25}}]


def test_a_pairwise_gate_reads_pairs_wins_and_losses_in_shadow_steps_only() -> None:
    s = spec(SHADOW_CANARY, gates=[GATE, {"name": "judged", "evaluator": "preferred", "margin": 0.1}],
             evaluators=[*EVALUATION["evaluators"], PAIRWISE])  # fmt: skip
    window = timedelta(minutes=1)
    shadow = evaluator_queries(s, stack="bot", namespace="ns", candidate="c", stable="s", window=window, step_kind="shadow")
    canary = evaluator_queries(s, stack="bot", namespace="ns", candidate="c", stable="s", window=window, step_kind="canary")
    assert {q.gate for q in shadow} == {"quality", "judged"} and {q.gate for q in canary} == {"quality"}
    pair = next(q for q in shadow if q.gate == "judged" and q.slice == "billing")
    assert pair.stable is None  # one arm: the pairs
    assert 'inferstack_eval_pairs_total{namespace="ns",stack="bot",revision="c",baseline="s"' in pair.candidate.samples
    assert "inferstack_eval_pair_wins_total" in pair.candidate.total and "inferstack_eval_pair_losses_total" in pair.candidate.squares
    assert pair.errors is not None and 'evaluator="preferred"' in pair.errors
    # the errors query is one per gate, not per slice
    assert sum(q == pair.errors for q in all_queries(shadow)) == 1


def test_a_pairwise_verdict_is_paired_and_names_its_judge_and_failing_calls() -> None:
    from inferstack.core.evaluation import evaluate

    s = spec(SHADOW_CANARY, gates=[{"name": "judged", "evaluator": "preferred", "margin": 0.1, "minSamples": 5}],
             evaluators=[PAIRWISE])  # fmt: skip
    queries = evaluator_queries(s, stack="bot", namespace="ns", candidate="c", stable="s", window=timedelta(minutes=1), step_kind="shadow")
    billing = next(q for q in queries if q.slice == "billing")
    # 30 pairs on billing, all lost: Fail, below -margin
    answers: dict[str, float | str | None] = {billing.candidate.samples: 30.0, billing.candidate.total: 0.0, billing.candidate.squares: 30.0}
    verdicts = {v.slice: v for v in evaluate(s, queries, answers)}
    assert verdicts["billing"].verdict == Verdict.FAIL and verdicts["billing"].delta == -1.0
    assert verdicts["billing"].samples == verdicts["billing"].baseline_samples == 30.0
    assert verdicts["billing"].delta_upper is not None and verdicts["billing"].delta_upper < -0.1
    assert verdicts["billing"].evaluated_by.startswith("pairwise judge j at http://judge:8000")
    # no pairs and the judge failing: Inconclusive, and the message says why
    answers = {billing.errors: 42.0}
    held = {v.slice: v for v in evaluate(s, queries, answers)}
    assert held["billing"].verdict == Verdict.INCONCLUSIVE
    assert "42 judge calls failed" in held["billing"].message


# ------------------------------------------------------------------ direction

# A score that counts a harm (a rubric judge scoring hallucinations, feedback
# reporting a problem): the stable revision's is 0.10 over 12,000 answers.
HARM_STABLE = Arm(12000, 1200, 1200)


def harm(rate: float, n: int = 4000) -> Arm:
    return Arm(n, rate * n, rate * n)


@pytest.mark.parametrize(
    ("direction", "candidate", "verdict", "message"),
    [
        pytest.param("LowerIsBetter", harm(0.02), Verdict.PASS, "billing  \u0394 \u22120.08 [", id="lower-mean-dropped"),
        pytest.param("LowerIsBetter", harm(0.10), Verdict.PASS, "billing  \u0394 0.00 [", id="lower-identical"),
        pytest.param("LowerIsBetter", harm(0.11), Verdict.PASS, "billing  \u0394 0.01 [", id="lower-rose-within-margin"),
        pytest.param("LowerIsBetter", harm(0.15), Verdict.INCONCLUSIVE, "continue: billing  \u0394 0.05 [", id="lower-rose-by-the-margin"),
        pytest.param("LowerIsBetter", harm(0.30), Verdict.FAIL, "billing  \u0394 0.20 [", id="lower-rose-beyond-margin"),
        pytest.param("LowerIsBetter", harm(0.30, n=10), Verdict.INCONCLUSIVE, "continue: 10 of 30 samples", id="lower-too-few"),
        pytest.param("LowerIsBetter", harm(1.0, n=10), Verdict.FAIL, "billing  \u0394 0.90 [", id="lower-few-but-all-harmful"),
        # The same counters judged HigherIsBetter (unset): the mirror image.
        pytest.param(None, harm(0.02), Verdict.FAIL, "billing  \u0394 \u22120.08 [", id="higher-mean-dropped"),
        pytest.param(None, harm(0.10), Verdict.PASS, "billing  \u0394 0.00 [", id="higher-identical"),
        pytest.param(None, harm(0.05), Verdict.INCONCLUSIVE, "continue: billing  \u0394 \u22120.05 [", id="higher-dropped-by-the-margin"),
        pytest.param("HigherIsBetter", harm(0.30), Verdict.PASS, "billing  \u0394 0.20 [", id="higher-rose"),
    ],
)  # fmt: skip
def test_a_gate_judges_its_margin_in_its_direction(direction: str | None, candidate: Arm, verdict: Verdict, message: str) -> None:
    gate = spec(gates=[{**GATE, "direction": direction} if direction else GATE]).gates[0]
    v = judge(gate, "billing", candidate, HARM_STABLE, ALPHA)
    assert v.verdict == verdict, v
    assert v.message.startswith(message), v.message
    assert v.threshold == ("\u0394 < +0.05" if direction == "LowerIsBetter" else "\u0394 > -0.05")
    # The interval is candidate minus stable whatever the direction; only the threshold says which side is the harm.
    assert v.delta == pytest.approx((candidate.total or 0) / (candidate.samples or 1) - 0.10)


def test_a_lower_is_better_gate_reaches_the_verdicts_status_and_cli_through_evaluate() -> None:
    from inferstack.cli import format as fmt
    from inferstack.core.evaluation import evaluate

    s = spec(gates=[{**GATE, "direction": "LowerIsBetter"}])
    queries = evaluator_queries(s, stack="bot", namespace="ns", candidate="c", stable="s", window=timedelta(minutes=5))
    answers: dict[str, float | str | None] = {}
    for q in queries:
        assert q.stable is not None
        rate = 0.30 if q.slice == "billing" else 0.10  # harm rose 20 points on billing only
        for arm, (n, r) in ((q.candidate, (4000.0, rate)), (q.stable, (12000.0, 0.10))):
            answers |= {arm.samples: n, arm.total: n * r, arm.squares: n * r}
    verdicts = {v.slice: v for v in evaluate(s, queries, answers)}
    # (the aggregate is a query of its own, answered here as unchanged)
    assert {k: v.verdict for k, v in verdicts.items()} == {"billing": Verdict.FAIL, "general": Verdict.PASS, AGGREGATE: Verdict.PASS}
    billing = verdicts["billing"]
    assert billing.delta_lower is not None and billing.delta_lower > 0.05  # the whole interval above +margin
    row = fmt.gates_table({"gates": [billing.to_status()], "rollout": {"failures": {"quality/billing": 1}}}).splitlines()[1]
    assert f"+0.200 [{billing.delta_lower:+.3f}, {billing.delta_upper:+.3f}]" in row
    assert "\u0394 < +0.05" in row and "Fail" in row and "4000/12000" in row.replace(",", "")
