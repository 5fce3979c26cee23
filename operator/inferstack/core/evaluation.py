"""Evaluator gates: the queries the operator writes for them, and their verdicts.

Every evaluator reports the same metric shape per stack, namespace,
revision, slice and evaluator (see router/metrics.py): the number of samples
n, their sum S and their sum of squares Q. From the two arms' (n, S, Q) over
the step's window, ``core/sequential.py`` gives an anytime-valid confidence
interval on the difference of means (candidate minus stable), which the gate
judges against its non-inferiority ``margin`` (for the default direction,
HigherIsBetter):

* Pass: both arms have ``minSamples`` and the lower bound is above -margin;
* Fail: the upper bound is below -margin (the candidate is worse by more than
  the margin, with confidence 1 - alpha, however often the operator looks);
* otherwise Inconclusive ("continue"): the step holds; it never promotes.

A LowerIsBetter gate (a score that counts a harm) mirrors it: Pass when the
upper bound is below +margin, Fail when the lower bound is above +margin. The
interval is always candidate minus stable; only the threshold shown with it
(``Δ > -m`` or ``Δ < +m``) says which side is the harm.

``spec.evaluation.alpha`` is split (Bonferroni) over every sequence of the
rollout: each (evaluator gate, slice) pair in each step window (a step, or a
ramp increment, is judged on its own data, so it starts a new sequence). The
rollback fires on the first Fail of any of them, so the chance that an
identical candidate is rolled back stays at most alpha for the whole rollout.

Pure: the queries are strings, their answers come back as numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Final

from inferstack.api.v1alpha1 import Evaluator, Gate, InferenceStackSpec
from inferstack.core import judging
from inferstack.core.durations import format_duration
from inferstack.core.gates import AGGREGATE, GateVerdict, Verdict
from inferstack.core.promql import escape_string, slice_pattern
from inferstack.core.sequential import (
    Counters,
    Direction,
    NonInferiority,
    SequentialVerdict,
    compare,
    compare_paired,
    split_alpha,
)

FULL: Final = 100

# The one metric shape (prometheus_client adds _total to counters).
SAMPLES: Final = "inferstack_eval_samples_total"
SCORE_SUM: Final = "inferstack_eval_score_sum_total"
SCORE_SQUARES: Final = "inferstack_eval_score_squares_sum_total"
# Pairs (a pairwise judge on shadow pairs): per candidate revision and its
# baseline, pairs, wins and losses; for d in {-1, 0, +1} that is n, and
# S = wins - losses, Q = wins + losses (counters cannot hold a negative sum).
PAIRS: Final = "inferstack_eval_pairs_total"
PAIR_WINS: Final = "inferstack_eval_pair_wins_total"
PAIR_LOSSES: Final = "inferstack_eval_pair_losses_total"
JUDGE_ERRORS: Final = "inferstack_eval_errors_total"

# Which step kinds give an evaluator samples, by what produces them. A gate
# whose evaluator has no samples in a step is not judged there (it would only
# hold the step): a pairwise judge needs shadow pairs, feedback needs users
# who saw the candidate, a golden set runs in an evaluate step (from its Job).
_TRAFFIC: Final = frozenset({"shadow", "canary", "ramp", "pause"})
JUDGED_IN: Final[dict[str, frozenset[str]]] = {
    "rule": _TRAFFIC,
    "judge": _TRAFFIC,
    "pairwise": frozenset({"shadow"}),
    "feedback": frozenset({"canary", "ramp", "pause"}),
    "goldenSet": frozenset({"evaluate"}),
}


def evaluator_of(spec: InferenceStackSpec, gate: Gate) -> Evaluator | None:
    return next((e for e in spec.evaluation.evaluators if e.name == gate.evaluator), None)


def judged_in(spec: InferenceStackSpec, gate: Gate, step_kind: str | None) -> bool:
    """Whether ``gate`` is judged in a step of ``step_kind`` (None: any step).

    Prometheus gates are judged wherever the candidate has traffic; evaluator
    gates where their evaluator produces samples (``JUDGED_IN``).
    """
    if step_kind is None:
        return True
    if gate.evaluator is None:
        return step_kind in _TRAFFIC
    ev = evaluator_of(spec, gate)
    return ev is not None and step_kind in JUDGED_IN[ev.kind]


def evaluator_gates(spec: InferenceStackSpec, step_kind: str | None = None) -> list[Gate]:
    """Evaluator gates judged from Prometheus in a step of ``step_kind`` (golden sets are judged from their Job)."""
    return [
        g
        for g in spec.gates
        if g.evaluator is not None and judged_in(spec, g, step_kind) and not _is_golden(spec, g)
    ]


def _is_golden(spec: InferenceStackSpec, gate: Gate) -> bool:
    ev = evaluator_of(spec, gate)
    return ev is not None and ev.kind == "goldenSet"


def is_paired(spec: InferenceStackSpec, gate: Gate) -> bool:
    ev = evaluator_of(spec, gate)
    return ev is not None and ev.kind == "pairwise"


def gate_slices(gate: Gate, spec: InferenceStackSpec) -> list[str]:
    """The slices an evaluator gate judges: its own list, else every declared slice; then the aggregate."""
    declared = spec.evaluation.slices.values if spec.evaluation.slices is not None else []
    return [*(gate.slices or declared), AGGREGATE]


def evaluations(spec: InferenceStackSpec) -> int:
    """How many (evaluator gate, slice) pairs share the stack's alpha."""
    return sum(len(gate_slices(g, spec)) for g in evaluator_gates(spec))


