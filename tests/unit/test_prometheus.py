"""controller/prometheus.py with a fake InstantQuery: no Prometheus in unit tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from prometheus_api_client import PrometheusApiClientException

from inferstack.api.v1alpha1 import InferenceStackSpec
from inferstack.controller.prometheus import PrometheusClient, QueryError, analyse, describe
from inferstack.core.gates import Verdict


def vector(value: str) -> list[dict[str, Any]]:
    return [{"metric": {}, "value": [1700000000.0, value]}]


class FakePrometheus:
    """Answers by substring of the query; records what was asked."""

    def __init__(self, answers: dict[str, list[dict[str, Any]] | Exception]):
        self.answers = answers
        self.queries: list[str] = []
        self.times: set[datetime | None] = set()

    async def instant(self, query: str, at: datetime | None = None) -> Sequence[dict[str, Any]]:
        self.queries.append(query)
        self.times.add(at)
        for needle, answer in self.answers.items():
            if needle in query:
                if isinstance(answer, Exception):
                    raise answer
                return answer
        return []


def spec(*gates: dict[str, Any]) -> InferenceStackSpec:
    return InferenceStackSpec.model_validate(
        {
            "model": {"name": "m", "revision": "a" * 40},
            "prompt": {"version": "v1", "system": "x"},
            "gates": list(gates),
        }
    )


JUDGE = {
    "name": "judge",
    "slices": ["billing"],
    "prometheus": {
        "query": 'score{rev="{{revision}}",slice=~"{{slice}}"}[{{window}}]',
        "samplesQuery": 'count{rev="{{revision}}",slice=~"{{slice}}"}',
    },
    "compare": {"maxRelativeDrop": 0.1},
    "minSamples": 10,
}


async def test_analyse_renders_runs_and_judges_each_slice() -> None:
    fake = FakePrometheus(
        {
            'score{rev="cand",slice=~"billing"}': vector("0.5"),
            'score{rev="cand",slice=~".*"}': vector("0.95"),
            'score{rev="stab"': vector("1.0"),
            "count{": vector("100"),
        }
    )
    verdicts = await analyse(spec(JUDGE), "chat", "ns", "stab", "cand", fake)
    assert [(v.slice, v.verdict, v.value, v.baseline, v.samples) for v in verdicts] == [
        ("billing", Verdict.FAIL, 0.5, 1.0, 100.0),
        ("", Verdict.PASS, 0.95, 1.0, 100.0),
    ]
    assert 'score{rev="cand",slice=~"billing"}[1m]' in fake.queries  # default window: max(2 x 30s, 1m)
    assert len(fake.queries) == 6  # value, baseline, samples per evaluation


async def test_analyse_evaluates_every_query_at_one_time_over_the_given_window() -> None:
    """One evaluation time: the analysis covers exactly [at - window, at], however slow the queries."""
    fake = FakePrometheus({"score": vector("1"), "count{": vector("100")})
    at = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    await analyse(spec(JUDGE), "chat", "ns", "stab", "cand", fake, window=timedelta(seconds=90), at=at)
    assert fake.times == {at}
    assert all("[1m30s]" in q for q in fake.queries if "score" in q)


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        pytest.param({}, "no usable candidate value", id="no-data"),
        pytest.param(
            {"score": QueryError("prometheus did not answer within 10s")}, "did not answer", id="timeout"
        ),
        pytest.param({"score": vector("0.9") * 2}, "returned 2 series", id="not-aggregated"),
        pytest.param({"count": vector("3"), "score": vector("0.9")}, "3 of 10 samples", id="few-samples"),
    ],
)
async def test_analyse_problems_are_inconclusive(answers: dict[str, Any], message: str) -> None:
    verdicts = await analyse(spec(JUDGE), "chat", "ns", "stab", "cand", FakePrometheus(answers))
    assert {v.verdict for v in verdicts} == {Verdict.INCONCLUSIVE}
    assert message in verdicts[0].message


async def test_analyse_template_error_is_inconclusive_without_querying() -> None:
    # The API and the operator's spec check refuse unknown placeholders; analyse
    # does not rely on its caller for that, so build such a gate past validation.
    good = spec({"name": "bad", "prometheus": {"query": "x"}, "threshold": {"max": 1}})
    gate = good.gates[0]
    bad_gate = gate.model_copy(update={"prometheus": gate.prometheus.model_copy(update={"query": "x{a='{{stak}}'}"})})
    fake = FakePrometheus({})
    (v,) = await analyse(good.model_copy(update={"gates": [bad_gate]}), "chat", "ns", "stab", "cand", fake)
    assert v.verdict == Verdict.INCONCLUSIVE
    assert "unknown placeholder" in v.message
    assert fake.queries == []


async def test_analyse_without_gates_queries_nothing() -> None:
    fake = FakePrometheus({})
    assert await analyse(spec(), "chat", "ns", "stab", "cand", fake) == []
    assert fake.queries == []


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_client_timeout_becomes_query_error(silent_server: str) -> None:
    with pytest.raises(QueryError, match="prometheus"):
        await PrometheusClient(silent_server, timeout=0.2).instant("up")


async def test_client_unreachable_becomes_query_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(QueryError, match=r"^prometheus is unreachable$"):
        await PrometheusClient(url, timeout=0.5).instant('sum(rate(x{slice=~"a.b"}[1m]))')


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        pytest.param(
            PrometheusApiClientException(
                'HTTP Status Code 400 (b\'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unexpected \\"}\\""}\')'
            ),
            'prometheus answered HTTP 400: 1:5: parse error: unexpected \\"}\\"',
            id="bad-query",
        ),
        pytest.param(PrometheusApiClientException("HTTP Status Code 503 (b'Service Unavailable')"), "prometheus answered HTTP 503", id="503"),
        pytest.param(
            requests.exceptions.ConnectionError("HTTPConnectionPool(host='p', port=9090): Max retries exceeded with url: /api/v1/query?query=sum%28rate%28x"),
            "prometheus is unreachable",
            id="connection",
        ),
        pytest.param(ValueError("weird"), "prometheus query failed (ValueError)", id="other"),
    ],
)  # fmt: skip
def test_query_failures_read_as_one_short_line_without_the_url(exc: Exception, message: str) -> None:
    text = describe(exc, 5)
    assert text == message
    assert "%28" not in text and "query=" not in text and "\n" not in text


EVALUATION = {"slices": {"values": ["billing", "general"]}, "evaluators": [{"name": "no-refusal", "rule": {"refusal": {}}}]}
EVAL_GATE = {"name": "quality", "evaluator": "no-refusal", "margin": 0.05, "minSamples": 30}


async def test_analyse_runs_prometheus_and_evaluator_gates_in_spec_order() -> None:
    latency = {"name": "latency", "prometheus": {"query": 'max(lat{revision="{{revision}}"})'}, "threshold": {"max": 2}}
    sp = InferenceStackSpec.model_validate({**spec(latency).model_dump(by_alias=True, exclude_none=True), "evaluation": EVALUATION, "gates": [latency, EVAL_GATE]})
    fake = FakePrometheus(
        {
            'revision="cand",evaluator="no-refusal",slice=~"billing"': vector("40"),  # n, S and Q all answer 40...
            "lat{": vector("0.5"),
            'revision="stab"': vector("1200"),
            'revision="cand"': vector("400"),
        }
    )
    verdicts = await analyse(sp, "bot", "ns", "stab", "cand", fake)
    assert [(v.gate, v.slice) for v in verdicts] == [("latency", ""), ("quality", "billing"), ("quality", "general"), ("quality", "")]
    assert verdicts[0].verdict == Verdict.PASS
    assert all(v.delta is not None for v in verdicts[1:])
