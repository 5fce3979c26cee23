import math
from typing import Any

import pytest

from inferstack.api.v1alpha1 import Gate
from inferstack.core.gates import (
    AGGREGATE,
    GateVerdict,
    Measurement,
    Verdict,
    evaluate_gates,
    evaluations,
    judge,
    threshold_text,
)

QUERY = {"query": 'x{revision="{{revision}}",slice=~"{{slice}}"}', "samplesQuery": 'n{revision="{{revision}}"}'}


def gate(**kw: Any) -> Gate:
    return Gate.model_validate({"name": "quality", "prometheus": QUERY, **kw})


MIN_08 = {"threshold": {"min": 0.8}}
MAX_2 = {"threshold": {"max": 2.0}}
DROP_10 = {"compare": {"maxRelativeDrop": 0.1}}
INCREASE_20 = {"compare": {"maxRelativeIncrease": 0.2}}
NAN = math.nan


@pytest.mark.parametrize(
    ("spec", "m", "verdict", "message"),
    [
        # absolute thresholds
        pytest.param(MIN_08, Measurement(0.9), Verdict.PASS, "ok", id="min-above"),
        pytest.param(MIN_08, Measurement(0.8), Verdict.PASS, "ok", id="min-equal-passes"),
        pytest.param(MIN_08, Measurement(0.7), Verdict.FAIL, "0.7 is below 0.8", id="min-below"),
        pytest.param(MAX_2, Measurement(2.5), Verdict.FAIL, "2.5 is above 2", id="max-above"),
        pytest.param(MAX_2, Measurement(1.0), Verdict.PASS, "ok", id="max-below"),
        pytest.param(
            {"threshold": {"min": 1, "max": 2}}, Measurement(3.0), Verdict.FAIL, "above", id="band-above"
        ),
        pytest.param(
            MIN_08, Measurement(0.9, baseline=None), Verdict.PASS, "ok", id="threshold-needs-no-baseline"
        ),
        # relative to the stable revision
        pytest.param(DROP_10, Measurement(0.95, 1.0), Verdict.PASS, "ok", id="drop-within"),
        pytest.param(DROP_10, Measurement(0.85, 1.0), Verdict.FAIL, "below 0.9", id="drop-too-large"),
        pytest.param(DROP_10, Measurement(2.0, 1.0), Verdict.PASS, "ok", id="drop-gate-ignores-improvement"),
        pytest.param(INCREASE_20, Measurement(1.1, 1.0), Verdict.PASS, "ok", id="increase-within"),
        pytest.param(INCREASE_20, Measurement(1.3, 1.0), Verdict.FAIL, "above 1.2", id="increase-too-large"),
        pytest.param(
            INCREASE_20, Measurement(0.001, 0.0), Verdict.FAIL, "above 0", id="increase-over-zero-baseline"
        ),
        pytest.param(
            {"compare": {"maxRelativeDrop": 0.1, "maxRelativeIncrease": 0.1}},
            Measurement(1.2, 1.0),
            Verdict.FAIL,
            "above 1.1",
            id="both-directions",
        ),
        # missing data never passes
        pytest.param(
            DROP_10, Measurement(0.95, None), Verdict.INCONCLUSIVE, "baseline", id="baseline-missing"
        ),
        pytest.param(DROP_10, Measurement(0.95, NAN), Verdict.INCONCLUSIVE, "baseline", id="baseline-nan"),
        pytest.param(
            MIN_08, Measurement(None), Verdict.INCONCLUSIVE, "no usable candidate", id="value-missing"
        ),
        pytest.param(MIN_08, Measurement(NAN), Verdict.INCONCLUSIVE, "no usable candidate", id="value-nan"),
        pytest.param(
            MIN_08, Measurement(math.inf), Verdict.INCONCLUSIVE, "no usable candidate", id="value-inf"
        ),
        pytest.param(
            MIN_08,
            Measurement(0.1, error="prometheus unreachable"),
            Verdict.INCONCLUSIVE,
            "unreachable",
            id="error",
        ),
        # sample minimum
        pytest.param(
            {**MIN_08, "minSamples": 100},
            Measurement(0.9, samples=40),
            Verdict.INCONCLUSIVE,
            "40 of 100",
            id="few-samples",
        ),
        pytest.param(
            {**MIN_08, "minSamples": 100},
            Measurement(0.1, samples=40),
            Verdict.INCONCLUSIVE,
            "40 of 100",
            id="few-samples-hides-failure",
        ),
        pytest.param(
            {**MIN_08, "minSamples": 100},
            Measurement(0.9, samples=100),
            Verdict.PASS,
            "ok",
            id="enough-samples",
        ),
        pytest.param(
            {**MIN_08, "minSamples": 100},
            Measurement(0.9, samples=None),
            Verdict.INCONCLUSIVE,
            "no sample count",
            id="samples-missing",
        ),
        # onInconclusive
        pytest.param(
            {**MIN_08, "onInconclusive": "Fail"},
            Measurement(None),
            Verdict.FAIL,
            "onInconclusive is Fail",
            id="inconclusive-as-fail",
        ),
        pytest.param(
            {**MIN_08, "onInconclusive": "Fail"},
            Measurement(0.9),
            Verdict.PASS,
            "ok",
            id="fail-policy-still-passes",
        ),
    ],
)
def test_judge(spec: dict[str, Any], m: Measurement, verdict: Verdict, message: str) -> None:
    v = judge(gate(**spec), "billing", m)
    assert v.verdict == verdict
    assert message in v.message
    assert (v.gate, v.slice, v.value, v.samples) == ("quality", "billing", m.value, m.samples)