@dataclass(frozen=True)
class ArmQueries:
    """PromQL for one arm's n, S and Q over the window (pairs: n, wins, losses; see ``Arm.pairs``)."""

    samples: str
    total: str
    squares: str

    def all(self) -> tuple[str, str, str]:
        return self.samples, self.total, self.squares


@dataclass(frozen=True)
class EvaluatorQueries:
    """One (gate, slice): both arms' queries, or for a paired gate the pairs' (``stable`` is None)."""

    gate: str
    slice: str
    candidate: ArmQueries
    stable: ArmQueries | None = None
    errors: str | None = (
        None  # judges: calls that gave no sample in the window (all slices: errors have none)
    )

    def arms(self) -> tuple[ArmQueries, ...]:
        return (self.candidate,) if self.stable is None else (self.candidate, self.stable)

    def all(self) -> list[str]:
        return [q for arm in self.arms() for q in arm.all()] + ([self.errors] if self.errors else [])


def _selector(slice_: str | None = None, **labels: str) -> str:
    """Label matchers: each label equal to its (escaped) value, in order; then the slice's pattern."""
    out = ",".join(f'{name}="{escape_string(value)}"' for name, value in labels.items())
    return out if slice_ is None else f'{out},slice=~"{slice_pattern(slice_)}"'


def _sum_increase(metric: str, selector: str, window: timedelta) -> str:
    return f"sum(increase({metric}{{{selector}}}[{format_duration(window)}]))"


def arm_queries(
    *, namespace: str, stack: str, revision: str, evaluator: str, slice_: str, window: timedelta
) -> ArmQueries:
    # All roles of the revision: a candidate's shadow answers and its client
    # answers are both its samples; the stable revision's are client answers.
    selector = _selector(slice_, namespace=namespace, stack=stack, revision=revision, evaluator=evaluator)
    return ArmQueries(*(_sum_increase(m, selector, window) for m in (SAMPLES, SCORE_SUM, SCORE_SQUARES)))


def pair_queries(
    *, namespace: str, stack: str, candidate: str, stable: str, evaluator: str, slice_: str, window: timedelta
) -> ArmQueries:
    """PromQL for the pairs (candidate shadow answer vs stable answer, same request) over the window."""
    selector = _selector(slice_, namespace=namespace, stack=stack, revision=candidate, baseline=stable, evaluator=evaluator)
    return ArmQueries(*(_sum_increase(m, selector, window) for m in (PAIRS, PAIR_WINS, PAIR_LOSSES)))


