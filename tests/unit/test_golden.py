"""Golden sets: cases, scoring, the Job, the report and its verdicts, and the evaluate step in the rollout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.core import golden
from inferstack.core.config import OperatorConfig
from inferstack.core.gates import AGGREGATE, Verdict
from inferstack.core.rollout import Analysis, Observations, RolloutState, decide, hold_reason
from inferstack.core.trafficplan import RevisionBundle, SecretRef

SLICES = ["billing", "general"]
EVALUATION = {
    "slices": {"values": SLICES},
    "evaluators": [{"name": "golden", "goldenSet": {"configMapRefs": [{"name": "cases", "key": "cases.jsonl"}]}}],
}
GATE = {"name": "regression", "evaluator": "golden", "margin": 0.1, "minSamples": 10}
STEPS = [{"evaluate": {"timeout": "10m"}}, {"shadow": {"percent": 50, "duration": "1m"}}, {"canary": {"weight": 25}}]


def spec(gates: list[dict[str, Any]] | None = None, steps: list[dict[str, Any]] | None = None) -> InferenceStackSpec:
    return InferenceStackSpec.model_validate(
        {
            "model": {"name": "m", "revision": "a" * 40},
            "prompt": {"version": "v1", "system": "s"},
            "rollout": {"steps": steps or STEPS},
            "evaluation": EVALUATION,
            "gates": [GATE] if gates is None else gates,
        }
    )


def line(**case: Any) -> str:
    base = {"id": "c1", "slice": "billing", "messages": [{"role": "user", "content": "refund?"}], "expected": "30 days"}
    return json.dumps({**base, **case})


# --------------------------------------------------------------------- cases


def test_a_case_with_every_field() -> None:
    text = line(assertions=[{"contains": "30"}, {"notContains": "never"}, {"regex": "(?i)refund"}], critical=True) + "\n\n"
    (case,) = golden.parse_cases([("cases/cases.jsonl", text)], SLICES)
    assert case.id == "c1" and case.slice == "billing" and case.critical
    assert [a.kind for a in case.assertions] == ["contains", "notContains", "regex"]


def test_expected_alone_means_the_answer_contains_it_and_an_undeclared_slice_is_other() -> None:
    (case,) = golden.parse_cases([("f", line(slice="tax"))], SLICES)
    assert case.assertions == (golden.Assertion("contains", "30 days"),) and case.slice == golden.OTHER
    assert not case.critical


@pytest.mark.parametrize(
    ("text", "error"),
    [
        pytest.param("{not json", "f line 1: not JSON", id="not-json"),
        pytest.param("[1]", "f line 1: a case is a JSON object", id="not-object"),
        pytest.param(line(assert_=[]).replace("assert_", "assert"), "unknown field 'assert'", id="promptfoo-key"),
        pytest.param(line(id=""), "id must be", id="empty-id"),
        pytest.param(line(id="x" * 65), "id must be", id="long-id"),
        pytest.param(line(messages=[]), "messages must be a non-empty list", id="no-messages"),
        pytest.param(line(messages=[{"role": "user"}]), "string role and content", id="message-without-content"),
        pytest.param(line(expected=None), "nothing to check", id="nothing-to-check"),
        pytest.param(line(assertions=[{"startsWith": "x"}]), "unknown assertion 'startsWith'", id="unknown-assertion"),
        pytest.param(line(assertions=[{"contains": "a", "regex": "b"}]), "an assertion is one of", id="two-keys"),
        pytest.param(line(assertions=[{"regex": "(a"}]), "not a valid RE2 pattern", id="bad-regex"),
        pytest.param(line(assertions=[{"regex": "(a)\\1"}]), "not a valid RE2 pattern", id="backreference"),
        pytest.param(line(critical="yes"), "critical must be true or false", id="critical-not-bool"),
        pytest.param(line() + "\n" + line(), "f line 2: id 'c1' repeats f line 1", id="duplicate-id"),
        pytest.param("x" * (golden.MAX_LINE_BYTES + 1), f"may have at most {golden.MAX_LINE_BYTES}", id="line-too-long"),
        pytest.param("\n\n", "f: no cases", id="empty"),
    ],
)
def test_a_bad_line_is_a_clear_error(text: str, error: str) -> None:
    with pytest.raises(golden.CaseError) as e:
        golden.parse_cases([("f", text)], SLICES)
    assert error in str(e.value)


def test_cases_are_bounded_and_ids_unique_across_files() -> None:
    many = "\n".join(line(id=f"c{i}") for i in range(golden.MAX_CASES + 1))
    with pytest.raises(golden.CaseError, match=f"more than {golden.MAX_CASES} cases"):
        golden.parse_cases([("f", many)], SLICES)
    with pytest.raises(golden.CaseError, match="repeats a line 1"):
        golden.parse_cases([("a", line()), ("b", line())], SLICES)


@pytest.mark.parametrize(
    ("assertions", "answer", "passes"),
    [
        ([{"contains": "30 days"}], "Refunds within 30 days.", True),
        ([{"contains": "30 days"}], "Refunds within 30 Days.", False),  # case-sensitive, like promptfoo
        ([{"notContains": "never"}], "we never refund", False),
        ([{"equals": "yes"}], "  yes\n", True),
        ([{"equals": "yes"}], "yes!", False),
        ([{"regex": "(?i)^refund"}], "REFUNDS are", True),
        ([{"contains": "30"}, {"notContains": "never"}], "30 days, never later", False),  # every assertion must hold
    ],
)
def test_scoring(assertions: list[dict[str, str]], answer: str, passes: bool) -> None:
    (case,) = golden.parse_cases([("f", line(assertions=assertions))], SLICES)
    assert golden.passes(case, answer) is passes


def test_the_hash_changes_with_the_content() -> None:
    a = golden.cases_hash([("cm/k", line())])
    assert a == golden.cases_hash([("cm/k", line())])
    assert a != golden.cases_hash([("cm/k", line(expected="31 days"))])
    assert a != golden.cases_hash([("other/k", line())])


# -------------------------------------------------------------------- report


def result(id_: str, slice_: str, cand: bool | None, stab: bool | None, critical: bool = False) -> golden.CaseResult:
    case = golden.Case(id_, slice_, ({"role": "user", "content": "q"},), (golden.Assertion("contains", "x"),), critical)
    return golden.CaseResult(case, cand, stab, error="" if cand is not None and stab is not None else "timeout")


def test_the_report_pairs_cases_per_slice_and_leaves_errors_out() -> None:
    report = golden.build_report(
        "h",
        [
            result("a", "billing", True, True),
            result("b", "billing", False, True),  # d = -1
            result("c", "billing", True, False),  # d = +1
            result("d", "general", True, True),
            result("e", "general", None, True),  # an error: neither pass nor fail
            result("f", "general", False, True, critical=True),
            result("g", "general", None, False, critical=True),
        ],
    )
    assert report.slices["billing"] == golden.SliceCounts(3, 0, 2, 2, 2)
    assert report.slices["general"] == golden.SliceCounts(2, -1, 1, 1, 2)
    assert report.critical_failed == ("f",) and report.critical_errors == ("g",)
    assert report.errors == 2 and report.cases == 7 and "timeout" in report.error
    assert golden.Report.parse(report.to_message()) == report


def test_the_report_fits_a_termination_message_whatever_the_ids() -> None:
    slices = {f"{i:02d}" + "s" * 61: golden.SliceCounts(2000, -2000, 2000, 0, 2000) for i in range(33)}
    ids = tuple("x" * golden.MAX_ID_CHARS + str(i) for i in range(golden.MAX_REPORTED_IDS))
    report = golden.Report("h" * 16, 2000, slices, critical_failed=ids, critical_failed_more=5, errors=3, error="e" * 500)
    text = report.to_message()
    assert len(text.encode()) <= golden.MAX_REPORT_BYTES
    back = golden.Report.parse(text)
    # counts are never dropped: ids left out are counted
    assert len(back.critical_failed) + back.critical_failed_more == golden.MAX_REPORTED_IDS + 5
    assert back.slices == slices and back.critical_failed  # still names some cases


@pytest.mark.parametrize("text", [None, "", "not json", '{"v": 2}', '{"v": 1}', '{"v": 1, "hash": "h", "cases": 1, "slices": {"a": [1]}}'])
def test_an_unreadable_report_is_an_error(text: str | None) -> None:
    with pytest.raises(golden.ReportError):
        golden.Report.parse(text)


# ------------------------------------------------------------------- verdicts


def counts(n: int, cand: int, stab: int, both: int) -> golden.SliceCounts:
    """n pairs; cand and stab passes; ``both`` pairs where both passed."""
    plus, minus = cand - both, stab - both
    return golden.SliceCounts(n, plus - minus, plus + minus, cand, stab)


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        pytest.param(
            golden.Report("h", 200, {"billing": counts(100, 100, 100, 100), "general": counts(100, 100, 100, 100)}),
            {("regression", "billing"): Verdict.PASS, ("regression", "general"): Verdict.PASS, ("regression", AGGREGATE): Verdict.PASS},
            id="identical-passes",
        ),
        pytest.param(
            golden.Report("h", 200, {"billing": counts(100, 40, 100, 40), "general": counts(100, 100, 100, 100)}),
            {("regression", "billing"): Verdict.FAIL, ("regression", "general"): Verdict.PASS, ("regression", AGGREGATE): Verdict.FAIL},
            id="billing-regressed",
        ),
        pytest.param(
            golden.Report("h", 8, {"billing": counts(4, 4, 4, 4), "general": counts(4, 4, 4, 4)}),
            {("regression", "billing"): Verdict.INCONCLUSIVE, ("regression", "general"): Verdict.INCONCLUSIVE, ("regression", AGGREGATE): Verdict.INCONCLUSIVE},
            id="too-few-cases-hold",
        ),
        pytest.param(
            golden.Report("h", 200, {"billing": counts(100, 100, 100, 100)}, critical_failed=("refund-window",)),
            {("regression", AGGREGATE): Verdict.FAIL},
            id="critical-fails-at-once",
        ),
        pytest.param(
            golden.Report("h", 200, {"billing": counts(100, 100, 100, 100)}, critical_errors=("refund-window",)),
            {("regression", AGGREGATE): Verdict.INCONCLUSIVE},
            id="critical-unchecked-holds",
        ),
        pytest.param(golden.Report("other", 200, {"billing": counts(100, 100, 100, 100)}), {("regression", AGGREGATE): Verdict.INCONCLUSIVE}, id="other-cases"),
        pytest.param(golden.Report("h", 0, {}, error="cannot read"), {("regression", AGGREGATE): Verdict.INCONCLUSIVE}, id="could-not-run"),
    ],
)
def test_verdicts(report: golden.Report, expected: dict[tuple[str, str], Verdict]) -> None:
    out = golden.verdicts(spec(), "golden", report, "h")
    assert {(v.gate, v.slice): v.verdict for v in out} == expected


def test_a_critical_failure_names_the_cases() -> None:
    report = golden.Report("h", 30, {}, critical_failed=("refund-window", "chargeback"), critical_failed_more=3)
    (v,) = golden.verdicts(spec(), "golden", report, "h")
    assert v.verdict == Verdict.FAIL and "refund-window, chargeback (+3 more)" in v.message


def test_verdicts_show_both_pass_rates_and_the_interval() -> None:
    report = golden.Report("h", 200, {"billing": counts(100, 40, 100, 40), "general": counts(100, 100, 100, 100)})
    billing = golden.verdicts(spec(), "golden", report, "h")[0]
    assert (billing.value, billing.baseline, billing.samples, billing.baseline_samples) == (0.4, 1.0, 100, 100)
    assert billing.delta == pytest.approx(-0.6) and billing.delta_upper is not None and billing.delta_upper < -0.1


def test_a_candidate_that_wins_some_cases_is_judged_on_its_true_difference() -> None:
    # 100 billing cases: the candidate passes 70, the stable revision 60, both 40; so the
    # candidate wins 30 pairs and loses 20: d = +0.1 per pair, a candidate better than stable.
    report = golden.Report("h", 100, {"billing": counts(100, 70, 60, 40)})
    billing = golden.verdicts(spec(), "golden", report, "h")[0]
    assert billing.slice == "billing" and (billing.value, billing.baseline) == (0.7, 0.6)
    assert billing.delta == pytest.approx(0.1)
    assert billing.delta_lower is not None and billing.delta_upper is not None
    assert billing.delta_lower < 0.1 < billing.delta_upper and billing.verdict != Verdict.FAIL


def test_every_verdict_on_the_replayed_cases_names_them_in_evaluated_by() -> None:
    # status.gates[].evaluatedBy says which cases decided, so the verdict can be reproduced.
    h = golden.cases_hash([("cases/cases.jsonl", line())])
    named = f"golden set golden, cases sha256:{h[:12]}"
    judged = golden.verdicts(spec(), "golden", golden.Report(h, 200, {"billing": counts(100, 40, 100, 40)}), h)
    critical = golden.verdicts(spec(), "golden", golden.Report(h, 30, {}, critical_failed=("x",)), h)
    no_gate = golden.verdicts(spec(gates=[]), "golden", golden.Report(h, 3, {"billing": counts(3, 3, 3, 3)}), h)
    for v in judged + critical + no_gate:
        assert v.evaluated_by == named and v.to_status()["evaluatedBy"] == named, v
    # Nothing replayed these cases: no identity to show.
    changed = golden.verdicts(spec(), "golden", golden.Report("other", 200, {"billing": counts(100, 100, 100, 100)}), h)
    assert [v.evaluated_by for v in changed] == [""]


def test_a_golden_set_without_a_gate_still_blocks_on_critical_cases() -> None:
    no_gate = spec(gates=[])
    ok = golden.verdicts(no_gate, "golden", golden.Report("h", 3, {"billing": counts(3, 1, 3, 1)}), "h")
    assert [(v.gate, v.verdict) for v in ok] == [("golden", Verdict.PASS)]  # only critical cases decide
    bad = golden.verdicts(no_gate, "golden", golden.Report("h", 3, {}, critical_failed=("x",)), "h")
    assert [(v.gate, v.verdict) for v in bad] == [("golden", Verdict.FAIL)]


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ({}, golden.JobState()),
        ({"active": 1}, golden.JobState()),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, golden.JobState(True, True)),
        ({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer"}]},
         golden.JobState(True, False, "DeadlineExceeded: Job was active longer")),
        ({"conditions": [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}]}, golden.JobState(True, False, "BackoffLimitExceeded")),
        ({"conditions": [{"type": "Failed", "status": "False"}]}, golden.JobState()),
    ],
)  # fmt: skip
def test_job_state(status: dict[str, Any], state: golden.JobState) -> None:
    assert golden.job_state(status) == state


# ---------------------------------------------------------------------- Job

STACK = {"metadata": {"name": "support-bot", "namespace": "team-a", "uid": "u-1"}}


def bundle(rev: str, secret: bool = False) -> RevisionBundle:
    return RevisionBundle(
        revision=rev, url="https://api.example.com", served_model="m", cache_namespace=f"ns-{rev}",
        system_prompt="be brief", api_key_secret_ref=SecretRef(name="token", key="key") if secret else None,
    )  # fmt: skip


def job(candidate: str = "cand", stable: str = "stab", hash_: str = "h1", **config: Any) -> dict[str, Any]:
    s = spec()
    cfg = OperatorConfig.model_validate({"goldenJob": {"image": "registry/operator:1.2", **config}})
    return golden.build_job(STACK, s, s.evaluation.evaluators[0], bundle(candidate, secret=True), bundle(stable), hash_, 600, cfg)


def test_the_job_name_is_deterministic_and_changes_with_what_is_replayed() -> None:
    assert job()["metadata"]["name"] == job()["metadata"]["name"]
    names = {job()["metadata"]["name"], job(candidate="c2")["metadata"]["name"], job(stable="s2")["metadata"]["name"], job(hash_="h2")["metadata"]["name"]}
    assert len(names) == 4
    long = golden.job_name("x" * 63, "e", "c", "s", "h")
    assert len(long) <= 63 and long.startswith("x" * 45 + "-golden-")


def test_the_job_runs_once_with_no_api_access_and_no_secret_in_its_spec() -> None:
    j = job()
    spec_, pod = j["spec"], j["spec"]["template"]["spec"]
    assert j["metadata"]["ownerReferences"][0]["uid"] == "u-1"  # garbage-collected with the stack
    assert j["metadata"]["labels"].items() >= {"inferstack.dev/component": "golden", "inferstack.dev/revision": "cand", "inferstack.dev/baseline": "stab", "inferstack.dev/evaluator": "golden"}.items()
    assert spec_["backoffLimit"] == 0 and spec_["activeDeadlineSeconds"] == 600 and "ttlSecondsAfterFinished" not in spec_
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["image"] == "registry/operator:1.2" and c["command"] == ["python", "-m", "inferstack.golden"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["volumeMounts"] == [{"name": "cases", "mountPath": golden.CASES_DIR, "readOnly": True}]
    assert pod["volumes"][0]["projected"]["sources"] == [{"configMap": {"name": "cases", "items": [{"key": "cases.jsonl", "path": "0.jsonl"}]}}]
    env = {e["name"]: e for e in c["env"]}
    assert env[golden.ENV_API_KEY["candidate"]]["valueFrom"] == {"secretKeyRef": {"name": "token", "key": "key"}}
    assert golden.ENV_API_KEY["stable"] not in env
    runner = golden.RunnerConfig.model_validate_json(env[golden.ENV_CONFIG]["value"])
    assert runner.candidate.api_key is None and runner.candidate.system_prompt == "be brief"
    assert runner.slices == tuple(SLICES) and runner.cases_hash == "h1" and runner.files[0].source == "cases/cases.jsonl"


def test_the_job_is_placed_by_the_operator_config() -> None:
    pod = job(nodeSelector={"pool": "cpu"}, tolerations=[{"key": "k", "operator": "Exists"}], ttlSecondsAfterFinished=60)
    assert pod["spec"]["ttlSecondsAfterFinished"] == 60
    assert pod["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert pod["spec"]["template"]["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]


# --------------------------------------------------------- the evaluate step

T0 = datetime(2026, 1, 1, tzinfo=UTC)
S, C = "stable1", "cand1"


def at_evaluate(**kw: Any) -> RolloutState:
    return RolloutState(stable=S, candidate=C, candidate_since=T0, step_index=0, step_started_at=T0, **kw)


def verdict_analysis(at: datetime, *verdicts: Any) -> Analysis:
    return Analysis(C, at, tuple(verdicts), window_start=T0)


def report_verdicts(report: golden.Report, s: InferenceStackSpec | None = None) -> list[Any]:
    return golden.verdicts(s or spec(), "golden", report, "h")


PASSING = golden.Report("h", 200, {"billing": counts(100, 100, 100, 100), "general": counts(100, 100, 100, 100)})


def test_the_evaluate_step_gives_no_traffic_and_holds_until_the_job_verdict() -> None:
    s = spec()
    d = decide(s, at_evaluate(), Observations(revision=C, ready=frozenset({S, C})), T0 + timedelta(minutes=5))
    assert d.traffic.candidate_weight == 0 and d.traffic.shadow_percent == 0 and d.state.step_index == 0
    assert hold_reason(s, d.state) == "waiting for the golden set Jobs"


def test_a_passing_golden_set_moves_on_to_shadow() -> None:
    now = T0 + timedelta(seconds=3)
    a = verdict_analysis(now, *report_verdicts(PASSING))
    d = decide(spec(), at_evaluate(), Observations(revision=C, ready=frozenset({S, C}), analysis=a), now)
    assert d.rollback is None and d.state.step_index == 1 and d.traffic.shadow_percent == 50


def test_a_failed_critical_case_rolls_back_at_once_naming_it_even_with_a_failure_limit() -> None:
    s = spec(gates=[{**GATE, "failureLimit": 3}])
    now = T0 + timedelta(seconds=3)
    a = verdict_analysis(now, *report_verdicts(golden.Report("h", 200, {}, critical_failed=("refund-window",)), s))
    d = decide(s, at_evaluate(), Observations(revision=C, ready=frozenset({S, C}), analysis=a), now)
    assert d.rollback is not None and "refund-window" in d.rollback.message
    assert d.traffic.candidate is None and d.state.rolled_back == C


def test_an_inconclusive_golden_set_holds_and_never_promotes() -> None:
    now = T0 + timedelta(hours=2)
    a = verdict_analysis(now, *golden.inconclusive(spec(), "golden", "Job x failed (DeadlineExceeded)"))
    d = decide(spec(), at_evaluate(), Observations(revision=C, ready=frozenset({S, C}), analysis=a), now)
    assert d.rollback is None and d.state.step_index == 0 and d.traffic.candidate_weight == 0
    assert "DeadlineExceeded" in hold_reason(spec(), d.state)


def test_step_golden_sets() -> None:
    s = spec()
    assert [e.name for e in golden.step_golden_sets(s, s.rollout.steps[0])] == ["golden"]
    assert golden.step_golden_sets(s, s.rollout.steps[1]) == []