def test_min_samples_without_samples_query_is_refused() -> None:
    """A gate that could never count its samples is refused with the spec, never judged."""
    with pytest.raises(ValueError, match=r"minSamples needs prometheus\.samplesQuery"):
        Gate.model_validate({"name": "q", "prometheus": {"query": "x"}, "minSamples": 10, "threshold": {"min": 0}})


@pytest.mark.parametrize(
    ("spec", "baseline", "text"),
    [
        pytest.param(MIN_08, None, ">= 0.8", id="min"),
        pytest.param({"threshold": {"min": 1, "max": 2}}, None, ">= 1, <= 2", id="band"),
        pytest.param(DROP_10, 0.9, ">= 0.81 (stable -10%)", id="drop"),
        pytest.param(INCREASE_20, 2.0, "<= 2.4 (stable +20%)", id="increase"),
        pytest.param(DROP_10, None, ">= ? (stable -10%)", id="drop-unknown-baseline"),
    ],
)
def test_threshold_text(spec: dict[str, Any], baseline: float | None, text: str) -> None:
    assert threshold_text(gate(**spec), baseline) == text


def test_evaluations_are_each_slice_then_aggregate() -> None:
    assert evaluations(gate(slices=["billing", "general"], **MIN_08)) == ["billing", "general", AGGREGATE]
    assert evaluations(gate(**MIN_08)) == [AGGREGATE]


def test_evaluate_gates_failing_slice_fails_although_aggregate_passes() -> None:
    g = gate(slices=["billing", "general"], **DROP_10)
    verdicts = evaluate_gates(
        [g],
        {
            ("quality", "billing"): Measurement(0.5, 1.0),
            ("quality", "general"): Measurement(1.0, 1.0),
            ("quality", AGGREGATE): Measurement(0.95, 1.0),
        },
    )
    assert [(v.slice, v.verdict) for v in verdicts] == [
        ("billing", Verdict.FAIL),
        ("general", Verdict.PASS),
        (AGGREGATE, Verdict.PASS),
    ]
    assert verdicts[0].key == "quality/billing"
    assert verdicts[2].key == "quality"


def test_evaluate_gates_unmeasured_is_inconclusive() -> None:
    (v,) = evaluate_gates([gate(**MIN_08)], {})
    assert v.verdict == Verdict.INCONCLUSIVE
    assert v.message == "not measured"


def test_verdict_status_round_trip() -> None:
    v = judge(gate(**DROP_10), "billing", Measurement(0.5, 1.0, samples=300))
    data = v.to_status()
    assert data["verdict"] == "Fail"
    assert data["threshold"] == ">= 0.9 (stable -10%)"
    assert GateVerdict.from_status(data) == v