def evaluator_queries(
    spec: InferenceStackSpec,
    *,
    stack: str,
    namespace: str,
    candidate: str,
    stable: str,
    window: timedelta,
    step_kind: str | None = None,
) -> list[EvaluatorQueries]:
    """One entry per (evaluator gate, slice) judged in this step, in spec order, the aggregate last for each gate."""
    out = []
    for gate in evaluator_gates(spec, step_kind):
        assert gate.evaluator is not None
        ev = evaluator_of(spec, gate)
        errors = (
            judge_errors_query(namespace=namespace, stack=stack, evaluator=gate.evaluator, window=window)
            if ev is not None and ev.judge is not None
            else None
        )
        for slice_ in gate_slices(gate, spec):
            if is_paired(spec, gate):
                pairs = pair_queries(
                    namespace=namespace, stack=stack, candidate=candidate, stable=stable,
                    evaluator=gate.evaluator, slice_=slice_, window=window,
                )  # fmt: skip
                out.append(EvaluatorQueries(gate.name, slice_, pairs, errors=errors))
                continue

            def arm(revision: str, evaluator: str = gate.evaluator, slice_: str = slice_) -> ArmQueries:
                return arm_queries(
                    namespace=namespace,
                    stack=stack,
                    revision=revision,
                    evaluator=evaluator,
                    slice_=slice_,
                    window=window,
                )

            out.append(EvaluatorQueries(gate.name, slice_, arm(candidate), arm(stable), errors=errors))
    return out


def judge_errors_query(*, namespace: str, stack: str, evaluator: str, window: timedelta) -> str:
    """Judge calls of this stack that gave no sample over the window, any revision (a judge down fails for both)."""
    return _sum_increase(JUDGE_ERRORS, _selector(namespace=namespace, stack=stack, evaluator=evaluator), window)


def all_queries(queries: Sequence[EvaluatorQueries]) -> list[str]:
    return list(
        dict.fromkeys(q for e in queries for q in e.all())
    )  # a judge's errors query serves all its slices once


# ------------------------------------------------------------------ verdicts


def traffic_windows(spec: InferenceStackSpec) -> int:
    """How many step windows of a rollout judge the candidate: each is a new sequence.

    Every shadow and canary step, every pause once the candidate has
    traffic, and every ramp increment that stops short of 100 % (reaching
    100 % is the promotion, which is not judged).
    """
    windows, weight, traffic = 0, 0, False
    for step in spec.rollout.steps:
        if step.shadow or step.canary:
            windows, traffic = windows + 1, True
            if step.canary:
                weight = max(weight, step.canary.weight)
        elif step.pause:
            windows += traffic
        elif step.ramp:
            w = weight + step.ramp.increment
            while w < FULL:
                windows, w, traffic = windows + 1, w + step.ramp.increment, True
    return max(windows, 1)


def sequence_alpha(spec: InferenceStackSpec) -> float:
    """The alpha of one (gate, slice, step window) sequence."""
    return split_alpha(spec.evaluation.alpha, max(evaluations(spec), 1), traffic_windows(spec))


@dataclass(frozen=True)
class Arm:
    """One arm's measured counters, or why they could not be measured."""

    samples: float | None = None
    total: float | None = None
    squares: float | None = None
    error: str = ""


def identity(evaluator: Evaluator | None, cases_hash: str = "") -> str:
    """What produced an evaluator's samples, for ``status.gates[].evaluatedBy`` (empty when nothing needs naming).

    Judges: mode, model or stack, and a hash over the prompt wording and
    criteria (``judging.identity``); a rule check: its kind. A golden set:
    its name and ``cases_hash``, the content hash of the cases its Job
    replayed (``golden.cases_hash``, read back from the Job's report by
    core/golden.py); empty without one, since nothing was replayed yet.
    """
    if evaluator is None:
        return ""
    if evaluator.judge is not None:
        return judging.describe(evaluator.judge)
    if evaluator.golden_set is not None:
        return f"golden set {evaluator.name}, cases sha256:{cases_hash[:12]}" if cases_hash else ""
    if evaluator.feedback is not None:
        return "user feedback"
    if evaluator.rule is not None:
        kind = next(k for k, v in evaluator.rule.model_dump(by_alias=True, exclude_none=True).items())
        return f"rule {kind}"
    return ""


