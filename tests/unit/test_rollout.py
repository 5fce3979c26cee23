"""The rollout state machine, table-driven: one case per transition, then properties."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from inferstack.api.v1alpha1 import InferenceStackSpec, Phase
from inferstack.core.gates import AGGREGATE, GateVerdict, Verdict
from inferstack.core.revision import compute_revision
from inferstack.core.rollout import (
    COMMAND_ANNOTATION,
    COMMAND_ID_ANNOTATION,
    Analysis,
    Command,
    Decision,
    Observations,
    RolloutState,
    Verb,
    analysis_window,
    decide,
    judging_hash,
    parse_command,
    step_label,
)
from inferstack.core.status import Summary, desired_status, merge_patch, summarize

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
S, C, D, W = "stable1", "cand1", "cand2", "older1"  # stable, candidate, newer candidate, older revision

STEPS = [
    {"shadow": {"percent": 10, "duration": "5m", "minSamples": 50}},
    {"canary": {"weight": 5, "duration": "5m"}},
    {"canary": {"weight": 25, "duration": "5m"}},
    {"ramp": {"increment": 25, "duration": "5m"}},
]
GATE = {
    "name": "quality",
    "slices": ["billing"],
    "prometheus": {"query": 'q{revision="{{revision}}",slice=~"{{slice}}"}', "samplesQuery": 'n{slice=~"{{slice}}"}'},
    "compare": {"maxRelativeDrop": 0.1},
    "failureLimit": 2,
}


def make_spec(
    steps: list[dict[str, Any]] | None = None,
    gates: list[dict[str, Any]] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> InferenceStackSpec:
    return InferenceStackSpec.model_validate(
        {
            "model": {"name": "m", "revision": "a" * 40},
            "prompt": {"version": "v1", "system": "be brief"},
            "rollout": {
                "steps": STEPS if steps is None else steps,
                "analysisInterval": "30s",
                "progressDeadline": "20m",
            },
            "gates": [GATE] if gates is None else gates,
            "evaluation": evaluation or {},
        }
    )


SPEC = make_spec()
NO_GATES = make_spec(gates=[])
PAUSES = make_spec(
    steps=[
        {"canary": {"weight": 10}},
        {"pause": {}},
        {"pause": {"duration": "1m"}},
        {"canary": {"weight": 50}},
    ]
)


def verdict(result: Verdict = Verdict.PASS, slice_: str = AGGREGATE, samples: float = 1000.0) -> GateVerdict:
    value = 0.95 if result == Verdict.PASS else 0.5
    return GateVerdict("quality", slice_, result, value, 1.0, ">= 0.9 (stable -10%)", samples, "msg")


PASS = (verdict(slice_="billing"), verdict())


def analysis(at: datetime, *verdicts: GateVerdict, candidate: str = C, window: timedelta = MIN) -> Analysis:
    """An analysis of the data in [at - window, at]."""
    return Analysis(candidate, at, tuple(verdicts) or PASS, window_start=at - window)


def at_step(index: int, weight: int = 0, shadow: int = 0, started: datetime = T0, **kw: Any) -> RolloutState:
    """A rollout of C over S, at step ``index`` since ``started``."""
    return RolloutState(
        stable=S,
        candidate=C,
        candidate_since=T0 - 10 * MIN,
        step_index=index,
        step_started_at=started,
        candidate_weight=weight,
        shadow_percent=shadow,
        **kw,
    )


HEALTHY = RolloutState(stable=S)
WAITING = RolloutState(stable=S, candidate=C, candidate_since=T0)
SHADOW = at_step(0, shadow=10)
CANARY5 = at_step(1, weight=5, last_analysis_at=T0 + MIN, verdicts=PASS)
ROLLED_BACK = RolloutState(
    stable=S, rolled_back=C, rollback_reason="rolled back revision cand1 to stable1: x"
)


def obs(revision: str = C, ready: tuple[str, ...] = (S, C), **kw: Any) -> Observations:
    return Observations(revision=revision, ready=frozenset(ready), known=frozenset({S, C, D, W}), **kw)


def cmd(value: str, id_: str = "1") -> Command:
    parsed = parse_command({COMMAND_ANNOTATION: value, COMMAND_ID_ANNOTATION: id_})
    assert parsed is not None
    return parsed


@dataclass
class Case:
    state: RolloutState
    obs: Observations
    now: datetime
    expect: dict[str, Any]
    spec: InferenceStackSpec = field(default_factory=lambda: SPEC)


def look(spec: InferenceStackSpec, d: Decision, revision: str, now: datetime) -> Summary:
    """How the decided state looks (status.summarize: the one owner of phase and message)."""
    return summarize(spec, d.state, revision=revision, now=now)


def check(case: Case) -> None:
    """Compare only the named aspects, so each case says what the transition is about."""
    d = decide(case.spec, case.state, case.obs, case.now)
    seen = look(case.spec, d, case.obs.revision, case.now)
    expect = case.expect
    actual = {
        "phase": seen.phase,
        "step": seen.step,
        "stable": d.state.stable,
        "candidate": d.state.candidate,
        "rolled_back": d.state.rolled_back,
        "traffic": (d.traffic.candidate_weight, d.traffic.shadow_percent),
        "rewrite": d.rewrite_traffic,
        "events": [e.reason for e in d.events],
        "failures": dict(d.state.failures),
        "paused": d.state.paused,
        "skipped": d.skipped_steps,
        "cause": d.rollback.cause if d.rollback else None,
        "verdicts": len(d.state.verdicts),
    }
    for key, want in expect.items():
        if key == "message":
            assert want in seen.message, seen.message
        else:
            assert actual[key] == want, f"{key}: {actual[key]!r} != {want!r} ({seen.message})"


LATER = T0 + 6 * MIN  # after a 5m step
CASES = {
    # ---- first deploy (no stable revision yet)
    "first-deploy-not-ready": Case(
        RolloutState(),
        obs(revision=S, ready=()),
        T0,
        {"phase": Phase.PENDING, "stable": None, "rewrite": False, "events": []},
    ),
    "first-deploy-ready-becomes-stable": Case(
        RolloutState(),
        obs(revision=S, ready=(S,)),
        T0,
        {"phase": Phase.HEALTHY, "stable": S, "rewrite": True, "events": ["RevisionStable"]},
    ),
    # ---- steady state and spec changes
    "healthy-steady-writes-nothing": Case(
        HEALTHY, obs(revision=S), T0, {"phase": Phase.HEALTHY, "rewrite": False, "events": [], "step": ""}
    ),
    "new-revision-starts-rollout-without-traffic": Case(
        HEALTHY,
        obs(ready=(S,)),
        T0,
        {
            "phase": Phase.PROGRESSING,
            "candidate": C,
            "step": "waiting for pods",
            "traffic": (0, 0),
            "rewrite": False,
            "events": ["RolloutStarted"],
        },
    ),
    "new-revision-while-rolling-out-supersedes": Case(
        CANARY5,
        obs(revision=D),
        LATER,
        {
            "candidate": D,
            "traffic": (0, 0),
            "rewrite": True,
            "rolled_back": None,
            "events": ["RolloutSuperseded", "RolloutStarted"],
        },
    ),
    "gitops-revert-to-stable-cancels-rollout": Case(
        CANARY5,
        obs(revision=S),
        LATER,
        {
            "phase": Phase.HEALTHY,
            "candidate": None,
            "traffic": (0, 0),
            "rewrite": True,
            "events": ["RolloutCancelled"],
        },
    ),
    # ---- waiting for the candidate's pods
    "waiting-pods-not-ready-holds": Case(
        WAITING,
        obs(ready=(S,)),
        T0 + 5 * MIN,
        {"phase": Phase.PROGRESSING, "step": "waiting for pods", "events": [], "rewrite": False},
    ),
    "waiting-past-progress-deadline-rolls-back": Case(
        WAITING,
        obs(ready=(S,)),
        T0 + 20 * MIN,
        {
            "phase": Phase.DEGRADED,
            "candidate": None,
            "rolled_back": C,
            "cause": "ProgressDeadlineExceeded",
            "events": ["ProgressDeadlineExceeded"],
            "message": "progressDeadline 20m",
        },
    ),
    "pods-ready-enters-first-step": Case(
        WAITING,
        obs(),
        T0 + MIN,
        {"step": "shadow 10%", "traffic": (0, 10), "rewrite": True, "events": ["StepStarted"]},
    ),
    "pods-ready-but-paused-waits": Case(
        replace(WAITING, paused=True),
        obs(),
        T0 + MIN,
        {"phase": Phase.PAUSED, "step": "waiting for pods (paused)", "rewrite": False},
    ),
    # ---- step timers and gates
    "step-time-not-done-holds": Case(
        replace(SHADOW, last_analysis_at=T0 + MIN, verdicts=PASS),
        obs(),
        T0 + 4 * MIN,
        {"step": "shadow 10%", "rewrite": False, "events": [], "message": "step ends "},
    ),
    "step-done-but-no-analysis-since-start-holds": Case(
        replace(SHADOW, last_analysis_at=T0 - MIN, verdicts=PASS),
        obs(),
        LATER,
        {"step": "shadow 10%", "rewrite": False, "message": "waiting for an analysis"},
    ),
    "step-done-and-gates-pass-advances": Case(
        SHADOW,
        obs(analysis=analysis(LATER)),
        LATER,
        {
            "step": "canary 5%",
            "traffic": (5, 0),
            "rewrite": True,
            "events": ["StepStarted"],
            "failures": {"quality": 0, "quality/billing": 0},
        },
    ),
    "step-done-without-gates-advances": Case(
        SHADOW,
        obs(),
        LATER,
        {"step": "canary 5%", "rewrite": True},
        spec=NO_GATES,
    ),
    "shadow-too-few-samples-holds": Case(
        SHADOW,
        obs(analysis=analysis(LATER, verdict(samples=20), verdict(slice_="billing"))),
        LATER,
        {"step": "shadow 10%", "rewrite": False, "message": "20 of 50 samples"},
    ),
    "inconclusive-holds-and-counts-nothing": Case(
        replace(CANARY5, failures={"quality": 1}),
        obs(analysis=analysis(LATER, verdict(Verdict.INCONCLUSIVE))),
        LATER,
        {
            "step": "canary 5%",
            "rewrite": False,
            "failures": {"quality": 1},
            "message": "inconclusive",
            "cause": None,
        },
    ),
    "analysis-taken-before-step-start-ignored": Case(
        SHADOW,
        obs(analysis=analysis(T0 - MIN)),
        LATER,
        {"step": "shadow 10%", "failures": {}, "message": "waiting for an analysis"},
    ),
    "analysis-of-another-candidate-ignored": Case(
        SHADOW,
        obs(analysis=analysis(LATER, candidate=D)),
        LATER,
        {"step": "shadow 10%", "failures": {}},
    ),
    "same-analysis-is-not-counted-twice": Case(
        replace(CANARY5, failures={"quality": 1}, last_analysis_at=LATER),
        obs(analysis=analysis(LATER, verdict(Verdict.FAIL))),
        LATER,
        {"failures": {"quality": 1}, "cause": None},
    ),
    "failure-below-limit-holds": Case(
        CANARY5,
        obs(analysis=analysis(LATER, verdict(Verdict.FAIL), verdict(slice_="billing"))),
        LATER,
        {
            "step": "canary 5%",
            "failures": {"quality": 1, "quality/billing": 0},
            "cause": None,
            "rewrite": False,
            "message": "gate quality, all slices fail",
        },
    ),
    "failure-at-limit-rolls-back-everything": Case(
        replace(CANARY5, failures={"quality/billing": 1}),
        obs(analysis=analysis(LATER, verdict(Verdict.FAIL, "billing"), verdict())),
        LATER,
        {
            "phase": Phase.DEGRADED,
            "candidate": None,
            "rolled_back": C,
            "traffic": (0, 0),
            "rewrite": True,
            "cause": "GateFailed",
            "events": ["GateFailed"],
            "message": "gate quality, slice billing failed 2",
        },
    ),
    "pass-resets-failures": Case(
        replace(CANARY5, failures={"quality": 1, "quality/billing": 1}),
        obs(analysis=analysis(T0 + 2 * MIN)),
        T0 + 2 * MIN,
        {"failures": {"quality": 0, "quality/billing": 0}},
    ),
    "canary-advances-to-next-canary": Case(
        CANARY5,
        obs(analysis=analysis(LATER)),
        LATER,
        {"step": "canary 25%", "traffic": (25, 0), "rewrite": True},
    ),
    "ramp-starts-from-last-weight": Case(
        at_step(2, weight=25),
        obs(analysis=analysis(LATER)),
        LATER,
        {"step": "ramp 50%", "traffic": (50, 0)},
    ),
    "ramp-increments": Case(
        at_step(3, weight=50, ramp_weight=50),
        obs(analysis=analysis(LATER)),
        LATER,
        {"step": "ramp 75%"},
    ),
    "ramp-reaching-100-promotes": Case(
        at_step(3, weight=75, ramp_weight=75),
        obs(analysis=analysis(LATER)),
        LATER,
        {
            "phase": Phase.HEALTHY,
            "stable": C,
            "candidate": None,
            "traffic": (0, 0),
            "rewrite": True,
            "events": ["Promoted"],
        },
    ),
    "last-step-done-promotes": Case(
        at_step(0, weight=10),
        obs(),
        LATER,
        {"stable": C, "events": ["Promoted"]},
        spec=make_spec(steps=[{"canary": {"weight": 10}}], gates=[]),
    ),
    # ---- pause steps
    "pause-step-waits-for-promote": Case(
        at_step(1, weight=10),
        obs(),
        T0 + 60 * MIN,
        {"phase": Phase.PAUSED, "step": "paused", "rewrite": False, "message": "promote"},
        spec=PAUSES,
    ),
    "pause-step-promoted-by-command": Case(
        at_step(1, weight=10),
        obs(command=cmd("promote")),
        T0 + MIN,
        {"phase": Phase.PAUSED, "step": "paused", "events": ["StepPromoted", "StepStarted"]},
        spec=PAUSES,
    ),
    "timed-pause-ends": Case(
        at_step(2, weight=10),
        obs(),
        T0 + 2 * MIN,
        {"step": "canary 50%", "traffic": (50, 0)},
        spec=make_spec(steps=PAUSES.model_dump(by_alias=True)["rollout"]["steps"], gates=[]),
    ),
    # ---- manual commands
    "pause-command-holds-a-done-step": Case(
        CANARY5,
        obs(analysis=analysis(LATER), command=cmd("pause")),
        LATER,
        {
            "phase": Phase.PAUSED,
            "paused": True,
            "step": "canary 5% (paused)",
            "rewrite": False,
            "events": ["Paused"],
        },
    ),
    "paused-still-rolls-back-on-gate-failure": Case(
        replace(CANARY5, paused=True, failures={"quality": 1}),
        obs(analysis=analysis(LATER, verdict(Verdict.FAIL))),
        LATER,
        {"phase": Phase.DEGRADED, "cause": "GateFailed"},
    ),
    "resume-command-continues": Case(
        replace(CANARY5, paused=True),
        obs(analysis=analysis(LATER), command=cmd("resume")),
        LATER,
        {"paused": False, "step": "canary 25%", "events": ["Resumed", "StepStarted"]},
    ),
    "handled-command-is-not-repeated": Case(
        replace(CANARY5, last_command="promote#1"),
        obs(command=cmd("promote")),
        T0 + 2 * MIN,
        {"step": "canary 5%", "events": []},
    ),
    "promote-ends-step-early": Case(
        CANARY5,
        obs(command=cmd("promote")),
        T0 + MIN,
        {"step": "canary 25%", "events": ["StepPromoted", "StepStarted"]},
    ),
    "promote-full-promotes-now": Case(
        CANARY5,
        obs(command=cmd("promote-full")),
        T0 + MIN,
        {"stable": C, "candidate": None, "events": ["Promoted"]},
    ),
    "promote-full-while-waiting-and-ready": Case(
        WAITING, obs(command=cmd("promote-full")), T0, {"stable": C}
    ),
    "promote-before-pods-ready-is-ignored": Case(
        WAITING,
        obs(ready=(S,), command=cmd("promote")),
        T0 + MIN,
        {"step": "waiting for pods", "events": ["CommandIgnored"]},
    ),
    "gate-rollback-beats-promote": Case(
        replace(CANARY5, failures={"quality": 1}),
        obs(analysis=analysis(LATER, verdict(Verdict.FAIL)), command=cmd("promote-full")),
        LATER,
        {"stable": S, "cause": "GateFailed"},
    ),
    "abort-rolls-back": Case(
        CANARY5,
        obs(command=cmd("abort")),
        T0 + MIN,
        {"phase": Phase.DEGRADED, "rolled_back": C, "traffic": (0, 0), "rewrite": True, "cause": "Aborted"},
    ),
    "abort-without-rollout-is-ignored": Case(
        HEALTHY,
        obs(revision=S, command=cmd("abort")),
        T0,
        {"phase": Phase.HEALTHY, "events": ["CommandIgnored"]},
    ),
    "invalid-command-warns": Case(
        HEALTHY,
        obs(revision=S, command=cmd("promot")),
        T0,
        {"events": ["CommandInvalid"]},
    ),
    # ---- after a rollback
    "rolled-back-revision-is-not-retried-by-itself": Case(
        ROLLED_BACK,
        obs(),
        T0 + 60 * MIN,
        {"phase": Phase.DEGRADED, "candidate": None, "events": [], "rewrite": False, "message": "retry"},
    ),
    "retry-restarts-rolled-back-revision": Case(
        ROLLED_BACK,
        obs(ready=(S,), command=cmd("retry")),
        T0,
        {
            "phase": Phase.PROGRESSING,
            "candidate": C,
            "rolled_back": None,
            "events": ["RetryRequested", "RolloutStarted"],
        },
    ),
    "retry-without-rollback-is-ignored": Case(
        HEALTHY,
        obs(revision=S, command=cmd("retry")),
        T0,
        {"events": ["CommandIgnored"]},
    ),
    "new-spec-after-rollback-rolls-out": Case(
        ROLLED_BACK,
        obs(revision=D),
        T0,
        {"phase": Phase.PROGRESSING, "candidate": D, "events": ["RolloutStarted"]},
    ),
    "spec-reverted-after-rollback-is-healthy": Case(
        replace(ROLLED_BACK, verdicts=PASS, failures={"q/billing": 1}),
        obs(revision=S),
        T0,
        # the rolled-back candidate's verdicts no longer describe anything served
        {"phase": Phase.HEALTHY, "candidate": None, "events": [], "verdicts": 0, "failures": {}},
    ),
    "still-at-rolled-back-spec-keeps-the-verdicts": Case(
        replace(ROLLED_BACK, verdicts=PASS),
        obs(revision=C),
        T0,
        {"phase": Phase.DEGRADED, "verdicts": len(PASS)},
    ),
    # ---- undo
    "undo-to-warm-revision-switches-at-once": Case(
        HEALTHY,
        obs(revision=S, ready=(S, W), command=cmd(f"undo:{W}")),
        T0,
        {
            "stable": W,
            "candidate": None,
            "skipped": True,
            "rewrite": True,
            "rolled_back": S,
            "phase": Phase.DEGRADED,
            "events": ["RolloutStarted", "Promoted"],
        },
    ),
    "undo-to-cold-revision-rolls-out": Case(
        CANARY5,
        obs(ready=(S, C), command=cmd(f"undo:{W}")),
        T0 + MIN,
        {"candidate": W, "rolled_back": C, "step": "waiting for pods", "traffic": (0, 0), "skipped": False},
    ),
    "undo-candidate-continues-although-spec-differs": Case(
        replace(WAITING, candidate=W, rolled_back=C),
        obs(ready=(S, C, W)),
        T0 + MIN,
        {"candidate": W, "step": "shadow 10%"},
    ),
    "undo-to-unknown-revision-is-ignored": Case(
        HEALTHY,
        obs(revision=S, command=cmd("undo:gone")),
        T0,
        {"stable": S, "events": ["CommandIgnored"]},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_transition(case: Case) -> None:
    check(case)


# ------------------------------------------------------------- details


def test_rollback_reason_names_gate_slice_value_baseline_threshold() -> None:
    d = decide(
        SPEC,
        replace(CANARY5, failures={"quality/billing": 1}),
        obs(analysis=analysis(LATER, verdict(Verdict.FAIL, "billing"))),
        LATER,
    )
    assert d.rollback is not None
    assert (d.rollback.gate, d.rollback.slice, d.rollback.value, d.rollback.baseline) == (
        "quality",
        "billing",
        0.5,
        1.0,
    )
    assert d.rollback.threshold == ">= 0.9 (stable -10%)"
    for part in ("slice billing", "value 0.5", "baseline 1.0", ">= 0.9"):
        assert part in d.rollback.message
    assert d.state.scale_down_at == {C: LATER + timedelta(minutes=10)}
    assert d.traffic.candidate is None and d.traffic.stable_weight == 100


def test_promotion_keeps_old_stable_warm_then_forgets_it() -> None:
    d = decide(SPEC, CANARY5, obs(command=cmd("promote-full")), T0)
    assert d.scale_down_at == {S: T0 + timedelta(minutes=10)}
    later = decide(SPEC, d.state, obs(), T0 + timedelta(minutes=11))
    assert later.scale_down_at == {}


def test_degraded_message_survives_later_decisions() -> None:
    d = decide(
        SPEC,
        replace(CANARY5, failures={"quality": 1}),
        obs(analysis=analysis(LATER, verdict(Verdict.FAIL))),
        LATER,
    )
    again = decide(SPEC, d.state, obs(), LATER + 60 * MIN)
    seen = look(SPEC, again, C, LATER + 60 * MIN)
    assert seen.phase == Phase.DEGRADED
    assert "gate quality, all slices failed 2 consecutive analyses" in seen.message
    assert {t: c.status for t, c in seen.conditions.items()} == {
        "Ready": False,
        "Reconciling": False,
        "Stalled": True,
    }


def test_requeue_after_is_next_timer() -> None:
    d = decide(NO_GATES, SHADOW, obs(), T0 + 4 * MIN)
    assert d.requeue_after == timedelta(seconds=30)  # the analysis interval caps the wait
    d = decide(NO_GATES, SHADOW, obs(), T0 + 4 * MIN + timedelta(seconds=45))
    assert d.requeue_after == timedelta(seconds=15)  # the step ends first


SLOW = make_spec(steps=STEPS).model_copy(
    update={"rollout": make_spec().rollout.model_copy(update={"analysis_interval": "5m"})}
)  # default window 10m


@pytest.mark.parametrize(
    ("spec", "state", "now", "window"),
    [
        pytest.param(SPEC, WAITING, T0, None, id="no-traffic-yet"),
        pytest.param(SPEC, HEALTHY, T0, None, id="no-rollout"),
        pytest.param(SPEC, SHADOW, T0 + timedelta(seconds=59), None, id="step-younger-than-a-useful-window"),
        pytest.param(SPEC, SHADOW, T0 + MIN, MIN, id="step-old-enough"),
        pytest.param(
            SPEC, replace(SHADOW, last_analysis_at=T0 + 2 * MIN), T0 + 2 * MIN + timedelta(seconds=29), None,
            id="interval-not-over",
        ),
        pytest.param(
            SPEC, replace(SHADOW, last_analysis_at=T0 + 2 * MIN), T0 + 2 * MIN + timedelta(seconds=30),
            2 * MIN + timedelta(seconds=30), id="interval-over-the-whole-step-so-far",
        ),
        pytest.param(SLOW, SHADOW, T0 + 3 * MIN, 3 * MIN, id="from-the-step-start"),
        pytest.param(SLOW, SHADOW, T0 + 30 * MIN, 30 * MIN, id="a-long-step-keeps-all-its-evidence"),
    ],
)  # fmt: skip
def test_analysis_window(spec: InferenceStackSpec, state: RolloutState, now: datetime, window: timedelta | None) -> None:
    got = analysis_window(spec, state, now)
    assert got == window
    if got is not None:
        assert state.step_started_at is not None and now - got >= state.step_started_at


@pytest.mark.parametrize(
    ("a", "counted"),
    [
        pytest.param(analysis(T0 + 2 * MIN, window=MIN), True, id="window-inside-the-step"),
        pytest.param(analysis(T0 + MIN, window=MIN), True, id="window-starts-at-the-step-start"),
        pytest.param(analysis(T0 + 2 * MIN, window=3 * MIN), False, id="window-reaches-into-the-step-before"),
        pytest.param(Analysis(C, T0 + 2 * MIN, PASS), False, id="window-of-unknown-age"),
        pytest.param(analysis(T0, window=MIN), False, id="taken-when-the-step-began"),
    ],
)  # fmt: skip
def test_only_an_analysis_of_the_step_itself_counts(a: Analysis, counted: bool) -> None:
    state = at_step(1, weight=5)
    d = decide(SPEC, state, obs(analysis=a), T0 + 2 * MIN)
    assert (d.state.last_analysis_at == a.taken_at) is counted
    assert (d.state.verdicts == a.verdicts) is counted


def test_a_step_entered_in_a_pass_does_not_inherit_that_pass_analysis() -> None:
    """Seen in e2e: canary 25 % advanced to ramp 50 % with no analysis taken during canary 25 %."""
    state = at_step(1, weight=5, started=T0)  # canary 5 %, its 5 minutes are over at LATER
    now = T0 + 5 * MIN
    d = decide(SPEC, state, obs(analysis=analysis(now, window=MIN)), now)
    assert step_label(STEPS_OF, d.state) == "canary 25%" and d.state.step_started_at == now
    # the next passes have no new analysis: canary 25 % holds until one of its own arrives
    for later in (now + timedelta(seconds=1), now + 6 * MIN):
        again = decide(SPEC, d.state, obs(), later)
        assert step_label(STEPS_OF, again.state) == "canary 25%", again.events
        assert "waiting for an analysis of this step" in look(SPEC, again, C, later).message
    assert analysis_window(SPEC, d.state, now + timedelta(seconds=59)) is None
    window = analysis_window(SPEC, d.state, now + 6 * MIN)
    assert window is not None and now + 6 * MIN - window >= now


@pytest.mark.parametrize(
    ("annotations", "verb", "argument", "key"),
    [
        pytest.param({}, None, None, None, id="none"),
        pytest.param({COMMAND_ANNOTATION: "promote"}, Verb.PROMOTE, "", "promote#", id="without-id"),
        pytest.param(
            {COMMAND_ANNOTATION: " abort ", COMMAND_ID_ANNOTATION: "7"},
            Verb.ABORT,
            "",
            "abort#7",
            id="with-id",
        ),
        pytest.param({COMMAND_ANNOTATION: "undo:abc123"}, Verb.UNDO, "abc123", "undo:abc123#", id="undo"),
        pytest.param({COMMAND_ANNOTATION: "undo"}, None, "", "undo#", id="undo-needs-revision"),
        pytest.param({COMMAND_ANNOTATION: "pause:x"}, None, "", "pause:x#", id="argument-not-allowed"),
        pytest.param({COMMAND_ANNOTATION: "rollback"}, None, "", "rollback#", id="unknown"),
    ],
)
def test_parse_command(
    annotations: dict[str, str], verb: Verb | None, argument: str | None, key: str | None
) -> None:
    parsed = parse_command(annotations)
    if key is None:
        assert parsed is None
        return
    assert parsed is not None
    assert (parsed.verb, parsed.key) == (verb, key)
    if verb is None:
        assert parsed.error
    else:
        assert parsed.argument == argument


def test_merge_patch_deletes_dropped_keys_and_is_empty_when_unchanged() -> None:
    old = {"rollout": {"failures": {"q": 1, "q/b": 2}}, "phase": "Progressing"}
    new = {"rollout": {"failures": {"q": 0}}, "phase": "Progressing"}
    assert merge_patch(old, new) == {"rollout": {"failures": {"q": 0, "q/b": None}}}
    assert merge_patch(new, new) == {}


# ------------------------------------------------------------ properties


def roundtrip(state: RolloutState) -> RolloutState:
    """What an operator restarted from the cluster reads back: status -> JSON -> status."""
    return RolloutState.from_status(json.loads(json.dumps(state.to_status())))


def simulate(spec: InferenceStackSpec, *, persist: bool, crash_every: int = 0) -> list[Decision]:
    """A full rollout of C over S ticking every 10 s, with passing gates.

    ``persist`` sends the state through the status at every tick; ``crash_every``
    loses every n-th decision as if the operator died before writing the status.
    """
    state, decisions, now = HEALTHY, [], T0
    for tick in range(1, 400):
        now += timedelta(seconds=10)
        ready = (S, C) if now >= T0 + 2 * MIN else (S,)
        window = analysis_window(spec, state, now)
        a = analysis(now, window=window) if window is not None else None
        d = decide(spec, state, Observations(C, frozenset(ready), frozenset({S, C}), a), now)
        assert decide(spec, state, Observations(C, frozenset(ready), frozenset({S, C}), a), now) == d
        if crash_every and tick % crash_every == 0:
            continue
        decisions.append(d)
        state = roundtrip(d.state) if persist else d.state
        if persist:
            assert state == replace(d.state)  # nothing is lost in the status
        if d.state.stable == C and d.state.candidate is None:
            break
    return decisions


STEPS_OF = SPEC.rollout.steps  # NO_GATES has the same steps
EXPECTED_STEPS = ["waiting for pods", "shadow 10%", "canary 5%", "canary 25%", "ramp 50%", "ramp 75%", ""]


def runs(decisions: list[Decision]) -> list[str]:
    labels = [step_label(STEPS_OF, d.state) for d in decisions]
    return [label for i, label in enumerate(labels) if i == 0 or labels[i - 1] != label]


@pytest.mark.parametrize(
    ("persist", "crash_every"),
    [
        pytest.param(False, 0, id="in-memory"),
        pytest.param(True, 0, id="through-status"),
        pytest.param(True, 7, id="through-status-with-crashes"),
    ],
)
def test_full_rollout_visits_every_step_once_in_order(persist: bool, crash_every: int) -> None:
    decisions = simulate(SPEC, persist=persist, crash_every=crash_every)
    assert runs(decisions) == EXPECTED_STEPS
    assert decisions[-1].state.stable == C
    started = [e.message for d in decisions for e in d.events if e.reason == "StepStarted"]
    assert len(started) == len(set(started)) == 5
    assert sum(d.rewrite_traffic for d in decisions) == 6  # one plan write per step, one for the promotion


def test_resume_after_kill_ends_in_the_same_state() -> None:
    a, b = simulate(SPEC, persist=False), simulate(SPEC, persist=True)
    assert [d.state.to_status() for d in a] == [d.state.to_status() for d in b]


def test_canary_weight_never_decreases() -> None:
    weights = [d.traffic.candidate_weight for d in simulate(SPEC, persist=True) if d.state.candidate == C]
    assert weights == sorted(weights)
    assert weights[-1] == 75


def test_each_step_lasts_its_duration() -> None:
    decisions = simulate(NO_GATES, persist=True)
    started = {step_label(STEPS_OF, d.state): d.state.step_started_at for d in decisions if d.state.step_started_at}
    shadow, canary = started["shadow 10%"], started["canary 5%"]
    assert shadow is not None and canary is not None
    assert canary - shadow == timedelta(minutes=5)


def test_status_fits_the_crd_schema() -> None:
    """Every field decide() writes exists in the API types, so the API server does not prune it."""
    from inferstack.api.v1alpha1 import InferenceStackStatus

    now = T0
    for d in simulate(SPEC, persist=True):
        status = desired_status({}, d.state, look(SPEC, d, C, now), generation=1, cache_namespace="c", now=now)
        InferenceStackStatus.model_validate(status)  # extra="forbid": an unknown key fails here


JUDGE = {"endpoint": {"url": "http://judge:8000/v1", "model": "j"}, "criteria": "Answers the billing question."}
EVALUATION = {
    "slices": {"values": ["billing"]},
    "evaluators": [{"name": "refusal", "rule": {"refusal": {}}}, {"name": "helpful", "judge": JUDGE}],
}
EVALUATED = make_spec(evaluation=EVALUATION)
EGATE = {"name": "harm", "evaluator": "helpful", "margin": 0.05}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(SPEC, make_spec(gates=[{**GATE, "compare": {"maxRelativeDrop": 0.01}}]), id="stricter-gate"),
        pytest.param(
            EVALUATED,
            make_spec(evaluation={**EVALUATION, "evaluators": [*EVALUATION["evaluators"], {"name": "json", "rule": {"json": {}}}]}),
            id="evaluator-added",
        ),
        pytest.param(
            EVALUATED, make_spec(evaluation={**EVALUATION, "slices": {"values": ["billing", "tech"]}}), id="slices-changed"
        ),
        pytest.param(
            EVALUATED,
            make_spec(evaluation={**EVALUATION, "evaluators": [
                EVALUATION["evaluators"][0], {"name": "helpful", "judge": {**JUDGE, "criteria": "Cites the invoice."}},
            ]}),
            id="rubric-rewritten",
        ),
        pytest.param(EVALUATED, make_spec(evaluation={**EVALUATION, "alpha": 0.01}), id="alpha-lowered"),
        pytest.param(
            make_spec(gates=[EGATE], evaluation=EVALUATION),
            make_spec(gates=[{**EGATE, "direction": "LowerIsBetter"}], evaluation=EVALUATION),
            id="direction-flipped",
        ),
    ],
)
def test_editing_gates_or_evaluation_restarts_the_step_analysis_and_makes_no_new_revision(
    before: InferenceStackSpec, after: InferenceStackSpec
) -> None:
    # Evidence gathered under the old rules cannot be carried over, but the
    # revision users get is the same, so the rollout goes on at the same step.
    assert compute_revision(after).hash == compute_revision(before).hash
    first = decide(before, CANARY5, obs(), T0 + MIN)
    judged = first.state
    assert judged.judged_by and judged.step_started_at == CANARY5.step_started_at  # recorded, nothing restarted
    later = T0 + 2 * MIN
    d = decide(after, replace(judged, failures={"quality": 1}), obs(), later)
    assert [e.reason for e in d.events] == ["AnalysisRestarted"]
    assert d.state.step_started_at == later and d.state.failures == {} and d.state.verdicts == ()
    assert d.state.candidate == C and step_label(STEPS_OF, d.state) == "canary 5%"
    again = decide(after, d.state, obs(), later + MIN)
    assert not [e for e in again.events if e.reason == "AnalysisRestarted"]


def test_a_gate_direction_counts_in_the_judging_hash_only_when_it_changes_the_judging() -> None:
    """Unset and HigherIsBetter judge alike: both hash as before the field existed.

    The pinned value is this spec's judging hash on the commit before gates had
    a direction: if it changes, an operator upgrade restarts the analysis of
    every step in flight (event AnalysisRestarted) though no one edited a gate.
    """
    plain = make_spec(gates=[EGATE, GATE], evaluation=EVALUATION)
    higher = make_spec(gates=[{**EGATE, "direction": "HigherIsBetter"}, GATE], evaluation=EVALUATION)
    lower = make_spec(gates=[{**EGATE, "direction": "LowerIsBetter"}, GATE], evaluation=EVALUATION)
    assert judging_hash(plain) == judging_hash(higher) == "67654644e247"
    assert judging_hash(lower) != judging_hash(plain)
    assert compute_revision(lower).hash == compute_revision(plain).hash
