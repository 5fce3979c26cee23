"""router/metrics.py: the answer series' children, written without a lock, count and expose as prometheus_client's do."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from inferstack.router.metrics import _LATENCY_BUCKETS, LABELS, Labels, RouterMetrics, _LoopValue

LABELS_A = Labels("team-a", "support", "rev-1", "stable", "default")


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def test_answer_series_expose_what_plain_children_would() -> None:
    metrics = RouterMetrics()
    plain = CollectorRegistry()
    requests = Counter("inferstack_router_requests", "Requests answered, by serving revision.", LABELS, registry=plain)
    duration = Histogram("inferstack_router_request_duration_seconds", "Time until the last byte.", LABELS, registry=plain,
                         buckets=_LATENCY_BUCKETS)
    samples = Counter("inferstack_eval_samples", "Evaluator samples (answers scored).", (*LABELS, "evaluator"), registry=plain)
    for seconds, score in [(0.003, 1.0), (0.2, 0.0), (7.5, 1.0), (500.0, 0.5)]:
        metrics.record_answer(LABELS_A, duration=seconds, ttft=None, prompt_tokens=3, completion_tokens=0,
                              checks={"refusal": score == 1.0}, score=score)
        metrics.record_samples(LABELS_A, {"brief": score})
        requests.labels(*LABELS_A).inc()
        duration.labels(*LABELS_A).observe(seconds)
        samples.labels(*LABELS_A, "brief").inc()
    ours = _without_created(generate_latest(metrics.registry))
    for line in _without_created(generate_latest(plain)):
        assert line in ours
    get = metrics.registry.get_sample_value
    assert get("inferstack_router_prompt_tokens_total", dict(LABELS_A._asdict())) == 12
    assert get("inferstack_eval_score_sum_total", {**LABELS_A._asdict(), "evaluator": "brief"}) == 2.5
    assert get("inferstack_router_check_total", {**LABELS_A._asdict(), "check": "refusal", "result": "fail"}) == 2
    assert get("inferstack_router_quality_score_bucket", {**LABELS_A._asdict(), "le": "0.5"}) == 2
    series = metrics.series(LABELS_A)
    assert type(series.requests._value) is _LoopValue and type(series.duration._sum) is _LoopValue


def test_counters_still_refuse_to_go_down() -> None:
    metrics = RouterMetrics()
    with pytest.raises(ValueError):
        metrics.record_answer(LABELS_A, duration=0.1, ttft=None, prompt_tokens=-1, completion_tokens=0, checks={}, score=1.0)
    with pytest.raises(ValueError):
        metrics.record_answer(LABELS_A, duration=0.1, ttft=None, prompt_tokens=5, completion_tokens=-2, checks={}, score=1.0)
    # As the counters' own inc() left them: what came before the refused count is recorded.
    get = metrics.registry.get_sample_value
    assert get("inferstack_router_requests_total", dict(LABELS_A._asdict())) == 2
    assert get("inferstack_router_prompt_tokens_total", dict(LABELS_A._asdict())) == 5
    assert get("inferstack_router_completion_tokens_total", dict(LABELS_A._asdict())) == 0
    with pytest.raises(ValueError):
        metrics.record_samples(LABELS_A, {"judge": -0.5})
    # As the counters' own inc() left it: the sample counted, its sum not.
    judge = {**LABELS_A._asdict(), "evaluator": "judge"}
    assert metrics.registry.get_sample_value("inferstack_eval_samples_total", judge) == 1
    assert metrics.registry.get_sample_value("inferstack_eval_score_sum_total", judge) == 0