def judge(
    gate: Gate, slice_: str, candidate: Arm, stable: Arm | None, alpha: float, evaluated_by: str = ""
) -> GateVerdict:
    """The verdict of one evaluator gate on one slice; a measurement error is Inconclusive.

    ``stable`` None: ``candidate`` holds pairs (per-pair differences in -1..1),
    judged with the one-sample paired sequence.
    """
    assert gate.margin is not None
    if candidate.error or (stable is not None and stable.error):
        return GateVerdict(
            gate.name,
            slice_,
            Verdict.INCONCLUSIVE,
            message=candidate.error or (stable.error if stable else ""),
        )
    # A paired gate (pairwise judge, golden set) is always HigherIsBetter: the API
    # refuses LowerIsBetter on it (a win is "better" by construction).
    rule = NonInferiority(margin=gate.margin, alpha=alpha, direction=gate.effective_direction, min_samples=gate.min_samples)
    if stable is None:
        result = compare_paired(_pair_counters(candidate), rule, label=slice_)
    else:
        result = compare(_counters(candidate), _counters(stable), rule, label=slice_)
    verdict = {
        SequentialVerdict.PASS: Verdict.PASS,
        SequentialVerdict.FAIL: Verdict.FAIL,
        SequentialVerdict.CONTINUE: Verdict.INCONCLUSIVE,
    }[result.verdict]
    if result.delta is None:
        message = "no samples yet" if not result.candidate_n else "no samples of the stable revision yet"
    elif verdict == Verdict.INCONCLUSIVE and min(result.candidate_n, result.stable_n) < gate.min_samples:
        message = f"continue: {min(result.candidate_n, result.stable_n):.0f} of {gate.min_samples} samples"
    else:
        message = ("continue: " if verdict == Verdict.INCONCLUSIVE else "") + result.line()
    finite = result.delta is not None
    return GateVerdict(
        gate.name,
        slice_,
        verdict,
        value=result.candidate_mean,
        baseline=result.stable_mean,
        threshold=threshold_text(gate),
        samples=result.candidate_n,
        message=message,
        baseline_samples=result.stable_n,
        delta=result.delta,
        delta_lower=result.lower if finite else None,
        delta_upper=result.upper if finite else None,
        evaluated_by=evaluated_by,
    )


def threshold_text(gate: Gate) -> str:
    """What the difference must stay within: ``Δ > -0.05``, or ``Δ < +0.05`` for LowerIsBetter."""
    assert gate.margin is not None
    if gate.effective_direction == Direction.LOWER:
        return f"\u0394 < +{gate.margin:g}"
    return f"\u0394 > -{gate.margin:g}"


def _counters(arm: Arm) -> Counters:
    # No series yet (nothing scored in the window) is zero samples, not an error.
    n = max(arm.samples or 0.0, 0.0)
    s = min(max(arm.total or 0.0, 0.0), n)
    q = min(max(arm.squares or 0.0, 0.0), n)
    return Counters.scores(n, s, q)


def _pair_counters(arm: Arm) -> Counters:
    """Pairs from (pairs, wins, losses): ``Counters.pairwise``; clamped, as increase() extrapolates each series."""
    n = max(arm.samples or 0.0, 0.0)
    wins = min(max(arm.total or 0.0, 0.0), n)
    losses = min(max(arm.squares or 0.0, 0.0), n - wins)
    return Counters.pairwise(wins, losses, n - wins - losses)


def evaluate(
    spec: InferenceStackSpec, queries: Sequence[EvaluatorQueries], answers: dict[str, float | str | None]
) -> list[GateVerdict]:
    """Verdicts from the answers to ``all_queries(queries)``: a number, None (no series) or an error."""
    gates = {g.name: g for g in evaluator_gates(spec)}
    alpha = sequence_alpha(spec) if queries else 1.0
    out = []
    for e in queries:
        arms = []
        for arm in e.arms():
            values = [answers.get(q) for q in arm.all()]
            errors = [v for v in values if isinstance(v, str)]
            n, total, squares = (v if isinstance(v, float) else None for v in values)
            arms.append(Arm(n, total, squares, error=errors[0] if errors else ""))
        gate = gates[e.gate]
        verdict = judge(
            gate,
            e.slice,
            arms[0],
            arms[1] if len(arms) > 1 else None,
            alpha,
            identity(evaluator_of(spec, gate)),
        )
        failed_calls = answers.get(e.errors) if e.errors else None
        if (
            verdict.verdict == Verdict.INCONCLUSIVE
            and isinstance(failed_calls, float)
            and failed_calls >= 0.5
        ):
            # Say why the evidence does not grow: the judge is failing, not the candidate.
            why = f"{verdict.message}; {failed_calls:.0f} judge calls failed in this step (inferstack_eval_errors_total)"
            verdict = replace(verdict, message=why)
        out.append(verdict)
    return out
